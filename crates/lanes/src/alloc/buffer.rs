//! [`Buffer`]: the safe RAII handle to a block of device memory.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::allocator::{Allocator, Block, BlockId};
use super::block::PendingUse;
use crate::backend::DevicePtr;
use crate::sync::{Arc, AtomicU64, Ordering};
use crate::{Error, Result};

/// What a [`Buffer`] needs from the device that owns it: the allocator, and a way to
/// record a marker on another lane when the buffer is freed.
pub trait BufferOwner: Send + Sync {
    /// The allocator the buffer's block came from.
    fn allocator(&self) -> &Allocator;

    /// Records a marker after all work enqueued so far on `lane`.
    fn pending_on(&self, lane: usize) -> Result<Box<dyn PendingUse>>;

    /// Takes back a freed buffer's block, with a marker for each other lane that used
    /// it. The default frees it into the allocator at once; a graph's owner keeps it
    /// for the graph's life instead.
    fn release(&self, block: Block, markers: Vec<Box<dyn PendingUse>>) -> Result<()> {
        self.allocator().free(block, markers)
    }
}

/// Device memory owned by one handle; freed into its home lane's cache on drop.
///
/// Work on the home lane (the lane it was allocated for) may use it freely: later
/// work on that lane is ordered after earlier work. Before another lane uses it,
/// call [`Buffer::record_use`] with that lane; the drop then records a marker on each
/// such lane and the block is reused only once those markers complete.
///
/// Dropping never panics and never blocks on the device; an error met while freeing
/// (a marker that could not be recorded) is counted in
/// [`super::AllocStats::free_errors`] and the block then stays parked for good:
/// leaked, never reused under a possible user.
pub struct Buffer {
    owner: Arc<dyn BufferOwner>,
    /// `Some` until the buffer is freed.
    block: Option<Block>,
    /// Bit `l` set: lane `l` (other than the home lane) used the buffer. Set by
    /// `record_use` from any thread holding a reference; read when the buffer is freed,
    /// which needs ownership, so every `record_use` happens before that read.
    uses: AtomicU64,
}

impl Buffer {
    /// Allocates `bytes` on `lane` from `owner`'s allocator.
    pub fn alloc(owner: Arc<dyn BufferOwner>, lane: usize, bytes: usize) -> Result<Buffer> {
        let block = owner.allocator().alloc(lane, bytes)?;
        Ok(Buffer::from_block(owner, block))
    }

    /// The handle of `block`, which `owner`'s allocator handed out; freed through
    /// `owner` ([`BufferOwner::release`]) on drop.
    pub fn from_block(owner: Arc<dyn BufferOwner>, block: Block) -> Buffer {
        Buffer {
            owner,
            block: Some(block),
            uses: AtomicU64::new(0),
        }
    }

    fn block(&self) -> &Block {
        // Invariant: `block` is `Some` for the whole life of a `Buffer` value; only
        // `free` and `drop` take it, and both consume the buffer.
        match &self.block {
            Some(b) => b,
            None => unreachable!("a live Buffer always owns its block"),
        }
    }

    /// The device address.
    pub fn ptr(&self) -> DevicePtr {
        self.block().ptr()
    }

    /// The requested size in bytes.
    pub fn len(&self) -> usize {
        self.block().requested()
    }

    /// `true` for a zero-byte request.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes the block occupies (the request rounded up to 512, or a little more
    /// when the rest of the free block it came from was too small to split off).
    pub fn capacity(&self) -> usize {
        self.block().size()
    }

    /// The home lane.
    pub fn lane(&self) -> usize {
        self.block().lane()
    }

    /// The name of this hand-out of the block; it stops resolving once the buffer is freed.
    pub fn id(&self) -> BlockId {
        self.block().id()
    }

    /// Marks that work on `lane` uses this buffer: its free will wait for that lane.
    /// The home lane needs no mark; lanes the allocator does not serve are ignored.
    pub fn record_use(&self, lane: usize) {
        if lane != self.lane() && lane < self.owner.allocator().lanes() {
            self.uses.fetch_or(1 << lane, Ordering::Relaxed);
        }
    }

    /// The lanes marked with [`Buffer::record_use`], as a bitmask.
    pub fn uses(&self) -> u64 {
        self.uses.load(Ordering::Relaxed)
    }

    /// The device state that owns the buffer.
    pub fn owner(&self) -> &Arc<dyn BufferOwner> {
        &self.owner
    }

    /// `true` if the buffer came from `owner`'s allocator.
    pub fn belongs_to(&self, owner: &dyn BufferOwner) -> bool {
        std::ptr::eq(self.owner.allocator(), owner.allocator())
    }

    /// Frees the buffer now, reporting what a drop would swallow.
    pub fn free(mut self) -> Result<()> {
        match self.block.take() {
            Some(block) => release(&*self.owner, block, self.uses.load(Ordering::Relaxed)),
            None => Ok(()),
        }
    }
}

/// Frees `block`, first recording a marker on every lane in `uses`. If a marker
/// cannot be had, the block is parked behind one that never completes.
fn release(owner: &dyn BufferOwner, block: Block, uses: u64) -> Result<()> {
    let mut others = uses & !(1u64 << block.lane());
    let mut markers: Vec<Box<dyn PendingUse>> = Vec::new();
    let mut first_err = None;
    while others != 0 {
        let lane = others.trailing_zeros() as usize;
        others &= others - 1;
        let got = catch_unwind(AssertUnwindSafe(|| owner.pending_on(lane))).unwrap_or_else(|_| {
            Err(Error::InvalidArgument(format!(
                "recording a marker on lane {lane} panicked"
            )))
        });
        match got {
            Ok(m) => markers.push(m),
            Err(e) => {
                markers.push(Box::new(Never { lane }));
                first_err.get_or_insert(e);
            }
        }
    }
    owner.release(block, markers)?;
    first_err.map_or(Ok(()), Err)
}

/// Stands in for a marker that could not be recorded: never done, so the block is
/// never reused while that lane might still use it.
struct Never {
    lane: usize,
}

impl PendingUse for Never {
    fn is_done(&self) -> Result<bool> {
        Ok(false)
    }
    fn wait(&self) -> Result<()> {
        Err(Error::InvalidArgument(format!(
            "no marker could be recorded on lane {} when the block was freed; it stays parked",
            self.lane
        )))
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            if release(&*self.owner, block, self.uses.load(Ordering::Relaxed)).is_err() {
                self.owner.allocator().note_free_error();
            }
        }
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.block {
            Some(b) => f
                .debug_struct("Buffer")
                .field("ptr", &b.ptr())
                .field("len", &b.requested())
                .field("lane", &b.lane())
                .field("uses", &self.uses())
                .finish(),
            None => f.write_str("Buffer(freed)"),
        }
    }
}
