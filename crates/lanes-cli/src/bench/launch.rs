//! `lanes bench launch`: the cost of putting work on a lane (issue 4).
//!
//! On CUDA the "launch" is the empty kernel `lanes_empty(int)` (NVRTC through
//! `CudaBackend::function`, grid 1×1×1, block 32×1×1) put on the lane's stream with
//! `CudaLane::launch`; on the CPU backend it is `HostLane::submit(|| {})`, an empty
//! job on the lane's worker queue, so the command runs (and is tested) without a GPU.
//!
//! Three cases, each bounded by `--duration-ms`:
//!
//! - `raw-launch`: one thread, one lane leased once, launches in a loop;
//! - `lease+launch+record`: one thread; per iteration `device.lease()`, one launch,
//!   `lease.record()` (a pooled event), drop the event, drop the lease;
//!   `overhead_ns` is its `ns_per_op` minus that of `raw-launch`;
//! - `threads`: N threads, each on its own lane leased for the whole run;
//! - `graph-replay` (CUDA only, with `--graph-nodes N`): N threads,
//!   each replaying on its own lane a CUDA graph of N empty kernels (44 is a
//!   16-bit MiniLM forward's node count);
//! - `replay+copies` (CUDA only): the same, each replay framed like an encoder
//!   replay at batch 1: three small uploads (ids, type ids, offsets), the launch,
//!   and a download that waits. Its ceiling against `graph-replay`'s tells whether
//!   the host side of a replay (copies and waits) or the launch itself serializes.
//!
//! Every loop synchronizes every 1024 launches (so the queue stays bounded) and
//! once at the end; those waits are inside the measured time. `ns_per_op` is the
//! mean time one thread spends per launch (wall time × threads / launches);
//! `ops_per_s` is the aggregate.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use lanes::backend::host::HostLane;
use serde::Serialize;

/// Launches between two synchronizations.
const CHUNK: u64 = 1024;

#[cfg(feature = "cuda")]
const EMPTY_SRC: &str = r#"extern "C" __global__ void lanes_empty(int x) {}"#;

/// Arguments of `lanes bench launch`.
#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// auto, cpu, cuda or cuda:N. On the CPU backend a "launch" is an empty
    /// `HostLane::submit(|| {})` job, so the command also runs without a GPU.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Thread counts of the `threads` case, comma-separated (each thread on its own lane).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub threads: Vec<usize>,
    /// Measured time per cell.
    #[arg(long, default_value_t = 500)]
    pub duration_ms: u64,
    /// Empty kernels in the graph of the `graph-replay` and `replay+copies` cases
    /// (CUDA only; 44 is a 16-bit MiniLM forward's node count; 0, the default,
    /// leaves both out).
    #[arg(long, default_value_t = 0)]
    pub graph_nodes: usize,
    /// JSON lines instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One case × threads cell.
#[derive(Clone, Debug, Serialize)]
pub struct LaunchCell {
    /// Always `launch`.
    pub kind: &'static str,
    /// `raw-launch`, `lease+launch+record`, `threads`, `graph-replay` or
    /// `replay+copies`.
    pub case: &'static str,
    /// The device.
    pub device: String,
    /// Threads, each on its own lane.
    pub threads: usize,
    /// Launches (or lease cycles) measured.
    pub ops: u64,
    /// Mean time one thread spends per launch (or lease cycle).
    pub ns_per_op: f64,
    /// Launches (or lease cycles) per second, all threads together.
    pub ops_per_s: f64,
    /// `lease+launch+record` only: its `ns_per_op` minus that of `raw-launch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_ns: Option<f64>,
    /// Measured wall time.
    pub seconds: f64,
    /// The first 12 hex digits of this binary's source hash.
    pub source: &'static str,
}

/// What a launch is on this device.
enum Launcher {
    Host,
    #[cfg(feature = "cuda")]
    Cuda(lanes::backend::cuda::CudaFunction),
}

/// A launcher bound to one lease's native lane.
enum Bound<'a> {
    Host(&'a HostLane),
    #[cfg(feature = "cuda")]
    Cuda(
        &'a lanes::backend::cuda::CudaLane,
        &'a lanes::backend::cuda::CudaFunction,
    ),
}

impl Launcher {
    fn new(device: &lanes::Device) -> Result<Launcher> {
        #[cfg(feature = "cuda")]
        if let Some(cuda) = device
            .backend()
            .as_any()
            .downcast_ref::<lanes::backend::cuda::CudaBackend>()
        {
            let f = cuda
                .function("lanes_bench_empty", EMPTY_SRC, "lanes_empty")
                .context("cannot compile the empty kernel")?;
            return Ok(Launcher::Cuda(f));
        }
        if device
            .backend()
            .as_any()
            .downcast_ref::<lanes::backend::host::HostBackend>()
            .is_some()
        {
            return Ok(Launcher::Host);
        }
        bail!("`lanes bench launch` supports the CPU and CUDA backends only")
    }

    /// Whether the device can capture CUDA graphs.
    fn has_graphs(&self) -> bool {
        match self {
            Launcher::Host => false,
            #[cfg(feature = "cuda")]
            Launcher::Cuda(_) => true,
        }
    }

    fn bind<'a>(&'a self, lease: &'a lanes::Lease) -> Result<Bound<'a>> {
        let raw = lease.raw().as_any();
        match self {
            Launcher::Host => raw
                .downcast_ref::<HostLane>()
                .map(Bound::Host)
                .ok_or_else(|| anyhow!("the lane is not a host lane")),
            #[cfg(feature = "cuda")]
            Launcher::Cuda(f) => raw
                .downcast_ref::<lanes::backend::cuda::CudaLane>()
                .map(|l| Bound::Cuda(l, f))
                .ok_or_else(|| anyhow!("the lane is not a CUDA lane")),
        }
    }
}

impl Bound<'_> {
    fn launch(&self) -> Result<()> {
        match self {
            Bound::Host(lane) => {
                lane.submit(|| {})?;
            }
            #[cfg(feature = "cuda")]
            Bound::Cuda(lane, f) => {
                let x: i32 = 0;
                let mut args = [lanes::backend::cuda::kernel_arg(&x)];
                // SAFETY: `lanes_empty` takes one `int`, passed as an `i32` that outlives
                // the call; it touches no memory; grid 1 and block 32 are within limits.
                unsafe { lane.launch(f, (1, 1, 1), (32, 1, 1), 0, &mut args) }?;
            }
        }
        Ok(())
    }
}

/// Runs `lanes bench launch`.
pub fn run(args: LaunchArgs) -> Result<u8> {
    let (threads, max) = crate::common::thread_counts(&args.threads, "--threads")?;
    let device = crate::common::open_device(&args.device, max)?;
    let launcher = Launcher::new(&device)?;
    let duration = Duration::from_millis(args.duration_ms.max(1));
    if !args.json {
        println!(
            "{:<20} {:<8} {:>7} {:>10} {:>14} {:>12} {:>11}",
            "case", "device", "threads", "ns/op", "ops/s", "overhead ns", "ops"
        );
    }
    let print = |cell: &LaunchCell| -> Result<()> {
        if args.json {
            println!("{}", serde_json::to_string(cell)?);
        } else {
            println!(
                "{:<20} {:<8} {:>7} {:>10.1} {:>14.0} {:>12} {:>11}",
                cell.case,
                cell.device,
                cell.threads,
                cell.ns_per_op,
                cell.ops_per_s,
                cell.overhead_ns
                    .map_or("-".to_string(), |o| format!("{o:.1}")),
                cell.ops
            );
        }
        Ok(())
    };

    let raw =
        measure_lanes(&device, &launcher, "raw-launch", 1, duration).context("raw-launch case")?;
    print(&raw)?;
    let mut cycle =
        measure_lease_cycle(&device, &launcher, duration).context("lease+launch+record case")?;
    cycle.overhead_ns = Some(cycle.ns_per_op - raw.ns_per_op);
    print(&cycle)?;
    for &n in &threads {
        let cell = measure_lanes(&device, &launcher, "threads", n, duration)
            .with_context(|| format!("threads case, {n} threads"))?;
        print(&cell)?;
    }
    if args.graph_nodes > 0 {
        if !launcher.has_graphs() {
            eprintln!(
                "graph-replay, replay+copies: skipped ({} has no CUDA graphs)",
                device.name()
            );
            return Ok(0);
        }
        for case in ["graph-replay", "replay+copies"] {
            for &n in &threads {
                let cell = measure_replays(&device, &launcher, case, n, args.graph_nodes, duration)
                    .with_context(|| format!("{case} case, {n} threads"))?;
                print(&cell)?;
            }
        }
    }
    Ok(0)
}

/// Bytes of the three uploads and the download of `replay+copies`: a batch of
/// one 128-token sequence (ids and type ids as u32, offsets) and its 384 f32s.
const COPY_IN: [usize; 3] = [128 * 4, 128 * 4, 2 * 4];
const COPY_OUT: usize = 384 * 4;

/// `threads` threads, each capturing a graph of `nodes` empty launches on its own
/// lane, then replaying it for `duration` (`replay+copies`: each replay between
/// three uploads and a waiting download; `graph-replay`: replays only, synchronized
/// every 1024).
fn measure_replays(
    device: &lanes::Device,
    launcher: &Launcher,
    case: &'static str,
    threads: usize,
    nodes: usize,
    duration: Duration,
) -> Result<LaunchCell> {
    let copies = case == "replay+copies";
    let setup = || -> Result<Replay> {
        let lease = device.lease().context("cannot lease a lane")?;
        // One eager launch first (module and stream set up outside the capture).
        launcher.bind(&lease)?.launch()?;
        lease.synchronize()?;
        let graph = lease
            .capture(|l| {
                let lane = launcher
                    .bind(l)
                    .map_err(|e| lanes::Error::InvalidArgument(format!("{e:#}")))?;
                for _ in 0..nodes {
                    lane.launch()
                        .map_err(|e| lanes::Error::InvalidArgument(format!("{e:#}")))?;
                }
                Ok(Vec::new())
            })
            .context("cannot capture the graph")?;
        let ins = COPY_IN
            .iter()
            .map(|&b| lease.alloc(b))
            .collect::<lanes::Result<Vec<_>>>()?;
        let out = lease.alloc(COPY_OUT)?;
        Ok(Replay {
            lease,
            graph,
            ins,
            out,
        })
    };
    let step = |r: &Replay| -> Result<()> {
        if copies {
            let host_in = [0u8; 128 * 4];
            for (buf, &b) in r.ins.iter().zip(&COPY_IN) {
                r.lease.upload(buf, &host_in[..b])?;
            }
        }
        r.graph.launch(&r.lease)?;
        if copies {
            let mut host_out = [0u8; COPY_OUT];
            r.lease.download(&r.out, &mut host_out)?;
        }
        Ok(())
    };
    let (ops, seconds) = on_own_lanes(threads, duration, &setup, &step, &|r| &r.lease)?;
    Ok(cell(device, case, threads, ops, seconds))
}

/// One thread's state in the graph cases: its lane, its graph and copy buffers.
struct Replay {
    lease: lanes::Lease,
    graph: lanes::Graph,
    ins: Vec<lanes::Buffer>,
    out: lanes::Buffer,
}

fn cell(
    device: &lanes::Device,
    case: &'static str,
    threads: usize,
    ops: u64,
    seconds: f64,
) -> LaunchCell {
    let seconds = seconds.max(1e-9);
    LaunchCell {
        kind: "launch",
        case,
        device: device.name().to_string(),
        threads,
        ops,
        ns_per_op: seconds * 1e9 * threads as f64 / ops.max(1) as f64,
        ops_per_s: ops as f64 / seconds,
        overhead_ns: None,
        seconds,
        source: super::figures::source(),
    }
}

/// `threads` threads, each on its own lane leased for the whole run, launching
/// in a loop for `duration`.
fn measure_lanes(
    device: &lanes::Device,
    launcher: &Launcher,
    case: &'static str,
    threads: usize,
    duration: Duration,
) -> Result<LaunchCell> {
    let setup = || -> Result<lanes::Lease> {
        let lease = device.lease().context("cannot lease a lane")?;
        launcher.bind(&lease)?.launch()?;
        lease.synchronize()?;
        Ok(lease)
    };
    let step = |lease: &lanes::Lease| launcher.bind(lease)?.launch();
    let (ops, seconds) = on_own_lanes(threads, duration, &setup, &step, &|l| l)?;
    Ok(cell(device, case, threads, ops, seconds))
}

/// Runs `threads` threads: each calls `setup` (its lane and whatever the case
/// needs), all start together, then each repeats `step` for `duration`,
/// synchronizing the lease `lease_of` gives every [`CHUNK`] steps. Returns the
/// steps taken and the span they took (`figures::total_over_span`).
fn on_own_lanes<S>(
    threads: usize,
    duration: Duration,
    setup: &(dyn Fn() -> Result<S> + Sync),
    step: &(dyn Fn(&S) -> Result<()> + Sync),
    lease_of: &(dyn Fn(&S) -> &lanes::Lease + Sync),
) -> Result<(u64, f64)> {
    let barrier = Barrier::new(threads);
    let results: Vec<Result<(u64, Instant, Instant)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || -> Result<(u64, Instant, Instant)> {
                    let ready = setup();
                    // Every thread reaches the barrier, even one that failed.
                    barrier.wait();
                    let state = ready?;
                    let start = Instant::now();
                    let mut ops = 0u64;
                    loop {
                        for _ in 0..CHUNK {
                            step(&state)?;
                        }
                        lease_of(&state).synchronize()?;
                        ops += CHUNK;
                        if start.elapsed() >= duration {
                            break;
                        }
                    }
                    Ok((ops, start, Instant::now()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a bench thread panicked")))
            })
            .collect()
    });
    super::figures::total_over_span(results)
}

/// One thread: lease, launch, record an event, drop both, for `duration`
/// (the device is synchronized every 1024 cycles).
fn measure_lease_cycle(
    device: &lanes::Device,
    launcher: &Launcher,
    duration: Duration,
) -> Result<LaunchCell> {
    let one = || -> Result<()> {
        let lease = device.lease()?;
        launcher.bind(&lease)?.launch()?;
        let event = lease.record()?;
        drop(event);
        drop(lease);
        Ok(())
    };
    one()?;
    device.synchronize()?;
    let start = Instant::now();
    let mut ops = 0u64;
    loop {
        for _ in 0..CHUNK {
            one()?;
        }
        device.synchronize()?;
        ops += CHUNK;
        if start.elapsed() >= duration {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(cell(device, "lease+launch+record", 1, ops, seconds))
}
