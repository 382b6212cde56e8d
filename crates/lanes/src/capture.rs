//! Capturing a lane's work into a [`Graph`], launching it, and each lane's graph
//! cache as the [`Lease`] sees it (`Lease::capture`, `Lease::graph`,
//! `Graph::launch`).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use crate::alloc::{Allocator, Block, Buffer, BufferOwner, GraphPool, PendingUse};
use crate::graph::Graph;
use crate::lease::{CaptureState, Lease};
use crate::shared::DeviceShared;
use crate::sync::{lock, Arc, Ordering, Weak};
use crate::{Error, Result};

/// The owner of the buffers allocated during a capture: frees go into the graph's
/// pool. It holds the device weakly (the device's graph caches hold the graph, which
/// holds these buffers): markers for other lanes can be recorded while the device
/// lives, which is whenever a lease can still use the buffer on another lane.
struct GraphOwner {
    pool: Arc<GraphPool>,
    device: Weak<DeviceShared>,
}

impl BufferOwner for GraphOwner {
    fn allocator(&self) -> &Allocator {
        self.pool.allocator()
    }

    fn pending_on(&self, lane: usize) -> Result<Box<dyn PendingUse>> {
        match self.device.upgrade() {
            Some(d) => d.pending_on(lane),
            None => Err(Error::InvalidArgument(format!(
                "lane {lane} used a graph's buffer after its device was dropped"
            ))),
        }
    }

    fn release(&self, block: Block, markers: Vec<Box<dyn PendingUse>>) -> Result<()> {
        self.pool.keep(block, markers)
    }
}

impl Lease {
    /// Captures the work `f` enqueues on this lane into a [`Graph`]; nothing runs
    /// now. `f` returns the buffers the graph keeps (its inputs and outputs, see
    /// [`Graph::buffers`]).
    ///
    /// Inside `f`, kernel launches, cuBLAS calls and device-to-device copies are
    /// captured, and `alloc` takes blocks from the graph's pool (reserved for the
    /// graph's life). Calls that cannot be captured (`upload`, `download`, `record`,
    /// `wait`, `synchronize`, `on_complete`) fail with [`Error::Capture`] naming the
    /// call; an error or a panic of `f` discards the capture. Needs an exclusive
    /// lease (another holder's work would land in the graph). Run the work once
    /// eagerly on a lane before its first capture, so that libraries (cuBLAS) have
    /// set up their handles.
    ///
    /// Errors: [`Error::Unsupported`] on a backend without graphs (the CPU).
    pub fn capture(&self, f: impl FnOnce(&Lease) -> Result<Vec<Buffer>>) -> Result<Graph> {
        let device = &self.inner.device;
        let capture_err = |message: String| Error::Capture {
            device: device.name().to_string(),
            lane: self.inner.index,
            message,
        };
        if !self.is_exclusive() {
            return Err(capture_err(
                "capture needs an exclusive lease (Policy::Exclusive): under Policy::Shared \
                 other holders' work would be captured too"
                    .into(),
            ));
        }
        let pool = Arc::new(GraphPool::new(device.allocator.clone()));
        let owner: Arc<dyn BufferOwner> = Arc::new(GraphOwner {
            pool: pool.clone(),
            device: Arc::downgrade(device),
        });
        {
            let mut state = lock(&self.inner.capture);
            if state.is_some() {
                return Err(capture_err("this lease is already capturing".into()));
            }
            *state = Some(CaptureState {
                pool: pool.clone(),
                owner,
            });
        }
        let end_state = || {
            self.inner.capturing.store(false, Ordering::Release);
            drop(lock(&self.inner.capture).take());
        };
        self.inner.capturing.store(true, Ordering::Release);
        if let Err(e) = self.raw().begin_capture() {
            end_state();
            return Err(match e {
                Error::Unsupported { what, .. } => Error::Unsupported {
                    device: device.name().to_string(),
                    what,
                },
                e => e,
            });
        }
        let out = catch_unwind(AssertUnwindSafe(|| f(self)));
        end_state();
        match out {
            Ok(Ok(buffers)) => match self.raw().end_capture(true)? {
                Some(raw) => Ok(Graph::new(raw, buffers, pool, self.inner.index)),
                None => Err(capture_err("the backend returned no graph".into())),
            },
            Ok(Err(e)) => {
                let _ = self.raw().end_capture(false);
                Err(e)
            }
            Err(panic) => {
                let _ = self.raw().end_capture(false);
                resume_unwind(panic)
            }
        }
    }

    /// This lane's cached graph for `key`, captured with `f` (see
    /// [`Lease::capture`]) on the first call for that key on this lane. The cache
    /// keeps `LANES_GRAPH_CACHE` graphs per lane (16 by default), least recently
    /// used evicted first, and is freed with the device.
    ///
    /// `Ok(None)`: no graphs here (a backend without graphs, or graphs switched off
    /// by `LANES_GRAPHS=off` or [`crate::Device::set_graphs`]): run the work eagerly.
    pub fn graph(
        &self,
        key: u64,
        f: impl FnOnce(&Lease) -> Result<Vec<Buffer>>,
    ) -> Result<Option<Arc<Graph>>> {
        let device = &self.inner.device;
        if !device.graphs_on.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let slot = &device.graphs[self.inner.index];
        {
            let mut cache = lock(slot);
            if cache.unsupported() {
                return Ok(None);
            }
            if let Some(g) = cache.get(key) {
                return Ok(Some(g));
            }
        }
        match self.capture(f) {
            Ok(g) => {
                let g = Arc::new(g);
                let displaced = lock(slot).insert(key, g.clone());
                drop(displaced);
                Ok(Some(g))
            }
            Err(Error::Unsupported { .. }) => {
                lock(slot).set_unsupported();
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Drops this lane's cached graphs (their blocks go back to the lane's cache).
    pub fn clear_graphs(&self) {
        let taken = lock(&self.inner.device.graphs[self.inner.index]).clear();
        drop(taken);
    }
}

impl Graph {
    /// Enqueues one replay on `lease`'s lane, which must be the lane the graph was
    /// captured on (its blocks are that lane's).
    pub fn launch(&self, lease: &Lease) -> Result<()> {
        let device = &lease.inner.device;
        if !std::ptr::eq(self.allocator(), &*device.allocator) {
            return Err(Error::InvalidArgument(format!(
                "a graph of another device was launched on {}",
                device.name()
            )));
        }
        if lease.index() != self.lane() {
            return Err(Error::InvalidArgument(format!(
                "a graph captured on lane {} was launched on lane {} of {}: launch it on \
                 its own lane",
                self.lane(),
                lease.index(),
                device.name()
            )));
        }
        match self.raw() {
            Some(raw) => lease.raw().launch_graph(raw),
            None => Err(Error::InvalidArgument(
                "a dropped graph was launched".into(),
            )),
        }
    }
}
