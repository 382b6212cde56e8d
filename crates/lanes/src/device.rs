//! A device: one backend with its lane pool, event pool, callbacks and allocator.

use std::time::Duration;

use crate::alloc::{AllocConfig, AllocStats, Allocator, BufferOwner, PendingUse};
use crate::backend::host::HostBackend;
use crate::backend::{Backend, DeviceKind};
use crate::binding::{self, LaneGuard};
use crate::callback::Callbacks;
use crate::error::Wait;
use crate::event::EventPool;
use crate::lane::{LanePool, Lease, Policy};
use crate::sync::Arc;
use crate::{Error, Result};

/// How a device is set up.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Lanes in the pool (1..=64; 32 by default). Lanes are created lazily.
    pub lanes: usize,
    /// How lanes are handed out.
    pub policy: Policy,
    /// The caching allocator's settings.
    pub alloc: AllocConfig,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            lanes: 32,
            policy: Policy::Exclusive {
                wait: Wait::Forever,
            },
            alloc: AllocConfig::default(),
        }
    }
}

/// Figures that must return to their baseline once all work is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceStats {
    /// Lanes in the pool.
    pub lanes: usize,
    /// Lanes whose native queue exists.
    pub lanes_created: usize,
    /// Leases alive now (including thread bindings).
    pub leases_outstanding: usize,
    /// Native events ever created.
    pub events_created: usize,
    /// Events handed out and not yet returned.
    pub events_outstanding: usize,
    /// Native events waiting in the pool.
    pub events_pooled: usize,
    /// Completion callbacks not yet finished.
    pub callbacks_pending: usize,
    /// Completion callbacks whose closure panicked.
    pub callbacks_panicked: usize,
    /// The caching allocator.
    pub alloc: AllocStats,
}

/// What a shutdown found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Completion callbacks that had not finished when the wait ended.
    pub callbacks_pending: usize,
    /// Leases still held by other threads (they keep the device alive).
    pub leases_outstanding: usize,
}

/// Each device gets a distinct id for thread binding.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// State shared by the device handle, every lease, buffer and thread binding.
/// It lives until the last of them is dropped.
pub(crate) struct DeviceShared {
    id: u64,
    name: String,
    backend: Arc<dyn Backend>,
    pool: LanePool,
    events: Arc<EventPool>,
    callbacks: Arc<Callbacks>,
    allocator: Allocator,
}

impl DeviceShared {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
    pub(crate) fn pool(&self) -> &LanePool {
        &self.pool
    }
    pub(crate) fn events(&self) -> &Arc<EventPool> {
        &self.events
    }
    pub(crate) fn callbacks(&self) -> &Arc<Callbacks> {
        &self.callbacks
    }
}

impl BufferOwner for DeviceShared {
    fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    fn pending_on(&self, lane: usize) -> Result<Box<dyn PendingUse>> {
        let raw = self.pool.raw(lane).ok_or_else(|| Error::NoSuchLane {
            device: self.name.clone(),
            lane,
            lanes: self.pool.len(),
        })?;
        let ev = self.events.get(lane)?;
        raw.record(ev.raw())?;
        Ok(Box::new(ev))
    }
}

/// The [`BufferOwner`] of the buffers that one lease allocates: a strong reference
/// to the device, created once per lease (in `Lease::acquire`), delegating to the
/// device's own `BufferOwner`.
///
/// Each buffer holds a clone of its lease's `Arc<LaneOwner>`, not of the device's
/// `Arc<DeviceShared>`, so an alloc and a free on a lane touch that lease's
/// reference count only, never a count that every lane writes. The buffer keeps
/// the device alive after its lease is dropped, but not the lease (the lane goes
/// back to the pool when the lease does).
///
/// Aligned to 128 bytes so that its `Arc` allocation (reference counts included)
/// has cache lines of its own, even when one thread acquires the leases of
/// several lanes back to back.
#[repr(align(128))]
pub(crate) struct LaneOwner {
    device: Arc<DeviceShared>,
}

impl LaneOwner {
    pub(crate) fn new(device: Arc<DeviceShared>) -> Self {
        LaneOwner { device }
    }
}

impl BufferOwner for LaneOwner {
    #[inline]
    fn allocator(&self) -> &Allocator {
        self.device.allocator()
    }

    fn pending_on(&self, lane: usize) -> Result<Box<dyn PendingUse>> {
        self.device.pending_on(lane)
    }
}

/// A handle to one device. Cheap to clone; every clone, lease and buffer shares the
/// same pools. Dropping it while other threads still hold leases is legal: the
/// shared state lives until the last holder lets go.
///
/// ```
/// use lanes::{Device, DeviceConfig};
/// let dev = Device::cpu(DeviceConfig { lanes: 4, ..Default::default() })?;
/// let lane = dev.lease()?;
/// let buf = lane.alloc(1024)?;
/// lane.upload(&buf, &[7u8; 1024])?;
/// let mut back = vec![0u8; 1024];
/// lane.download(&buf, &mut back)?;
/// assert_eq!(back, vec![7u8; 1024]);
/// # Ok::<(), lanes::Error>(())
/// ```
#[derive(Clone)]
pub struct Device {
    pub(crate) shared: Arc<DeviceShared>,
}

impl Device {
    /// A device on `backend`.
    pub fn new(backend: Arc<dyn Backend>, config: DeviceConfig) -> Result<Device> {
        let pool = LanePool::new(config.lanes, config.policy)?;
        let name = backend.kind().to_string();
        let allocator = Allocator::new(backend.clone(), config.lanes, config.alloc);
        Ok(Device {
            shared: Arc::new(DeviceShared {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                name,
                events: Arc::new(EventPool::new(backend.clone())),
                backend,
                pool,
                callbacks: Arc::new(Callbacks::default()),
                allocator,
            }),
        })
    }

    /// The CPU device (host backend).
    pub fn cpu(config: DeviceConfig) -> Result<Device> {
        Device::new(Arc::new(HostBackend::new()), config)
    }

    /// CUDA device `ordinal`. Fails with [`Error::NoCudaDriver`] where no driver can
    /// be loaded (or when built without the `cuda` feature); never panics.
    pub fn cuda(ordinal: usize, config: DeviceConfig) -> Result<Device> {
        #[cfg(feature = "cuda")]
        {
            let backend = crate::backend::cuda::CudaBackend::new(ordinal)?;
            Device::new(Arc::new(backend), config)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (ordinal, config);
            Err(Error::NoCudaDriver(
                "this build of lanes has no CUDA backend (feature `cuda` off)".into(),
            ))
        }
    }

    /// CUDA device 0 if a driver and a GPU are there, else the CPU, with a one-line
    /// notice on stderr saying why.
    pub fn best(config: DeviceConfig) -> Result<Device> {
        match Device::cuda(0, config.clone()) {
            Ok(dev) => Ok(dev),
            Err(e) => {
                eprintln!("lanes: using the CPU backend ({e})");
                Device::cpu(config)
            }
        }
    }

    /// Parses `auto`, `cpu`, `cuda`, `cuda:N`.
    pub fn from_spec(spec: &str, config: DeviceConfig) -> Result<Device> {
        match spec {
            "auto" | "best" => Device::best(config),
            "cpu" => Device::cpu(config),
            "cuda" | "gpu" => Device::cuda(0, config),
            s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Device::cuda(n, config),
                _ => Err(Error::InvalidArgument(format!(
                    "unknown device `{s}`: expected auto, cpu, cuda or cuda:N"
                ))),
            },
        }
    }

    /// `true` when both handles refer to the same device instance.
    pub fn same_as(&self, other: &Device) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// `cpu`, `cuda:0`, ...
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Which kind of device this is.
    pub fn kind(&self) -> DeviceKind {
        self.shared.backend.kind()
    }

    /// The backend (for backend-specific work: downcast with `as_any`).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.shared.backend
    }

    /// Lanes in the pool.
    pub fn lanes(&self) -> usize {
        self.shared.pool.len()
    }

    /// The pool's policy.
    pub fn policy(&self) -> Policy {
        self.shared.pool.policy()
    }

    /// Leases a lane per the pool's policy (an exclusive pool waits as configured).
    pub fn lease(&self) -> Result<Lease> {
        Lease::acquire(&self.shared, None)
    }

    /// Leases a lane, overriding an exclusive pool's wait.
    pub fn lease_with(&self, wait: Wait) -> Result<Lease> {
        Lease::acquire(&self.shared, Some(wait))
    }

    /// This thread's lane on this device, leased and bound on first use. The
    /// binding is released when the thread exits (or by [`Device::unbind_current`]).
    pub fn current_lane(&self) -> Result<Lease> {
        if let Some(lease) = binding::current(self.shared.id) {
            return Ok(lease);
        }
        let lease = self.lease()?;
        drop(binding::replace(self.shared.id, Some(lease.clone())));
        Ok(lease)
    }

    /// Makes `lease` this thread's current lane until the guard drops, which
    /// restores the previous one.
    pub fn bind(&self, lease: Lease) -> Result<LaneGuard> {
        if !Arc::ptr_eq(&lease.inner.device, &self.shared) {
            return Err(Error::InvalidArgument(format!(
                "a lease of {} cannot be bound as a lane of {}",
                lease.inner.device.name(),
                self.name()
            )));
        }
        let previous = binding::replace(self.shared.id, Some(lease));
        Ok(LaneGuard {
            device: self.shared.id,
            previous,
            _not_send: std::marker::PhantomData,
        })
    }

    /// Releases this thread's bound lane, if any.
    pub fn unbind_current(&self) {
        drop(binding::replace(self.shared.id, None));
    }

    /// The caching allocator.
    pub fn allocator(&self) -> &Allocator {
        &self.shared.allocator
    }

    /// Counters that must return to their baseline once all work is done.
    pub fn stats(&self) -> DeviceStats {
        let s = &self.shared;
        DeviceStats {
            lanes: s.pool.len(),
            lanes_created: s.pool.created(),
            leases_outstanding: s.pool.outstanding(),
            events_created: s.events.created(),
            events_outstanding: s.events.outstanding(),
            events_pooled: s.events.pooled(),
            callbacks_pending: s.callbacks.pending(),
            callbacks_panicked: s.callbacks.panicked(),
            alloc: s.allocator.stats(),
        }
    }

    /// Waits for all work on every created lane.
    pub fn synchronize(&self) -> Result<()> {
        let pool = &self.shared.pool;
        let mut first = Ok(());
        for i in 0..pool.len() {
            if let Some(raw) = pool.raw(i) {
                if let Err(e) = raw.synchronize() {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        first
    }

    /// Waits up to `timeout` for pending completion callbacks and reports what is
    /// left. The device itself is freed when the last handle, lease and buffer go.
    pub fn shutdown(self, timeout: Duration) -> Result<ShutdownReport> {
        self.unbind_current();
        let pending = self.shared.callbacks.wait_idle(timeout);
        let report = ShutdownReport {
            callbacks_pending: pending,
            leases_outstanding: self.shared.pool.outstanding(),
        };
        if pending > 0 {
            return Err(Error::ShutdownTimedOut {
                device: self.name().to_string(),
                waited: timeout,
                pending,
            });
        }
        Ok(report)
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.shared.name)
            .field("lanes", &self.shared.pool.len())
            .field("policy", &self.shared.pool.policy())
            .finish()
    }
}
