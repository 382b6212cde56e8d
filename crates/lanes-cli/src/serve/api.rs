//! Request parsing and error bodies: every refusal is a status and a JSON
//! message naming the field, in the shape of the API asked (OpenAI or
//! text-embeddings-inference). Bodies are read here, within the size limit and
//! the body timeout.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use lanes_serve::{Direction, Input, ServeError};
use serde_json::{Map, Value};

/// Which API's error shape to answer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `{"error": {"message", "type", "param", "code"}}`
    OpenAi,
    /// `{"error": "...", "error_type": "..."}` (text-embeddings-inference)
    Tei,
}

/// An error response: status, message, and the field it is about.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
    pub retry_after_secs: Option<u64>,
    pub flavor: Flavor,
}

impl ApiError {
    pub fn new(status: StatusCode, flavor: Flavor, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
            retry_after_secs: None,
            flavor,
        }
    }

    /// A 400 about `param`.
    pub fn bad(flavor: Flavor, param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param),
            ..ApiError::new(StatusCode::BAD_REQUEST, flavor, message)
        }
    }

    /// With a `Retry-After` header.
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The response for an engine error about the inputs in `field`.
    pub fn from_engine(e: ServeError, field: &'static str, flavor: Flavor) -> ApiError {
        let at = |status, msg: String| ApiError {
            param: Some(field),
            ..ApiError::new(status, flavor, msg)
        };
        match e {
            ServeError::Empty => ApiError::bad(flavor, field, format!("`{field}` must not be an empty array")),
            ServeError::Tokenize { index, message } => {
                ApiError::bad(flavor, field, format!("cannot tokenize `{field}[{index}]`: {message}"))
            }
            ServeError::TokenOutOfRange { index, position, id, vocab } => ApiError::bad(
                flavor,
                field,
                format!("`{field}[{index}][{position}]` is token id {id}, outside this model's vocabulary (ids 0..{vocab}); input {index} holds it"),
            ),
            ServeError::TooLong { index, tokens, max } => at(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("input {index} (`{field}[{index}]`) has {tokens} tokens, more than this model's maximum of {max}; send `truncate: true` or start the server with --auto-truncate"),
            ),
            ServeError::Dimensions { asked, hidden } => ApiError::bad(
                flavor,
                "dimensions",
                format!("`dimensions` must be between 1 and {hidden} (this model's width), not {asked}"),
            ),
            e @ ServeError::Overloaded { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, flavor, e.to_string()).retry_after(1)
            }
            e @ ServeError::ShuttingDown => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, flavor, e.to_string()),
            e @ ServeError::DeadlineExceeded(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, flavor, e.to_string()),
            e @ (ServeError::Inference(_) | ServeError::Start(_)) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, flavor, e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.flavor {
            Flavor::OpenAi => {
                let kind = match self.status.as_u16() {
                    401 => "authentication_error",
                    429 => "rate_limit_error",
                    503 => "service_unavailable",
                    504 => "timeout",
                    s if s >= 500 => "server_error",
                    _ => "invalid_request_error",
                };
                serde_json::json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": null}})
            }
            Flavor::Tei => {
                let kind = match self.status.as_u16() {
                    401 => "Unauthorized",
                    429 => "Overloaded",
                    503 => "Unhealthy",
                    s if s >= 500 => "Backend",
                    _ => "Validation",
                };
                serde_json::json!({"error": self.message, "error_type": kind})
            }
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Reads the whole body within `limit` bytes and `timeout`: 413 past the
/// limit (before reading, when Content-Length says so), 408 when the client
/// is too slow.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
    flavor: Flavor,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            flavor,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            flavor,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs()
            ),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(too_large())
            } else {
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    flavor,
                    format!("cannot read the request body: {e}"),
                ))
            }
        }
    }
}

/// The body as a JSON object, or a 400 naming what is wrong.
pub fn json_object(bytes: &[u8], flavor: Flavor) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::bad(
            flavor,
            "body",
            format!("request body must be a JSON object, not {}", kind(&other)),
        )),
        Err(e) => Err(ApiError::bad(
            flavor,
            "body",
            format!("request body is not valid JSON: {e}"),
        )),
    }
}

const INPUT_SHAPES: &str =
    "a string, an array of strings, an array of token ids, or an array of arrays of token ids";

/// `field` as the request's inputs: a string, an array of strings, an array
/// of token ids (one input) or an array of arrays of token ids; non-empty and
/// at most `max` inputs (413 past that).
pub fn inputs(
    map: &mut Map<String, Value>,
    field: &'static str,
    max: usize,
    flavor: Flavor,
) -> Result<Input, ApiError> {
    let bad = |msg: String| ApiError::bad(flavor, field, msg);
    let input = match map.remove(field) {
        None => return Err(bad(format!("missing field `{field}`: {INPUT_SHAPES}"))),
        Some(Value::String(s)) => Input::Texts(vec![s]),
        Some(Value::Array(items)) => match items.first() {
            None => return Err(bad(format!("`{field}` must not be an empty array"))),
            Some(Value::String(_)) => {
                let mut texts = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Value::String(s) => texts.push(s),
                        other => {
                            return Err(bad(format!(
                                "`{field}[{i}]` must be a string like the others, not {} (`{field}` must be {INPUT_SHAPES})",
                                kind(&other)
                            )))
                        }
                    }
                }
                Input::Texts(texts)
            }
            Some(Value::Number(_)) => Input::Ids(vec![ids(&items, field, None, flavor)?]),
            Some(Value::Array(_)) => {
                let mut lists = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Array(list) => lists.push(ids(list, field, Some(i), flavor)?),
                        other => {
                            return Err(bad(format!(
                                "`{field}[{i}]` must be an array of token ids like the others, not {}",
                                kind(other)
                            )))
                        }
                    }
                }
                Input::Ids(lists)
            }
            Some(other) => {
                return Err(bad(format!(
                    "`{field}[0]` must be a string, a token id or an array of token ids, not {} (`{field}` must be {INPUT_SHAPES})",
                    kind(other)
                )))
            }
        },
        Some(other) => {
            return Err(bad(format!(
                "`{field}` must be {INPUT_SHAPES}, not {}",
                kind(&other)
            )))
        }
    };
    if input.len() > max {
        let msg = format!(
            "`{field}` has {} items; this server accepts at most {max} per request (--max-client-batch-size)",
            input.len()
        );
        return Err(ApiError {
            param: Some(field),
            ..ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, flavor, msg)
        });
    }
    Ok(input)
}

/// An array of token ids (integers); `outer` is the input's index in a list of lists.
fn ids(
    items: &[Value],
    field: &'static str,
    outer: Option<usize>,
    flavor: Flavor,
) -> Result<Vec<i64>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(j, v)| {
            v.as_i64().ok_or_else(|| {
                let at = match outer {
                    Some(i) => format!("`{field}[{i}][{j}]`"),
                    None => format!("`{field}[{j}]`"),
                };
                ApiError::bad(
                    flavor,
                    field,
                    format!("{at} must be an integer token id, not {v}"),
                )
            })
        })
        .collect()
}

/// An optional boolean field.
pub fn opt_bool(
    map: &Map<String, Value>,
    field: &'static str,
    flavor: Flavor,
) -> Result<Option<bool>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::bad(
            flavor,
            field,
            format!("`{field}` must be a boolean, not {}", kind(other)),
        )),
    }
}

/// An optional string field.
pub fn opt_str<'a>(
    map: &'a Map<String, Value>,
    field: &'static str,
    flavor: Flavor,
) -> Result<Option<&'a str>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::bad(
            flavor,
            field,
            format!("`{field}` must be a string, not {}", kind(other)),
        )),
    }
}

/// `truncation_direction`: "Left" or "Right" (any case).
pub fn direction(map: &Map<String, Value>, flavor: Flavor) -> Result<Direction, ApiError> {
    match opt_str(map, "truncation_direction", flavor)? {
        None => Ok(Direction::Right),
        Some(s) if s.eq_ignore_ascii_case("right") => Ok(Direction::Right),
        Some(s) if s.eq_ignore_ascii_case("left") => Ok(Direction::Left),
        Some(s) => Err(ApiError::bad(
            flavor,
            "truncation_direction",
            format!("`truncation_direction` must be \"Left\" or \"Right\", not {s:?}"),
        )),
    }
}

/// `dimensions`: a positive integer (checked against the width by the engine).
pub fn dimensions(map: &Map<String, Value>, flavor: Flavor) -> Result<Option<usize>, ApiError> {
    match map.get("dimensions") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            None => Err(ApiError::bad(
                flavor,
                "dimensions",
                format!("`dimensions` must be a positive integer, not {v}"),
            )),
        },
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Little-endian f32 bytes in standard base64 (what OpenAI's `base64` format is).
pub fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_values() {
        // 1.0f32 = 00 00 80 3f; 0.0 = 00 00 00 00.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, 0.0]), "AACAPwAAAAA=");
        assert_eq!(base64_f32(&[]), "");
    }

    #[test]
    fn inputs_take_every_openai_shape_and_name_the_field() {
        let parse = |s: &str| {
            let mut m: Map<String, Value> = serde_json::from_str(s).unwrap();
            inputs(&mut m, "input", 2, Flavor::OpenAi)
        };
        assert_eq!(
            parse(r#"{"input": "a"}"#).unwrap(),
            Input::Texts(vec!["a".into()])
        );
        assert_eq!(
            parse(r#"{"input": ["a", ""]}"#).unwrap(),
            Input::Texts(vec!["a".into(), "".into()])
        );
        assert_eq!(
            parse(r#"{"input": [1, 2]}"#).unwrap(),
            Input::Ids(vec![vec![1, 2]])
        );
        assert_eq!(
            parse(r#"{"input": [[1], [2, 3]]}"#).unwrap(),
            Input::Ids(vec![vec![1], vec![2, 3]])
        );
        let msg = |s: &str| parse(s).unwrap_err().message;
        assert!(msg(r#"{"input": 3}"#).contains("`input` must be a string"));
        assert!(msg(r#"{"input": ["a", 3]}"#).contains("`input[1]` must be a string"));
        assert!(
            msg(r#"{"input": [[1], [2.5]]}"#).contains("`input[1][0]` must be an integer token id")
        );
        assert!(msg(r#"{"input": []}"#).contains("must not be an empty array"));
        assert!(msg(r#"{"inputs": "a"}"#).contains("missing field `input`"));
        assert_eq!(
            parse(r#"{"input": ["a", "b", "c"]}"#).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
