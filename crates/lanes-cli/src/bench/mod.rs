//! `lanes bench`: throughput, latency and scaling of the encoder on many threads,
//! in two modes measured in the same run:
//!
//! - `lanes`: every thread leases its own lane and runs forward passes on it;
//! - `global-lock`: ONE lane shared by all threads under a mutex: the before-state
//!   (every op of every thread serialized), so the speedup of `lanes` is measured
//!   against the design it replaces, not assumed.
//!
//! Inputs are synthetic: `batch` sequences of exactly `--seq` tokens. Each thread
//! first runs one untimed forward (lane preparation, allocator warm-up), then all
//! start together and run until `--duration-ms` has passed (or `--iters` passes
//! each). Throughput counts sequences; latency is per forward call (for
//! `global-lock` it includes the wait for the lock, as a caller would see it);
//! efficiency = seq/s(N) / (N × seq/s(1)) within the same mode and batch.
//!
//! `lanes bench alloc` measures the caching allocator's alloc+free pair beside the
//! raw backend allocation ([`alloc`]); `lanes bench launch` the cost of a kernel
//! launch, with and without a lease cycle ([`launch`]).

pub mod alloc;
pub mod launch;
pub mod plot;

use std::path::PathBuf;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use lanes_nn::{Encoder, Tokens};
use serde::Serialize;

use crate::rng::Rng;

/// Arguments of `lanes bench`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub model: ModelBenchArgs,
}

/// `lanes bench` subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// The caching allocator's alloc+free pair beside the raw backend allocation.
    Alloc(alloc::AllocArgs),
    /// Empty-kernel launches: raw, with a lease+record cycle, and on N lanes
    /// (on the CPU backend an empty `HostLane::submit` job stands in for the kernel).
    Launch(launch::LaunchArgs),
}

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

/// Arguments of the model benchmark.
#[derive(Args, Debug)]
pub struct ModelBenchArgs {
    /// Model folder (else $LANES_MODEL, else ./models/all-MiniLM-L6-v2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Thread counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    pub threads: Vec<usize>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch: Vec<usize>,
    /// Tokens per sequence (exactly).
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Measured time per cell.
    #[arg(long, default_value_t = 1000, conflicts_with = "iters")]
    pub duration_ms: u64,
    /// Forward passes per thread per cell, instead of a duration.
    #[arg(long)]
    pub iters: Option<usize>,
    /// Modes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "lanes,global-lock")]
    pub modes: Vec<Mode>,
    /// JSON lines instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Draw throughput vs threads per mode and batch into this PNG.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
}

/// One threads × batch cell of one mode.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    /// Always `model` (`alloc` for `lanes bench alloc`).
    pub kind: &'static str,
    /// `lanes` or `global-lock`.
    pub mode: Mode,
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
    /// seq/s(N) / (N × seq/s(1)) in the same mode and batch (`null` without a 1-thread cell).
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

/// Runs `lanes bench` (or `lanes bench alloc`).
pub fn run(args: BenchArgs) -> Result<u8> {
    match args.command {
        Some(BenchCommand::Alloc(a)) => alloc::run(a),
        Some(BenchCommand::Launch(a)) => launch::run(a),
        None => run_model(args.model),
    }
}

fn run_model(args: ModelBenchArgs) -> Result<u8> {
    let (threads, max_threads) = crate::common::thread_counts(&args.threads, "--threads")?;
    let batches = crate::common::sizes(&args.batch, "--batch")?;
    if args.seq == 0 {
        bail!("--seq must be at least 1");
    }
    if args.iters == Some(0) {
        bail!("--iters must be at least 1");
    }
    let modes = crate::common::unique(&args.modes);
    let dir = crate::common::model_dir(args.model.clone())?;
    let device = crate::common::open_device(&args.device, max_threads)?;
    let encoder = Encoder::load(&dir, &device)
        .with_context(|| format!("cannot load the model from {}", dir.display()))?;
    let max_pos = encoder.config().max_position_embeddings;
    if args.seq > max_pos {
        bail!("--seq {} exceeds the model's {max_pos} positions", args.seq);
    }
    let budget = match args.iters {
        Some(n) => Budget::Iters(n),
        None => Budget::Time(Duration::from_millis(args.duration_ms.max(1))),
    };

    if !args.json {
        println!("{}", table_header());
    }
    let mut cells = Vec::new();
    for &batch in &batches {
        let input = synthetic(
            batch,
            args.seq,
            encoder.config().vocab_size,
            0x6265_6e63 ^ batch as u64,
        );
        for &mode in &modes {
            let mut single: Option<f64> = None;
            for &n in &threads {
                let m = measure(&encoder, &input, mode, n, budget)
                    .with_context(|| format!("{mode} mode, {n} threads, batch {batch}"))?;
                let seq_per_s = (m.calls * batch) as f64 / m.seconds.max(1e-9);
                if n == 1 {
                    single = Some(seq_per_s);
                }
                let cell = Cell {
                    kind: "model",
                    mode,
                    device: device.name().to_string(),
                    threads: n,
                    batch,
                    seq: args.seq,
                    seq_per_s,
                    p50_ms: percentile(&m.latencies, 0.50) * 1e3,
                    p99_ms: percentile(&m.latencies, 0.99) * 1e3,
                    efficiency: single.map(|s| seq_per_s / (n as f64 * s)),
                    calls: m.calls,
                    seconds: m.seconds,
                    source: source(),
                };
                if args.json {
                    println!("{}", serde_json::to_string(&cell)?);
                } else {
                    println!("{}", table_row(&cell));
                }
                cells.push(cell);
            }
        }
    }
    if let Some(path) = &args.plot {
        plot::throughput(path, &cells)
            .with_context(|| format!("cannot draw {}", path.display()))?;
        eprintln!("lanes bench: plot written to {}", path.display());
    }
    Ok(0)
}

/// How long each cell runs.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    /// Until this much time has passed (each thread finishes its call in flight).
    Time(Duration),
    /// This many calls per thread.
    Iters(usize),
}

struct Measured {
    calls: usize,
    seconds: f64,
    latencies: Vec<f64>,
}

/// `batch` sequences of exactly `seq` tokens: `[CLS]`, random word pieces, `[SEP]`.
pub fn synthetic(batch: usize, seq: usize, vocab: usize, seed: u64) -> Tokens {
    let mut rng = Rng::new(seed);
    let span = (vocab as u64).saturating_sub(1000).max(1);
    let seqs: Vec<(Vec<u32>, Vec<u32>)> = (0..batch)
        .map(|_| {
            let ids: Vec<u32> = (0..seq)
                .map(|i| match i {
                    0 => 101,
                    i if i + 1 == seq => 102,
                    _ => 1000 + rng.below(span) as u32,
                })
                .collect();
            (ids, vec![0; seq])
        })
        .collect();
    Tokens::from_sequences(&seqs).expect("equal id and type-id lengths by construction")
}

fn measure(
    encoder: &Encoder,
    input: &Tokens,
    mode: Mode,
    threads: usize,
    budget: Budget,
) -> Result<Measured> {
    let device = encoder.device();
    let shared = match mode {
        Mode::GlobalLock => Some(Mutex::new(
            device.lease().context("cannot lease the shared lane")?,
        )),
        Mode::Lanes => None,
    };
    let barrier = Barrier::new(threads);
    type Out = Result<(usize, Instant, Instant, Vec<f64>)>;
    let results: Vec<Out> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (shared, barrier) = (&shared, &barrier);
                s.spawn(move || -> Out {
                    let own: Result<Option<lanes::Lease>> = match shared {
                        None => device.lease().map(Some).context("cannot lease a lane"),
                        Some(_) => Ok(None),
                    };
                    let call = |own: &Option<lanes::Lease>| -> Result<()> {
                        match (own, shared) {
                            (Some(lane), _) => encoder.forward(lane, input).map(drop)?,
                            (None, Some(m)) => {
                                let lane = m.lock().unwrap_or_else(|p| p.into_inner());
                                encoder.forward(&lane, input).map(drop)?
                            }
                            (None, None) => bail!("a lane is either owned or shared"),
                        }
                        Ok(())
                    };
                    let warm = match &own {
                        Ok(o) => call(o).context("warm-up forward"),
                        Err(e) => Err(anyhow::anyhow!("{e:#}")),
                    };
                    // Every thread reaches the barrier, even one that failed.
                    barrier.wait();
                    warm?;
                    let own = own?;
                    let start = Instant::now();
                    let mut lat = Vec::new();
                    loop {
                        let t = Instant::now();
                        match budget {
                            Budget::Time(d) if t.duration_since(start) >= d && !lat.is_empty() => {
                                break
                            }
                            Budget::Iters(n) if lat.len() >= n => break,
                            _ => {}
                        }
                        call(&own)?;
                        lat.push(t.elapsed().as_secs_f64());
                    }
                    Ok((lat.len(), start, Instant::now(), lat))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a bench thread panicked")))
            })
            .collect()
    });
    let mut latencies = Vec::new();
    let runs = results.into_iter().map(|r| {
        r.map(|(c, s, e, l)| {
            latencies.extend(l);
            (c as u64, s, e)
        })
    });
    let (calls, seconds) = total_over_span(runs)?;
    let calls = calls as usize;
    latencies.sort_by(f64::total_cmp);
    Ok(Measured {
        calls,
        seconds,
        latencies,
    })
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

fn table_header() -> String {
    format!(
        "{:<12} {:<8} {:>7} {:>5} {:>5} {:>11} {:>9} {:>9} {:>10}",
        "mode", "device", "threads", "batch", "seq", "seq/s", "p50 ms", "p99 ms", "efficiency"
    )
}

fn table_row(c: &Cell) -> String {
    format!(
        "{:<12} {:<8} {:>7} {:>5} {:>5} {:>11.1} {:>9.3} {:>9.3} {:>10}",
        c.mode.to_string(),
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

    #[test]
    fn synthetic_inputs_have_exact_lengths() {
        let e = synthetic(3, 8, 30522, 1);
        assert_eq!((e.batch(), e.max_len()), (3, 8));
        assert_eq!(e.lengths().collect::<Vec<_>>(), vec![8, 8, 8]);
        assert_eq!(e.row_ids(0).unwrap()[0], 101);
        assert_eq!(e.row_ids(0).unwrap()[7], 102);
        let one = synthetic(1, 1, 30522, 1);
        assert_eq!(one.row_ids(0).unwrap(), &[101]);
    }
}
