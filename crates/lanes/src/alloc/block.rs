//! Blocks and segments of one lane: the bookkeeping behind a lane's mutex.
//!
//! A segment is one backend allocation. It is cut into blocks that cover it without
//! gaps, linked in address order (`prev`/`next`), so a freed block merges with free
//! neighbours in O(1). Free blocks sit in one of two best-fit indexes (small and
//! large pool) keyed by `(size, addr)`. Everything here is plain data: the caller
//! holds the lane's mutex.

use super::index::{Bins, Entry};
use super::size::Pool;
use super::stats::{BlockInfo, BlockState, LaneCounters, SegmentInfo};
use crate::backend::DevicePtr;
use crate::Result;

/// A marker that says when another lane has finished with a freed block (an event
/// recorded on that lane at free time).
///
/// `is_done` runs, and a completed marker is dropped, while the allocator holds the
/// home lane's lock: neither may call back into the allocator. `wait` runs with no
/// allocator lock held.
pub trait PendingUse: Send + Sync {
    /// `true` once the lane's work before the marker has completed.
    fn is_done(&self) -> Result<bool>;
    /// Blocks until the lane's work before the marker has completed.
    fn wait(&self) -> Result<()>;
}

/// A "no block" link.
const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Free,
    Live,
    Deferred,
    /// The slot holds no block (recycled).
    Vacant,
}

/// One block (or a vacant slot).
#[derive(Debug)]
struct Node {
    addr: u64,
    size: usize,
    prev: u32,
    next: u32,
    pool: Pool,
    state: NodeState,
    /// Changes each time the block is handed out (a lane-wide counter, so no two
    /// hand-outs on a lane ever share one).
    generation: u64,
}

/// A segment of this lane.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Segment {
    pub(crate) addr: u64,
    pub(crate) size: usize,
    pub(crate) pool: Pool,
    /// The slot of the block at offset 0 (it never changes: merges keep the lower slot).
    head: u32,
}

/// A freed block waiting for markers on other lanes.
pub(crate) struct Parked {
    pub(crate) slot: u32,
    pub(crate) markers: Vec<Box<dyn PendingUse>>,
}

/// Where a block was handed out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grant {
    pub(crate) slot: u32,
    pub(crate) generation: u64,
    pub(crate) ptr: DevicePtr,
    /// The block's size: the rounded request, or more when the rest of the free
    /// block was too small to split off.
    pub(crate) size: usize,
}

/// A lane's segments, blocks, free indexes and parked blocks.
pub(crate) struct LaneCache {
    nodes: Vec<Node>,
    vacant: Vec<u32>,
    small: Bins,
    large: Bins,
    segments: Vec<Segment>,
    /// Parked blocks; a forced reclaim may take entries out while it waits.
    pub(crate) parked: Vec<Parked>,
    next_generation: u64,
    pub(crate) counters: LaneCounters,
}

impl Default for LaneCache {
    fn default() -> Self {
        LaneCache {
            nodes: Vec::new(),
            vacant: Vec::new(),
            small: Bins::small(),
            large: Bins::large(),
            segments: Vec::new(),
            parked: Vec::new(),
            next_generation: 0,
            counters: LaneCounters::default(),
        }
    }
}

impl LaneCache {
    /// Enters the free block at `slot` in its pool's index.
    #[inline]
    fn index(&mut self, slot: u32) {
        let n = &self.nodes[slot as usize];
        let e = Entry {
            size: n.size,
            addr: n.addr,
            slot,
        };
        match n.pool {
            Pool::Small => self.small.insert(e),
            Pool::Large => self.large.insert(e),
        }
    }

    /// Takes the free block at `slot` out of its pool's index.
    #[inline]
    fn unindex(&mut self, slot: u32) {
        let n = &self.nodes[slot as usize];
        let removed = match n.pool {
            Pool::Small => self.small.remove(n.size, n.addr),
            Pool::Large => self.large.remove(n.size, n.addr),
        };
        debug_assert_eq!(removed, Some(slot));
    }

    #[inline]
    fn new_node(&mut self, node: Node) -> u32 {
        match self.vacant.pop() {
            Some(slot) => {
                self.nodes[slot as usize] = node;
                slot
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    #[inline]
    fn vacate(&mut self, slot: u32) {
        self.nodes[slot as usize].state = NodeState::Vacant;
        self.vacant.push(slot);
    }

    /// Best fit: the smallest free block of `pool` holding `size`, lowest address
    /// first; split if the rest is worth keeping. Marks it live.
    #[inline]
    pub(crate) fn take_best_fit(&mut self, pool: Pool, size: usize) -> Option<Grant> {
        let e = match pool {
            Pool::Small => self.small.take_best_fit(size),
            Pool::Large => self.large.take_best_fit(size),
        }?;
        Some(self.hand_out(e.slot, size))
    }

    /// Adds a fresh segment of `pool` as one free block and hands out `size` bytes of it.
    pub(crate) fn add_segment(
        &mut self,
        addr: u64,
        seg_size: usize,
        pool: Pool,
        size: usize,
    ) -> Grant {
        let slot = self.insert_segment(addr, seg_size, pool);
        self.hand_out(slot, size)
    }

    /// Adds a segment as one free block (not indexed) and returns its slot.
    fn insert_segment(&mut self, addr: u64, size: usize, pool: Pool) -> u32 {
        let slot = self.new_node(Node {
            addr,
            size,
            prev: NIL,
            next: NIL,
            pool,
            state: NodeState::Free,
            generation: 0,
        });
        self.segments.push(Segment {
            addr,
            size,
            pool,
            head: slot,
        });
        slot
    }

    /// Marks the free block at `slot` (not in an index) live, splitting off the rest.
    #[inline]
    fn hand_out(&mut self, slot: u32, size: usize) -> Grant {
        let (addr, have, pool, next) = {
            let n = &self.nodes[slot as usize];
            debug_assert!(n.state == NodeState::Free && n.size >= size);
            (n.addr, n.size, n.pool, n.next)
        };
        if pool.should_split(have - size) {
            let rest_addr = addr + size as u64;
            let rest = self.new_node(Node {
                addr: rest_addr,
                size: have - size,
                prev: slot,
                next,
                pool,
                state: NodeState::Free,
                generation: 0,
            });
            if next != NIL {
                self.nodes[next as usize].prev = rest;
            }
            let n = &mut self.nodes[slot as usize];
            n.next = rest;
            n.size = size;
            self.index(rest);
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let n = &mut self.nodes[slot as usize];
        n.state = NodeState::Live;
        n.generation = generation;
        let size = n.size;
        self.counters.add_live(size);
        Grant {
            slot,
            generation,
            ptr: DevicePtr(addr),
            size,
        }
    }

    /// The size of the live block at `slot` with this generation, if it is one.
    #[inline]
    pub(crate) fn live_size(&self, slot: u32, generation: u64) -> Option<usize> {
        let n = self.nodes.get(slot as usize)?;
        (n.state == NodeState::Live && n.generation == generation).then_some(n.size)
    }

    /// The address of the live block at `slot` (checked with [`Self::live_size`]).
    pub(crate) fn addr(&self, slot: u32) -> u64 {
        self.nodes[slot as usize].addr
    }

    /// Parks the live block at `slot` until `markers` are done.
    pub(crate) fn park(&mut self, slot: u32, markers: Vec<Box<dyn PendingUse>>) {
        let n = &mut self.nodes[slot as usize];
        n.state = NodeState::Deferred;
        let size = n.size;
        self.counters.sub_live(size);
        self.counters.deferred_blocks += 1;
        self.parked.push(Parked { slot, markers });
    }

    /// Returns the live block at `slot` to the free index, merging with free neighbours.
    #[inline]
    pub(crate) fn release_live(&mut self, slot: u32) {
        let size = self.nodes[slot as usize].size;
        self.counters.sub_live(size);
        self.release(slot);
    }

    /// Returns a parked block (its markers are done) to the free index.
    pub(crate) fn release_parked(&mut self, slot: u32) {
        debug_assert_eq!(self.nodes[slot as usize].state, NodeState::Deferred);
        self.counters.deferred_blocks -= 1;
        self.release(slot);
    }

    #[inline]
    fn release(&mut self, mut slot: u32) {
        let prev = self.nodes[slot as usize].prev;
        if prev != NIL && self.nodes[prev as usize].state == NodeState::Free {
            self.unindex(prev);
            self.absorb_next(prev);
            slot = prev;
        } else {
            self.nodes[slot as usize].state = NodeState::Free;
        }
        let next = self.nodes[slot as usize].next;
        if next != NIL && self.nodes[next as usize].state == NodeState::Free {
            self.unindex(next);
            self.absorb_next(slot);
        }
        self.index(slot);
    }

    /// Merges the block after `slot` into it (the caller has unindexed both as needed).
    #[inline]
    fn absorb_next(&mut self, slot: u32) {
        let next = self.nodes[slot as usize].next;
        let (size, after) = {
            let m = &self.nodes[next as usize];
            (m.size, m.next)
        };
        let n = &mut self.nodes[slot as usize];
        n.size += size;
        n.next = after;
        n.state = NodeState::Free;
        if after != NIL {
            self.nodes[after as usize].prev = slot;
        }
        self.vacate(next);
    }

    /// Releases every parked block whose markers all report done; a marker that
    /// errors counts as not done. Returns how many were released.
    pub(crate) fn poll_parked(&mut self) -> usize {
        let mut released = 0;
        let mut i = 0;
        while i < self.parked.len() {
            let p = &mut self.parked[i];
            p.markers.retain(|m| !matches!(m.is_done(), Ok(true)));
            if p.markers.is_empty() {
                let slot = self.parked.swap_remove(i).slot;
                self.release_parked(slot);
                released += 1;
            } else {
                i += 1;
            }
        }
        released
    }

    /// Removes every segment that is one free block and returns them: the caller
    /// gives them back to the backend (or re-adds them).
    pub(crate) fn take_free_segments(&mut self) -> Vec<Segment> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.segments.len() {
            let seg = self.segments[i];
            let head = &self.nodes[seg.head as usize];
            if head.state == NodeState::Free && head.next == NIL {
                debug_assert_eq!(head.size, seg.size);
                self.unindex(seg.head);
                self.vacate(seg.head);
                out.push(self.segments.swap_remove(i));
            } else {
                i += 1;
            }
        }
        out
    }

    /// Re-adds a segment taken by [`Self::take_free_segments`] that could not be released.
    pub(crate) fn restore_segment(&mut self, seg: Segment) {
        let slot = self.insert_segment(seg.addr, seg.size, seg.pool);
        self.index(slot);
    }

    /// The lane's segments and blocks, in address order.
    pub(crate) fn snapshot(&self, lane: usize, out: &mut Vec<SegmentInfo>) {
        let mut segs: Vec<&Segment> = self.segments.iter().collect();
        segs.sort_by_key(|s| s.addr);
        for seg in segs {
            let mut blocks = Vec::new();
            let mut slot = seg.head;
            while slot != NIL {
                let n = &self.nodes[slot as usize];
                let state = match n.state {
                    NodeState::Free => BlockState::Free,
                    NodeState::Live => BlockState::Live,
                    NodeState::Deferred => BlockState::Deferred,
                    NodeState::Vacant => unreachable!("a vacant slot is never linked"),
                };
                blocks.push(BlockInfo {
                    offset: (n.addr - seg.addr) as usize,
                    size: n.size,
                    state,
                });
                slot = n.next;
            }
            out.push(SegmentInfo {
                lane,
                addr: seg.addr,
                size: seg.size,
                blocks,
            });
        }
    }
}
