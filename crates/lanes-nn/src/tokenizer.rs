//! Text → padded batches of token ids.
//!
//! [`Tokenizer`] wraps the `tokenizers` crate's tokenizer loaded from
//! `tokenizer.json`. Truncation is configured once, at load; padding is
//! switched off in the wrapped tokenizer and done here instead, so encoding
//! never mutates shared state and one `Tokenizer` can serve many threads
//! (`Tokenizer: Send + Sync`, `encode_batch` takes `&self`).

use std::path::Path;

use tokenizers::{PostProcessor, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{NnError, Result};

/// Default truncation length, as sentence-transformers uses for all-MiniLM-L6-v2.
pub const DEFAULT_MAX_LEN: usize = 256;

/// A batch of encoded texts, right-padded to the longest text of the batch.
///
/// All per-token arrays are row-major `[batch, seq]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Number of texts.
    pub batch: usize,
    /// Padded sequence length (the longest text's token count; 0 for an empty batch).
    pub seq: usize,
    /// Token ids, padded with 0 (`[PAD]`).
    pub ids: Vec<u32>,
    /// Token-type (segment) ids, padded with 0.
    pub type_ids: Vec<u32>,
    /// Attention mask: 1.0 for real tokens, 0.0 for padding.
    pub mask: Vec<f32>,
    /// Real token count of each text (including `[CLS]` and `[SEP]`).
    pub lengths: Vec<usize>,
}

impl Encoded {
    /// Pads per-text `(ids, type_ids)` into one batch.
    ///
    /// Fails if a text's id and type-id lists differ in length.
    pub fn from_sequences(seqs: &[(Vec<u32>, Vec<u32>)]) -> Result<Self> {
        let batch = seqs.len();
        let seq = seqs.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let mut enc = Self {
            batch,
            seq,
            ids: vec![0; batch * seq],
            type_ids: vec![0; batch * seq],
            mask: vec![0.0; batch * seq],
            lengths: Vec::with_capacity(batch),
        };
        for (row, (ids, types)) in seqs.iter().enumerate() {
            if ids.len() != types.len() {
                return Err(NnError::InvalidInput(format!(
                    "text #{row}: {} ids but {} type ids",
                    ids.len(),
                    types.len()
                )));
            }
            let start = row * seq;
            enc.ids[start..start + ids.len()].copy_from_slice(ids);
            enc.type_ids[start..start + ids.len()].copy_from_slice(types);
            enc.mask[start..start + ids.len()].fill(1.0);
            enc.lengths.push(ids.len());
        }
        Ok(enc)
    }

    /// The real (unpadded) token ids of text `row`, or `None` past the batch.
    pub fn row_ids(&self, row: usize) -> Option<&[u32]> {
        let len = *self.lengths.get(row)?;
        self.ids.get(row * self.seq..row * self.seq + len)
    }

    /// Checks that the array lengths agree with `batch` and `seq` and that no
    /// `lengths` entry exceeds `seq`; every forward pass starts with this.
    /// (The forward pass reads `mask`, not `lengths`.)
    pub fn check(&self) -> Result<()> {
        let n = self.batch.checked_mul(self.seq).ok_or_else(|| {
            NnError::InvalidInput(format!("batch {} x seq {} overflows", self.batch, self.seq))
        })?;
        for (what, len) in [
            ("ids", self.ids.len()),
            ("type_ids", self.type_ids.len()),
            ("mask", self.mask.len()),
        ] {
            if len != n {
                return Err(NnError::InvalidInput(format!(
                    "{what} has {len} entries, expected batch {} x seq {} = {n}",
                    self.batch, self.seq
                )));
            }
        }
        if self.lengths.len() != self.batch {
            return Err(NnError::InvalidInput(format!(
                "lengths has {} entries, expected batch {}",
                self.lengths.len(),
                self.batch
            )));
        }
        if let Some(row) = self.lengths.iter().position(|&l| l > self.seq) {
            return Err(NnError::InvalidInput(format!(
                "text #{row} has length {} > seq {}",
                self.lengths[row], self.seq
            )));
        }
        Ok(())
    }
}

/// A thread-safe tokenizer with truncation fixed at load time.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    max_len: usize,
}

impl Tokenizer {
    /// Loads `tokenizer.json` with truncation at [`DEFAULT_MAX_LEN`] tokens.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file_with_max_len(path, DEFAULT_MAX_LEN)
    }

    /// Loads `tokenizer.json`, truncating every text to `max_len` tokens
    /// (special tokens included). Any padding or truncation stored in the
    /// file is replaced.
    pub fn from_file_with_max_len(path: impl AsRef<Path>, max_len: usize) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(NnError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let load_err = |source| NnError::TokenizerLoad {
            path: path.to_path_buf(),
            source,
        };
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(load_err)?;
        let n_special = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if max_len <= n_special {
            let msg =
                format!("max_len {max_len} leaves no room next to {n_special} special tokens");
            return Err(load_err(msg.into()));
        }
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(load_err)?;
        Ok(Self { inner, max_len })
    }

    /// The truncation length in tokens.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids and type ids of one text, with `[CLS]`/`[SEP]` added and
    /// truncation applied, unpadded.
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        self.encode_one(0, text)
    }

    fn encode_one(&self, index: usize, text: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let enc = self
            .inner
            .encode_fast(text, true)
            .map_err(|source| NnError::TokenizerEncode { index, source })?;
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    /// Encodes `texts` and pads them (with id 0, type 0, mask 0.0) to the
    /// longest of the batch. Texts are encoded one after the other on the
    /// calling thread.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Encoded> {
        let seqs = texts
            .iter()
            .enumerate()
            .map(|(i, t)| self.encode_one(i, t))
            .collect::<Result<Vec<_>>>()?;
        Encoded::from_sequences(&seqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn tokenizer_is_send_and_sync() {
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<Encoded>();
    }

    #[test]
    fn padding_layout() {
        let enc = Encoded::from_sequences(&[
            (vec![101, 7, 102], vec![0; 3]),
            (vec![101, 102], vec![0; 2]),
        ])
        .expect("consistent");
        assert_eq!((enc.batch, enc.seq), (2, 3));
        assert_eq!(enc.ids, vec![101, 7, 102, 101, 102, 0]);
        assert_eq!(enc.mask, vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
        assert_eq!(enc.lengths, vec![3, 2]);
        assert_eq!(enc.row_ids(1), Some(&[101, 102][..]));
        assert_eq!(enc.row_ids(2), None);
        enc.check().expect("valid");
    }

    #[test]
    fn empty_batch_and_bad_batches() {
        let enc = Encoded::from_sequences(&[]).expect("empty is fine");
        assert_eq!((enc.batch, enc.seq), (0, 0));
        enc.check().expect("valid");
        assert!(Encoded::from_sequences(&[(vec![1, 2], vec![0])]).is_err());
        let mut enc = Encoded::from_sequences(&[(vec![1, 2], vec![0, 0])]).expect("ok");
        enc.mask.pop();
        assert!(enc.check().is_err());
    }

    #[test]
    fn missing_tokenizer_file_names_path() {
        let err = Tokenizer::from_file("/nonexistent/dir/tokenizer.json").expect_err("must fail");
        assert!(
            err.to_string().contains("/nonexistent/dir/tokenizer.json"),
            "{err}"
        );
    }
}
