//! The one error type of the engine, [`ServeError`]. Every variant names what
//! was wrong (which input, which token, which limit), so a front end (the HTTP
//! server, a Python binding) can turn it into a message without guessing.

use std::time::Duration;

/// Why the engine refused or failed a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServeError {
    /// The request has no inputs.
    #[error("the request has no inputs")]
    Empty,
    /// An input could not be tokenized.
    #[error("cannot tokenize input {index}: {message}")]
    Tokenize {
        /// Index of the input in the request.
        index: usize,
        /// The tokenizer's message.
        message: String,
    },
    /// A token id is outside the model's vocabulary.
    #[error("input {index}: token {position} is id {id}, outside this model's vocabulary of {vocab} ids")]
    TokenOutOfRange {
        /// Index of the input in the request.
        index: usize,
        /// Position of the token in that input.
        position: usize,
        /// The offending id.
        id: i64,
        /// Vocabulary size (valid ids are `0..vocab`).
        vocab: usize,
    },
    /// An input is longer than the model takes and truncation was not asked for.
    #[error("input {index} has {tokens} tokens, more than this model's maximum of {max}; send `truncate: true` or start the server with --auto-truncate")]
    TooLong {
        /// Index of the input in the request.
        index: usize,
        /// Its length in tokens (special tokens included).
        tokens: usize,
        /// The model's maximum.
        max: usize,
    },
    /// `dimensions` is 0 or wider than the model.
    #[error("`dimensions` must be between 1 and {hidden} (this model's width), not {asked}")]
    Dimensions {
        /// What was asked.
        asked: usize,
        /// The model's width.
        hidden: usize,
    },
    /// Admitting the request would exceed the queue bound (in tokens).
    #[error(
        "server overloaded: {queued_tokens} tokens already queued (limit {capacity}); retry later"
    )]
    Overloaded {
        /// Tokens queued when the request arrived.
        queued_tokens: usize,
        /// The bound.
        capacity: usize,
    },
    /// The engine is shutting down (or was never started).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The request's deadline passed before it was answered; its queued work
    /// was dropped.
    #[error("the request did not finish within its deadline of {0:?}; its work was dropped")]
    DeadlineExceeded(Duration),
    /// The engine could not start (workers, lanes, configuration).
    #[error("cannot start the engine: {0}")]
    Start(String),
    /// The forward pass failed (or panicked) for this request.
    #[error("{0}")]
    Inference(String),
}

impl ServeError {
    /// Whether the error is the caller's (bad input) rather than the server's.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            ServeError::Empty
                | ServeError::Tokenize { .. }
                | ServeError::TokenOutOfRange { .. }
                | ServeError::TooLong { .. }
                | ServeError::Dimensions { .. }
        )
    }
}

/// The engine's result type.
pub type Result<T, E = ServeError> = std::result::Result<T, E>;
