//! `lanes bench alloc`: the caching allocator's alloc+free pair, on one thread and
//! on N threads each on its own lane, beside the raw backend allocation
//! (`Backend::alloc` + `Backend::free`: `malloc`/`free` on the CPU,
//! `cuMemAlloc`/`cuMemFree` on CUDA) in the same run.
//!
//! `allocator` pairs go through the public path: `lease.alloc(bytes)` and dropping
//! the buffer (a cache hit after the first pair: the stream-ordered free makes the
//! block reusable at once on its lane). `ns_per_pair` is the mean time one thread
//! spends per pair (wall time × threads / pairs); `pairs_per_s` is the aggregate.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;

/// Which allocation path a cell measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    /// `lease.alloc` + drop: the caching allocator.
    Allocator,
    /// `backend.alloc` + `backend.free`: the raw device allocation.
    Backend,
}

/// Arguments of `lanes bench alloc`.
#[derive(Args, Debug)]
pub struct AllocArgs {
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Thread counts, comma-separated (each thread on its own lane).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    pub threads: Vec<usize>,
    /// Allocation sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4096,1048576")]
    pub bytes: Vec<usize>,
    /// Measured time per cell.
    #[arg(long, default_value_t = 300)]
    pub duration_ms: u64,
    /// Paths, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "allocator,backend")]
    pub paths: Vec<Path>,
    /// JSON lines instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One path × size × threads cell.
#[derive(Clone, Debug, Serialize)]
pub struct AllocCell {
    /// Always `alloc`.
    pub kind: &'static str,
    /// `allocator` or `backend`.
    pub path: Path,
    /// The device.
    pub device: String,
    /// Threads, each on its own lane.
    pub threads: usize,
    /// Bytes per allocation.
    pub bytes: usize,
    /// Pairs measured.
    pub pairs: u64,
    /// Mean time one thread spends per alloc+free pair.
    pub ns_per_pair: f64,
    /// Pairs per second, all threads together.
    pub pairs_per_s: f64,
    /// Measured wall time.
    pub seconds: f64,
    /// The first 12 hex digits of this binary's source hash.
    pub source: &'static str,
}

/// Runs `lanes bench alloc`.
pub fn run(args: AllocArgs) -> Result<u8> {
    let (threads, max) = crate::common::thread_counts(&args.threads, "--threads")?;
    let sizes = crate::common::sizes(&args.bytes, "--bytes")?;
    let paths = crate::common::unique(&args.paths);
    let device = crate::common::open_device(&args.device, max)?;
    let duration = Duration::from_millis(args.duration_ms.max(1));
    if !args.json {
        println!(
            "{:<10} {:<8} {:>7} {:>9} {:>12} {:>14} {:>11}",
            "path", "device", "threads", "bytes", "ns/pair", "pairs/s", "pairs"
        );
    }
    for &bytes in &sizes {
        for &path in &paths {
            for &n in &threads {
                let cell = measure(&device, path, n, bytes, duration)
                    .with_context(|| format!("{path:?} path, {n} threads, {bytes} bytes"))?;
                if args.json {
                    println!("{}", serde_json::to_string(&cell)?);
                } else {
                    println!(
                        "{:<10} {:<8} {:>7} {:>9} {:>12.1} {:>14.0} {:>11}",
                        match cell.path {
                            Path::Allocator => "allocator",
                            Path::Backend => "backend",
                        },
                        cell.device,
                        cell.threads,
                        cell.bytes,
                        cell.ns_per_pair,
                        cell.pairs_per_s,
                        cell.pairs
                    );
                }
            }
        }
    }
    Ok(0)
}

/// Measures one cell: `threads` threads, each on its own lane, doing alloc+free
/// pairs of `bytes` for `duration`.
pub fn measure(
    device: &lanes::Device,
    path: Path,
    threads: usize,
    bytes: usize,
    duration: Duration,
) -> Result<AllocCell> {
    let barrier = Barrier::new(threads);
    let results: Vec<Result<(u64, Instant, Instant)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || -> Result<(u64, Instant, Instant)> {
                    let lease = device.lease().context("cannot lease a lane");
                    let pair = |lease: &lanes::Lease| -> Result<()> {
                        match path {
                            Path::Allocator => drop(lease.alloc(bytes)?),
                            Path::Backend => {
                                let backend = device.backend();
                                let ptr = backend.alloc(bytes)?;
                                // SAFETY: `ptr` was just returned by `alloc(bytes)` on this
                                // backend, is freed exactly once, and no work uses it.
                                unsafe { backend.free(ptr, bytes) };
                            }
                        }
                        Ok(())
                    };
                    let warm = match &lease {
                        Ok(l) => pair(l),
                        Err(e) => Err(anyhow::anyhow!("{e:#}")),
                    };
                    barrier.wait();
                    warm?;
                    let lease = lease?;
                    let start = Instant::now();
                    let mut pairs = 0u64;
                    loop {
                        for _ in 0..64 {
                            pair(&lease)?;
                        }
                        pairs += 64;
                        if start.elapsed() >= duration {
                            break;
                        }
                    }
                    Ok((pairs, start, Instant::now()))
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
    let (pairs, seconds) = super::total_over_span(results)?;
    let seconds = seconds.max(1e-9);
    Ok(AllocCell {
        kind: "alloc",
        path,
        device: device.name().to_string(),
        threads,
        bytes,
        pairs,
        ns_per_pair: seconds * 1e9 * threads as f64 / pairs.max(1) as f64,
        pairs_per_s: pairs as f64 / seconds,
        seconds,
        source: super::source(),
    })
}
