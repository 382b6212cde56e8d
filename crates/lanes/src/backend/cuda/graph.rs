//! CUDA graphs: a lane's stream captured (`cuStreamBeginCapture`, thread-local
//! mode), instantiated once (`cuGraphInstantiate`) and replayed (`cuGraphLaunch`).
//!
//! Thread-local capture mode lets many threads capture on their own lanes at once:
//! only the capturing thread is barred from calls that are unsafe during a capture
//! (`cuMemAlloc`, synchronizations, event queries). The capturing thread is marked
//! here ([`capturing_here`]) so that the backend runs a `cuMemAlloc` it needs during
//! a capture (a cache miss of the allocator) on a helper thread instead.

use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cudarc::driver::sys;

use super::driver::{bind, describe, Shared};
use crate::backend::RawGraph;
use crate::{Error, Result};

thread_local! {
    /// Captures in progress on this thread (a thread captures one lane at a time,
    /// but a count keeps a nested misuse from clearing the mark early).
    static CAPTURES: Cell<u32> = const { Cell::new(0) };
}

/// `true` while the calling thread is capturing a CUDA graph.
pub(crate) fn capturing_here() -> bool {
    CAPTURES.with(|c| c.get() > 0)
}

/// Marks the calling thread as capturing until dropped.
pub(crate) struct CaptureMark(());

impl CaptureMark {
    pub(crate) fn new() -> Self {
        CAPTURES.with(|c| c.set(c.get() + 1));
        CaptureMark(())
    }
}

impl Drop for CaptureMark {
    fn drop(&mut self) {
        CAPTURES.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// An instantiated CUDA graph (`CUgraphExec`), replayable on any stream of its
/// context; lanes replays it on the lane it was captured on.
pub struct CudaGraph {
    exec: sys::CUgraphExec,
    nodes: usize,
    shared: Arc<Shared>,
}

// SAFETY: a CUgraphExec is a driver handle usable from any thread; lanes never
// launches one graph from two threads at once (a graph belongs to one lane, which
// one exclusive lease drives), and the driver serializes destroy against launches.
unsafe impl Send for CudaGraph {}
// SAFETY: as above; `&CudaGraph` only reads the handle.
unsafe impl Sync for CudaGraph {}

impl CudaGraph {
    /// Ends the capture on `stream` and instantiates what it recorded. `keep ==
    /// false` discards the capture. The stream must be capturing (begun by this
    /// lane on this thread).
    pub(crate) fn end_capture(
        shared: &Arc<Shared>,
        lane: usize,
        stream: sys::CUstream,
        keep: bool,
    ) -> Result<Option<CudaGraph>> {
        let fail = |what: &str, e: sys::CUresult| Error::Capture {
            device: shared.name.to_string(),
            lane,
            message: format!("{what}: {}", describe(cudarc::driver::DriverError(e))),
        };
        bind(&shared.ctx).map_err(|e| fail("cuCtxSetCurrent", e.0))?;
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: the stream is the lane's live stream, capturing since this lane's
        // `begin_capture`; `graph` is a valid out-pointer.
        let ended = unsafe { sys::cuStreamEndCapture(stream, &mut graph) };
        let graph = Graph(graph);
        if ended != sys::CUresult::CUDA_SUCCESS {
            return Err(fail(
                "cuStreamEndCapture (a call inside the capture invalidated it)",
                ended,
            ));
        }
        if !keep || graph.0.is_null() {
            return Ok(None);
        }
        let mut nodes = 0usize;
        // SAFETY: `graph` is the live graph just captured; a null node array asks
        // for the count only.
        let counted = unsafe { sys::cuGraphGetNodes(graph.0, std::ptr::null_mut(), &mut nodes) };
        if counted != sys::CUresult::CUDA_SUCCESS {
            nodes = 0;
        }
        let mut exec: sys::CUgraphExec = std::ptr::null_mut();
        // SAFETY: `graph` is live; `exec` is a valid out-pointer; flags 0.
        let made = unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph.0, 0) };
        if made != sys::CUresult::CUDA_SUCCESS {
            return Err(fail("cuGraphInstantiate", made));
        }
        // The exec is independent of the graph it came from: `graph` is destroyed
        // when it drops here.
        Ok(Some(CudaGraph {
            exec,
            nodes,
            shared: shared.clone(),
        }))
    }

    /// Enqueues one replay on `stream` (a stream of this graph's context).
    pub(crate) fn launch_on(&self, lane: usize, stream: sys::CUstream) -> Result<()> {
        let fail = |what: &str, e: sys::CUresult| Error::LaneFailed {
            device: self.shared.name.to_string(),
            lane,
            message: format!("{what}: {}", describe(cudarc::driver::DriverError(e))),
        };
        bind(&self.shared.ctx).map_err(|e| fail("cuCtxSetCurrent", e.0))?;
        // SAFETY: `exec` is live until this value drops; the stream is a live stream
        // of the same context (the caller checked the context).
        let r = unsafe { sys::cuGraphLaunch(self.exec, stream) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return Err(fail("cuGraphLaunch", r));
        }
        Ok(())
    }

    /// The context the graph belongs to.
    pub(crate) fn context(&self) -> sys::CUcontext {
        self.shared.ctx.cu_ctx()
    }
}

impl RawGraph for CudaGraph {
    fn nodes(&self) -> usize {
        self.nodes
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let _ = bind(&self.shared.ctx);
            // SAFETY: `exec` came from cuGraphInstantiate and is destroyed once, here.
            // A replay still in flight is not cut short: the driver frees the exec
            // once it completes.
            let _ = unsafe { sys::cuGraphExecDestroy(self.exec) };
        }));
    }
}

impl std::fmt::Debug for CudaGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaGraph")
            .field("device", &self.shared.name)
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// A captured `CUgraph`, destroyed on drop (after instantiation or on failure).
struct Graph(sys::CUgraph);

impl Drop for Graph {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the graph came from cuStreamEndCapture and is destroyed once.
            let _ = unsafe { sys::cuGraphDestroy(self.0) };
        }
    }
}
