//! Routes, handlers and responses. Handlers only parse, queue and await:
//! no inference and no blocking on the async threads (large responses are
//! serialized on the blocking pool).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lanes_nn::{Embedding, Encoder};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

use super::api::{base64_f32, json_object, kind, texts, ApiError, Flavor};
use super::metrics::{route_index, Metrics, Snapshot};
use super::plan::{tokenize, Seq};
use super::queue::{Job, PushError, Queue};

/// What every handler shares.
pub struct App {
    pub encoder: Arc<Encoder>,
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    pub device: lanes::Device,
    /// Reported as `model` in OpenAI responses.
    pub model_name: String,
    /// Embedding width (384 for MiniLM).
    pub hidden: usize,
    pub workers: usize,
    pub max_inputs: usize,
    pub max_body_bytes: usize,
    /// Set once a shutdown signal arrived: /health turns 503.
    pub shutting_down: AtomicBool,
    /// `--inject-faults` (testing only): texts `__lanes_fault:error__`,
    /// `__lanes_fault:panic__` and `__lanes_fault:sleep_ms=N__` make the forward
    /// pass that holds them fail, panic or sleep N ms (at most 10 s).
    pub inject_faults: bool,
}

/// The router: embedding routes, health, metrics, JSON 404/405.
pub fn router(app: Arc<App>) -> Router {
    let limit = app.max_body_bytes;
    Router::new()
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/embed", post(tei_embed))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

/// Counts every response by route and status; times and counts in flight the
/// embedding requests.
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = route_index(req.uri().path());
    let start = Instant::now();
    let _in_flight = (route < 2).then(|| InFlight::new(&app.metrics));
    let response = next.run(req).await;
    app.metrics
        .record(route, response.status().as_u16(), start.elapsed());
    response
}

/// Decrements the in-flight gauge when the request ends, also when the client
/// goes away and the handler is dropped.
struct InFlight(Arc<Metrics>);

impl InFlight {
    fn new(metrics: &Arc<Metrics>) -> InFlight {
        metrics.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(metrics.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bodies with more text than this are tokenized on the blocking pool, not
/// on an async thread.
const INLINE_TOKENIZE_BYTES: usize = 16 * 1024;

/// Tokenizes `texts` (truncating as the model does), queues them and awaits the
/// worker's answer.
async fn run(
    app: &App,
    texts: Vec<String>,
    field: &'static str,
    flavor: Flavor,
) -> Result<Vec<Embedding>, ApiError> {
    let bytes: usize = texts.iter().map(String::len).sum();
    let (encoder, inject) = (app.encoder.clone(), app.inject_faults);
    let tokenized = if bytes <= INLINE_TOKENIZE_BYTES {
        tokenize(&encoder, &texts, inject)
    } else {
        match tokio::task::spawn_blocking(move || tokenize(&encoder, &texts, inject)).await {
            Ok(r) => r,
            Err(e) => Err((0, format!("the tokenizer task failed: {e}"))),
        }
    };
    let seqs: Vec<Seq> = tokenized.map_err(|(i, e)| {
        ApiError::bad(
            flavor,
            field,
            format!("cannot tokenize `{field}[{i}]`: {e}"),
        )
    })?;
    let (tx, rx) = oneshot::channel();
    match app.queue.try_push(Job {
        seqs,
        reply: tx,
        enqueued: Instant::now(),
    }) {
        Ok(()) => {}
        Err((
            PushError::Full {
                queued_texts,
                capacity,
            },
            _,
        )) => {
            let msg = format!("server overloaded: {queued_texts} texts already queued (limit {capacity}); retry later");
            return Err(ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, flavor, msg)
            });
        }
        Err((PushError::Closed, _)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                flavor,
                "server is shutting down",
            ));
        }
    }
    match rx.await {
        Ok(Ok(embeddings)) => Ok(embeddings),
        Ok(Err(msg)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            flavor,
            msg,
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            flavor,
            "the worker stopped before answering this request",
        )),
    }
}

/// Serializes `value` as the JSON response body, off the async threads when big.
async fn json_response<T: Serialize + Send + 'static>(
    value: T,
    big: bool,
    flavor: Flavor,
) -> Response {
    let encode = move || serde_json::to_vec(&value);
    let bytes = if big {
        match tokio::task::spawn_blocking(encode).await {
            Ok(r) => r,
            Err(e) => {
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    flavor,
                    format!("cannot encode the response: {e}"),
                )
                .into_response()
            }
        }
    } else {
        encode()
    };
    match bytes {
        Ok(bytes) => (
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(bytes),
        )
            .into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            flavor,
            format!("cannot encode the response: {e}"),
        )
        .into_response(),
    }
}

#[derive(Serialize)]
struct OpenAiResponse {
    object: &'static str,
    data: Vec<OpenAiItem>,
    model: String,
    usage: Usage,
}

#[derive(Serialize)]
struct OpenAiItem {
    object: &'static str,
    embedding: Vector,
    index: usize,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// `POST /v1/embeddings` (OpenAI): `input`, optional `model`, `encoding_format`
/// (`float` or `base64`), `dimensions` (must be the model's), `user` (ignored).
async fn openai_embeddings(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    const F: Flavor = Flavor::OpenAi;
    let mut map = match json_object(body, F, app.max_body_bytes) {
        Ok(map) => map,
        Err(e) => return e.into_response(),
    };
    let texts = match texts(&mut map, "input", app.max_inputs, F) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match map.get("model") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(other) => {
            return ApiError::bad(
                F,
                "model",
                format!("`model` must be a string, not {}", kind(other)),
            )
            .into_response()
        }
    }
    let base64 = match map.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(other) => {
            let msg = format!("`encoding_format` must be \"float\" or \"base64\", not {other}");
            return ApiError::bad(F, "encoding_format", msg).into_response();
        }
    };
    if let Some(d) = map.get("dimensions").filter(|d| !d.is_null()) {
        let hidden = app.hidden;
        if d.as_u64() != Some(hidden as u64) {
            return ApiError::bad(
                F,
                "dimensions",
                format!("`dimensions` must be {hidden} (this model's width), not {d}"),
            )
            .into_response();
        }
    }
    let n = texts.len();
    let embeddings = match run(&app, texts, "input", F).await {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let tokens: usize = embeddings.iter().map(|e| e.tokens).sum();
    let data = embeddings
        .into_iter()
        .enumerate()
        .map(|(index, e)| OpenAiItem {
            object: "embedding",
            embedding: if base64 {
                Vector::Base64(base64_f32(&e.vector))
            } else {
                Vector::Float(e.vector)
            },
            index,
        })
        .collect();
    let response = OpenAiResponse {
        object: "list",
        data,
        model: app.model_name.clone(),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    json_response(response, n > 16, F).await
}

/// `POST /embed` (text-embeddings-inference): `inputs`, optional `normalize`
/// (only `true`: vectors are always L2-normalized) and `truncate` (inputs are
/// always truncated to the model's 256 tokens). Answers an array of vectors.
async fn tei_embed(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    const F: Flavor = Flavor::Tei;
    let mut map = match json_object(body, F, app.max_body_bytes) {
        Ok(map) => map,
        Err(e) => return e.into_response(),
    };
    let texts = match texts(&mut map, "inputs", app.max_inputs, F) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    for field in ["normalize", "truncate"] {
        match map.get(field) {
            None | Some(Value::Null) | Some(Value::Bool(_)) => {}
            Some(other) => {
                return ApiError::bad(
                    F,
                    "body",
                    format!("`{field}` must be a boolean, not {}", kind(other)),
                )
                .into_response()
            }
        }
    }
    if map.get("normalize") == Some(&Value::Bool(false)) {
        return ApiError::bad(
            F,
            "body",
            "`normalize: false` is not supported: this server returns L2-normalized embeddings",
        )
        .into_response();
    }
    let n = texts.len();
    match run(&app, texts, "inputs", F).await {
        Ok(embeddings) => {
            let vectors: Vec<Vec<f32>> = embeddings.into_iter().map(|e| e.vector).collect();
            json_response(vectors, n > 16, F).await
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /health`: 200 while the model is loaded and every worker runs.
async fn health(State(app): State<Arc<App>>) -> Response {
    let alive = app.metrics.workers_alive.load(Ordering::SeqCst);
    let stopping = app.shutting_down.load(Ordering::SeqCst);
    let status = match (stopping, alive == app.workers) {
        (true, _) => "shutting down",
        (false, true) => "ok",
        (false, false) => "degraded: a worker stopped",
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": status,
        "model": app.model_name,
        "device": app.device.name(),
        "workers": app.workers,
        "workers_alive": alive,
    });
    (code, axum::Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let (queued_requests, queued_texts) = app.queue.depth();
    let snap = Snapshot {
        queued_requests,
        queued_texts,
        queue_capacity: app.queue.capacity(),
        workers: app.workers,
        device: app.device.stats(),
    };
    let text = app.metrics.render(&snap);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    let msg = format!(
        "no route for {} {}; try POST /v1/embeddings, POST /embed, GET /health, GET /metrics",
        req.method(),
        req.uri().path()
    );
    ApiError::new(StatusCode::NOT_FOUND, Flavor::OpenAi, msg)
}

async fn method_not_allowed(req: Request) -> ApiError {
    let msg = format!("{} is not allowed on {}", req.method(), req.uri().path());
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, Flavor::OpenAi, msg)
}
