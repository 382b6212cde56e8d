//! The engine's counters, gauges and histograms, in a [`prometheus::Registry`]
//! that the front end may add its own series to and renders with
//! [`EngineMetrics::render`] (Prometheus text format). Recording is atomic
//! increments: a worker never waits on a scrape.

use lanes::DeviceStats;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};

/// Everything the engine counts.
pub struct EngineMetrics {
    registry: Registry,
    /// Forward passes run.
    pub batches: IntCounter,
    /// Texts embedded.
    pub texts: IntCounter,
    /// Tokens embedded.
    pub tokens: IntCounter,
    /// Forward passes that failed.
    pub batch_failures: IntCounter,
    /// Panics caught in workers.
    pub worker_panics: IntCounter,
    /// Requests abandoned by their caller before they were answered.
    pub cancelled: IntCounter,
    /// Requests whose deadline passed.
    pub expired: IntCounter,
    /// Worker threads configured.
    pub workers: IntGauge,
    /// Worker threads running.
    pub workers_alive: IntGauge,
    /// Workers inside a forward pass.
    pub workers_busy: IntGauge,
    /// Requests with queued rows.
    pub queue_requests: IntGauge,
    /// Texts queued.
    pub queue_texts: IntGauge,
    /// Tokens queued.
    pub queue_tokens: IntGauge,
    /// The queue bound in tokens.
    pub queue_capacity: IntGauge,
    /// Texts per forward pass.
    pub batch_texts: Histogram,
    /// Tokens per forward pass.
    pub batch_tokens: Histogram,
    device: [IntGauge; 5],
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help)).expect("a valid counter name");
    r.register(Box::new(c.clone()))
        .expect("a name registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help)).expect("a valid gauge name");
    r.register(Box::new(g.clone()))
        .expect("a name registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid histogram buckets");
    r.register(Box::new(h.clone()))
        .expect("a name registered once");
    h
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics::new()
    }
}

impl EngineMetrics {
    /// Every engine series, registered in a fresh registry.
    pub fn new() -> EngineMetrics {
        let r = Registry::new();
        let pow2 = |from: f64, n: usize| (0..n).map(|i| from * 2f64.powi(i as i32)).collect();
        EngineMetrics {
            batches: counter(&r, "lanes_batches_total", "Forward passes run."),
            texts: counter(&r, "lanes_texts_total", "Texts embedded."),
            tokens: counter(&r, "lanes_tokens_total", "Tokens embedded."),
            batch_failures: counter(&r, "lanes_batch_failures_total", "Forward passes that failed (error or panic)."),
            worker_panics: counter(&r, "lanes_worker_panics_total", "Panics caught in workers (the worker kept serving)."),
            cancelled: counter(&r, "lanes_requests_cancelled_total", "Requests abandoned by their client (disconnect) before they were answered; their queued work was dropped."),
            expired: counter(&r, "lanes_requests_expired_total", "Requests whose deadline passed; their queued work was dropped."),
            workers: gauge(&r, "lanes_workers", "Worker threads configured (--workers)."),
            workers_alive: gauge(&r, "lanes_workers_alive", "Worker threads running, each holding one lane."),
            workers_busy: gauge(&r, "lanes_workers_busy", "Workers inside a forward pass now (lanes in use)."),
            queue_requests: gauge(&r, "lanes_queue_requests", "Requests with rows waiting for a worker."),
            queue_texts: gauge(&r, "lanes_queue_texts", "Texts waiting for a worker."),
            queue_tokens: gauge(&r, "lanes_queue_tokens", "Tokens waiting for a worker (the queue bound counts tokens)."),
            queue_capacity: gauge(&r, "lanes_queue_capacity_tokens", "The queue bound (--max-queue-tokens)."),
            batch_texts: histogram(&r, "lanes_batch_size_texts", "Texts per forward pass.", pow2(1.0, 12)),
            batch_tokens: histogram(&r, "lanes_batch_tokens", "Tokens per forward pass.", pow2(16.0, 13)),
            device: [
                gauge(&r, "lanes_lanes", "Lanes in the device's pool."),
                gauge(&r, "lanes_leases_outstanding", "Lanes leased now (one per worker)."),
                gauge(&r, "lanes_alloc_allocated_bytes", "Bytes in live allocator blocks."),
                gauge(&r, "lanes_alloc_reserved_bytes", "Bytes the allocator holds from the backend."),
                gauge(&r, "lanes_alloc_peak_allocated_bytes", "Highest allocated bytes seen."),
            ],
            registry: r,
        }
    }

    /// The registry, for a front end to register its own series in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Sets the device gauges from a fresh sample.
    pub fn set_device(&self, d: &DeviceStats) {
        let v = [
            d.lanes,
            d.leases_outstanding,
            d.alloc.allocated_bytes,
            d.alloc.reserved_bytes,
            d.alloc.peak_allocated,
        ];
        for (g, v) in self.device.iter().zip(v) {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    /// Every registered series in the Prometheus text format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# cannot encode metrics: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_render_in_the_text_format() {
        let m = EngineMetrics::new();
        m.cancelled.inc();
        m.batch_tokens.observe(20.0);
        let text = m.render();
        assert!(
            text.contains("lanes_requests_cancelled_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lanes_batch_tokens_bucket{le=\"32\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lanes_batch_tokens_bucket{le=\"16\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE lanes_queue_tokens gauge"), "{text}");
    }
}
