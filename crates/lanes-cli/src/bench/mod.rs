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
//!
//! Modules, each using only those listed before it: `figures`, `plot`, `alloc`,
//! `launch`, then this one.

pub mod alloc;
pub mod figures;
pub mod launch;
pub mod plot;

use std::path::PathBuf;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use lanes_nn::{Encoder, Precision, Tokens};

use crate::dtype::Dtype;
use crate::rng::Rng;
use figures::{percentile, table_header, table_row, total_over_span};
pub use figures::{source, Cell, Mode};

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

/// Arguments of the model benchmark.
#[derive(Args, Debug)]
pub struct ModelBenchArgs {
    /// Model folder (else $LANES_MODEL, else ./models/all-MiniLM-L6-v2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Thread counts, comma-separated (repeats run once, in first-appearance order).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    pub threads: Vec<usize>,
    /// Batch sizes, comma-separated (repeats run once, in first-appearance order).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128,512")]
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
    /// Precisions, comma-separated: auto (float16 on CUDA, float32 on the CPU),
    /// float32, float16, bfloat16 (half precisions on CUDA only). Each loads
    /// the model once and runs the whole grid.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "auto")]
    pub dtype: Vec<Dtype>,
    /// JSON lines instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Draw throughput vs threads per mode and batch into this PNG.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
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
    // Resolved before anything runs (float16 on the CPU fails here), then
    // without repeats (`auto,float32` on the CPU is one dtype).
    let mut dtypes: Vec<(Dtype, Precision)> = Vec::new();
    for &d in &args.dtype {
        let p = crate::dtype::resolve(d, &device)?;
        if !dtypes.iter().any(|&(_, q)| q == p) {
            dtypes.push((d, p));
        }
    }
    let budget = match args.iters {
        Some(n) => Budget::Iters(n),
        None => Budget::Time(Duration::from_millis(args.duration_ms.max(1))),
    };
    let grid = Grid {
        threads: &threads,
        batches: &batches,
        modes: &modes,
        seq: args.seq,
        budget,
        json: args.json,
    };

    if !args.json {
        println!("{}", table_header());
    }
    let mut cells = Vec::new();
    for (dtype, _) in dtypes {
        let encoder = crate::dtype::load_encoder(&dir, &device, dtype)?;
        let max_pos = encoder.config().max_position_embeddings;
        if args.seq > max_pos {
            bail!("--seq {} exceeds the model's {max_pos} positions", args.seq);
        }
        grid.run(&encoder, &mut cells)?;
    }
    if let Some(path) = &args.plot {
        plot::throughput(path, &cells)
            .with_context(|| format!("cannot draw {}", path.display()))?;
        eprintln!("lanes bench: plot written to {}", path.display());
    }
    Ok(0)
}

/// The threads × batch × mode grid one encoder (one dtype) runs.
struct Grid<'a> {
    threads: &'a [usize],
    batches: &'a [usize],
    modes: &'a [Mode],
    seq: usize,
    budget: Budget,
    json: bool,
}

impl Grid<'_> {
    /// Measures, prints and appends every cell of the grid for `encoder`.
    fn run(&self, encoder: &Encoder, cells: &mut Vec<Cell>) -> Result<()> {
        let device = encoder.device();
        let dtype = encoder.precision().name();
        for &batch in self.batches {
            let input = synthetic(
                batch,
                self.seq,
                encoder.config().vocab_size,
                0x6265_6e63 ^ batch as u64,
            );
            for &mode in self.modes {
                let mut single: Option<f64> = None;
                for &n in self.threads {
                    let m = measure(encoder, &input, mode, n, self.budget).with_context(|| {
                        format!("{mode} mode, {dtype}, {n} threads, batch {batch}")
                    })?;
                    let seq_per_s = (m.calls * batch) as f64 / m.seconds.max(1e-9);
                    if n == 1 {
                        single = Some(seq_per_s);
                    }
                    let cell = Cell {
                        kind: "model",
                        mode,
                        dtype,
                        device: device.name().to_string(),
                        threads: n,
                        batch,
                        seq: self.seq,
                        seq_per_s,
                        p50_ms: percentile(&m.latencies, 0.50) * 1e3,
                        p99_ms: percentile(&m.latencies, 0.99) * 1e3,
                        efficiency: single.map(|s| seq_per_s / (n as f64 * s)),
                        calls: m.calls,
                        seconds: m.seconds,
                        source: source(),
                    };
                    if self.json {
                        println!("{}", serde_json::to_string(&cell)?);
                    } else {
                        println!("{}", table_row(&cell));
                    }
                    cells.push(cell);
                }
            }
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
