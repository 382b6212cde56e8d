//! Best-fit indexes of free blocks, ordered by `(size, addr)`.
//!
//! The small pool (blocks of 512 B to 2 MiB, in 512-byte steps) uses exact-size
//! bins with a two-level bitmap: finding the smallest adequate size is two bit
//! scans, and each bin keeps its blocks sorted by address (lowest taken first). The
//! large pool, whose sizes are unbounded and whose traffic is light, uses a B-tree.
//! Both give the same answer: the smallest adequate block, lowest address among
//! equals. (The bins replace a B-tree on the hot path, where a B-tree insert or
//! remove cost more than the rest of an alloc+free pair together.)

use std::collections::BTreeMap;

use super::block::{ROUND, SMALL_SEGMENT};

/// Size classes of the small pool: class `k` holds blocks of `(k + 1) * 512` bytes.
const CLASSES: usize = SMALL_SEGMENT / ROUND;
/// Words of the bitmap over the classes.
const WORDS: usize = CLASSES.div_ceil(64);

/// A free block as the indexes see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) size: usize,
    pub(crate) addr: u64,
    pub(crate) slot: u32,
}

/// Exact-size bins for sizes up to [`SMALL_SEGMENT`].
pub(crate) struct SmallBins {
    /// `bins[k]`: free blocks of `(k + 1) * 512` bytes as `(addr, slot)`, sorted by
    /// *descending* address so the lowest is popped from the end. Allocated on first use.
    bins: Vec<Vec<(u64, u32)>>,
    /// Bit `k % 64` of `words[k / 64]`: bin `k` is not empty.
    words: [u64; WORDS],
    /// Bit `w`: `words[w]` is not zero.
    summary: u64,
}

const _: () = assert!(WORDS <= 64, "one summary word covers the bitmap");

impl Default for SmallBins {
    fn default() -> Self {
        SmallBins {
            bins: Vec::new(),
            words: [0; WORDS],
            summary: 0,
        }
    }
}

impl SmallBins {
    fn class(size: usize) -> usize {
        debug_assert!(size.is_multiple_of(ROUND) && size > 0 && size <= SMALL_SEGMENT);
        size / ROUND - 1
    }

    fn mark(&mut self, k: usize, nonempty: bool) {
        let (w, b) = (k / 64, k % 64);
        if nonempty {
            self.words[w] |= 1 << b;
            self.summary |= 1 << w;
        } else {
            self.words[w] &= !(1 << b);
            if self.words[w] == 0 {
                self.summary &= !(1 << w);
            }
        }
    }

    /// The first non-empty class at or above `k`.
    fn first_from(&self, k: usize) -> Option<usize> {
        if k >= CLASSES {
            return None;
        }
        let (w, b) = (k / 64, k % 64);
        let here = self.words[w] & (!0u64 << b);
        if here != 0 {
            return Some(w * 64 + here.trailing_zeros() as usize);
        }
        let above = if w + 1 >= 64 {
            0
        } else {
            self.summary & (!0u64 << (w + 1))
        };
        if above == 0 {
            return None;
        }
        let w = above.trailing_zeros() as usize;
        Some(w * 64 + self.words[w].trailing_zeros() as usize)
    }

    pub(crate) fn insert(&mut self, e: Entry) {
        if self.bins.is_empty() {
            self.bins = (0..CLASSES).map(|_| Vec::new()).collect();
        }
        let k = Self::class(e.size);
        let bin = &mut self.bins[k];
        if bin.is_empty() {
            bin.push((e.addr, e.slot));
            self.mark(k, true);
        } else {
            // Descending by address: the insertion point is after every larger address.
            let at = bin.partition_point(|&(a, _)| a > e.addr);
            bin.insert(at, (e.addr, e.slot));
        }
    }

    /// Removes the block of `size` at `addr`; returns its slot.
    pub(crate) fn remove(&mut self, size: usize, addr: u64) -> Option<u32> {
        let k = Self::class(size);
        let bin = self.bins.get_mut(k)?;
        let at = bin.partition_point(|&(a, _)| a > addr);
        if bin.get(at).map(|&(a, _)| a) != Some(addr) {
            return None;
        }
        let (_, slot) = bin.remove(at);
        if bin.is_empty() {
            self.mark(k, false);
        }
        Some(slot)
    }

    /// Removes and returns the smallest block of at least `size` bytes, lowest
    /// address among equals.
    pub(crate) fn take_best_fit(&mut self, size: usize) -> Option<Entry> {
        let k = self.first_from(size.div_ceil(ROUND).saturating_sub(1))?;
        let bin = &mut self.bins[k];
        let (addr, slot) = bin.pop()?;
        if bin.is_empty() {
            self.mark(k, false);
        }
        Some(Entry {
            size: (k + 1) * ROUND,
            addr,
            slot,
        })
    }
}

/// A B-tree keyed by `(size, addr)` for the large pool.
#[derive(Default)]
pub(crate) struct LargeTree {
    map: BTreeMap<(usize, u64), u32>,
}

impl LargeTree {
    pub(crate) fn insert(&mut self, e: Entry) {
        self.map.insert((e.size, e.addr), e.slot);
    }

    pub(crate) fn remove(&mut self, size: usize, addr: u64) -> Option<u32> {
        self.map.remove(&(size, addr))
    }

    pub(crate) fn take_best_fit(&mut self, size: usize) -> Option<Entry> {
        let (&(size, addr), &slot) = self.map.range((size, 0)..).next()?;
        self.map.remove(&(size, addr));
        Some(Entry { size, addr, slot })
    }
}

#[cfg(all(test, not(any(lanes_loom, lanes_shuttle))))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bins_find_the_smallest_adequate_class_across_words() {
        let mut b = SmallBins::default();
        assert_eq!(b.take_best_fit(512), None);
        b.insert(Entry {
            size: SMALL_SEGMENT,
            addr: 0x1000,
            slot: 1,
        });
        b.insert(Entry {
            size: 70 * 512,
            addr: 0x3000,
            slot: 2,
        });
        b.insert(Entry {
            size: 70 * 512,
            addr: 0x2000,
            slot: 3,
        });
        assert_eq!(
            b.take_best_fit(512).map(|e| e.slot),
            Some(3),
            "lowest address first"
        );
        assert_eq!(b.take_best_fit(71 * 512).map(|e| e.slot), Some(1));
        assert_eq!(b.take_best_fit(512).map(|e| e.slot), Some(2));
        assert_eq!(b.take_best_fit(512), None);
        assert_eq!((b.summary, b.words.iter().sum::<u64>()), (0, 0));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(usize, u64),
        Remove(prop::sample::Index),
        Take(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let class = prop_oneof![1usize..8, 1usize..=CLASSES];
        prop_oneof![
            3 => (class.clone(), 0u64..64).prop_map(|(k, a)| Op::Insert(k * ROUND, a * 0x10000)),
            1 => any::<prop::sample::Index>().prop_map(Op::Remove),
            2 => class.prop_map(|k| Op::Take(k * ROUND)),
        ]
    }

    proptest! {
        /// The bins and the B-tree answer every query alike.
        #[test]
        fn bins_agree_with_the_tree(ops in prop::collection::vec(op(), 1..200)) {
            let (mut bins, mut tree) = (SmallBins::default(), LargeTree::default());
            let mut slot = 0;
            for op in ops {
                match op {
                    Op::Insert(size, addr) => {
                        if tree.map.keys().any(|&(_, a)| a == addr) {
                            continue; // one block per address
                        }
                        slot += 1;
                        let e = Entry { size, addr, slot };
                        bins.insert(e);
                        tree.insert(e);
                    }
                    Op::Remove(i) => {
                        if tree.map.is_empty() {
                            continue;
                        }
                        let (&(size, addr), &s) = tree.map.iter().nth(i.index(tree.map.len())).unwrap();
                        prop_assert_eq!(tree.remove(size, addr), Some(s));
                        prop_assert_eq!(bins.remove(size, addr), Some(s));
                        prop_assert_eq!(bins.remove(size, addr), None);
                    }
                    Op::Take(size) => prop_assert_eq!(bins.take_best_fit(size), tree.take_best_fit(size)),
                }
            }
        }
    }
}
