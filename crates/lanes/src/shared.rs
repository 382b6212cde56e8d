//! The state one device shares with every handle, lease, buffer and binding, and
//! the per-lease owner handle of buffers.

use crate::alloc::{AllocConfig, Allocator, BufferOwner, PendingUse};
use crate::backend::Backend;
use crate::callback::Callbacks;
use crate::event::EventPool;
use crate::graph_cache::{self, LaneGraphs};
use crate::pool::{LanePool, Policy};
use crate::sync::{Arc, AtomicBool, Mutex};
use crate::{Error, Result};

/// Each device gets a distinct id for thread binding.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// State shared by the device handle, every lease, buffer and thread binding.
/// It lives until the last of them is dropped.
pub(crate) struct DeviceShared {
    /// Each lane's graph cache (dropped first: its graphs give their blocks back to
    /// the allocator, which they share).
    pub(crate) graphs: Box<[Mutex<LaneGraphs>]>,
    /// Whether `Lease::graph` captures (from `LANES_GRAPHS`; switchable).
    pub(crate) graphs_on: AtomicBool,
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) pool: LanePool,
    pub(crate) events: Arc<EventPool>,
    pub(crate) callbacks: Arc<Callbacks>,
    /// Shared with every graph's pool (a graph holds no reference to the device,
    /// so the device's graph caches make no reference cycle).
    pub(crate) allocator: Arc<Allocator>,
}

impl DeviceShared {
    /// The state of a new device on `backend` with `lanes` lanes.
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        lanes: usize,
        policy: Policy,
        alloc: AllocConfig,
    ) -> Result<Self> {
        let pool = LanePool::new(lanes, policy)?;
        let allocator = Arc::new(Allocator::new(backend.clone(), lanes, alloc));
        let capacity = graph_cache::capacity_from_env();
        Ok(DeviceShared {
            graphs: (0..lanes)
                .map(|_| Mutex::new(LaneGraphs::new(capacity)))
                .collect(),
            graphs_on: AtomicBool::new(graph_cache::graphs_enabled()),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            name: backend.kind().to_string(),
            events: Arc::new(EventPool::new(backend.clone())),
            backend,
            pool,
            callbacks: Arc::new(Callbacks::default()),
            allocator,
        })
    }

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
