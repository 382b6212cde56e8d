//! [`Allocator`]: the stream-ordered caching allocator of one device (see the
//! [module docs](super) for the policy), and the raw [`Block`]s it hands out.

use super::block::{self, Grant, LaneCache, PendingUse};
use super::size::{round_size, segment_size, tight_segment_size, Pool};
use super::stats::{self, AllocStats, SegmentInfo};
use crate::backend::{Backend, DevicePtr};
use crate::sync::{lock, Arc, Mutex, Ordering};
use crate::{Error, Result};

/// Called with a lane index before segments of that lane go back to the backend: it
/// must return only once all work enqueued so far on the lane has finished (an error
/// keeps the segments cached).
pub type ReleaseFence = Box<dyn Fn(usize) -> Result<()> + Send + Sync>;

/// The allocator's settings.
#[derive(Clone, Debug)]
pub struct AllocConfig {
    /// Most bytes the allocator may hold from the backend (`None`: no limit).
    /// Changeable later with [`Allocator::set_limit`].
    pub limit: Option<usize>,
    /// Fault injection: the probability (0..=1) that an allocation fails with
    /// [`Error::Injected`] before touching anything.
    pub inject_oom: Option<f64>,
    /// Seed of the injector's pseudo-random sequence (the n-th draw is a hash of
    /// seed and n, so a single-threaded run fails the same requests every time).
    pub seed: u64,
}

impl Default for AllocConfig {
    fn default() -> Self {
        AllocConfig {
            limit: None,
            inject_oom: None,
            seed: 0x6c61_6e65_7321,
        }
    }
}

/// A block handed out by [`Allocator::alloc`]. Not `Clone`: it is freed once, with
/// [`Allocator::free`] (or owned by a [`Buffer`], which frees it on drop).
/// Dropping a `Block` without freeing it leaks the block (never its memory's safety).
#[derive(Debug)]
#[must_use = "a block that is not freed stays allocated"]
pub struct Block {
    id: BlockId,
    ptr: DevicePtr,
    size: usize,
    requested: usize,
}

impl Block {
    /// The block's address.
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }
    /// The bytes the block occupies: the request rounded up to 512, or a little more
    /// when the rest of the free block it came from was too small to split off.
    pub fn size(&self) -> usize {
        self.size
    }
    /// The bytes that were requested.
    pub fn requested(&self) -> usize {
        self.requested
    }
    /// The home lane.
    pub fn lane(&self) -> usize {
        self.id.lane as usize
    }
    /// A copyable name for this hand-out of the block.
    pub fn id(&self) -> BlockId {
        self.id
    }
}

/// Names one hand-out of a block: the allocator, home lane, slot and generation.
/// It stops resolving ([`Allocator::resolve`]) once the block is freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockId {
    allocator: usize,
    lane: u32,
    slot: u32,
    generation: u64,
}

/// Deterministic fault injection, switchable at run time.
struct Injector {
    /// A draw below this fails; 0 turns injection off. Written by
    /// [`Allocator::set_inject_oom`] (any thread), read by every `alloc` (Relaxed:
    /// a switch need not be ordered with other memory).
    threshold: crate::sync::AtomicU64,
    /// Seed of the draw sequence (fixed at construction).
    seed: u64,
}

fn inject_threshold(p: Option<f64>) -> u64 {
    match p {
        Some(p) if p >= 1.0 => u64::MAX,
        Some(p) if p > 0.0 => (p * u64::MAX as f64) as u64,
        _ => 0,
    }
}

/// One lane's cache, on its own cache lines so lanes do not false-share.
#[repr(align(128))]
struct LaneSlot {
    cache: Mutex<LaneCache>,
}

/// The stream-ordered caching allocator of one device. See the [module docs](super).
pub struct Allocator {
    backend: Arc<dyn Backend>,
    device: String,
    lanes: Box<[LaneSlot]>,
    counters: stats::Counters,
    injector: Injector,
    fence: ReleaseFence,
}

impl Allocator {
    /// An allocator over `backend` for lanes `0..lanes`. Before releasing segments it
    /// calls `backend.synchronize()`; a device whose backend does not wait for its
    /// lanes there should use [`Allocator::with_release_fence`].
    ///
    /// # Panics
    /// If `lanes` is 0 or more than 64.
    pub fn new(backend: Arc<dyn Backend>, lanes: usize, config: AllocConfig) -> Self {
        let b = backend.clone();
        Self::with_release_fence(backend, lanes, config, Box::new(move |_| b.synchronize()))
    }

    /// An allocator whose segments of lane `l` go back to the backend only after
    /// `fence(l)` returned `Ok` (all work enqueued so far on lane `l` has finished).
    ///
    /// # Panics
    /// If `lanes` is 0 or more than 64.
    pub fn with_release_fence(
        backend: Arc<dyn Backend>,
        lanes: usize,
        config: AllocConfig,
        fence: ReleaseFence,
    ) -> Self {
        assert!(
            (1..=64).contains(&lanes),
            "an allocator serves 1 to 64 lanes, not {lanes}"
        );
        let injector = Injector {
            threshold: crate::sync::AtomicU64::new(inject_threshold(config.inject_oom)),
            seed: config.seed,
        };
        Allocator {
            device: backend.kind().to_string(),
            backend,
            lanes: (0..lanes)
                .map(|_| LaneSlot {
                    cache: Mutex::new(LaneCache::default()),
                })
                .collect(),
            counters: stats::Counters::new(config.limit),
            injector,
            fence,
        }
    }

    /// Switches fault injection: from now on a fraction `p` (0..=1) of allocations
    /// fail with [`Error::Injected`] before touching anything; `None` turns it off.
    /// The draw sequence continues from where it was (deterministic per seed).
    pub fn set_inject_oom(&self, p: Option<f64>) {
        self.injector
            .threshold
            .store(inject_threshold(p), Ordering::Relaxed);
    }

    /// The number of lanes served.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The device name used in errors (`cpu`, `cuda:0`).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The byte limit on reserved memory.
    pub fn limit(&self) -> Option<usize> {
        self.counters.limit()
    }

    /// Changes the byte limit. Memory already reserved above a lower limit is kept
    /// until it is released (by `empty_cache` or out-of-memory handling).
    pub fn set_limit(&self, limit: Option<usize>) {
        self.counters
            .limit
            .store(limit.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    fn id(&self) -> usize {
        self.lanes.as_ptr() as usize
    }

    fn cache(&self, lane: usize) -> crate::sync::MutexGuard<'_, LaneCache> {
        lock(&self.lanes[lane].cache)
    }

    /// Allocates `bytes` (rounded up to 512) for use on `lane`.
    ///
    /// Errors: [`Error::NoSuchLane`], [`Error::Injected`] (fault injection),
    /// [`Error::OutOfMemory`] after parked blocks were waited for, cached segments
    /// released and the request retried once; any other backend error as is.
    pub fn alloc(&self, lane: usize, bytes: usize) -> Result<Block> {
        if lane >= self.lanes.len() {
            return Err(Error::NoSuchLane {
                device: self.device.clone(),
                lane,
                lanes: self.lanes.len(),
            });
        }
        let Some(size) = round_size(bytes) else {
            return Err(self.oom(bytes));
        };
        let threshold = self.injector.threshold.load(Ordering::Relaxed);
        if threshold > 0 {
            let n = self.counters.inject_draws.fetch_add(1, Ordering::Relaxed);
            if splitmix64(self.injector.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) < threshold {
                self.counters.injected.fetch_add(1, Ordering::Relaxed);
                return Err(Error::Injected(format!(
                    "allocation of {bytes} bytes failed (injected oom)"
                )));
            }
        }
        let pool = Pool::of_request(size);
        if let Some(g) = self.take_cached(lane, pool, size, true) {
            return Ok(self.block(lane, g, bytes));
        }
        match self.grow(lane, size) {
            Ok(g) => return Ok(self.block(lane, g, bytes)),
            Err(Error::BackendOutOfMemory { .. }) => {}
            Err(e) => return Err(e),
        }
        // Out of memory: reclaim everything reclaimable on every lane, retry once.
        self.reclaim(true);
        if let Some(g) = self.take_cached(lane, pool, size, false) {
            return Ok(self.block(lane, g, bytes));
        }
        match self.grow(lane, size) {
            Ok(g) => Ok(self.block(lane, g, bytes)),
            Err(Error::BackendOutOfMemory { .. }) => Err(self.oom(size)),
            Err(e) => Err(e),
        }
    }

    /// Allocates `bytes` on `lane` while the lane is capturing a graph: from the
    /// lane's cache, else from a new segment, never by waiting for other lanes or
    /// releasing cached segments (both would synchronize lanes, which a capture
    /// forbids). Fails with [`Error::OutOfMemory`] where a normal allocation would
    /// have reclaimed memory first.
    pub(crate) fn alloc_captured(&self, lane: usize, bytes: usize) -> Result<Block> {
        if lane >= self.lanes.len() {
            return Err(Error::NoSuchLane {
                device: self.device.clone(),
                lane,
                lanes: self.lanes.len(),
            });
        }
        let Some(size) = round_size(bytes) else {
            return Err(self.oom(bytes));
        };
        let pool = Pool::of_request(size);
        let cached = {
            let mut cache = self.cache(lane);
            let got = cache.take_best_fit(pool, size);
            match got {
                Some(_) => cache.counters.cache_hits += 1,
                None => cache.counters.cache_misses += 1,
            }
            got
        };
        if let Some(g) = cached {
            return Ok(self.block(lane, g, bytes));
        }
        match self.grow(lane, size) {
            Ok(g) => Ok(self.block(lane, g, bytes)),
            Err(Error::BackendOutOfMemory { .. }) => Err(self.oom(size)),
            Err(e) => Err(e),
        }
    }

    /// The handle of a grant (already counted in its lane's counters).
    #[inline]
    fn block(&self, lane: usize, g: Grant, requested: usize) -> Block {
        let id = BlockId {
            allocator: self.id(),
            lane: lane as u32,
            slot: g.slot,
            generation: g.generation,
        };
        Block {
            id,
            ptr: g.ptr,
            size: g.size,
            requested,
        }
    }

    /// A cached block of `lane`, after releasing parked blocks whose markers are done.
    #[inline]
    fn take_cached(&self, lane: usize, pool: Pool, size: usize, count_miss: bool) -> Option<Grant> {
        let mut cache = self.cache(lane);
        if !cache.parked.is_empty() {
            cache.poll_parked();
        }
        let got = cache.take_best_fit(pool, size);
        match got {
            Some(_) => cache.counters.cache_hits += 1,
            None if count_miss => cache.counters.cache_misses += 1,
            None => {}
        }
        got
    }

    /// A new segment for `lane`, with `size` bytes of it handed out. A medium request
    /// whose 20 MiB segment is refused tries a segment of its own size. Fails with
    /// `BackendOutOfMemory` when the limit or the backend refuses.
    fn grow(&self, lane: usize, size: usize) -> Result<Grant> {
        let refused = Error::BackendOutOfMemory {
            device: String::new(),
            bytes: size,
        };
        let seg = segment_size(size).ok_or(refused)?;
        let pool = Pool::of_request(size);
        let (ptr, seg) = match self.new_segment(seg) {
            Ok(p) => (p, seg),
            Err(Error::BackendOutOfMemory { .. }) if pool == Pool::Large => {
                match tight_segment_size(size).filter(|t| *t < seg) {
                    Some(tight) => (self.new_segment(tight)?, tight),
                    None => {
                        return Err(Error::BackendOutOfMemory {
                            device: String::new(),
                            bytes: seg,
                        })
                    }
                }
            }
            Err(e) => return Err(e),
        };
        Ok(self.cache(lane).add_segment(ptr.0, seg, pool, size))
    }

    /// Reserves `seg` bytes under the limit and takes them from the backend.
    fn new_segment(&self, seg: usize) -> Result<DevicePtr> {
        if !self.counters.try_reserve(seg) {
            return Err(Error::BackendOutOfMemory {
                device: String::new(),
                bytes: seg,
            });
        }
        match self.backend.alloc(seg) {
            Ok(p) => {
                self.counters.segments.fetch_add(1, Ordering::Relaxed);
                self.counters.backend_allocs.fetch_add(1, Ordering::Relaxed);
                Ok(p)
            }
            Err(e) => {
                self.counters.unreserve(seg);
                Err(e)
            }
        }
    }

    /// Counts and describes an out-of-memory failure. Locks every lane (to sum the
    /// live bytes): call it with no lane lock held.
    fn oom(&self, requested: usize) -> Error {
        self.counters.oom_events.fetch_add(1, Ordering::Relaxed);
        Error::OutOfMemory {
            device: self.device.clone(),
            requested,
            allocated: self.stats().allocated_bytes,
            reserved: self.counters.reserved.load(Ordering::Relaxed),
            limit: self
                .limit()
                .map_or_else(|| "none".to_string(), |l| format!("{l} bytes")),
        }
    }

    /// Frees `block` into its home lane. With no `pending` markers it is reusable at
    /// once (by later work on that lane); otherwise it is parked until every marker
    /// reports done.
    ///
    /// Fails with [`Error::StaleBuffer`] if the block does not belong to this
    /// allocator (then nothing is touched).
    pub fn free(&self, block: Block, pending: Vec<Box<dyn PendingUse>>) -> Result<()> {
        let id = block.id;
        if id.allocator != self.id() || id.lane as usize >= self.lanes.len() {
            return Err(Error::StaleBuffer(format!(
                "a block of another allocator was freed into {}'s allocator",
                self.device
            )));
        }
        let mut cache = self.cache(id.lane as usize);
        if cache.live_size(id.slot, id.generation).is_none() {
            return Err(Error::StaleBuffer(format!(
                "block {}#{} of lane {} is not live (freed twice?)",
                id.slot, id.generation, id.lane
            )));
        }
        if pending.is_empty() {
            cache.release_live(id.slot);
        } else {
            cache.park(id.slot, pending);
        }
        Ok(())
    }

    /// The address and rounded size of the block `id` names, or
    /// [`Error::StaleBuffer`] once that hand-out has been freed.
    pub fn resolve(&self, id: BlockId) -> Result<(DevicePtr, usize)> {
        if id.allocator == self.id() && (id.lane as usize) < self.lanes.len() {
            let cache = self.cache(id.lane as usize);
            if let Some(size) = cache.live_size(id.slot, id.generation) {
                return Ok((DevicePtr(cache.addr(id.slot)), size));
            }
        }
        Err(Error::StaleBuffer(format!(
            "block {}#{} of lane {} was freed (its memory may belong to a new owner)",
            id.slot, id.generation, id.lane
        )))
    }

    /// Waits for every parked block's markers and gives every wholly free segment
    /// back to the backend (after the release fence of its lane). Returns the bytes
    /// released.
    pub fn empty_cache(&self) -> usize {
        self.reclaim(true)
    }

    /// Releases parked blocks (waiting for their markers if `force`) and every free
    /// segment, lane by lane, never holding a lane's lock while waiting.
    fn reclaim(&self, force: bool) -> usize {
        let mut released = 0;
        for lane in 0..self.lanes.len() {
            if force {
                let mut taken = std::mem::take(&mut self.cache(lane).parked);
                for p in &mut taken {
                    p.markers.retain(|m| m.wait().is_err());
                }
                let mut cache = self.cache(lane);
                for p in taken {
                    if p.markers.is_empty() {
                        cache.release_parked(p.slot);
                    } else {
                        cache.parked.push(p);
                    }
                }
            }
            let segs = {
                let mut cache = self.cache(lane);
                cache.poll_parked();
                cache.take_free_segments()
            };
            if segs.is_empty() {
                continue;
            }
            if (self.fence)(lane).is_err() {
                let mut cache = self.cache(lane);
                for seg in segs {
                    cache.restore_segment(seg);
                }
                continue;
            }
            for block::Segment { addr, size, .. } in segs {
                // SAFETY: the segment came from `backend.alloc(size)`, it was removed
                // from the lane's cache (no block of it is live or parked, and none can
                // be handed out again), and the fence saw all work on its lane finish;
                // other lanes' uses were covered by markers that have completed.
                unsafe { self.backend.free(DevicePtr(addr), size) };
                self.counters.unreserve(size);
                self.counters.segments.fetch_sub(1, Ordering::Relaxed);
                self.counters.backend_frees.fetch_add(1, Ordering::Relaxed);
                released += size;
            }
        }
        released
    }

    /// The allocator's figures (see [`AllocStats`] on consistency).
    pub fn stats(&self) -> AllocStats {
        let mut s = self.counters.global_stats();
        for lane in 0..self.lanes.len() {
            s.add_lane(&self.cache(lane).counters);
        }
        s
    }

    /// Every segment with its blocks, lane by lane, in address order.
    pub fn snapshot(&self) -> Vec<SegmentInfo> {
        let mut out = Vec::new();
        for lane in 0..self.lanes.len() {
            self.cache(lane).snapshot(lane, &mut out);
        }
        out
    }

    /// Counts an error that a buffer's drop had to swallow.
    pub(crate) fn note_free_error(&self) {
        self.counters.free_errors.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Allocator {
    /// Waits for parked blocks and releases every free segment. Segments that still
    /// hold live blocks (leaked [`Block`]s) or blocks whose markers failed are left
    /// to the backend, never freed under a possible user.
    fn drop(&mut self) {
        self.reclaim(true);
    }
}

impl std::fmt::Debug for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocator")
            .field("device", &self.device)
            .field("lanes", &self.lanes.len())
            .field("stats", &self.stats())
            .finish()
    }
}

/// One step of the splitmix64 generator: a well-mixed hash of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
