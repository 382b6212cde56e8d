//! Every request passes here: the API key check (all routes but `/health`),
//! the HTTP series for `/metrics`, and one structured access-log line
//! (`tracing`, target `lanes::access`): method, path, status, latency, texts,
//! tokens and the client's address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use super::api::{ApiError, Flavor};
use super::app::App;

/// The client's address, put in each request's extensions by the connection.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// What an embedding response carried, for the access log.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub texts: usize,
    pub tokens: usize,
}

/// The routes requests are counted under; anything else is `other`, so a
/// scanner cannot blow up the number of series.
pub const ROUTES: [&str; 10] = [
    "/v1/embeddings",
    "/embed",
    "/",
    "/tokenize",
    "/decode",
    "/info",
    "/v1/models",
    "/health",
    "/metrics",
    "other",
];

fn route_label(path: &str) -> &'static str {
    ROUTES[..9]
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("other")
}

/// The HTTP side's series.
pub struct HttpMetrics {
    registry: Registry,
    responses: IntCounterVec,
    latency: HistogramVec,
    /// Requests being handled now (all routes).
    pub in_flight: IntGauge,
    /// Open connections.
    pub connections: IntGauge,
    /// Connections closed by a timeout (header, idle) or at the shutdown deadline.
    pub connections_timed_out: IntCounter,
    /// Connections refused (503 and closed) past `--max-connections`.
    pub connections_refused: IntCounter,
}

impl HttpMetrics {
    pub fn new() -> HttpMetrics {
        let registry = Registry::new();
        let responses = IntCounterVec::new(
            Opts::new(
                "lanes_http_requests_total",
                "HTTP responses by route and status code.",
            ),
            &["path", "code"],
        )
        .expect("valid counter");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "lanes_http_request_duration_seconds",
                "Latency of requests, from the first byte handled to the response.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
            &["path"],
        )
        .expect("valid histogram");
        let in_flight = IntGauge::new(
            "lanes_http_requests_in_flight",
            "Requests being handled now (all routes but /health and /metrics).",
        )
        .expect("valid gauge");
        let connections = IntGauge::new("lanes_http_connections", "Open client connections.")
            .expect("valid gauge");
        let connections_timed_out = IntCounter::new(
            "lanes_http_connections_timed_out_total",
            "Connections closed for a header or idle timeout, or at the shutdown deadline.",
        )
        .expect("valid counter");
        let connections_refused = IntCounter::new(
            "lanes_http_connections_refused_total",
            "Connections answered 503 and closed at once because --max-connections were open.",
        )
        .expect("valid counter");
        for c in [
            Box::new(connections_refused.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(responses.clone()),
            Box::new(latency.clone()),
            Box::new(in_flight.clone()),
            Box::new(connections.clone()),
            Box::new(connections_timed_out.clone()),
        ] {
            registry.register(c).expect("a name registered once");
        }
        HttpMetrics {
            registry,
            responses,
            latency,
            in_flight,
            connections,
            connections_timed_out,
            connections_refused,
        }
    }

    /// Counts one response.
    pub fn record(&self, path: &'static str, status: u16, latency: Duration) {
        self.responses
            .with_label_values(&[path, &status.to_string()])
            .inc();
        self.latency
            .with_label_values(&[path])
            .observe(latency.as_secs_f64());
    }

    /// Responses with this status so far, over all routes.
    pub fn responses_with(&self, status: u16) -> u64 {
        let code = status.to_string();
        self.responses
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "code" && l.value() == code)
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// The series in the Prometheus text format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# cannot encode metrics: {e}\n"))
    }
}

use prometheus::core::Collector as _;

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

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(route_label("/v1/embeddings"), "/v1/embeddings");
        assert_eq!(route_label("/"), "/");
        assert_eq!(route_label("/wp-admin"), "other");
    }
}
