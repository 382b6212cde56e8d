//! A graph's pool: the blocks allocated while a lane captured a graph.
//!
//! A captured graph replays kernels that read and write fixed addresses, so every
//! block allocated during the capture must stay out of the lane's cache for as long
//! as the graph can be launched, even when its [`super::Buffer`] handle is dropped
//! inside the capture closure (an intermediate activation). The buffers of a capture
//! are freed into its `GraphPool`, which keeps their blocks; when the graph is
//! dropped the pool is closed and every block goes back to the home lane's cache.
//!
//! That return needs no host synchronization: a graph is launched only on the lane
//! it was captured on, the block's home lane, so any later work that reuses a block
//! is ordered after the graph's last launch (the allocator's ordinary
//! stream-ordered reuse). Blocks that other lanes used carry their markers with them.

use super::allocator::{Allocator, Block};
use super::block::PendingUse;
use crate::sync::{lock, Arc, AtomicUsize, Mutex, Ordering};
use crate::Result;

/// A freed block with the markers of the other lanes that used it.
type Kept = (Block, Vec<Box<dyn PendingUse>>);

/// The blocks of one captured graph. See the [module docs](self).
pub struct GraphPool {
    allocator: Arc<Allocator>,
    /// `Some` while the graph lives; `None` once closed (later frees go straight to
    /// the allocator).
    kept: Mutex<Option<Vec<Kept>>>,
    /// Bytes of every block allocated through this pool and not yet given back.
    bytes: AtomicUsize,
}

impl GraphPool {
    /// An open pool over `allocator`.
    pub fn new(allocator: Arc<Allocator>) -> Self {
        GraphPool {
            allocator,
            kept: Mutex::new(Some(Vec::new())),
            bytes: AtomicUsize::new(0),
        }
    }

    /// The allocator the pool's blocks come from and go back to.
    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    /// Allocates `bytes` on `lane`, which is capturing a graph
    /// (see `Allocator::alloc_captured`).
    pub fn alloc(&self, lane: usize, bytes: usize) -> Result<Block> {
        let block = self.allocator.alloc_captured(lane, bytes)?;
        self.bytes.fetch_add(block.size(), Ordering::Relaxed);
        Ok(block)
    }

    /// Takes back a freed block: kept while the pool is open, else freed at once.
    pub fn keep(&self, block: Block, markers: Vec<Box<dyn PendingUse>>) -> Result<()> {
        let mut kept = lock(&self.kept);
        match kept.as_mut() {
            Some(v) => {
                v.push((block, markers));
                Ok(())
            }
            None => {
                drop(kept);
                self.give_back(block, markers)
            }
        }
    }

    /// Bytes allocated through this pool and not yet returned to the allocator.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Closes the pool: every kept block goes back to the allocator, and blocks
    /// freed from now on go back at once. Returns the first error met (the other
    /// blocks are still returned). Closing twice is harmless.
    pub fn close(&self) -> Result<()> {
        let taken = lock(&self.kept).take().unwrap_or_default();
        let mut first = Ok(());
        for (block, markers) in taken {
            if let Err(e) = self.give_back(block, markers) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Frees a block into the allocator; a failure (which would mean a double free)
    /// is also counted in the allocator's `free_errors`.
    fn give_back(&self, block: Block, markers: Vec<Box<dyn PendingUse>>) -> Result<()> {
        let size = block.size();
        if let Err(e) = self.allocator.free(block, markers) {
            self.allocator.note_free_error();
            return Err(e);
        }
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for GraphPool {
    fn drop(&mut self) {
        // The graph closes its pool; a pool dropped unclosed (a failed capture's)
        // returns its blocks here. Errors cannot be reported from a drop; a block
        // that could not be freed stays allocated (never reused under a user).
        let _ = self.close();
    }
}

impl std::fmt::Debug for GraphPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphPool")
            .field("bytes", &self.bytes())
            .finish()
    }
}

#[cfg(all(test, not(any(lanes_loom, lanes_shuttle))))]
mod tests {
    use super::*;
    use crate::alloc::AllocConfig;
    use crate::backend::host::HostBackend;

    #[test]
    fn kept_blocks_stay_reserved_until_close_and_later_frees_go_straight_back() {
        let alloc = Arc::new(Allocator::new(
            Arc::new(HostBackend::new()),
            1,
            AllocConfig::default(),
        ));
        let pool = GraphPool::new(alloc.clone());
        let a = pool.alloc(0, 1000).expect("a");
        let (a_ptr, a_size) = (a.ptr(), a.size());
        pool.keep(a, Vec::new()).expect("keep");
        // Freed into the pool: not reusable by other work.
        let other = alloc.alloc(0, 1000).expect("other");
        assert_ne!(other.ptr(), a_ptr);
        alloc.free(other, Vec::new()).expect("free");
        let b = pool.alloc(0, 1000).expect("b");
        assert_eq!(pool.bytes(), 2 * a_size);
        pool.close().expect("close");
        assert_eq!(pool.bytes(), a_size, "b is still out");
        assert_eq!(alloc.stats().allocated_bytes, a_size);
        pool.keep(b, Vec::new())
            .expect("after close: freed at once");
        assert_eq!((pool.bytes(), alloc.stats().allocated_bytes), (0, 0));
        pool.close().expect("closing twice is harmless");
    }
}
