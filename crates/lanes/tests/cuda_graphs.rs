//! CUDA graphs on a real GPU: capture a short kernel sequence per lane, replay it
//! from many threads, check every result against the same f32 arithmetic on the
//! CPU, and check the allocator returns to its baseline once the graphs are gone.
//!
//! Without a GPU each test prints `SKIPPED (no CUDA): ...` (or fails under
//! `LANES_REQUIRE_CUDA=1`). `graph_replay_report` prints launch-rate figures
//! (graph vs eager) for the record; no test asserts a timing.
#![cfg(feature = "cuda")]

use std::io::Write;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use lanes::backend::cuda::{kernel_arg, CudaBackend, CudaFunction, CudaLane};
use lanes::{Buffer, Device, DeviceConfig, Graph, Lease, Policy, Result, Wait};

/// The test kernels (shared with `tests/cuda_backend.rs`).
const SRC: &str = include_str!("kernels/lanes_test.cu");

/// Floats per buffer.
const N: usize = 4096;
/// The kernel sequence: `x <- factor * x`, alternating between two buffers.
const FACTORS: [f32; 8] = [2.0, 0.5, 3.0, 0.25, 1.5, 4.0, 0.75, 1.25];

fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn device(test: &str, lanes: usize) -> Option<Device> {
    let cfg = DeviceConfig {
        lanes,
        policy: Policy::Exclusive {
            wait: Wait::Forever,
        },
        ..Default::default()
    };
    match Device::cuda(0, cfg) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("LANES_REQUIRE_CUDA").is_ok_and(|v| v.trim() == "1") {
                panic!("LANES_REQUIRE_CUDA=1 but {test} could not open cuda:0: {e}");
            }
            say(&format!("SKIPPED (no CUDA): {test}: {e}"));
            None
        }
    }
}

fn scale_fn(dev: &Device) -> CudaFunction {
    let b = dev
        .backend()
        .as_any()
        .downcast_ref::<CudaBackend>()
        .expect("a CUDA backend");
    b.modules()
        .function("lanes_test", SRC, "scale")
        .expect("scale kernel")
}

fn cuda(lease: &Lease) -> &CudaLane {
    lease
        .raw()
        .as_any()
        .downcast_ref::<CudaLane>()
        .expect("a CUDA lane")
}

/// Enqueues the sequence on `lease`: input -> a -> b -> a ... -> output.
fn enqueue(lease: &Lease, f: &CudaFunction, input: &Buffer, output: &Buffer) -> Result<()> {
    let a = lease.alloc(N * 4)?;
    let b = lease.alloc(N * 4)?;
    let n = N as u32;
    let last = FACTORS.len() - 1;
    for (k, factor) in FACTORS.iter().enumerate() {
        let src = match k {
            0 => input.ptr().0,
            k if k % 2 == 1 => a.ptr().0,
            _ => b.ptr().0,
        };
        let dst = match k {
            k if k == last => output.ptr().0,
            k if k % 2 == 0 => a.ptr().0,
            _ => b.ptr().0,
        };
        let mut args = [
            kernel_arg(&dst),
            kernel_arg(&src),
            kernel_arg(factor),
            kernel_arg(&n),
        ];
        // SAFETY: `scale(float*, const float*, float, unsigned)` with N-float buffers
        // of this device that outlive the work (stream-ordered frees on this lane,
        // or the graph's pool during a capture).
        unsafe { cuda(lease).launch(f, (n.div_ceil(256), 1, 1), (256, 1, 1), 0, &mut args) }?;
    }
    Ok(())
}

/// The same f32 arithmetic on the CPU.
fn expected(x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|&v| FACTORS.iter().fold(v, |acc, f| f * acc))
        .collect()
}

fn input(thread: usize, round: usize) -> Vec<f32> {
    (0..N)
        .map(|i| ((i * 31 + round * 7 + thread * 13) % 1000) as f32 * 0.125 - 40.0)
        .collect()
}

/// One replay: upload `x` into the graph's input, launch, download its output.
fn replay(lease: &Lease, g: &Graph, x: &[f32]) -> Result<Vec<f32>> {
    lease.upload(&g.buffers()[0], bytemuck::cast_slice(x))?;
    g.launch(lease)?;
    let mut out = vec![0f32; N];
    lease.download(&g.buffers()[1], bytemuck::cast_slice_mut(&mut out))?;
    Ok(out)
}

#[test]
fn eight_threads_replay_their_lanes_graphs_1000_times_and_every_result_is_right() {
    let Some(dev) = device("graph_replay_8_threads", 8) else {
        return;
    };
    let f = scale_fn(&dev);
    let threads = 8;
    let rounds = 1000;
    let base = dev.stats().alloc;
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (dev, f, start) = (dev.clone(), f.clone(), start.clone());
            std::thread::spawn(move || -> std::result::Result<usize, String> {
                let lease = dev.lease().expect("lease");
                // Warm up eagerly once (and check the eager path too).
                let (i0, o0) = (lease.alloc(N * 4).unwrap(), lease.alloc(N * 4).unwrap());
                let x = input(t, 0);
                lease.upload(&i0, bytemuck::cast_slice(&x)).unwrap();
                enqueue(&lease, &f, &i0, &o0).unwrap();
                let mut eager = vec![0f32; N];
                lease
                    .download(&o0, bytemuck::cast_slice_mut(&mut eager))
                    .unwrap();
                if eager != expected(&x) {
                    return Err(format!("thread {t}: the eager run is wrong"));
                }
                drop((i0, o0));
                start.wait();
                let mut checked = 0;
                for round in 0..rounds {
                    let g = lease
                        .graph(FACTORS.len() as u64, |l| {
                            let (i, o) = (l.alloc(N * 4)?, l.alloc(N * 4)?);
                            enqueue(l, &f, &i, &o)?;
                            Ok(vec![i, o])
                        })
                        .map_err(|e| format!("thread {t}: capture: {e}"))?
                        .ok_or_else(|| format!("thread {t}: graphs are off"))?;
                    let x = input(t, round);
                    let out = replay(&lease, &g, &x).map_err(|e| format!("thread {t}: {e}"))?;
                    if out != expected(&x) {
                        return Err(format!("thread {t} round {round}: wrong result"));
                    }
                    checked += 1;
                }
                Ok(checked)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().expect("thread panicked").expect("replay");
    }
    assert_eq!(total, threads * rounds);
    assert_eq!(dev.stats().graphs_cached, threads, "one graph per lane");
    assert!(dev.stats().alloc.allocated_bytes > base.allocated_bytes);
    dev.clear_graphs();
    dev.synchronize().expect("sync");
    let s = dev.stats();
    assert_eq!(
        s.alloc.allocated_bytes, base.allocated_bytes,
        "{:?}",
        s.alloc
    );
    assert_eq!(s.alloc.active_blocks, base.active_blocks, "{:?}", s.alloc);
    assert_eq!(s.alloc.free_errors, 0);
    dev.allocator().empty_cache();
    assert_eq!(
        dev.stats().alloc.reserved_bytes,
        0,
        "every segment released"
    );
}

#[test]
fn a_capture_that_fails_discards_its_graph_and_returns_its_blocks() {
    let Some(dev) = device("graph_capture_failure", 2) else {
        return;
    };
    let f = scale_fn(&dev);
    let lease = dev.lease().expect("lease");
    let base = dev.stats().alloc.allocated_bytes;
    let err = lease
        .capture(|l| {
            let (i, o) = (l.alloc(N * 4)?, l.alloc(N * 4)?);
            enqueue(l, &f, &i, &o)?;
            l.synchronize()?; // cannot be captured
            Ok(vec![i, o])
        })
        .expect_err("synchronize inside a capture");
    assert!(err.to_string().contains("synchronize"), "{err}");
    assert_eq!(dev.stats().alloc.allocated_bytes, base);
    // The lane still works, eagerly and with a new capture.
    let g = lease
        .capture(|l| {
            let (i, o) = (l.alloc(N * 4)?, l.alloc(N * 4)?);
            enqueue(l, &f, &i, &o)?;
            Ok(vec![i, o])
        })
        .expect("capture");
    let x = input(0, 1);
    assert_eq!(replay(&lease, &g, &x).expect("replay"), expected(&x));
    drop(g);
    lease.synchronize().expect("sync");
    assert_eq!(dev.stats().alloc.allocated_bytes, base);
}

#[test]
fn graph_replay_report() {
    let Some(dev) = device("graph_replay_report", 8) else {
        return;
    };
    let f = scale_fn(&dev);
    for threads in [1usize, 8] {
        let reps = 2000;
        let start = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (dev, f, start) = (dev.clone(), f.clone(), start.clone());
                std::thread::spawn(move || {
                    let lease = dev.lease().expect("lease");
                    let (i, o) = (lease.alloc(N * 4).unwrap(), lease.alloc(N * 4).unwrap());
                    lease
                        .upload(&i, bytemuck::cast_slice(&input(t, 0)))
                        .unwrap();
                    enqueue(&lease, &f, &i, &o).unwrap();
                    lease.synchronize().unwrap();
                    let g = lease
                        .capture(|l| {
                            enqueue(l, &f, &i, &o)?;
                            Ok(Vec::new())
                        })
                        .expect("capture");
                    start.wait();
                    let t0 = Instant::now();
                    for _ in 0..reps {
                        enqueue(&lease, &f, &i, &o).unwrap();
                    }
                    lease.synchronize().unwrap();
                    let eager = t0.elapsed();
                    start.wait();
                    let t1 = Instant::now();
                    for _ in 0..reps {
                        g.launch(&lease).unwrap();
                    }
                    lease.synchronize().unwrap();
                    let graph = t1.elapsed();
                    drop(g);
                    (eager, graph)
                })
            })
            .collect();
        let (mut eager, mut graph) = (0f64, 0f64);
        for h in handles {
            let (e, g) = h.join().expect("thread");
            eager = eager.max(e.as_secs_f64());
            graph = graph.max(g.as_secs_f64());
        }
        let seqs = (threads * reps) as f64;
        say(&format!(
            "GRAPH-REPORT threads={threads} kernels/seq={} seqs={} eager: {:.2} us/seq ({:.0} seq/s) \
             graph: {:.2} us/seq ({:.0} seq/s) speedup {:.2}x",
            FACTORS.len(),
            seqs,
            eager * 1e6 / reps as f64,
            seqs / eager,
            graph * 1e6 / reps as f64,
            seqs / graph,
            eager / graph
        ));
    }
    dev.synchronize().unwrap();
    assert_eq!(dev.stats().alloc.allocated_bytes, 0);
}
