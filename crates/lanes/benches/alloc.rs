//! The caching allocator's hot path on the host backend: an alloc+free pair on one
//! thread (raw `Block`s and the `Buffer` RAII handle) beside the raw backend
//! allocation it saves, and N threads each on its own lane.
//!
//! Run: `cargo bench -p lanes --bench alloc -- --warm-up-time 1 --measurement-time 3`.
//! After criterion's figures it prints the best of many short batches per size,
//! which stays steady when other work shares the machine.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use lanes::alloc::{AllocConfig, Allocator, Buffer, BufferOwner, PendingUse};
use lanes::backend::host::HostBackend;
use lanes::backend::Backend;
use lanes::{Error, Result};

const SIZES: [usize; 3] = [1 << 10, 64 << 10, 4 << 20];

fn allocator(lanes: usize) -> Allocator {
    Allocator::new(Arc::new(HostBackend::new()), lanes, AllocConfig::default())
}

/// The minimal device for `Buffer`: no other lane is ever used.
struct Owner(Allocator);

impl BufferOwner for Owner {
    fn allocator(&self) -> &Allocator {
        &self.0
    }
    fn pending_on(&self, _lane: usize) -> Result<Box<dyn PendingUse>> {
        Err(Error::InvalidArgument("not used by the bench".into()))
    }
}

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc+free, 1 thread");
    for bytes in SIZES {
        let a = allocator(1);
        a.free(a.alloc(0, bytes).unwrap(), Vec::new()).unwrap(); // warm the cache
        g.bench_with_input(BenchmarkId::new("allocator", bytes), &bytes, |b, &n| {
            b.iter(|| {
                let blk = a.alloc(0, black_box(n)).unwrap();
                a.free(blk, Vec::new()).unwrap();
            })
        });

        let owner: Arc<dyn BufferOwner> = Arc::new(Owner(allocator(1)));
        drop(Buffer::alloc(owner.clone(), 0, bytes).unwrap());
        g.bench_with_input(BenchmarkId::new("buffer", bytes), &bytes, |b, &n| {
            b.iter(|| drop(Buffer::alloc(owner.clone(), 0, black_box(n)).unwrap()))
        });

        let raw = HostBackend::new();
        g.bench_with_input(
            BenchmarkId::new("host backend raw", bytes),
            &bytes,
            |b, &n| {
                b.iter(|| {
                    let p = raw.alloc(black_box(n)).unwrap();
                    // SAFETY: `p` was just returned by `alloc(n)` on this backend and is
                    // freed once; nothing uses it.
                    unsafe { raw.free(p, n) };
                })
            },
        );
    }
    g.finish();
}

/// `threads` threads, each on its own lane, each doing `iters` alloc+free pairs
/// together; returns the wall time of the slowest.
fn parallel(a: &Allocator, threads: usize, bytes: usize, iters: u64) -> Duration {
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|lane| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    let t = Instant::now();
                    for _ in 0..iters {
                        let blk = a.alloc(lane, black_box(bytes)).unwrap();
                        a.free(blk, Vec::new()).unwrap();
                    }
                    t.elapsed()
                })
            })
            .collect();
        start.wait();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

fn many_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc+free, N threads on N lanes (64 KiB)");
    for threads in [1, 2, 4, 8, 16] {
        let a = allocator(threads);
        for lane in 0..threads {
            a.free(a.alloc(lane, 64 << 10).unwrap(), Vec::new())
                .unwrap();
        }
        // Time per iteration = time for every thread to do one pair.
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_with_input(BenchmarkId::from_parameter(threads), &threads, |b, &n| {
            b.iter_custom(|iters| parallel(&a, n, 64 << 10, iters))
        });
    }
    g.finish();
}

/// The best (lowest) time per pair over many short batches: on a busy machine the
/// best batch is the one least disturbed, so this is steadier than a mean.
fn best_of_batches() {
    const BATCHES: usize = 300;
    const PAIRS: u32 = 20_000;
    println!("best of {BATCHES} batches of {PAIRS} alloc+free pairs, 1 thread:");
    for bytes in SIZES {
        let a = allocator(1);
        let raw = HostBackend::new();
        let (mut best_a, mut best_r) = (f64::MAX, f64::MAX);
        for _ in 0..BATCHES {
            let t = Instant::now();
            for _ in 0..PAIRS {
                let blk = a.alloc(0, black_box(bytes)).unwrap();
                a.free(blk, Vec::new()).unwrap();
            }
            best_a = best_a.min(t.elapsed().as_nanos() as f64 / f64::from(PAIRS));
            let t = Instant::now();
            for _ in 0..PAIRS {
                let p = raw.alloc(black_box(bytes)).unwrap();
                // SAFETY: as in `single_thread`.
                unsafe { raw.free(p, bytes) };
            }
            best_r = best_r.min(t.elapsed().as_nanos() as f64 / f64::from(PAIRS));
        }
        println!("  {bytes:>8} B: allocator {best_a:6.1} ns, host backend raw {best_r:6.1} ns");
    }
}

criterion_group!(benches, single_thread, many_threads);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only in `cargo bench` (criterion's bench mode), not when `cargo test` runs it.
    if std::env::args().any(|a| a == "--bench") {
        best_of_batches();
    }
}
