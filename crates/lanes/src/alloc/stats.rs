//! What the allocator reports: counters, [`AllocStats`] and the segment snapshot.
//!
//! Counters that change on every allocation or free (live bytes and blocks, the
//! lane's high-water mark, hits and misses) live in each lane's cache, under that
//! lane's mutex, so the hot path writes no shared cache line: `stats` sums them lane
//! by lane. Counters of the slow paths (segments, backend calls, out-of-memory,
//! fault injection, free errors) are global atomics.

use crate::sync::{AtomicU64, AtomicUsize, Ordering};

/// The allocator's figures at one moment.
///
/// The global counters (reserved bytes, segments, backend calls, failures) are read
/// atomically; the per-lane ones (`allocated_bytes`, `peak_allocated`,
/// `active_blocks`, `deferred_blocks`, hits and misses) are read lane by lane, each
/// under its lane's lock, and summed, so under concurrent traffic a sum may mix
/// lanes' figures from slightly different instants. With no allocation in flight
/// they add up exactly:
/// `allocated_bytes` is the sum of the rounded sizes of live blocks and
/// `reserved_bytes` the sum of the segment sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Bytes in live blocks (rounded sizes), handed out and not yet freed.
    pub allocated_bytes: usize,
    /// Bytes held from the backend in segments (live, cached and parked blocks).
    pub reserved_bytes: usize,
    /// Live blocks.
    pub active_blocks: usize,
    /// The sum over lanes of each lane's own high-water mark: the most bytes
    /// (rounded sizes) that lane ever had in live blocks at once. Each lane's mark is
    /// exact; the sum is an upper bound on the highest `allocated_bytes` the
    /// allocator ever held at one instant, and equals it when only one lane
    /// allocates, or when every lane reached its mark at the same time. It never
    /// decreases, and it is never below `allocated_bytes`. (Kept per lane so the hot
    /// path writes no shared counter; an exact global peak would need one.)
    pub peak_allocated: usize,
    /// Allocations served from a cached block.
    pub cache_hits: u64,
    /// Allocations that needed a new segment from the backend.
    pub cache_misses: u64,
    /// Segments held now.
    pub segments: usize,
    /// Freed blocks parked until other lanes' markers complete.
    pub deferred_blocks: usize,
    /// Backend allocations ever made (one per segment).
    pub backend_allocs: u64,
    /// Backend frees ever made.
    pub backend_frees: u64,
    /// Requests that failed with [`crate::Error::OutOfMemory`].
    pub oom_events: u64,
    /// Requests failed on purpose by `AllocConfig::inject_oom`.
    pub injected_failures: u64,
    /// Errors swallowed while freeing (a buffer's drop could not get a marker for a
    /// lane that used it; the block then stays parked for good).
    pub free_errors: u64,
    /// The byte limit on `reserved_bytes` (`None`: unlimited).
    pub limit: Option<usize>,
}

/// What a block of a segment is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockState {
    /// Cached: free for the next allocation on the segment's lane.
    Free,
    /// Handed out.
    Live,
    /// Freed, but parked until markers on other lanes complete.
    Deferred,
}

/// One block of a segment, in address order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// Offset from the segment's base address.
    pub offset: usize,
    /// Size in bytes (a multiple of 512).
    pub size: usize,
    /// What the block is doing.
    pub state: BlockState,
}

/// One segment (one backend allocation) and its blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The lane whose cache owns the segment.
    pub lane: usize,
    /// The base address.
    pub addr: u64,
    /// Size in bytes.
    pub size: usize,
    /// The blocks, covering the segment in address order.
    pub blocks: Vec<BlockInfo>,
}

/// Per-lane counters. They live in the lane's cache (the lane cache)
/// and are written only by the thread holding that lane's mutex: `alloc` and
/// `free` of a block of the lane (any thread may do that, but always under the
/// lock), and parked-block releases. `Allocator::stats` reads them under the same
/// lock and sums them over lanes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LaneCounters {
    /// Bytes (rounded sizes) in live blocks of this lane: raised when a block is
    /// handed out, lowered when it is freed (released or parked).
    pub(crate) allocated: usize,
    /// The highest `allocated` this lane ever had; raised next to `allocated`,
    /// never lowered.
    pub(crate) peak: usize,
    /// Live blocks of this lane.
    pub(crate) active_blocks: usize,
    /// Allocations on this lane served from a cached block.
    pub(crate) cache_hits: u64,
    /// Allocations on this lane that found no cached block (before growing).
    pub(crate) cache_misses: u64,
    /// Freed blocks of this lane parked behind other lanes' markers.
    pub(crate) deferred_blocks: usize,
}

impl LaneCounters {
    /// Counts a block of `bytes` as handed out and raises the lane's high-water mark.
    #[inline]
    pub(crate) fn add_live(&mut self, bytes: usize) {
        self.active_blocks += 1;
        self.allocated += bytes;
        if self.allocated > self.peak {
            self.peak = self.allocated;
        }
    }

    /// Counts a live block of `bytes` as freed (released or parked).
    #[inline]
    pub(crate) fn sub_live(&mut self, bytes: usize) {
        self.active_blocks -= 1;
        self.allocated -= bytes;
    }
}

/// Global counters, shared by all lanes. None is written on the hot path (an
/// allocation served from the lane's cache, or a free into it): only on a miss,
/// in out-of-memory handling, in `empty_cache`, with fault injection switched on,
/// and on a swallowed free error. All are statistics or budget words: no other
/// memory is published through them, so every access is `Relaxed`.
pub(crate) struct Counters {
    /// Bytes held in segments. Reserved by compare-and-swap against the limit before
    /// a backend allocation (and given back if it fails); lowered after a backend
    /// free. Any thread on a miss, in OOM handling or in `empty_cache`.
    pub(crate) reserved: AtomicUsize,
    /// The byte limit on `reserved` (`usize::MAX`: none). Written by `set_limit`.
    pub(crate) limit: AtomicUsize,
    /// Segments held now. Written next to `reserved`.
    pub(crate) segments: AtomicUsize,
    /// Backend allocations ever made. Written on a miss.
    pub(crate) backend_allocs: AtomicU64,
    /// Backend frees ever made. Written when segments are released.
    pub(crate) backend_frees: AtomicU64,
    /// Requests that ended in `OutOfMemory`. Written by the failing `alloc`.
    pub(crate) oom_events: AtomicU64,
    /// Requests failed by fault injection. Written by the failing `alloc`.
    pub(crate) injected: AtomicU64,
    /// Draws made by the fault injector: `alloc` takes the next index with
    /// `fetch_add` and hashes it with the seed (only while injection is on; then
    /// every `alloc` writes it).
    pub(crate) inject_draws: AtomicU64,
    /// Errors swallowed while freeing. Written by `Buffer`'s drop.
    pub(crate) free_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn new(limit: Option<usize>) -> Self {
        Counters {
            reserved: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit.unwrap_or(usize::MAX)),
            segments: AtomicUsize::new(0),
            backend_allocs: AtomicU64::new(0),
            backend_frees: AtomicU64::new(0),
            oom_events: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            inject_draws: AtomicU64::new(0),
            free_errors: AtomicU64::new(0),
        }
    }

    /// Takes `bytes` of the reserve budget if the limit allows it.
    pub(crate) fn try_reserve(&self, bytes: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let mut cur = self.reserved.load(Ordering::Relaxed);
        loop {
            let next = match cur.checked_add(bytes) {
                Some(n) if n <= limit => n,
                _ => return false,
            };
            match self.reserved.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back budget taken by [`Counters::try_reserve`].
    pub(crate) fn unreserve(&self, bytes: usize) {
        self.reserved.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(crate) fn limit(&self) -> Option<usize> {
        match self.limit.load(Ordering::Relaxed) {
            usize::MAX => None,
            n => Some(n),
        }
    }

    /// The global half of [`AllocStats`]; the caller adds the lanes' counters
    /// (`allocated_bytes`, `peak_allocated`, blocks, hits and misses).
    pub(crate) fn global_stats(&self) -> AllocStats {
        AllocStats {
            reserved_bytes: self.reserved.load(Ordering::Relaxed),
            segments: self.segments.load(Ordering::Relaxed),
            backend_allocs: self.backend_allocs.load(Ordering::Relaxed),
            backend_frees: self.backend_frees.load(Ordering::Relaxed),
            oom_events: self.oom_events.load(Ordering::Relaxed),
            injected_failures: self.injected.load(Ordering::Relaxed),
            free_errors: self.free_errors.load(Ordering::Relaxed),
            limit: self.limit(),
            ..AllocStats::default()
        }
    }
}

impl AllocStats {
    pub(crate) fn add_lane(&mut self, c: &LaneCounters) {
        self.allocated_bytes += c.allocated;
        self.peak_allocated += c.peak;
        self.active_blocks += c.active_blocks;
        self.cache_hits += c.cache_hits;
        self.cache_misses += c.cache_misses;
        self.deferred_blocks += c.deferred_blocks;
    }
}

impl std::fmt::Display for AllocStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "allocated {} B in {} blocks (peak {} B), reserved {} B in {} segments, \
             {} parked, hits {} / misses {}, backend allocs {} / frees {}, oom {}",
            self.allocated_bytes,
            self.active_blocks,
            self.peak_allocated,
            self.reserved_bytes,
            self.segments,
            self.deferred_blocks,
            self.cache_hits,
            self.cache_misses,
            self.backend_allocs,
            self.backend_frees,
            self.oom_events
        )
    }
}
