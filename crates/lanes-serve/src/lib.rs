//! `lanes-serve`: the batching engine behind `lanes serve`, without HTTP, so
//! the HTTP server and a future Python binding share it.
//!
//! Layers, each using only the ones below it:
//!
//! - [`error`]: [`ServeError`], the one error type;
//! - [`codec`]: untruncated tokenization with offsets, decoding, id checks;
//! - [`input`]: [`Input`] (texts or token ids), [`Options`] (truncation,
//!   normalization, `dimensions`, deadline), preparing rows, post-processing;
//! - [`metrics`]: Prometheus series ([`EngineMetrics`]);
//! - [`completion`]: one request's results and its waiters;
//! - [`queue`]: the token-bounded queue, fair round-robin batches, cancellation;
//! - [`worker`]: threads with one lane each, running forward passes;
//! - [`engine`]: [`Engine::submit`] → [`Handle`] (blocking `wait` or `.await`;
//!   dropping it cancels).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use lanes_serve::{Codec, Engine, EngineConfig, Input, Options};
//! let dir = std::path::Path::new("models/all-MiniLM-L6-v2");
//! let device = lanes::Device::cpu(lanes::DeviceConfig::default())?;
//! let encoder = Arc::new(lanes_nn::Encoder::load(dir, &device)?);
//! let codec = Codec::from_file(&dir.join(lanes_nn::TOKENIZER_FILE))?;
//! let config = EngineConfig {
//!     workers: 2,
//!     max_batch_tokens: 2048,
//!     max_wait: std::time::Duration::from_millis(2),
//!     batching: true,
//!     max_queue_tokens: 1 << 20,
//!     inject_faults: false,
//! };
//! let engine = Engine::start(encoder, codec, config)?;
//! let handle = engine.submit(Input::Texts(vec!["hello".into()]), Options::default())?;
//! let vectors = handle.wait()?;
//! assert_eq!(vectors[0].vector.len(), 384);
//! # Ok(())
//! # }
//! ```

pub mod codec;
pub mod completion;
pub mod engine;
pub mod error;
pub mod input;
pub mod metrics;
pub mod queue;
pub mod worker;

pub use codec::{Codec, TokenInfo};
pub use engine::{Engine, EngineConfig, Handle};
pub use error::{Result, ServeError};
pub use input::{Direction, Input, Options};
pub use lanes_nn::Embedding;
pub use metrics::EngineMetrics;
