//! `lanes-nn`: the model side of `lanes` for the all-MiniLM-L6-v2 sentence
//! encoder (a 6-layer, 384-wide BERT).
//!
//! This crate knows nothing about devices or scheduling. It provides:
//!
//! - [`BertConfig`]: hyper-parameters from `config.json`, validated;
//! - [`Tokenizer`]: `tokenizer.json` → packed [`Tokens`] batches,
//!   thread-safe, truncating at 256 tokens by default;
//! - [`Tensor`]: typed, size-checked views of device buffers, what the
//!   executors ([`exec`]) take;
//! - [`HostWeights`]: `model.safetensors` (F32, F16 or BF16, with or without a
//!   `bert.` prefix) → typed f32 tensors, every name, dtype and shape checked;
//! - [`cpu`]: single-threaded kernels on slices (linear, attention,
//!   LayerNorm, GELU, embedding, pooling);
//! - [`reference::forward`]: the CPU forward pass every other path is
//!   checked against;
//! - [`Model`]: all of the above loaded from one model folder.
//!
//! Errors are one enum, [`NnError`]; bad files and bad inputs are reported,
//! never panicked on.
//!
//! ```no_run
//! # fn main() -> Result<(), lanes_nn::NnError> {
//! let model = lanes_nn::Model::load("models/all-MiniLM-L6-v2")?;
//! let emb = model.embed_reference(&["A man is eating food.", "GPU streams"])?;
//! assert_eq!(emb.len(), 2 * model.config.hidden_size);
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod cpu;
pub mod encoder;
pub mod error;
pub mod exec;
pub mod model;
pub mod reference;
pub mod tensor;
pub mod tokenizer;
pub mod tokens;
pub mod weights;

pub use config::BertConfig;
pub use encoder::{Embedding, Encoder};
pub use error::{NnError, Result};
pub use model::{Model, ModelFiles, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
pub use tensor::{DType, Shape, Tensor, TensorMut};
pub use tokenizer::{Tokenizer, DEFAULT_MAX_LEN};
pub use tokens::Tokens;
pub use weights::{EmbeddingWeights, HostTensor, HostWeights, LayerWeights, StoreDtype};
