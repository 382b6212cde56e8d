//! `lanes serve`: an HTTP embedding server.
//!
//! Layout: [`http`] (axum routes, handlers) and [`api`] (request parsing, error
//! bodies) queue jobs on a bounded [`queue::Queue`]; [`batcher`] workers (OS threads, one lane lease each) form
//! dynamic batches and run the encoder; [`metrics`] counts for `/metrics`;
//! [`loadgen`] is the hidden `lanes loadgen` load generator the benchmark uses.
//!
//! Lifecycle: load the model, lease one lane per worker, bind, print
//! `listening on http://ADDR` on stdout, serve. On SIGTERM or Ctrl-C: stop
//! accepting, let every accepted request finish (bounded by
//! `--shutdown-timeout-secs`), drain the queue, join the workers, exit 0.

use std::future::IntoFuture;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use lanes::DeviceKind;
use lanes_nn::Encoder;

use crate::common;

mod api;
mod batcher;
mod http;
pub mod loadgen;
mod metrics;
mod plan;
mod queue;

use http::App;
use metrics::Metrics;
use plan::BatchConfig;
use queue::Queue;

/// Arguments of `lanes serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model folder (else $LANES_MODEL, else ./models/all-MiniLM-L6-v2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the bound address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Inference worker threads, each holding one lane for its lifetime
    /// [default: 4 on the CPU, 8 on CUDA].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Padded-token budget of one forward pass (texts × longest text).
    #[arg(long, default_value_t = 8192)]
    pub max_batch_tokens: usize,
    /// How long the oldest queued request may wait for others to share its
    /// forward pass (0: batch only what is already queued, never wait).
    #[arg(long, default_value_t = 2)]
    pub max_wait_ms: u64,
    /// One request per forward pass (no coalescing), for comparison.
    #[arg(long)]
    pub no_batching: bool,
    /// Padding tokens a forward pass may always carry when texts of different
    /// lengths share it; past that, at most a quarter of the pass may be padding
    /// [default: 0 on the CPU, where every padded token costs as much as a real
    /// one; 512 on CUDA, where a pass costs about the same for a few more rows].
    #[arg(long)]
    pub padding_slack_tokens: Option<usize>,
    /// Queue bound, in texts (not requests): a request that would exceed it is
    /// answered 429 at once. A request is always admitted into an empty queue.
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
    /// Most texts in one request (more: 413).
    #[arg(long, default_value_t = 256)]
    pub max_inputs_per_request: usize,
    /// Largest request body in bytes (more: 413).
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// After a shutdown signal, how long accepted requests may take to finish.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    /// Name reported as `model` in responses [default: the model folder's name].
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Testing only: texts `__lanes_fault:error__`, `__lanes_fault:panic__`,
    /// `__lanes_fault:sleep_ms=N__` fail, panic or slow down their forward pass.
    #[arg(long, hide = true)]
    pub inject_faults: bool,
}

/// Runs the server until a shutdown signal; returns the exit code.
pub fn run(args: ServeArgs) -> Result<u8> {
    if args.workers == Some(0) || args.workers.is_some_and(|w| w > lanes::MAX_LANES) {
        bail!("--workers must be between 1 and {}", lanes::MAX_LANES);
    }
    if args.queue == 0 || args.max_batch_tokens == 0 || args.max_inputs_per_request == 0 {
        bail!("--queue, --max-batch-tokens and --max-inputs-per-request must be at least 1");
    }
    if args.max_body_bytes < 64 {
        bail!("--max-body-bytes must be at least 64");
    }
    let dir = common::model_dir(args.model.clone())?;
    let model_name = args.served_model_name.clone().unwrap_or_else(|| {
        dir.canonicalize()
            .unwrap_or_else(|_| dir.clone())
            .file_name()
            .map_or_else(
                || "all-MiniLM-L6-v2".to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
    });
    // Lanes are created lazily, so opening 8 and using 4 costs nothing.
    let device = common::open_device(&args.device, args.workers.unwrap_or(8))?;
    let workers = args.workers.unwrap_or(match device.kind() {
        DeviceKind::Cpu => 4,
        DeviceKind::Cuda(_) => 8,
    });
    let t = Instant::now();
    let encoder = Encoder::load(&dir, &device)
        .with_context(|| format!("cannot load the model from {}", dir.display()))?;
    let encoder = Arc::new(encoder);
    let hidden = encoder.config().hidden_size;

    let metrics = Arc::new(Metrics::default());
    let queue = Arc::new(Queue::new(args.queue));
    let config = BatchConfig {
        max_batch_tokens: args.max_batch_tokens,
        max_wait: Duration::from_millis(args.max_wait_ms),
        batching: !args.no_batching,
        padding_slack: args.padding_slack_tokens.unwrap_or(match device.kind() {
            DeviceKind::Cpu => 0,
            DeviceKind::Cuda(_) => 512,
        }),
    };
    let handles = match batcher::spawn_workers(workers, &encoder, &queue, &config, &metrics) {
        Ok(h) => h,
        Err(e) => {
            queue.close();
            return Err(e);
        }
    };
    let app = Arc::new(App {
        encoder: encoder.clone(),
        queue: queue.clone(),
        metrics: metrics.clone(),
        device: device.clone(),
        model_name,
        hidden,
        workers,
        max_inputs: args.max_inputs_per_request,
        max_body_bytes: args.max_body_bytes,
        shutting_down: AtomicBool::new(false),
        inject_faults: args.inject_faults,
    });
    let batching = if args.no_batching {
        "off (one request per forward pass)".to_string()
    } else {
        format!(
            "up to {} padded tokens, waiting at most {} ms",
            args.max_batch_tokens, args.max_wait_ms
        )
    };
    eprintln!(
        "lanes serve: {} on {} loaded in {:.2} s; {workers} workers; batching {batching}; queue {} texts",
        app.model_name,
        device.name(),
        t.elapsed().as_secs_f64(),
        args.queue
    );

    let result = serve(&args, app.clone());
    // Whatever happened, let the workers drain the queue and stop.
    queue.close();
    for h in handles {
        if h.join().is_err() {
            eprintln!("lanes serve: a worker thread panicked while stopping");
        }
    }
    let served = metrics.responses_with(200);
    match result {
        Ok(true) => {
            eprintln!("lanes serve: stopped cleanly ({served} responses with status 200)");
            Ok(0)
        }
        Ok(false) => {
            eprintln!("lanes serve: stopped after the shutdown timeout with requests unfinished");
            Ok(1)
        }
        Err(e) => Err(e),
    }
}

/// Runs the HTTP side until a signal. `Ok(true)`: every connection finished in
/// time; `Ok(false)`: the shutdown timeout cut some off.
fn serve(args: &ServeArgs, app: Arc<App>) -> Result<bool> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("lanes-http")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let grace = Duration::from_secs(args.shutdown_timeout_secs);
    runtime.block_on(async move {
        // Signal handlers go in before the address is printed, so a SIGTERM sent
        // as soon as the address is read is a graceful shutdown, not a kill.
        let signal = shutdown_signal().context("cannot install signal handlers")?;
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        let addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{addr}").context("cannot write stdout")?;
            out.flush().context("cannot write stdout")?;
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let app2 = app.clone();
        tokio::spawn(async move {
            let name = signal.await;
            app2.shutting_down.store(true, Ordering::SeqCst);
            let n = app2.metrics.in_flight.load(Ordering::SeqCst);
            eprintln!(
                "lanes serve: {name}: no new connections; finishing {n} request(s) in flight"
            );
            let _ = stop_tx.send(true);
        });
        let mut graceful_rx = stop_rx.clone();
        let server = axum::serve(listener, http::router(app))
            .with_graceful_shutdown(async move {
                let _ = graceful_rx.wait_for(|&stop| stop).await;
            })
            .into_future();
        let mut deadline_rx = stop_rx;
        let deadline = async move {
            let _ = deadline_rx.wait_for(|&stop| stop).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            r = server => r.map(|()| true).context("the HTTP server failed"),
            () = deadline => Ok(false),
        }
    })
}

/// Resolves with the signal's name on SIGTERM or SIGINT (Ctrl-C).
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async move {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}
