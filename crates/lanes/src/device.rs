//! A device: one backend with its lane pool, event pool, callbacks and allocator.

use std::time::Duration;

use crate::alloc::{AllocConfig, AllocStats, Allocator};
use crate::backend::host::HostBackend;
use crate::backend::{Backend, DeviceKind};
use crate::binding::{self, LaneGuard};
use crate::error::{Wait, NO_LIBCUDA};
use crate::lease::Lease;
use crate::pool::Policy;
use crate::shared::DeviceShared;
use crate::sync::{lock, Arc};
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
    /// Graphs in the lanes' graph caches.
    pub graphs_cached: usize,
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
        let shared = DeviceShared::new(backend, config.lanes, config.policy, config.alloc)?;
        Ok(Device {
            shared: Arc::new(shared),
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
    /// notice on stderr saying why (see [`cpu_fallback_notice`]).
    pub fn best(config: DeviceConfig) -> Result<Device> {
        match Device::cuda(0, config.clone()) {
            Ok(dev) => Ok(dev),
            Err(e) => {
                eprintln!("{}", cpu_fallback_notice(&e));
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

    /// Switches `Lease::graph` on or off for this device (the default comes from
    /// `LANES_GRAPHS`); switching off also drops every cached graph.
    pub fn set_graphs(&self, enabled: bool) {
        self.shared
            .graphs_on
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
        if !enabled {
            self.clear_graphs();
        }
    }

    /// Sets how many graphs each lane's cache keeps (at least 1; the default is
    /// `LANES_GRAPH_CACHE` or 16), evicting the least recently used to fit.
    pub fn set_graph_cache_capacity(&self, graphs: usize) {
        for slot in self.shared.graphs.iter() {
            let evicted = lock(slot).set_capacity(graphs);
            drop(evicted);
        }
    }

    /// Drops every lane's cached graphs; their blocks go back to the lanes' caches.
    pub fn clear_graphs(&self) {
        for slot in self.shared.graphs.iter() {
            let taken = lock(slot).clear();
            drop(taken);
        }
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
            graphs_cached: s.graphs.iter().map(|g| lock(g).len()).sum(),
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

/// The way back from a lane to its device (here, not in `lease.rs`, so that leases
/// need not know the device handle).
impl Lease {
    /// The device this lane belongs to.
    pub fn device(&self) -> Device {
        Device {
            shared: self.inner.device.clone(),
        }
    }
}

/// The one-line notice [`Device::best`] prints when it falls back to the CPU.
///
/// A machine with no driver library at all (a CPU-only machine) is told so plainly,
/// with nothing to fix; any other failure (a stub library, no GPU, a driver too old)
/// is named with its cause.
pub fn cpu_fallback_notice(why: &Error) -> String {
    match why {
        Error::NoCudaDriver(m) if m == NO_LIBCUDA => {
            "lanes: no CUDA driver (libcuda.so.1) found; using the CPU".to_string()
        }
        e => format!("lanes: CUDA unavailable ({e}); using the CPU"),
    }
}

#[cfg(all(test, not(any(lanes_loom, lanes_shuttle))))]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_only_machine_is_not_told_to_fix_its_loader_path() {
        let n = cpu_fallback_notice(&Error::NoCudaDriver(NO_LIBCUDA.into()));
        assert_eq!(
            n,
            "lanes: no CUDA driver (libcuda.so.1) found; using the CPU"
        );
        let stub = Error::NoCudaDriver("the libcuda.so found is the CUDA toolkit's stub".into());
        let n = cpu_fallback_notice(&stub);
        assert!(n.contains("stub") && n.contains("using the CPU"), "{n}");
    }

    #[test]
    fn best_falls_back_to_a_working_cpu_device_where_cuda_is_absent() {
        let dev = Device::best(DeviceConfig {
            lanes: 2,
            ..Default::default()
        })
        .expect("best");
        match Device::cuda(0, DeviceConfig::default()) {
            Ok(_) => assert!(matches!(dev.kind(), DeviceKind::Cuda(0))),
            Err(_) => assert_eq!(dev.kind(), DeviceKind::Cpu),
        }
    }
}
