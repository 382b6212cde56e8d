//! [`Tokens`]: a packed batch of token sequences, from the tokenizer to the encoder.
//!
//! The token ids (and type ids) of all sequences lie back to back, with no padding;
//! `offsets` (batch + 1 entries, starting at 0) mark where each sequence starts
//! and ends. Sequence `i` is `ids[offsets[i]..offsets[i + 1]]`. A forward pass
//! works on exactly these tokens: no padded rows are computed.

use crate::error::{NnError, Result};

/// A packed, validated batch of token sequences.
///
/// Invariants (checked by every constructor, so holders need not re-check):
/// `ids.len() == type_ids.len() == offsets[batch]`, `offsets[0] == 0`, offsets
/// non-decreasing, the total below `u32::MAX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    offsets: Vec<u32>,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::new()
    }
}

impl Tokens {
    /// An empty batch.
    pub fn new() -> Tokens {
        Tokens {
            ids: Vec::new(),
            type_ids: Vec::new(),
            offsets: vec![0],
        }
    }

    /// An empty batch with room for `batch` sequences of `tokens` in all.
    pub fn with_capacity(batch: usize, tokens: usize) -> Tokens {
        let mut offsets = Vec::with_capacity(batch + 1);
        offsets.push(0);
        Tokens {
            ids: Vec::with_capacity(tokens),
            type_ids: Vec::with_capacity(tokens),
            offsets,
        }
    }

    /// Packs per-sequence `(ids, type_ids)`; fails if a sequence's two lists
    /// differ in length or the batch exceeds `u32::MAX` tokens.
    pub fn from_sequences(seqs: &[(Vec<u32>, Vec<u32>)]) -> Result<Tokens> {
        let total = seqs.iter().map(|(ids, _)| ids.len()).sum();
        let mut t = Tokens::with_capacity(seqs.len(), total);
        for (ids, types) in seqs {
            t.push(ids, types)?;
        }
        Ok(t)
    }

    /// Builds a batch from its packed parts, checking every invariant; errors
    /// name the part that is wrong.
    pub fn from_parts(ids: Vec<u32>, type_ids: Vec<u32>, offsets: Vec<u32>) -> Result<Tokens> {
        let bad = |m: String| Err(NnError::InvalidInput(m));
        if offsets.first() != Some(&0) {
            return bad(format!(
                "offsets must start with 0, got {:?}",
                offsets.first()
            ));
        }
        if let Some(i) = offsets.windows(2).position(|w| w[1] < w[0]) {
            return bad(format!(
                "offsets decrease at sequence #{i}: {} then {}",
                offsets[i],
                offsets[i + 1]
            ));
        }
        let total = *offsets.last().unwrap_or(&0) as usize;
        if ids.len() != total || type_ids.len() != total {
            return bad(format!(
                "offsets end at {total} tokens but there are {} ids and {} type ids",
                ids.len(),
                type_ids.len()
            ));
        }
        Ok(Tokens {
            ids,
            type_ids,
            offsets,
        })
    }

    /// Appends one sequence; fails (leaving the batch as it was) if `ids` and
    /// `type_ids` differ in length or the batch would exceed `u32::MAX` tokens.
    pub fn push(&mut self, ids: &[u32], type_ids: &[u32]) -> Result<()> {
        if ids.len() != type_ids.len() {
            return Err(NnError::InvalidInput(format!(
                "sequence #{}: {} ids but {} type ids",
                self.batch(),
                ids.len(),
                type_ids.len()
            )));
        }
        let end = u32::try_from(self.ids.len() + ids.len())
            .ok()
            .filter(|&e| e < u32::MAX)
            .ok_or_else(|| {
                NnError::InvalidInput(format!(
                    "batch of {} + {} tokens exceeds u32",
                    self.ids.len(),
                    ids.len()
                ))
            })?;
        self.ids.extend_from_slice(ids);
        self.type_ids.extend_from_slice(type_ids);
        self.offsets.push(end);
        Ok(())
    }

    /// Appends every sequence of `other`.
    pub fn extend(&mut self, other: &Tokens) -> Result<()> {
        for i in 0..other.batch() {
            let r = other.range(i);
            self.push(&other.ids[r.clone()], &other.type_ids[r])?;
        }
        Ok(())
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.offsets.len() - 1
    }

    /// `true` when the batch holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.batch() == 0
    }

    /// Tokens of all sequences together.
    pub fn total_tokens(&self) -> usize {
        self.ids.len()
    }

    /// All token ids, back to back.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// All token-type ids, back to back.
    pub fn type_ids(&self) -> &[u32] {
        &self.type_ids
    }

    /// Sequence boundaries: `batch + 1` entries, from 0 to [`Tokens::total_tokens`].
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// The token range of sequence `i` (panics past the batch, like slice indexing).
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.offsets[i] as usize..self.offsets[i + 1] as usize
    }

    /// Token count of sequence `i`, or `None` past the batch.
    pub fn len_of(&self, i: usize) -> Option<usize> {
        let w = self.offsets.get(i..i + 2)?;
        Some((w[1] - w[0]) as usize)
    }

    /// Token count of every sequence.
    pub fn lengths(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.offsets.windows(2).map(|w| (w[1] - w[0]) as usize)
    }

    /// The longest sequence's token count (0 for an empty batch).
    pub fn max_len(&self) -> usize {
        self.lengths().max().unwrap_or(0)
    }

    /// The token ids of sequence `i`, or `None` past the batch.
    pub fn row_ids(&self, i: usize) -> Option<&[u32]> {
        self.len_of(i)?;
        Some(&self.ids[self.range(i)])
    }

    /// The type ids of sequence `i`, or `None` past the batch.
    pub fn row_type_ids(&self, i: usize) -> Option<&[u32]> {
        self.len_of(i)?;
        Some(&self.type_ids[self.range(i)])
    }

    /// Position of every token within its own sequence (0, 1, ..., 0, 1, ...).
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.lengths().flat_map(|n| 0..n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_layout() {
        let t = Tokens::from_sequences(&[
            (vec![101, 7, 102], vec![0; 3]),
            (vec![101, 102], vec![0, 1]),
        ])
        .expect("consistent");
        assert_eq!((t.batch(), t.total_tokens(), t.max_len()), (2, 5, 3));
        assert_eq!(t.ids(), &[101, 7, 102, 101, 102]);
        assert_eq!(t.offsets(), &[0, 3, 5]);
        assert_eq!(t.lengths().collect::<Vec<_>>(), vec![3, 2]);
        assert_eq!(t.row_ids(1), Some(&[101, 102][..]));
        assert_eq!(t.row_type_ids(1), Some(&[0, 1][..]));
        assert_eq!(t.row_ids(2), None);
        assert_eq!(t.positions().collect::<Vec<_>>(), vec![0, 1, 2, 0, 1]);
        let again = Tokens::from_parts(
            t.ids().to_vec(),
            t.type_ids().to_vec(),
            t.offsets().to_vec(),
        )
        .expect("valid parts");
        assert_eq!(again, t);
    }

    #[test]
    fn empty_and_bad_batches() {
        let t = Tokens::from_sequences(&[]).expect("empty is fine");
        assert_eq!((t.batch(), t.total_tokens(), t.max_len()), (0, 0, 0));
        assert!(t.is_empty());
        let e = Tokens::from_sequences(&[(vec![1, 2], vec![0])]).unwrap_err();
        assert!(e.to_string().contains("2 ids but 1 type ids"), "{e}");
        assert!(Tokens::from_parts(vec![1], vec![0], vec![]).is_err());
        assert!(Tokens::from_parts(vec![1], vec![0], vec![1, 1]).is_err());
        assert!(Tokens::from_parts(vec![1, 2], vec![0, 0], vec![0, 2, 1]).is_err());
        assert!(Tokens::from_parts(vec![1, 2], vec![0], vec![0, 2]).is_err());
        let mut t = Tokens::new();
        assert!(t.push(&[1], &[]).is_err());
        assert_eq!(t, Tokens::new(), "a failed push leaves the batch as it was");
        t.push(&[], &[]).expect("an empty sequence is a sequence");
        assert_eq!((t.batch(), t.len_of(0)), (1, Some(0)));
    }

    #[test]
    fn extend_appends_sequences() {
        let a = Tokens::from_sequences(&[(vec![1, 2], vec![0, 0])]).unwrap();
        let b = Tokens::from_sequences(&[(vec![3], vec![1]), (vec![4, 5, 6], vec![0; 3])]).unwrap();
        let mut c = a.clone();
        c.extend(&b).unwrap();
        assert_eq!(c.offsets(), &[0, 2, 3, 6]);
        assert_eq!(c.row_ids(2), Some(&[4, 5, 6][..]));
    }
}
