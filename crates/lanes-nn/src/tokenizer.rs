//! Text → packed batches of token ids ([`Tokens`]).
//!
//! [`Tokenizer`] wraps the `tokenizers` crate's tokenizer loaded from
//! `tokenizer.json`. Truncation is configured once, at load; padding is
//! switched off (batches are packed, never padded), so encoding never mutates
//! shared state and one `Tokenizer` can serve many threads
//! (`Tokenizer: Send + Sync`, `encode_batch` takes `&self`).

use std::path::Path;

use tokenizers::{PostProcessor, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{NnError, Result};
use crate::tokens::Tokens;

/// Default truncation length, as sentence-transformers uses for all-MiniLM-L6-v2.
pub const DEFAULT_MAX_LEN: usize = 256;

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

    /// Encodes `texts` into one packed batch, in order. Texts are encoded one
    /// after the other on the calling thread.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Tokens> {
        let mut tokens = Tokens::with_capacity(texts.len(), texts.len() * 16);
        for (i, t) in texts.iter().enumerate() {
            let (ids, types) = self.encode_one(i, t)?;
            tokens.push(&ids, &types)?;
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn tokenizer_is_send_and_sync() {
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<Tokens>();
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
