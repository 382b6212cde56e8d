//! Every request passes here: the API key check (all routes but `/health`),
//! the HTTP series for `/metrics`, and one structured access-log line
//! (`tracing`, target `lanes::access`): method, path, status, latency, texts,
//! tokens and the client's address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::IntGauge;

use super::api::{read_body, ApiError, Flavor};
use super::app::App;
use super::metrics::route_label;

/// The client's address, put in each request's extensions by the connection.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// What an embedding response carried, for the access log.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub texts: usize,
    pub tokens: usize,
}

/// Decrements the in-flight gauge when the request ends, also when the
/// client goes away and the handler is dropped.
struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether `header` carries `Bearer KEY`.
fn authorized(header: Option<&HeaderValue>, key: &str) -> bool {
    let Some(token) = header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Compare in constant time over the key's length.
    let (a, b) = (token.trim().as_bytes(), key.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware: auth, metrics, access log.
pub async fn access(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let path = route_label(req.uri().path());
    let method = req.method().clone();
    let client = req
        .extensions()
        .get::<ClientAddr>()
        .map_or_else(|| "-".to_string(), |c| c.0.to_string());
    // Probes (/health, /metrics) are not counted in flight.
    let _in_flight = (path != "/health" && path != "/metrics").then(|| {
        app.http.in_flight.inc();
        InFlight(app.http.in_flight.clone())
    });
    let response = match &app.limits.api_key {
        Some(key)
            if path != "/health" && !authorized(req.headers().get(header::AUTHORIZATION), key) =>
        {
            let flavor = if path.starts_with("/v1/") {
                Flavor::OpenAi
            } else {
                Flavor::Tei
            };
            // Read the (bounded) body first, so the client is not cut off
            // mid-write and sees the 401.
            let l = &app.limits;
            let (parts, body) = req.into_parts();
            let _ = read_body(
                &parts.headers,
                body,
                l.max_body_bytes,
                l.body_timeout,
                flavor,
            )
            .await;
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                flavor,
                "missing or wrong API key: send `Authorization: Bearer KEY`",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        _ => next.run(req).await,
    };
    let latency = start.elapsed();
    let status = response.status().as_u16();
    app.http.record(path, status, latency);
    let usage = response
        .extensions()
        .get::<Usage>()
        .copied()
        .unwrap_or_default();
    tracing::info!(
        target: "lanes::access",
        method = %method,
        path,
        status,
        latency_ms = (latency.as_secs_f64() * 1e6).round() / 1e3,
        texts = usage.texts,
        tokens = usage.tokens,
        client = %client,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_key_must_match_exactly() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(authorized(Some(&h("Bearer sekrit")), "sekrit"));
        assert!(!authorized(Some(&h("Bearer sekri")), "sekrit"));
        assert!(!authorized(Some(&h("Basic sekrit")), "sekrit"));
        assert!(!authorized(None, "sekrit"));
    }
}
