//! A whole model on the host: config, f32 weights and tokenizer from one model
//! folder ([`ModelFiles`]), with the CPU [`reference`] forward.

use std::path::Path;

use crate::config::BertConfig;
use crate::error::{NnError, Result};
use crate::files::ModelFiles;
use crate::reference;
use crate::tokenizer::{Tokenizer, DEFAULT_MAX_LEN};
use crate::weights::HostWeights;

/// A loaded model: config, f32 host weights and tokenizer.
#[derive(Debug, Clone)]
pub struct Model {
    /// Where it was loaded from.
    pub files: ModelFiles,
    /// The validated config.
    pub config: BertConfig,
    /// The weights, checked against `config`.
    pub weights: HostWeights,
    /// The tokenizer, truncating at `max_len` tokens.
    pub tokenizer: Tokenizer,
}

impl Model {
    /// Loads a model folder with truncation at [`DEFAULT_MAX_LEN`] tokens.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_with_max_len(dir, DEFAULT_MAX_LEN)
    }

    /// Loads a model folder with truncation at `max_len` tokens, which must
    /// not exceed the config's `max_position_embeddings`.
    pub fn load_with_max_len(dir: impl AsRef<Path>, max_len: usize) -> Result<Self> {
        let files = ModelFiles::locate(dir)?;
        let config = BertConfig::from_file(&files.config)?;
        if max_len > config.max_position_embeddings {
            return Err(NnError::InvalidInput(format!(
                "max_len {max_len} exceeds max_position_embeddings {} of {}",
                config.max_position_embeddings,
                files.config.display()
            )));
        }
        let tokenizer = Tokenizer::from_file_with_max_len(&files.tokenizer, max_len)?;
        let weights = HostWeights::load_with_config(&files.weights, &config)?;
        Ok(Self {
            files,
            config,
            weights,
            tokenizer,
        })
    }

    /// Embeds `texts` with the single-threaded CPU [`reference`] forward:
    /// `texts.len() × hidden_size` L2-normalized values, row-major.
    pub fn embed_reference(&self, texts: &[&str]) -> Result<Vec<f32>> {
        let enc = self.tokenizer.encode_batch(texts)?;
        reference::forward(&self.weights, &self.config, &enc)
    }
}
