//! The routes around embedding: `GET /health`, `GET /metrics`, `GET /info`
//! (text-embeddings-inference's shape), `GET /v1/models` (OpenAI),
//! `POST /tokenize`, `POST /decode`, and the JSON 404/405.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use lanes_serve::Input;
use serde_json::{json, Value};

use super::api::{inputs, opt_bool, opt_str, ApiError, Flavor};
use super::app::App;
use super::embed::body_object;

/// `GET /health`: 200 once the model is loaded and every worker runs;
/// 503 `loading`, `shutting down` or `degraded` otherwise.
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let stopping = app.shutting_down.load(Ordering::SeqCst);
    let (status, body) = match app.ready.get() {
        None => (
            "loading",
            json!({"status": "loading", "model": app.model_name}),
        ),
        Some(r) => {
            let alive = r.engine.metrics().workers_alive.get();
            let status = match (stopping, alive == r.workers as i64) {
                (true, _) => "shutting down",
                (false, true) => "ok",
                (false, false) => "degraded: a worker stopped",
            };
            (
                status,
                json!({
                    "status": status,
                    "model": app.model_name,
                    "device": r.device,
                    "workers": r.workers,
                    "workers_alive": alive,
                }),
            )
        }
    };
    let status = if stopping { "shutting down" } else { status };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = body;
    body["status"] = json!(status);
    (code, Json(body)).into_response()
}

/// `GET /metrics`: the engine's and the HTTP side's series, Prometheus text.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut text = app.http.render();
    if let Some(r) = app.ready.get() {
        let m = r.engine.metrics();
        m.set_device(&r.engine.encoder().device().stats());
        text.push_str(&m.render());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /info`: the model and the server's limits, as text-embeddings-inference names them.
pub async fn info(State(app): State<Arc<App>>) -> Response {
    let r = match app.ready(Flavor::Tei) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let l = &app.limits;
    Json(json!({
        "model_id": app.model_name,
        "model_sha": null,
        "model_dtype": r.dtype,
        "model_type": {"embedding": {"pooling": "mean"}},
        "max_concurrent_requests": l.max_connections,
        "max_input_length": r.engine.max_input_length(),
        "max_batch_tokens": r.max_batch_tokens,
        "max_batch_requests": null,
        "max_client_batch_size": l.max_client_batch_size,
        "auto_truncate": l.auto_truncate,
        "tokenization_workers": 1,
        "hidden_size": r.engine.hidden_size(),
        "device": r.device,
        "workers": r.workers,
        "prompts": l.prompts,
        "default_prompt": l.default_prompt,
        "version": env!("CARGO_PKG_VERSION"),
        "sha": null,
        "docker_label": null,
    }))
    .into_response()
}

/// `GET /v1/models`: the one model, OpenAI's list shape.
pub async fn models(State(app): State<Arc<App>>) -> Response {
    Json(json!({
        "object": "list",
        "data": [{"id": app.model_name, "object": "model", "created": 0, "owned_by": "lanes"}],
    }))
    .into_response()
}

/// `POST /tokenize`: `inputs` (a string or strings), `add_special_tokens`
/// (default true), `prompt_name`. Answers, per input, its tokens with id,
/// text, whether special, and byte offsets (`start`/`stop`, null for special tokens).
pub async fn tokenize(State(app): State<Arc<App>>, req: Request) -> Response {
    tokenize_inner(&app, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn tokenize_inner(app: &App, req: Request) -> Result<Response, ApiError> {
    const F: Flavor = Flavor::Tei;
    let r = app.ready(F)?.clone();
    let mut map = body_object(app, req, F).await?;
    let Input::Texts(texts) = inputs(&mut map, "inputs", app.limits.max_client_batch_size, F)?
    else {
        return Err(ApiError::bad(
            F,
            "inputs",
            "`inputs` must be a string or an array of strings",
        ));
    };
    let special = opt_bool(&map, "add_special_tokens", F)?.unwrap_or(true);
    let prompt = app
        .prompt(opt_str(&map, "prompt_name", F)?, F)?
        .map(str::to_string);
    let out = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, ApiError> {
        let codec = r.engine.codec();
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let text = match &prompt {
                    Some(p) => format!("{p}{t}"),
                    None => t.clone(),
                };
                let tokens = codec
                    .tokens(i, &text, special)
                    .map_err(|e| ApiError::from_engine(e, "inputs", F))?;
                Ok(Value::Array(
                    tokens
                        .into_iter()
                        .map(|t| {
                            json!({"id": t.id, "text": t.text, "special": t.special,
                                   "start": t.span.map(|s| s.0), "stop": t.span.map(|s| s.1)})
                        })
                        .collect(),
                ))
            })
            .collect()
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            F,
            format!("the tokenizer task failed: {e}"),
        )
    })??;
    Ok(Json(out).into_response())
}

/// `POST /decode`: `ids` (token ids, or lists of them), `skip_special_tokens`
/// (default true). Answers one string per list.
pub async fn decode(State(app): State<Arc<App>>, req: Request) -> Response {
    decode_inner(&app, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn decode_inner(app: &App, req: Request) -> Result<Response, ApiError> {
    const F: Flavor = Flavor::Tei;
    let r = app.ready(F)?.clone();
    let mut map = body_object(app, req, F).await?;
    let Input::Ids(lists) = inputs(&mut map, "ids", app.limits.max_client_batch_size, F)? else {
        return Err(ApiError::bad(
            F,
            "ids",
            "`ids` must be an array of token ids or an array of arrays of token ids",
        ));
    };
    let skip = opt_bool(&map, "skip_special_tokens", F)?.unwrap_or(true);
    let codec = r.engine.codec();
    let mut out = Vec::with_capacity(lists.len());
    for (i, ids) in lists.iter().enumerate() {
        let text = codec.decode(ids, skip).map_err(|e| match e {
            lanes_serve::ServeError::TokenOutOfRange { position, id, vocab, .. } => ApiError::bad(
                F,
                "ids",
                format!("`ids[{i}][{position}]` is token id {id}, outside this model's vocabulary (ids 0..{vocab})"),
            ),
            e => ApiError::from_engine(e, "ids", F),
        })?;
        out.push(text);
    }
    Ok(Json(out).into_response())
}

pub async fn not_found(req: Request) -> ApiError {
    let msg = format!(
        "no route for {} {}; try POST /v1/embeddings, POST /embed, POST /tokenize, POST /decode, GET /info, GET /v1/models, GET /health, GET /metrics",
        req.method(),
        req.uri().path()
    );
    ApiError::new(StatusCode::NOT_FOUND, Flavor::OpenAi, msg)
}

pub async fn method_not_allowed(req: Request) -> ApiError {
    let msg = format!("{} is not allowed on {}", req.method(), req.uri().path());
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, Flavor::OpenAi, msg)
}
