//! The figures of `lanes bench`: one measured cell (mode × dtype × threads ×
//! batch) as a JSON line or a table row, and the arithmetic every benchmark
//! shares (per-thread runs summed over their wall span, nearest-rank percentiles).

use std::time::Instant;

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;

/// How the threads reach the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A lane per thread.
    Lanes,
    /// One lane shared by all threads under a mutex (the before-state).
    GlobalLock,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Lanes => "lanes",
            Mode::GlobalLock => "global-lock",
        })
    }
}

/// One threads × batch cell of one mode.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    /// Always `model` (`alloc` for `lanes bench alloc`).
    pub kind: &'static str,
    /// `lanes` or `global-lock`.
    pub mode: Mode,
    /// The precision the encoder computed in (`float32`, `float16`, `bfloat16`).
    pub dtype: &'static str,
    /// The device.
    pub device: String,
    /// Threads.
    pub threads: usize,
    /// Sequences per forward call.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Sequences per second, all threads together.
    pub seq_per_s: f64,
    /// Median latency of a forward call.
    pub p50_ms: f64,
    /// 99th-percentile latency of a forward call.
    pub p99_ms: f64,
    /// seq/s(N) / (N × seq/s(1)) in the same mode and batch (`null` until that
    /// 1-thread cell has run: the `--threads` list runs in the order given).
    pub efficiency: Option<f64>,
    /// Forward calls measured.
    pub calls: usize,
    /// Measured wall time.
    pub seconds: f64,
    /// The first 12 hex digits of the source hash this binary was built from.
    pub source: &'static str,
}

/// The first 12 hex digits of this binary's source hash (every JSON line carries
/// it, so a figure can always be traced to the sources that produced it).
pub fn source() -> &'static str {
    let h = env!("LANES_SOURCE_HASH");
    h.get(..12).unwrap_or(h)
}

/// The table's header line.
pub fn table_header() -> String {
    format!(
        "{:<12} {:<9} {:<8} {:>7} {:>5} {:>5} {:>11} {:>9} {:>9} {:>10}",
        "mode",
        "dtype",
        "device",
        "threads",
        "batch",
        "seq",
        "seq/s",
        "p50 ms",
        "p99 ms",
        "efficiency"
    )
}

/// One cell as a table row.
pub fn table_row(c: &Cell) -> String {
    format!(
        "{:<12} {:<9} {:<8} {:>7} {:>5} {:>5} {:>11.1} {:>9.3} {:>9.3} {:>10}",
        c.mode.to_string(),
        c.dtype,
        c.device,
        c.threads,
        c.batch,
        c.seq,
        c.seq_per_s,
        c.p50_ms,
        c.p99_ms,
        c.efficiency.map_or("-".to_string(), |e| format!("{e:.2}"))
    )
}

/// Sums the counts of per-thread runs `(count, start, end)` and measures the wall
/// time from the first start to the last end, in seconds (0 for no runs). The first
/// failed run's error is returned.
pub(crate) fn total_over_span(
    runs: impl IntoIterator<Item = Result<(u64, Instant, Instant)>>,
) -> Result<(u64, f64)> {
    let mut total = 0;
    let mut span: Option<(Instant, Instant)> = None;
    for r in runs {
        let (n, s, e) = r?;
        total += n;
        span = Some(span.map_or((s, e), |(f, l)| (f.min(s), l.max(e))));
    }
    Ok((
        total,
        span.map_or(0.0, |(f, l)| l.duration_since(f).as_secs_f64()),
    ))
}

/// Nearest-rank percentile of sorted values (0 for none).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
