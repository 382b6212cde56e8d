//! Request parsing and error bodies for the embedding routes: every refusal is
//! a status and a JSON message naming the field, in the shape of the API asked
//! (OpenAI or text-embeddings-inference).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
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

    pub fn bad(flavor: Flavor, param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param),
            ..ApiError::new(StatusCode::BAD_REQUEST, flavor, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.flavor {
            Flavor::OpenAi => {
                let kind = match self.status.as_u16() {
                    429 => "rate_limit_error",
                    503 => "service_unavailable",
                    s if s >= 500 => "server_error",
                    _ => "invalid_request_error",
                };
                serde_json::json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": null}})
            }
            Flavor::Tei => {
                let kind = match self.status.as_u16() {
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

/// The body as a JSON object, or a 400/413 naming what is wrong.
pub fn json_object(
    body: Result<Bytes, BytesRejection>,
    flavor: Flavor,
    limit: usize,
) -> Result<Map<String, Value>, ApiError> {
    let bytes = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                flavor,
                format!("request body is larger than the limit of {limit} bytes"),
            )
        } else {
            ApiError::new(
                status,
                flavor,
                format!("cannot read the request body: {}", rejection.body_text()),
            )
        }
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
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

/// `field` as a list of texts: a string, or a non-empty array of strings of at
/// most `max` items.
pub fn texts(
    map: &mut Map<String, Value>,
    field: &'static str,
    max: usize,
    flavor: Flavor,
) -> Result<Vec<String>, ApiError> {
    let texts = match map.remove(field) {
        None => {
            return Err(ApiError::bad(
                flavor,
                field,
                format!("missing field `{field}`: a string or an array of strings"),
            ))
        }
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => {
            let mut texts = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(s) => texts.push(s),
                    other => {
                        return Err(ApiError::bad(
                            flavor,
                            field,
                            format!("`{field}[{i}]` must be a string, not {} (`{field}` must be a string or an array of strings)", kind(&other)),
                        ))
                    }
                }
            }
            texts
        }
        Some(other) => {
            return Err(ApiError::bad(
                flavor,
                field,
                format!(
                    "`{field}` must be a string or an array of strings, not {}",
                    kind(&other)
                ),
            ))
        }
    };
    if texts.is_empty() {
        return Err(ApiError::bad(
            flavor,
            field,
            format!("`{field}` must not be an empty array"),
        ));
    }
    if texts.len() > max {
        let msg = format!(
            "`{field}` has {} items; this server accepts at most {max} per request",
            texts.len()
        );
        return Err(ApiError {
            param: Some(field),
            ..ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, flavor, msg)
        });
    }
    Ok(texts)
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
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
        // 3 floats = 12 bytes: no padding.
        assert_eq!(base64_f32(&[0.0, 0.0, 0.0]).len(), 16);
    }

    #[test]
    fn texts_name_the_field() {
        let parse = |s: &str| {
            let mut m: Map<String, Value> = serde_json::from_str(s).unwrap();
            texts(&mut m, "input", 2, Flavor::OpenAi)
        };
        assert_eq!(parse(r#"{"input": "a"}"#).unwrap(), vec!["a"]);
        assert_eq!(parse(r#"{"input": ["a", ""]}"#).unwrap(), vec!["a", ""]);
        let e = parse(r#"{"input": 3}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.message
                .contains("`input` must be a string or an array of strings"),
            "{}",
            e.message
        );
        let e = parse(r#"{"input": ["a", 3]}"#).unwrap_err();
        assert!(
            e.message.contains("`input[1]` must be a string"),
            "{}",
            e.message
        );
        assert!(parse(r#"{"input": []}"#)
            .unwrap_err()
            .message
            .contains("must not be an empty array"));
        assert!(parse(r#"{"inputs": "a"}"#)
            .unwrap_err()
            .message
            .contains("missing field `input`"));
        assert_eq!(
            parse(r#"{"input": ["a", "b", "c"]}"#).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
