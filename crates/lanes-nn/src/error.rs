//! The one error type of `lanes-nn`.
//!
//! Every variant names what went wrong *and where*: the path of the file or
//! folder, the tensor name, the config field. Lower-level errors (I/O,
//! `safetensors`, `serde_json`, `tokenizers`) are kept as the
//! [`source`](std::error::Error::source) so callers can walk the chain.

use std::path::PathBuf;

/// A boxed error from the `tokenizers` crate (its own `Error` type alias).
pub type BoxedError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while locating, loading or running the model.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// The model folder does not exist (or is not a folder).
    #[error(
        "model folder {path} does not exist; run scripts/fetch-model.sh or point LANES_MODEL at a folder holding model.safetensors, tokenizer.json and config.json"
    )]
    ModelDirMissing {
        /// The folder that was looked for.
        path: PathBuf,
    },

    /// The model folder exists but one of the files the model needs is not in it.
    #[error("model folder {dir} has no {file} (expected at {})", dir.join(file).display(), dir = dir.display())]
    ModelFileMissing {
        /// The model folder.
        dir: PathBuf,
        /// The missing file's name, e.g. `model.safetensors`.
        file: String,
    },

    /// Reading a file failed at the operating-system level.
    #[error("cannot read {path}")]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The weights file is not a valid safetensors file (truncated, corrupt
    /// header, offsets out of range, ...), or could not be serialized.
    #[error("{path} is not a valid safetensors file (truncated or corrupt)")]
    Safetensors {
        /// The safetensors file.
        path: PathBuf,
        /// The `safetensors` crate's error.
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// A tensor the model needs is not in the weights file.
    #[error("tensor {name} is missing from {path}")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The canonical tensor name (without any `bert.` prefix).
        name: String,
    },

    /// The weights file holds a tensor this model does not know about.
    #[error("tensor {name} in {path} is not part of a BERT model with this config")]
    UnexpectedTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor name as stored in the file.
        name: String,
    },

    /// A tensor's shape does not match what `config.json` implies.
    #[error("tensor {name} has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor name.
        name: String,
        /// The shape implied by the config.
        expected: Vec<usize>,
        /// The shape found in the file (or in the input).
        actual: Vec<usize>,
    },

    /// A tensor is stored with a dtype that cannot be converted to f32.
    #[error("tensor {name} has dtype {dtype}, expected F32, F16 or BF16")]
    UnsupportedDtype {
        /// The tensor name.
        name: String,
        /// The dtype found, as `safetensors` spells it.
        dtype: String,
    },

    /// `config.json` is not valid JSON or lacks a field.
    #[error("cannot parse config {path}")]
    ConfigParse {
        /// The config file.
        path: PathBuf,
        /// The JSON error; its message names the missing or malformed field.
        #[source]
        source: serde_json::Error,
    },

    /// `config.json` parsed, but a field has a value this crate cannot run.
    #[error("bad config field `{field}`: {reason}")]
    ConfigInvalid {
        /// The offending field of `config.json`.
        field: &'static str,
        /// Why the value is rejected.
        reason: String,
    },

    /// `tokenizer.json` could not be loaded or configured.
    #[error("cannot load tokenizer {path}")]
    TokenizerLoad {
        /// The tokenizer file.
        path: PathBuf,
        /// The `tokenizers` crate's error.
        #[source]
        source: BoxedError,
    },

    /// The tokenizer failed to encode a text.
    #[error("cannot tokenize text #{index} of the batch")]
    TokenizerEncode {
        /// Index of the text in the batch.
        index: usize,
        /// The `tokenizers` crate's error.
        #[source]
        source: BoxedError,
    },

    /// An input to a forward pass is inconsistent (lengths, ids out of range, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A device tensor cannot be built: its shape overflows, has no dimensions, or
    /// needs more bytes than its buffer holds.
    #[error("tensor {tensor}: {reason}")]
    BadTensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An op was given a tensor whose shape, dtype or device disagrees with the
    /// op's other tensors.
    #[error("{op}: tensor {tensor} has {actual}, expected {expected}")]
    OpMismatch {
        /// The op (`linear`, `attention`, ...).
        op: &'static str,
        /// The tensor's name.
        tensor: String,
        /// What the op needs.
        expected: String,
        /// What it was given.
        actual: String,
    },

    /// The runtime failed (lane, allocator, device, CUDA).
    #[error(transparent)]
    Runtime(#[from] lanes::Error),

    /// The operation is not available on this device or in this build.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// `Result` with [`NnError`].
pub type Result<T, E = NnError> = std::result::Result<T, E>;
