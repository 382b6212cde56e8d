//! Counters and histograms for `GET /metrics`, rendered in the Prometheus text
//! format (version 0.0.4). Everything is an atomic or a short critical section:
//! recording a request never waits on a worker.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use lanes::DeviceStats;

/// Request latency buckets, in seconds.
const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Texts per forward pass.
const BATCH_TEXT_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Padded tokens per forward pass (texts × longest text).
const BATCH_TOKEN_BOUNDS: &[f64] = &[
    16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];

/// The routes requests are counted under; anything else is `other`, so a
/// scanner cannot blow up the number of series.
pub const ROUTES: [&str; 5] = ["/v1/embeddings", "/embed", "/health", "/metrics", "other"];

/// Index into [`ROUTES`] of a request path.
pub fn route_index(path: &str) -> usize {
    ROUTES.iter().take(4).position(|r| *r == path).unwrap_or(4)
}

/// A fixed-bucket histogram. `sum` is kept in `1/scale` units as an integer.
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound (non-cumulative), then the overflow bucket.
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
    scale: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64], scale: f64) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(
            (value.max(0.0) * self.scale).round() as u64,
            Ordering::Relaxed,
        );
    }

    /// Observations so far.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum.load(Ordering::Relaxed) as f64 / self.scale;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Everything the server counts.
pub struct Metrics {
    /// Responses by (route index, status code).
    responses: Mutex<BTreeMap<(usize, u16), u64>>,
    /// Latency of the two embedding routes (index 0 and 1 of [`ROUTES`]).
    latency: [Histogram; 2],
    /// Embedding requests being handled now (parsed, queued, or running).
    pub in_flight: AtomicUsize,
    /// Forward passes run.
    pub batches: AtomicU64,
    /// Texts per forward pass.
    pub batch_texts: Histogram,
    /// Padded tokens per forward pass.
    pub batch_tokens: Histogram,
    /// Texts embedded (successfully).
    pub texts: AtomicU64,
    /// Real tokens embedded.
    pub tokens: AtomicU64,
    /// Forward passes that failed (error or panic).
    pub batch_failures: AtomicU64,
    /// Panics caught in workers.
    pub worker_panics: AtomicU64,
    /// Requests whose client went away before a worker reached them.
    pub cancelled: AtomicU64,
    /// Workers inside a forward pass now.
    pub workers_busy: AtomicUsize,
    /// Worker threads running (each holds one lane).
    pub workers_alive: AtomicUsize,
    /// Requests a worker has taken from the queue and not yet answered.
    pub jobs_in_workers: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            responses: Mutex::new(BTreeMap::new()),
            latency: [
                Histogram::new(LATENCY_BOUNDS, 1e6),
                Histogram::new(LATENCY_BOUNDS, 1e6),
            ],
            in_flight: AtomicUsize::new(0),
            batches: AtomicU64::new(0),
            batch_texts: Histogram::new(BATCH_TEXT_BOUNDS, 1.0),
            batch_tokens: Histogram::new(BATCH_TOKEN_BOUNDS, 1.0),
            texts: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            batch_failures: AtomicU64::new(0),
            worker_panics: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            workers_busy: AtomicUsize::new(0),
            workers_alive: AtomicUsize::new(0),
            jobs_in_workers: AtomicUsize::new(0),
        }
    }
}

/// What the render needs besides the counters: sampled at scrape time.
pub struct Snapshot {
    pub queued_requests: usize,
    pub queued_texts: usize,
    pub queue_capacity: usize,
    pub workers: usize,
    pub device: DeviceStats,
}

impl Metrics {
    /// Embedding requests in flight that no worker holds yet: being read,
    /// parsed, tokenized, or queued. Only these can join a batch being formed.
    pub fn requests_on_the_way(&self) -> usize {
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        in_flight.saturating_sub(self.jobs_in_workers.load(Ordering::SeqCst))
    }

    /// Counts one response; `latency` is recorded for the embedding routes only.
    pub fn record(&self, route: usize, status: u16, latency: Duration) {
        *self
            .responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((route, status))
            .or_insert(0) += 1;
        if let Some(h) = self.latency.get(route) {
            h.observe(latency.as_secs_f64());
        }
    }

    /// Responses with this status so far, over all routes.
    pub fn responses_with(&self, status: u16) -> u64 {
        let map = self
            .responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .filter(|((_, s), _)| *s == status)
            .map(|(_, n)| n)
            .sum()
    }

    /// The Prometheus text exposition.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut out = String::with_capacity(8192);
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };

        head(
            &mut out,
            "lanes_http_requests_total",
            "counter",
            "HTTP responses by route and status code.",
        );
        let responses = self
            .responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for ((route, code), n) in &responses {
            let path = ROUTES.get(*route).copied().unwrap_or("other");
            let _ = writeln!(
                out,
                "lanes_http_requests_total{{path=\"{path}\",code=\"{code}\"}} {n}"
            );
        }
        head(
            &mut out,
            "lanes_http_request_duration_seconds",
            "histogram",
            "Latency of embedding requests, from the first byte handled to the response.",
        );
        for (i, h) in self.latency.iter().enumerate() {
            h.render(
                &mut out,
                "lanes_http_request_duration_seconds",
                &format!("path=\"{}\"", ROUTES[i]),
            );
        }
        let gauges: [(&str, &str, u64); 7] = [
            (
                "lanes_workers",
                "Worker threads configured (--workers).",
                snap.workers as u64,
            ),
            (
                "lanes_http_requests_in_flight",
                "Embedding requests being handled now.",
                self.in_flight.load(Ordering::Relaxed) as u64,
            ),
            (
                "lanes_queue_requests",
                "Requests waiting for a worker.",
                snap.queued_requests as u64,
            ),
            (
                "lanes_queue_texts",
                "Texts waiting for a worker (the queue bound counts texts).",
                snap.queued_texts as u64,
            ),
            (
                "lanes_queue_capacity_texts",
                "The queue bound (--queue), in texts.",
                snap.queue_capacity as u64,
            ),
            (
                "lanes_workers_alive",
                "Worker threads running, each holding one lane.",
                self.workers_alive.load(Ordering::Relaxed) as u64,
            ),
            (
                "lanes_workers_busy",
                "Workers inside a forward pass now (lanes in use).",
                self.workers_busy.load(Ordering::Relaxed) as u64,
            ),
        ];
        for (name, help, v) in gauges {
            head(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {v}");
        }
        let d = &snap.device;
        let device: [(&str, &str, u64); 5] = [
            ("lanes_lanes", "Lanes in the device's pool.", d.lanes as u64),
            (
                "lanes_leases_outstanding",
                "Lanes leased now (one per worker).",
                d.leases_outstanding as u64,
            ),
            (
                "lanes_alloc_allocated_bytes",
                "Bytes in live allocator blocks.",
                d.alloc.allocated_bytes as u64,
            ),
            (
                "lanes_alloc_reserved_bytes",
                "Bytes the allocator holds from the backend.",
                d.alloc.reserved_bytes as u64,
            ),
            (
                "lanes_alloc_peak_allocated_bytes",
                "Highest allocated bytes seen.",
                d.alloc.peak_allocated as u64,
            ),
        ];
        for (name, help, v) in device {
            head(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {v}");
        }
        let counters: [(&str, &str, u64); 7] = [
            (
                "lanes_batches_total",
                "Forward passes run.",
                self.batches.load(Ordering::Relaxed),
            ),
            (
                "lanes_texts_total",
                "Texts embedded.",
                self.texts.load(Ordering::Relaxed),
            ),
            (
                "lanes_tokens_total",
                "Real (unpadded) tokens embedded.",
                self.tokens.load(Ordering::Relaxed),
            ),
            (
                "lanes_batch_failures_total",
                "Forward passes that failed (error or panic).",
                self.batch_failures.load(Ordering::Relaxed),
            ),
            (
                "lanes_worker_panics_total",
                "Panics caught in workers (the worker kept serving).",
                self.worker_panics.load(Ordering::Relaxed),
            ),
            (
                "lanes_requests_cancelled_total",
                "Requests dropped because the client left before a worker reached them.",
                self.cancelled.load(Ordering::Relaxed),
            ),
            (
                "lanes_alloc_oom_total",
                "Allocations that failed for lack of memory.",
                d.alloc.oom_events,
            ),
        ];
        for (name, help, v) in counters {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        }
        head(
            &mut out,
            "lanes_batch_size_texts",
            "histogram",
            "Texts per forward pass.",
        );
        self.batch_texts
            .render(&mut out, "lanes_batch_size_texts", "");
        head(
            &mut out,
            "lanes_batch_padded_tokens",
            "histogram",
            "Padded tokens (texts x longest) per forward pass.",
        );
        self.batch_tokens
            .render(&mut out, "lanes_batch_padded_tokens", "");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 2.0], 1.0);
        for v in [0.5, 1.0, 1.5, 9.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(route_index("/v1/embeddings"), 0);
        assert_eq!(route_index("/embed"), 1);
        assert_eq!(route_index("/wp-admin"), 4);
        assert_eq!(route_index("other"), 4);
    }
}
