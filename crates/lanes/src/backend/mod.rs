//! The few primitives a device must offer, and their implementations.
//!
//! A backend knows nothing of pools, leases or caching: [`crate::Device`] builds those
//! on top of these raw operations. Two implementations exist: [`host`] (a lane is a
//! worker thread draining an ordered queue) and, with the `cuda` feature, `cuda`
//! (a lane is a non-blocking CUDA stream).
//!
//! Backend-specific work (a CPU job, a kernel launch) is reached through
//! [`RawLane::as_any`]: the layers above downcast to [`host::HostLane`] or
//! `cuda::CudaLane` where they need the native handle.

use std::any::Any;

use crate::Result;

pub mod host;

#[cfg(feature = "cuda")]
pub mod cuda;

/// An address in a backend's memory space (a host address for the host backend, a
/// `CUdeviceptr` for CUDA). Plain data: holding one grants nothing; only the
/// allocator's RAII buffers own memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The address `bytes` past this one.
    pub fn offset(self, bytes: usize) -> DevicePtr {
        DevicePtr(self.0 + bytes as u64)
    }
}

/// Free and total memory of a device, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemInfo {
    /// Bytes the backend could still hand out.
    pub free: usize,
    /// All bytes of the device.
    pub total: usize,
}

/// What kind of device a backend drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// The host backend.
    Cpu,
    /// A CUDA GPU with this ordinal.
    Cuda(usize),
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceKind::Cpu => write!(f, "cpu"),
            DeviceKind::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A host function run after prior work on a lane (completion callbacks).
pub type HostFn = Box<dyn FnOnce() + Send + 'static>;

/// One device: lanes, events, raw memory.
pub trait Backend: Send + Sync + 'static {
    /// Which device this is.
    fn kind(&self) -> DeviceKind;

    /// Creates the native lane with this index (called lazily, once per index).
    fn create_lane(&self, index: usize) -> Result<Box<dyn RawLane>>;

    /// Creates a native event (the event pool recycles them).
    fn create_event(&self) -> Result<Box<dyn RawEvent>>;

    /// Allocates `bytes` of raw device memory, aligned to at least 256 bytes.
    fn alloc(&self, bytes: usize) -> Result<DevicePtr>;

    /// Returns memory obtained from [`Backend::alloc`].
    ///
    /// # Safety
    /// `ptr` came from `alloc(bytes)` on this backend, is freed once, and no work
    /// that is still pending on any lane uses it.
    unsafe fn free(&self, ptr: DevicePtr, bytes: usize);

    /// Free and total device memory.
    fn mem_info(&self) -> Result<MemInfo>;

    /// Waits for all work on all lanes of the device (never used on a hot path).
    fn synchronize(&self) -> Result<()>;

    /// Downcasting to the concrete backend.
    fn as_any(&self) -> &dyn Any;
}

/// An ordered work queue: work on one lane runs in order; lanes run concurrently.
pub trait RawLane: Send + Sync + 'static {
    /// Records `event` after all work enqueued so far on this lane.
    fn record(&self, event: &dyn RawEvent) -> Result<()>;

    /// Makes later work on this lane wait until `event` has completed (no host wait).
    fn wait(&self, event: &dyn RawEvent) -> Result<()>;

    /// Blocks the calling thread until all work enqueued so far has finished.
    /// Returns (and clears) the first failure of work enqueued since the last call.
    fn synchronize(&self) -> Result<()>;

    /// Runs `f` on a host thread once all work enqueued so far has finished.
    /// `f` must not block on this lane.
    fn host_fn(&self, f: HostFn) -> Result<()>;

    /// Copies `src` to device memory at `dst`, ordered after prior work on the lane.
    /// `src` may be reused as soon as this returns.
    ///
    /// # Safety
    /// `dst..dst+src.len()` is device memory of this backend that stays allocated
    /// until the copy has run and is not concurrently used by other lanes.
    unsafe fn copy_htod(&self, src: &[u8], dst: DevicePtr) -> Result<()>;

    /// Copies device memory at `src` into `dst`, after prior work on the lane, and
    /// waits for the copy (the one host synchronization of a forward pass).
    ///
    /// # Safety
    /// `src..src+dst.len()` is allocated device memory of this backend.
    unsafe fn copy_dtoh(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()>;

    /// Copies `bytes` from `src` to `dst` on the device, ordered on the lane.
    ///
    /// # Safety
    /// Both ranges are allocated device memory of this backend and do not overlap.
    unsafe fn copy_dtod(&self, src: DevicePtr, dst: DevicePtr, bytes: usize) -> Result<()>;

    /// Starts capturing the work enqueued on this lane into a graph (nothing runs
    /// until the graph is launched). Backends without graphs return
    /// [`crate::Error::Unsupported`] (the default).
    fn begin_capture(&self) -> Result<()> {
        Err(crate::Error::Unsupported {
            device: "this backend".into(),
            what: "graph capture".into(),
        })
    }

    /// Ends the capture begun by [`RawLane::begin_capture`] and instantiates the graph.
    /// With `keep == false` the capture is discarded (the closure failed) and
    /// `Ok(None)` is returned.
    fn end_capture(&self, keep: bool) -> Result<Option<Box<dyn RawGraph>>> {
        let _ = keep;
        Err(crate::Error::Unsupported {
            device: "this backend".into(),
            what: "graph capture".into(),
        })
    }

    /// `true` while a capture is in progress on this lane.
    fn is_capturing(&self) -> bool {
        false
    }

    /// Enqueues one replay of `graph` on this lane.
    fn launch_graph(&self, graph: &dyn RawGraph) -> Result<()> {
        let _ = graph;
        Err(crate::Error::Unsupported {
            device: "this backend".into(),
            what: "graph launch".into(),
        })
    }

    /// Downcasting to the concrete lane.
    fn as_any(&self) -> &dyn Any;
}

/// Work captured on a lane, instantiated and ready to replay
/// ([`RawLane::launch_graph`]). Dropping it is legal while a replay is in flight
/// (the backend frees it once the replay is done).
pub trait RawGraph: Send + Sync + 'static {
    /// Nodes (kernels, copies) in the graph.
    fn nodes(&self) -> usize;

    /// Downcasting to the concrete graph.
    fn as_any(&self) -> &dyn Any;
}

/// A marker recorded on a lane.
pub trait RawEvent: Send + Sync + 'static {
    /// `true` once the work before the last record has completed (or if never recorded).
    fn query(&self) -> Result<bool>;

    /// Blocks until the work before the last record has completed.
    fn synchronize(&self) -> Result<()>;

    /// Downcasting to the concrete event.
    fn as_any(&self) -> &dyn Any;
}
