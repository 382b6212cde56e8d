//! What every handler shares ([`App`]): the engine once the model is loaded
//! (the port is bound first, so `/health` answers "loading" meanwhile), the
//! server's limits and prompts, the HTTP metrics, and the shutdown flag.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use lanes_serve::Engine;

use super::api::{ApiError, Flavor};
use super::metrics::HttpMetrics;

/// The loaded model and its engine.
pub struct Ready {
    /// The batching engine.
    pub engine: Engine,
    /// The device's name (`cpu`, `NVIDIA H200`).
    pub device: String,
    /// The precision the model computes in (`float32`, `float16`, `bfloat16`).
    pub dtype: &'static str,
    /// Worker threads.
    pub workers: usize,
    /// Token budget of one forward pass.
    pub max_batch_tokens: usize,
}

/// Limits and options fixed at start.
pub struct Limits {
    /// Most inputs in one request.
    pub max_client_batch_size: usize,
    /// Largest body, in bytes.
    pub max_body_bytes: usize,
    /// How long a body may take to arrive.
    pub body_timeout: Duration,
    /// Per-request deadline.
    pub request_timeout: Duration,
    /// Truncate over-long inputs instead of refusing them.
    pub auto_truncate: bool,
    /// `--prompt NAME=TEXT`.
    pub prompts: BTreeMap<String, String>,
    /// `--default-prompt TEXT`.
    pub default_prompt: Option<String>,
    /// `--api-key`.
    pub api_key: Option<String>,
    /// `--max-connections`.
    pub max_connections: usize,
}

/// Shared by every handler.
pub struct App {
    /// Set once the model is loaded.
    pub ready: OnceLock<Arc<Ready>>,
    /// Reported as `model` / `model_id`.
    pub model_name: String,
    /// Fixed limits.
    pub limits: Limits,
    /// HTTP series.
    pub http: Arc<HttpMetrics>,
    /// Set once a shutdown signal arrived: /health turns 503.
    pub shutting_down: AtomicBool,
}

impl App {
    /// The engine, or 503 while the model loads (or after a shutdown signal).
    pub fn ready(&self, flavor: Flavor) -> Result<&Arc<Ready>, ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                flavor,
                "the server is shutting down",
            ));
        }
        self.ready.get().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                flavor,
                "the model is still loading; retry when GET /health answers 200",
            )
            .retry_after(1)
        })
    }

    /// The text a `prompt_name` stands for (the default prompt without one).
    pub fn prompt(&self, name: Option<&str>, flavor: Flavor) -> Result<Option<&str>, ApiError> {
        match name {
            None => Ok(self.limits.default_prompt.as_deref()),
            Some(n) => match self.limits.prompts.get(n) {
                Some(p) => Ok(Some(p)),
                None => {
                    let known: Vec<&str> = self.limits.prompts.keys().map(String::as_str).collect();
                    let msg = if known.is_empty() {
                        format!("unknown `prompt_name` {n:?}: this server has no prompts (start it with --prompt NAME=TEXT)")
                    } else {
                        format!("unknown `prompt_name` {n:?}; this server knows {known:?}")
                    };
                    Err(ApiError::bad(flavor, "prompt_name", msg))
                }
            },
        }
    }
}
