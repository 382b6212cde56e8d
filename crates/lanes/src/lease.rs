//! Leases: the right to enqueue work on one lane of a device.
//!
//! A [`Lease`] owns a strong reference to the device's shared state, so neither the
//! pool nor a lane can be torn down under it: there is no alive flag and nothing to
//! check before use. The last clone of a lease gives the lane back to the pool.

use std::sync::OnceLock;

use crate::alloc::{Buffer, BufferOwner, GraphPool};
use crate::backend::RawLane;
use crate::error::Wait;
use crate::event::Event;
use crate::shared::{DeviceShared, LaneOwner};
use crate::sync::{lock, Arc, AtomicBool, Mutex, Ordering};
use crate::{Error, Result};

/// Exclusive (or shared) use of one lane, released on drop of the last clone.
///
/// Cloning a lease shares it (the lane stays leased until every clone is gone).
/// A lease keeps its device alive.
#[derive(Clone)]
pub struct Lease {
    pub(crate) inner: Arc<LeaseInner>,
}

pub(crate) struct LeaseInner {
    pub(crate) device: Arc<DeviceShared>,
    pub(crate) index: usize,
    exclusive: bool,
    /// The owner handle of this lease's buffers, created by the first `alloc`
    /// (a lease that never allocates pays nothing for it): each `Lease::alloc`
    /// clones it, so the reference count a buffer writes is this lease's, not the
    /// device's.
    owner: OnceLock<Arc<LaneOwner>>,
    /// `true` while this lease captures a graph (checked by every `alloc`).
    pub(crate) capturing: AtomicBool,
    /// The capture in progress: the graph's pool and the owner of its buffers.
    pub(crate) capture: Mutex<Option<CaptureState>>,
}

/// Where the buffers allocated during a capture come from and go back to.
pub(crate) struct CaptureState {
    pub(crate) pool: Arc<GraphPool>,
    pub(crate) owner: Arc<dyn BufferOwner>,
}

impl Lease {
    pub(crate) fn acquire(device: &Arc<DeviceShared>, wait: Option<Wait>) -> Result<Lease> {
        let pool = device.pool();
        let (index, exclusive) = pool.take(wait, device.name())?;
        pool.outstanding.fetch_add(1, Ordering::AcqRel);
        // From here the inner's Drop gives the lane back, on every path.
        let inner = Arc::new(LeaseInner {
            device: device.clone(),
            index,
            exclusive,
            owner: OnceLock::new(),
            capturing: AtomicBool::new(false),
            capture: Mutex::new(None),
        });
        pool.ensure(index, &**device.backend())?;
        Ok(Lease { inner })
    }

    /// The lane's index in its pool.
    pub fn index(&self) -> usize {
        self.inner.index
    }

    /// `true` when this lease excludes every other holder of the lane.
    pub fn is_exclusive(&self) -> bool {
        self.inner.exclusive
    }

    /// The native lane (for backend-specific work: downcast with `as_any`).
    pub fn raw(&self) -> &dyn RawLane {
        // `acquire` created the slot before the lease existed.
        match self.inner.device.pool().raw(self.inner.index) {
            Some(raw) => raw,
            None => unreachable!("a lease exists only for a created lane"),
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("device", &self.inner.device.name())
            .field("lane", &self.inner.index)
            .field("exclusive", &self.inner.exclusive)
            .finish()
    }
}

impl Drop for LeaseInner {
    fn drop(&mut self) {
        let pool = self.device.pool();
        if self.exclusive {
            pool.release(self.index);
        }
        pool.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Work on the leased lane.
impl Lease {
    /// Records a pooled event after all work enqueued so far on this lane.
    pub fn record(&self) -> Result<Event> {
        let ev = self.inner.device.events().get(self.inner.index)?;
        self.raw().record(ev.raw())?;
        Ok(ev)
    }

    /// Makes later work on this lane wait for `event` (no host wait).
    pub fn wait(&self, event: &Event) -> Result<()> {
        self.raw().wait(event.raw())
    }

    /// Blocks until all work enqueued so far on this lane has finished; returns the
    /// first failure of that work, if any.
    pub fn synchronize(&self) -> Result<()> {
        self.raw().synchronize()
    }

    /// Runs `f` on the host once all work enqueued so far on this lane has finished.
    /// `f` owns its state; the device counts it until it has run, and a panic in `f`
    /// is caught and counted.
    pub fn on_complete(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        self.inner
            .device
            .callbacks()
            .enqueue(self.raw(), Box::new(f))
    }

    /// Allocates `bytes` of device memory for use on this lane (stream-ordered:
    /// safe for all later work on this lane; mark other lanes with
    /// [`Buffer::record_use`]).
    pub fn alloc(&self, bytes: usize) -> Result<Buffer> {
        if self.inner.capturing.load(Ordering::Acquire) {
            if let Some(buf) = self.alloc_captured(bytes) {
                return buf;
            }
        }
        let owner: Arc<dyn BufferOwner> = self
            .inner
            .owner
            .get_or_init(|| Arc::new(LaneOwner::new(self.inner.device.clone())))
            .clone();
        Buffer::alloc(owner, self.inner.index, bytes)
    }

    /// An allocation from the graph's pool while this lease captures (`None` when
    /// the capture has just ended).
    fn alloc_captured(&self, bytes: usize) -> Option<Result<Buffer>> {
        let (pool, owner) = {
            let c = lock(&self.inner.capture);
            let c = c.as_ref()?;
            (c.pool.clone(), c.owner.clone())
        };
        Some(
            pool.alloc(self.inner.index, bytes)
                .map(|block| Buffer::from_block(owner, block)),
        )
    }

    /// Copies `src` into `buf` (ordered on this lane; `src` may be reused at once).
    pub fn upload(&self, buf: &Buffer, src: &[u8]) -> Result<()> {
        self.check_buffer(buf, src.len())?;
        // SAFETY: `check_buffer` proved `buf` belongs to this device and holds
        // `src.len()` bytes; the buffer outlives the copy because a freed block is
        // reused only by later work on its lane or after events on other lanes.
        unsafe { self.raw().copy_htod(src, buf.ptr()) }
    }

    /// Copies `dst.len()` bytes of `buf` to the host after prior work on this lane
    /// and waits for the copy.
    pub fn download(&self, buf: &Buffer, dst: &mut [u8]) -> Result<()> {
        self.check_buffer(buf, dst.len())?;
        // SAFETY: as in `upload`; the copy completes before this returns.
        unsafe { self.raw().copy_dtoh(buf.ptr(), dst) }
    }

    fn check_buffer(&self, buf: &Buffer, bytes: usize) -> Result<()> {
        // Compares allocators, not owner handles: a buffer's owner is the handle of
        // the lease that allocated it, and any lease of the same device may use it.
        if !buf.belongs_to(&*self.inner.device) {
            return Err(Error::StaleBuffer(format!(
                "a buffer of another device was used on lane {} of {}",
                self.inner.index,
                self.inner.device.name()
            )));
        }
        if bytes > buf.len() {
            return Err(Error::InvalidArgument(format!(
                "copy of {bytes} bytes into a buffer of {} bytes",
                buf.len()
            )));
        }
        if buf.lane() != self.inner.index {
            buf.record_use(self.inner.index);
        }
        Ok(())
    }
}
