//! Best-fit indexes of free blocks, ordered by `(size, addr)`.
//!
//! Free blocks are kept in size-class bins with a two-level bitmap of the non-empty
//! ones (segregated fit). Class numbers grow with size, and each bin is sorted by
//! `(size, addr)`, so the answer is exactly that of one ordered set: the smallest
//! adequate block, lowest address among equals. Finding it is a binary search in
//! the request's own bin, or else two bit scans to the next non-empty bin, whose
//! smallest block is taken off its end.
//!
//! - Small pool (512 B to 2 MiB in 512-byte steps): one bin per exact size.
//! - Large pool (above 1 MiB): 8 bins per power of two.
//!
//! (These replace a B-tree on the hot path, where one B-tree insert or remove cost
//! about as much as the rest of an alloc+free pair.)

use super::size::{ROUND, SMALL_REQUEST, SMALL_SEGMENT};

/// A free block as the indexes see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) size: usize,
    pub(crate) addr: u64,
    pub(crate) slot: u32,
}

impl Entry {
    #[inline]
    fn key(&self) -> (usize, u64) {
        (self.size, self.addr)
    }
}

/// Which sizes a [`Bins`] holds and how they map to classes.
#[derive(Clone, Copy, Debug)]
enum Classes {
    /// Class `k`: exactly `(k + 1) * 512` bytes, up to [`SMALL_SEGMENT`].
    Exact,
    /// Above [`SMALL_REQUEST`]: 8 classes per power of two.
    Log,
}

/// Sub-classes per power of two of the large pool (as a shift).
const SUB_BITS: u32 = 3;
/// The first power of two of the large pool.
const LOG_BASE: u32 = SMALL_REQUEST.trailing_zeros();

impl Classes {
    fn count(self) -> usize {
        match self {
            Classes::Exact => SMALL_SEGMENT / ROUND,
            Classes::Log => ((usize::BITS - LOG_BASE) << SUB_BITS) as usize,
        }
    }

    /// The class of `size`; classes never decrease as sizes grow.
    #[inline]
    fn of(self, size: usize) -> usize {
        match self {
            Classes::Exact => {
                debug_assert!(size > 0 && size <= SMALL_SEGMENT);
                size.div_ceil(ROUND).max(1) - 1
            }
            Classes::Log => {
                let size = size.max(1 << LOG_BASE);
                let log = usize::BITS - 1 - size.leading_zeros();
                let sub = (size >> (log - SUB_BITS)) & ((1 << SUB_BITS) - 1);
                (((log - LOG_BASE) << SUB_BITS) as usize) | sub
            }
        }
    }
}

/// Segregated best-fit index.
pub(crate) struct Bins {
    classes: Classes,
    /// `bins[k]`: the free blocks of class `k`, sorted by *descending* `(size, addr)`
    /// so that the smallest is popped from the end. Allocated on first insert.
    bins: Vec<Vec<Entry>>,
    /// Bit `k % 64` of `words[k / 64]`: bin `k` is not empty.
    words: Vec<u64>,
    /// Bit `w`: `words[w]` is not zero.
    summary: u64,
}

impl Bins {
    /// The small pool's index.
    pub(crate) fn small() -> Self {
        Self::new(Classes::Exact)
    }

    /// The large pool's index.
    pub(crate) fn large() -> Self {
        Self::new(Classes::Log)
    }

    fn new(classes: Classes) -> Self {
        let words = classes.count().div_ceil(64);
        assert!(words <= 64, "one summary word covers the bitmap");
        Bins {
            classes,
            bins: Vec::new(),
            words: vec![0; words],
            summary: 0,
        }
    }

    #[inline]
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

    /// The first non-empty class above `k`.
    #[inline]
    fn next_after(&self, k: usize) -> Option<usize> {
        let k = k + 1;
        let (w, b) = (k / 64, k % 64);
        if let Some(&word) = self.words.get(w) {
            let here = word & (!0u64 << b);
            if here != 0 {
                return Some(w * 64 + here.trailing_zeros() as usize);
            }
        }
        let above = self.summary.checked_shr(w as u32 + 1).unwrap_or(0);
        if above == 0 {
            return None;
        }
        let w = w + 1 + above.trailing_zeros() as usize;
        Some(w * 64 + self.words[w].trailing_zeros() as usize)
    }

    #[inline]
    pub(crate) fn insert(&mut self, e: Entry) {
        if self.bins.is_empty() {
            self.bins = (0..self.classes.count()).map(|_| Vec::new()).collect();
        }
        let k = self.classes.of(e.size);
        let bin = &mut self.bins[k];
        if bin.is_empty() {
            bin.push(e);
            self.mark(k, true);
        } else {
            let at = bin.partition_point(|x| x.key() > e.key());
            bin.insert(at, e);
        }
    }

    /// Removes the block of `size` at `addr`; returns its slot.
    #[inline]
    pub(crate) fn remove(&mut self, size: usize, addr: u64) -> Option<u32> {
        let k = self.classes.of(size);
        let bin = self.bins.get_mut(k)?;
        let at = bin.partition_point(|x| x.key() > (size, addr));
        if bin.get(at).map(Entry::key) != Some((size, addr)) {
            return None;
        }
        let e = bin.remove(at);
        if bin.is_empty() {
            self.mark(k, false);
        }
        Some(e.slot)
    }

    /// Removes and returns the smallest block of at least `size` bytes, lowest
    /// address among equals.
    #[inline]
    pub(crate) fn take_best_fit(&mut self, size: usize) -> Option<Entry> {
        let k = self.classes.of(size);
        if let Some(bin) = self.bins.get_mut(k) {
            // Entries at `..at` are at least `(size, 0)`; the last of them is the best.
            let at = bin.partition_point(|x| x.key() >= (size, 0));
            if at > 0 {
                let e = bin.remove(at - 1);
                if bin.is_empty() {
                    self.mark(k, false);
                }
                return Some(e);
            }
        }
        let k = self.next_after(k)?;
        let bin = &mut self.bins[k];
        let e = bin.pop()?;
        if bin.is_empty() {
            self.mark(k, false);
        }
        Some(e)
    }
}

#[cfg(all(test, not(any(lanes_loom, lanes_shuttle))))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const MIB: usize = 1 << 20;

    #[test]
    fn classes_grow_with_size() {
        for c in [Classes::Exact, Classes::Log] {
            let sizes: Vec<usize> = match c {
                Classes::Exact => (1..=SMALL_SEGMENT / ROUND).map(|k| k * ROUND).collect(),
                Classes::Log => (0..20_000).map(|i| MIB + 512 + i * 7919 * 512).collect(),
            };
            let classes: Vec<usize> = sizes.iter().map(|&s| c.of(s)).collect();
            assert!(classes.windows(2).all(|w| w[0] <= w[1]), "{c:?}");
            assert!(classes.iter().all(|&k| k < c.count()), "{c:?}");
        }
        assert!(Classes::Log.of(usize::MAX) < Classes::Log.count());
    }

    #[test]
    fn bins_find_the_smallest_adequate_block_across_words() {
        let mut b = Bins::small();
        assert_eq!(b.take_best_fit(512), None);
        let e = |size, addr, slot| Entry { size, addr, slot };
        b.insert(e(SMALL_SEGMENT, 0x1000, 1));
        b.insert(e(70 * 512, 0x3000, 2));
        b.insert(e(70 * 512, 0x2000, 3));
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

    fn ops(size: BoxedStrategy<usize>) -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            3 => (size.clone(), 0u64..64).prop_map(|(s, a)| Op::Insert(s, a << 32)),
            1 => any::<prop::sample::Index>().prop_map(Op::Remove),
            2 => size.prop_map(Op::Take),
        ];
        prop::collection::vec(op, 1..200)
    }

    /// Runs `ops` on `bins` and on a B-tree keyed by `(size, addr)`: every answer agrees.
    fn agree(mut bins: Bins, ops: Vec<Op>) -> std::result::Result<(), TestCaseError> {
        let mut tree: BTreeMap<(usize, u64), u32> = BTreeMap::new();
        let mut slot = 0;
        for op in ops {
            match op {
                Op::Insert(size, addr) => {
                    if tree.keys().any(|&(_, a)| a == addr) {
                        continue; // one block per address
                    }
                    slot += 1;
                    bins.insert(Entry { size, addr, slot });
                    tree.insert((size, addr), slot);
                }
                Op::Remove(i) => {
                    if tree.is_empty() {
                        continue;
                    }
                    let (&(size, addr), &s) = tree.iter().nth(i.index(tree.len())).unwrap();
                    tree.remove(&(size, addr));
                    prop_assert_eq!(bins.remove(size, addr), Some(s));
                    prop_assert_eq!(bins.remove(size, addr), None);
                }
                Op::Take(size) => {
                    let want = tree
                        .range((size, 0)..)
                        .next()
                        .map(|(&(s, a), &slot)| Entry {
                            size: s,
                            addr: a,
                            slot,
                        });
                    if let Some(w) = want {
                        tree.remove(&w.key());
                    }
                    prop_assert_eq!(bins.take_best_fit(size), want);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn small_bins_agree_with_an_ordered_set(ops in ops(
            prop_oneof![1usize..8, 1usize..=SMALL_SEGMENT / ROUND].prop_map(|k| k * ROUND).boxed()
        )) {
            agree(Bins::small(), ops)?;
        }

        #[test]
        fn large_bins_agree_with_an_ordered_set(ops in ops(
            prop_oneof![
                (MIB / ROUND + 1..MIB / ROUND + 64),
                (MIB / ROUND + 1..(64 * MIB) / ROUND),
                (MIB / ROUND + 1..(1usize << 40) / ROUND),
            ].prop_map(|k| k * ROUND).boxed()
        )) {
            agree(Bins::large(), ops)?;
        }
    }
}
