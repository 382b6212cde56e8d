//! Text ⇄ token ids for the serving front ends: untruncated encoding (so an
//! over-long input can be refused with its real length, or truncated from the
//! side the client asks), token strings with offsets (`/tokenize`), and
//! decoding (`/decode`). The model's own [`lanes_nn::Tokenizer`] truncates at
//! load time and has no decoder, which is why the engine keeps this one.

use std::path::Path;

use crate::error::{Result, ServeError};

/// One token of a tokenized text (what `POST /tokenize` answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Vocabulary id.
    pub id: u32,
    /// The token's string in the vocabulary (`##ing`, `[CLS]`).
    pub text: String,
    /// Whether the tokenizer added it (`[CLS]`, `[SEP]`).
    pub special: bool,
    /// Byte offsets of the token in the input text (`None` for special tokens).
    pub span: Option<(usize, usize)>,
}

/// A tokenized text: ids, type ids, and how many special tokens the
/// tokenizer put at its front and back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Token-type ids (0 for a single sentence).
    pub types: Vec<u32>,
    /// Special tokens at the front (`[CLS]`).
    pub front: usize,
    /// Special tokens at the back (`[SEP]`).
    pub back: usize,
}

/// A thread-safe, non-truncating tokenizer with a decoder.
#[derive(Debug, Clone)]
pub struct Codec {
    inner: tokenizers::Tokenizer,
    vocab: usize,
    cls: Option<u32>,
    sep: Option<u32>,
}

impl Codec {
    /// Loads `tokenizer.json` with truncation and padding switched off.
    pub fn from_file(path: &Path) -> std::result::Result<Codec, String> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| format!("cannot load the tokenizer {}: {e}", path.display()))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| format!("cannot configure the tokenizer {}: {e}", path.display()))?;
        let vocab = inner.get_vocab_size(true);
        let cls = inner.token_to_id("[CLS]");
        let sep = inner.token_to_id("[SEP]");
        Ok(Codec {
            inner,
            vocab,
            cls,
            sep,
        })
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// `[CLS]` and `[SEP]` ids, if the vocabulary has them.
    pub fn specials(&self) -> (Option<u32>, Option<u32>) {
        (self.cls, self.sep)
    }

    /// Encodes `text` (input `index` of its request) with special tokens,
    /// untruncated.
    pub fn encode(&self, index: usize, text: &str) -> Result<Encoded> {
        let enc = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| ServeError::Tokenize {
                index,
                message: e.to_string(),
            })?;
        let mask = enc.get_special_tokens_mask();
        let front = mask.iter().take_while(|&&m| m == 1).count();
        let back = if front == mask.len() {
            0
        } else {
            mask.iter().rev().take_while(|&&m| m == 1).count()
        };
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            types: enc.get_type_ids().to_vec(),
            front,
            back,
        })
    }

    /// The tokens of `text` with their strings and offsets.
    pub fn tokens(&self, index: usize, text: &str, add_special: bool) -> Result<Vec<TokenInfo>> {
        let enc = self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| ServeError::Tokenize {
                index,
                message: e.to_string(),
            })?;
        Ok(enc
            .get_ids()
            .iter()
            .zip(enc.get_tokens())
            .zip(enc.get_special_tokens_mask())
            .zip(enc.get_offsets())
            .map(|(((&id, text), &special), &(start, stop))| TokenInfo {
                id,
                text: text.clone(),
                special: special == 1,
                span: (special == 0).then_some((start, stop)),
            })
            .collect())
    }

    /// Decodes `ids` (checked against the vocabulary) to text.
    pub fn decode(&self, ids: &[i64], skip_special: bool) -> Result<String> {
        let ids = check_ids(0, ids, self.vocab)?;
        self.inner
            .decode(&ids, skip_special)
            .map_err(|e| ServeError::Tokenize {
                index: 0,
                message: format!("cannot decode: {e}"),
            })
    }
}

/// `ids` as vocabulary ids, or the first one outside `0..vocab` named.
pub fn check_ids(index: usize, ids: &[i64], vocab: usize) -> Result<Vec<u32>> {
    ids.iter()
        .enumerate()
        .map(|(position, &id)| {
            u32::try_from(id)
                .ok()
                .filter(|&v| (v as usize) < vocab)
                .ok_or(ServeError::TokenOutOfRange {
                    index,
                    position,
                    id,
                    vocab,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_outside_the_vocabulary_are_named() {
        assert_eq!(check_ids(0, &[0, 5, 9], 10).unwrap(), vec![0, 5, 9]);
        assert_eq!(
            check_ids(3, &[1, 10], 10).unwrap_err(),
            ServeError::TokenOutOfRange {
                index: 3,
                position: 1,
                id: 10,
                vocab: 10
            }
        );
        assert!(matches!(
            check_ids(0, &[-1], 10),
            Err(ServeError::TokenOutOfRange { id: -1, .. })
        ));
    }
}
