//! The stream-ordered caching allocator.
//!
//! Device memory is taken from the backend in *segments* and cut into *blocks*.
//! Every lane has its own cache behind its own mutex: the segments created for that
//! lane, its free blocks and its parked blocks. A block always returns to the lane
//! that allocated it (its *home lane*), so the hot path (an allocation or a free on a
//! lane) locks only that lane and writes only that lane's state (its counters
//! included, summed by [`Allocator::stats`]); the backend, the byte limit, the
//! global counters and the other lanes are involved only on a miss, on
//! out-of-memory and in [`Allocator::empty_cache`].
//!
//! - Requests are rounded up to 512 bytes. Requests up to 1 MiB come from 2 MiB
//!   segments, up to 10 MiB from 20 MiB segments; larger ones get a segment of their
//!   own, rounded up to 2 MiB. Blocks split and merge within their segment and the
//!   smallest adequate free block is used (lowest address among equals).
//! - Stream-ordered reuse: a freed block is safe for later work on its home lane, so
//!   it is free again at once. A block that other lanes used is freed with one
//!   [`PendingUse`] marker per such lane and *parked*; it is reused only once every
//!   marker reports done (polled on the lane's next allocations, waited for on
//!   out-of-memory and in `empty_cache`).
//! - Each hand-out of a block gets a new generation, so a stale [`BlockId`] never
//!   matches the block's next owner ([`crate::Error::StaleBuffer`]).
//! - Out of memory (the backend refuses, or the byte limit would be passed): wait for
//!   parked blocks and release every unused cached segment on all lanes, retry once,
//!   then fail with [`crate::Error::OutOfMemory`] naming the sizes.
//!
//! [`Buffer`] is the safe RAII handle built on [`Allocator`]'s raw blocks.
//!
//! ```
//! use std::sync::Arc;
//! use lanes::alloc::{AllocConfig, Allocator};
//! use lanes::backend::host::HostBackend;
//!
//! let backend = Arc::new(HostBackend::new());
//! let alloc = Allocator::new(backend.clone(), 2, AllocConfig::default());
//! let a = alloc.alloc(0, 1000)?; // rounded to 1024 bytes, from a new 2 MiB segment
//! assert_eq!(a.size(), 1024);
//! let addr = a.ptr();
//! alloc.free(a, Vec::new())?; // no other lane used it: cached at once
//! let b = alloc.alloc(0, 1024)?;
//! assert_eq!(b.ptr(), addr); // the same lane reuses it
//! let s = alloc.stats();
//! assert_eq!((s.cache_hits, s.cache_misses, s.allocated_bytes), (1, 1, 1024));
//! alloc.free(b, Vec::new())?;
//! alloc.empty_cache();
//! assert_eq!(backend.bytes_in_use(), 0);
//! # Ok::<(), lanes::Error>(())
//! ```

mod allocator;
mod block;
mod buffer;
mod graph_pool;
mod index;
mod size;
mod stats;

#[cfg(all(test, any(lanes_loom, lanes_shuttle)))]
mod scenarios;

pub use self::allocator::{AllocConfig, Allocator, Block, BlockId, ReleaseFence};
pub use self::block::PendingUse;
pub use self::buffer::{Buffer, BufferOwner};
pub use self::graph_pool::GraphPool;
pub use self::stats::{AllocStats, BlockInfo, BlockState, SegmentInfo};
