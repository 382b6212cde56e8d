//! [`Graph`]: work captured on one lane, replayed with one launch.
//!
//! `Lease::capture` records what a closure enqueues on a lane (kernels, cuBLAS
//! calls, device copies) into a CUDA graph without running it; `Graph::launch`
//! replays it with a single driver call. The buffers allocated during the capture
//! come from the graph's own pool ([`GraphPool`]): their addresses are baked into
//! the graph, so they stay reserved for the graph's whole life, even the ones whose
//! handles the closure dropped, and go back to the lane's cache when the graph is
//! dropped. The buffers the closure returned ([`Graph::buffers`]) are the graph's
//! inputs and outputs: fill them before a launch, read them after it.

use crate::alloc::{Allocator, Buffer, GraphPool};
use crate::backend::RawGraph;
use crate::sync::Arc;

/// A captured graph of one lane. See the [module docs](self).
///
/// Launch it only on the lane it was captured on (`Graph::launch` checks): its
/// blocks are that lane's, and stream order on that lane is what lets them return
/// to the cache without a host synchronization when the graph is dropped.
pub struct Graph {
    /// `Some` until dropped.
    raw: Option<Box<dyn RawGraph>>,
    buffers: Vec<Buffer>,
    pool: Arc<GraphPool>,
    lane: usize,
}

impl Graph {
    pub(crate) fn new(
        raw: Box<dyn RawGraph>,
        buffers: Vec<Buffer>,
        pool: Arc<GraphPool>,
        lane: usize,
    ) -> Graph {
        Graph {
            raw: Some(raw),
            buffers,
            pool,
            lane,
        }
    }

    /// The buffers the capture closure returned, in its order: the graph's inputs
    /// and outputs, at the addresses the graph uses on every launch.
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }

    /// The lane it was captured on (the only lane it may be launched on).
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// Kernel, copy and other nodes in the graph.
    pub fn nodes(&self) -> usize {
        self.raw.as_ref().map_or(0, |r| r.nodes())
    }

    /// Bytes of device memory the graph holds (every block allocated during the
    /// capture), returned to the lane's cache when the graph is dropped.
    pub fn reserved_bytes(&self) -> usize {
        self.pool.bytes()
    }

    pub(crate) fn raw(&self) -> Option<&dyn RawGraph> {
        self.raw.as_deref()
    }

    pub(crate) fn allocator(&self) -> &Allocator {
        self.pool.allocator()
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // The executable graph first (a replay in flight finishes; the backend frees
        // it after), then the kept buffers go into the pool, and the pool's blocks
        // back to the lane's cache: later work on the lane is ordered after the
        // last launch, so no host synchronization is needed.
        drop(self.raw.take());
        self.buffers.clear();
        let _ = self.pool.close();
    }
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("lane", &self.lane)
            .field("nodes", &self.nodes())
            .field("buffers", &self.buffers.len())
            .field("reserved_bytes", &self.reserved_bytes())
            .finish()
    }
}
