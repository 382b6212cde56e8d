//! The embedding routes: `POST /v1/embeddings` (OpenAI) and `POST /embed` =
//! `POST /` (text-embeddings-inference). Handlers parse, submit to the engine
//! and await its handle within the request deadline; no inference and no
//! blocking on the async threads (big inputs are prepared and big responses
//! serialized on the blocking pool). A client that goes away drops the
//! handler, hence the handle, which cancels the request's queued work.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use lanes_serve::{Embedding, Input, Options, ServeError};
use serde::Serialize;
use serde_json::{Map, Value};

use super::access::Usage;
use super::api::{
    base64_f32, dimensions, direction, inputs, json_object, kind, opt_bool, opt_str, read_body,
    ApiError, Flavor,
};
use super::app::App;

/// Inputs with more text than this are prepared on the blocking pool.
const INLINE_BYTES: usize = 16 * 1024;

/// Reads the body as a JSON object.
pub async fn body_object(
    app: &App,
    req: Request,
    flavor: Flavor,
) -> Result<Map<String, Value>, ApiError> {
    let (parts, body) = req.into_parts();
    let l = &app.limits;
    let bytes = read_body(
        &parts.headers,
        body,
        l.max_body_bytes,
        l.body_timeout,
        flavor,
    )
    .await?;
    json_object(&bytes, flavor)
}

/// Prepends the prompt (`prompt_name`, else the default prompt) to text inputs.
fn apply_prompt(
    app: &App,
    map: &Map<String, Value>,
    input: Input,
    flavor: Flavor,
) -> Result<Input, ApiError> {
    let name = opt_str(map, "prompt_name", flavor)?;
    match (app.prompt(name, flavor)?, input) {
        (Some(p), Input::Texts(texts)) => Ok(Input::Texts(
            texts.into_iter().map(|t| format!("{p}{t}")).collect(),
        )),
        (_, input) => Ok(input),
    }
}

/// Submits `input` and awaits the answer within the request deadline.
async fn run(
    app: &App,
    input: Input,
    mut options: Options,
    field: &'static str,
    flavor: Flavor,
) -> Result<Vec<Embedding>, ApiError> {
    let ready = app.ready(flavor)?.clone();
    let timeout = app.limits.request_timeout;
    let deadline = Instant::now() + timeout;
    options.deadline = Some(deadline);
    let bytes: usize = match &input {
        Input::Texts(t) => t.iter().map(String::len).sum(),
        Input::Ids(l) => l.iter().map(Vec::len).sum::<usize>() * 4,
    };
    let submitted = if bytes <= INLINE_BYTES {
        ready.engine.submit(input, options)
    } else {
        let r = ready.clone();
        match tokio::task::spawn_blocking(move || r.engine.submit(input, options)).await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Inference(format!(
                "the tokenizer task failed: {e}"
            ))),
        }
    };
    let handle = submitted.map_err(|e| ApiError::from_engine(e, field, flavor))?;
    match tokio::time::timeout_at(deadline.into(), handle).await {
        Ok(r) => r.map_err(|e| ApiError::from_engine(e, field, flavor)),
        // Dropping the handle (the timed-out future) dropped the work.
        Err(_) => Err(ApiError::from_engine(
            ServeError::DeadlineExceeded(timeout),
            field,
            flavor,
        )),
    }
}

/// Serializes `value` as the JSON response body (off the async threads when
/// big), with the usage for the access log.
async fn json_response<T: Serialize + Send + 'static>(
    value: T,
    usage: Usage,
    flavor: Flavor,
) -> Response {
    let encode = move || serde_json::to_vec(&value);
    let bytes = if usage.texts > 16 {
        match tokio::task::spawn_blocking(encode).await {
            Ok(r) => r,
            Err(e) => Err(serde_json::Error::io(std::io::Error::other(e.to_string()))),
        }
    } else {
        encode()
    };
    let mut response = match bytes {
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
    };
    response.extensions_mut().insert(usage);
    response
}

fn usage_of(embeddings: &[Embedding]) -> Usage {
    Usage {
        texts: embeddings.len(),
        tokens: embeddings.iter().map(|e| e.tokens).sum(),
    }
}

#[derive(Serialize)]
struct OpenAiResponse {
    object: &'static str,
    data: Vec<OpenAiItem>,
    model: String,
    usage: OpenAiUsage,
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
struct OpenAiUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// `POST /v1/embeddings` (OpenAI): `input` (string, strings, token ids, lists
/// of token ids), `model`, `encoding_format` (`float`, `base64`), `dimensions`
/// (Matryoshka: the first N components, renormalized), `user` (ignored);
/// extensions: `truncate`, `truncation_direction`, `prompt_name`.
pub async fn openai_embeddings(State(app): State<Arc<App>>, req: Request) -> Response {
    openai(&app, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn openai(app: &App, req: Request) -> Result<Response, ApiError> {
    const F: Flavor = Flavor::OpenAi;
    let mut map = body_object(app, req, F).await?;
    let input = inputs(&mut map, "input", app.limits.max_client_batch_size, F)?;
    match map.get("model") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(other) => {
            return Err(ApiError::bad(
                F,
                "model",
                format!("`model` must be a string, not {}", kind(other)),
            ))
        }
    }
    let base64 = match map.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(other) => {
            let msg = format!("`encoding_format` must be \"float\" or \"base64\", not {other}");
            return Err(ApiError::bad(F, "encoding_format", msg));
        }
    };
    let options = Options {
        truncate: opt_bool(&map, "truncate", F)?.unwrap_or(app.limits.auto_truncate),
        direction: direction(&map, F)?,
        normalize: true,
        dimensions: dimensions(&map, F)?,
        deadline: None,
    };
    let input = apply_prompt(app, &map, input, F)?;
    let embeddings = run(app, input, options, "input", F).await?;
    let usage = usage_of(&embeddings);
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
        usage: OpenAiUsage {
            prompt_tokens: usage.tokens,
            total_tokens: usage.tokens,
        },
    };
    Ok(json_response(response, usage, F).await)
}

/// `POST /embed` and `POST /` (text-embeddings-inference): `inputs`,
/// `normalize` (false: the raw mean-pooled vector), `truncate`,
/// `truncation_direction`, `prompt_name`, `dimensions`. Answers an array of
/// vectors.
pub async fn tei_embed(State(app): State<Arc<App>>, req: Request) -> Response {
    tei(&app, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn tei(app: &App, req: Request) -> Result<Response, ApiError> {
    const F: Flavor = Flavor::Tei;
    let mut map = body_object(app, req, F).await?;
    // OpenAI's field name is taken too, for clients that mix the two APIs.
    if !map.contains_key("inputs") {
        if let Some(v) = map.remove("input") {
            map.insert("inputs".into(), v);
        }
    }
    let input = inputs(&mut map, "inputs", app.limits.max_client_batch_size, F)?;
    let normalize = opt_bool(&map, "normalize", F)?.unwrap_or(true);
    let options = Options {
        truncate: opt_bool(&map, "truncate", F)?.unwrap_or(app.limits.auto_truncate),
        direction: direction(&map, F)?,
        normalize,
        dimensions: dimensions(&map, F)?,
        deadline: None,
    };
    let input = apply_prompt(app, &map, input, F)?;
    let embeddings = run(app, input, options, "inputs", F).await?;
    let usage = usage_of(&embeddings);
    let vectors: Vec<Vec<f32>> = embeddings.into_iter().map(|e| e.vector).collect();
    Ok(json_response(vectors, usage, F).await)
}
