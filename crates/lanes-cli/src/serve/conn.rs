//! Accepting and serving connections with hyper's HTTP/1, with the limits a
//! public server needs:
//!
//! - at most `max_connections` open: past that a new connection is answered
//!   `503` with `Connection: close` and closed at once (a client retries),
//!   so an idle flood costs one accept each and never a held socket;
//! - `header_timeout`: a request's headers must arrive in time (slowloris),
//!   and a new connection must start its first request within it;
//! - `idle_timeout`: a keep-alive connection with no request in flight is
//!   closed after this long;
//! - shutdown: stop accepting (the listener is closed), let each connection
//!   finish its requests in flight and close; at the deadline, close the
//!   laggards by force.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tower::ServiceExt;

use super::access::{ClientAddr, HttpMetrics};

/// Connection limits.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

/// The answer to a connection past `--max-connections`.
const AT_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 90\r\n\r\n{\"error\":\"too many open connections (--max-connections); retry\",\"error_type\":\"Overloaded\"}";

/// Counts open connections; wakes the shutdown when the last one closes.
#[derive(Default)]
pub struct Open {
    n: AtomicUsize,
    zero: Notify,
}

impl Open {
    /// Connections open now.
    pub fn count(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }

    /// Waits until no connection is open.
    pub async fn drained(&self) {
        loop {
            let notified = self.zero.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct OpenGuard(Arc<Open>, Arc<HttpMetrics>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.1.connections.dec();
        if self.0.n.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

/// Accepts until `stop` turns true, then closes the listener and returns.
pub async fn accept_loop(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    metrics: Arc<HttpMetrics>,
    open: Arc<Open>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stopped(&mut stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // At the cap: say so and close, without waiting on the client.
            metrics.connections_refused.inc();
            let _ = stream.try_write(AT_CAPACITY);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        open.n.fetch_add(1, Ordering::SeqCst);
        metrics.connections.inc();
        let guard = OpenGuard(open.clone(), metrics.clone());
        let (router, metrics, stop) = (router.clone(), metrics.clone(), stop.clone());
        tokio::spawn(async move {
            serve_connection(stream, peer, router, limits, &metrics, stop).await;
            drop(guard);
            drop(permit);
        });
    }
    drop(listener);
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}

/// Per-connection activity, for the idle timeout.
struct Activity {
    active: AtomicUsize,
    /// Requests started on this connection.
    started: AtomicU64,
    /// Milliseconds since `start` of the last request's end.
    last: AtomicU64,
    start: Instant,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::SeqCst);
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last.load(Ordering::SeqCst));
        Some(self.start.elapsed().saturating_sub(last))
    }
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnLimits,
    metrics: &HttpMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity {
        active: AtomicUsize::new(0),
        started: AtomicU64::new(0),
        last: AtomicU64::new(0),
        start: Instant::now(),
    });
    let act = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        act.active.fetch_add(1, Ordering::SeqCst);
        act.started.fetch_add(1, Ordering::SeqCst);
        let busy = Busy(act.clone());
        req.extensions_mut().insert(ClientAddr(peer));
        let router = router.clone();
        async move {
            let response = router.oneshot(req.map(axum::body::Body::new)).await;
            drop(busy);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let tick = limits
        .idle_timeout
        .min(limits.header_timeout)
        .min(Duration::from_millis(250));
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        metrics.connections_timed_out.inc();
                    }
                    tracing::debug!("connection from {peer}: {e}");
                }
                return;
            }
            () = stopped(&mut stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(tick) => {
                // Before its first request a connection gets the header
                // timeout; between requests, the idle timeout.
                let limit = if activity.started.load(Ordering::SeqCst) == 0 {
                    limits.header_timeout
                } else {
                    limits.idle_timeout
                };
                if activity.idle_for().is_some_and(|d| d >= limit) {
                    metrics.connections_timed_out.inc();
                    tracing::debug!("connection from {peer}: idle for {limit:?}, closed");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_at_capacity_answer_is_well_formed() {
        let text = std::str::from_utf8(AT_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }
}
