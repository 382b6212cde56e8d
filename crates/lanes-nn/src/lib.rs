//! `lanes-nn`: the model side of `lanes` for the all-MiniLM-L6-v2 sentence
//! encoder (a 6-layer, 384-wide BERT).
//!
//! It provides:
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
//! - [`Encoder`]: the model on a `lanes` device in a [`Precision`], packed
//!   forwards through the backend's executor ([`exec`]), CUDA graphs per lane
//!   ([`graph`]).
//!
//! Errors are one enum, [`NnError`]; bad files and bad inputs are reported,
//! never panicked on.
//!
//! # Layers
//!
//! Each module uses only modules of lower layers (checked with
//! `grep -o 'crate::[a-z_]*' src/<module>`; no two modules use each other):
//!
//! 1. `error`
//! 2. `config`, `files`, `tokens`, `tensor`, `precision` (use `error`; `precision`
//!    also `tensor`)
//! 3. `tokenizer` (`tokens`), `weights` (`config`, `files`)
//! 4. `cpu` (`weights`)
//! 5. `reference` (`cpu`, `weights`, `tokens`, `config`)
//! 6. `model` (`reference`, `tokenizer`, `weights`, `files`, `config`)
//! 7. `exec` (`tensor`, `cpu`)
//! 8. `device_weights` (`exec`, `tensor`, `weights`, `config`)
//! 9. `forward` (`device_weights`, `exec`, `tensor`, `config`)
//! 10. `graph` (`forward`, `tensor`, `tokens`)
//! 11. `encoder` (all of the above but `model`, `reference` and `cpu`)
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
mod device_weights;
pub mod encoder;
pub mod error;
pub mod exec;
pub mod files;
mod forward;
pub mod graph;
pub mod model;
pub mod precision;
pub mod reference;
pub mod tensor;
pub mod tokenizer;
pub mod tokens;
pub mod weights;

pub use config::BertConfig;
pub use encoder::{Embedding, Encoder};
pub use error::{NnError, Result};
pub use files::{ModelFiles, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
pub use graph::GraphCounts;
pub use model::Model;
pub use precision::{EncoderOptions, Precision};
pub use tensor::{DType, Shape, Tensor, TensorMut};
pub use tokenizer::{Tokenizer, DEFAULT_MAX_LEN};
pub use tokens::Tokens;
pub use weights::{EmbeddingWeights, HostTensor, HostWeights, LayerWeights, StoreDtype};
