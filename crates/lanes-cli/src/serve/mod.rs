//! `lanes serve`: an HTTP embedding server over the `lanes-serve` engine.
//!
//! Layout (each module uses only those listed before it): [`api`] (request
//! parsing, error bodies), [`metrics`] (HTTP series), [`app`] (shared
//! state), [`access`] (API key, metrics, access log), [`embed`] and [`info`]
//! (handlers), [`routes`] (the router), [`conn`] (connections: cap,
//! timeouts, graceful close), this file (flags and lifecycle); [`loadgen`] is
//! the hidden `lanes loadgen`.
//!
//! Lifecycle: bind the port (a taken port fails at once, naming the address),
//! print `listening on http://ADDR` on stdout, serve `/health` = 503
//! `loading` while the model loads, then serve. On SIGTERM or SIGINT: stop
//! accepting, let every request in flight finish, close idle connections,
//! exit 0; at `--shutdown-timeout-secs`, force-close the laggards (logged)
//! and still exit 0.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use lanes::DeviceKind;
use lanes_serve::{Codec, Engine, EngineConfig};

use crate::common;
use crate::dtype::{self, Dtype};

mod access;
mod api;
mod app;
mod conn;
mod embed;
mod info;
pub mod loadgen;
mod metrics;
mod routes;

use app::{App, Limits, Ready};
use conn::{ConnLimits, Open};
use metrics::HttpMetrics;

/// Access-log format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Arguments of `lanes serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model folder (else $LANES_MODEL, else ./models/all-MiniLM-L6-v2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precision: auto (float16 on CUDA, float32 on the CPU), float32, float16,
    /// bfloat16 (half precisions on CUDA only). `/info` reports it as `model_dtype`.
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: Dtype,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the bound address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Inference worker threads, each holding one lane for its lifetime
    /// [default: one per core, at most 4, on the CPU; 8 on CUDA].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Token budget of one forward pass (sum of the texts' lengths; batches
    /// are packed) [default: 2048 on the CPU, 16384 on CUDA]. Requests are
    /// split across passes and interleaved, so this bounds how long a small
    /// request waits behind a big one.
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// How long a forward pass may wait for requests being prepared to join it
    /// (0: batch only what is already queued).
    #[arg(long, default_value_t = 2)]
    pub max_wait_ms: u64,
    /// One request per forward pass (no coalescing), for comparison.
    #[arg(long)]
    pub no_batching: bool,
    /// Queue bound, in tokens: a request that would exceed it is answered 429
    /// with Retry-After. A request is always admitted into an empty queue.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_queue_tokens: usize,
    /// Most inputs in one request (more: 413). langchain-openai's default
    /// chunk of 1000 fits.
    #[arg(long, alias = "max-inputs-per-request", default_value_t = 2048)]
    pub max_client_batch_size: usize,
    /// Largest request body in bytes (more: 413).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Truncate inputs over the model's 256 tokens silently (default: refuse
    /// them with 413 unless the request says `truncate: true`).
    #[arg(long)]
    pub auto_truncate: bool,
    /// A named prompt, `NAME=TEXT`, prepended to texts of requests with
    /// `prompt_name: NAME` (repeatable).
    #[arg(long = "prompt", value_name = "NAME=TEXT")]
    pub prompts: Vec<String>,
    /// Prompt prepended to texts of requests without `prompt_name`.
    #[arg(long)]
    pub default_prompt: Option<String>,
    /// Seconds a client may take to send a request's headers.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds a client may take to send a request's body (408 past it).
    #[arg(long, default_value_t = 30)]
    pub body_timeout_secs: u64,
    /// Seconds a keep-alive connection may stay idle before it is closed.
    #[arg(long, default_value_t = 30)]
    pub idle_timeout_secs: u64,
    /// Most open connections; past that, new ones wait in the kernel's
    /// backlog until one closes.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a request may take in all (504 past it; its queued work is dropped).
    #[arg(long, default_value_t = 60)]
    pub request_timeout_secs: u64,
    /// After a shutdown signal, how long requests in flight may take to
    /// finish; then their connections are closed and the server exits 0.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    /// Require `Authorization: Bearer KEY` on every route but /health
    /// (else $LANES_API_KEY, if set).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Log format on stderr (one access-log line per request).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Name reported as `model` in responses [default: the model folder's name].
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Testing only: texts `__lanes_fault:error__`, `__lanes_fault:panic__`,
    /// `__lanes_fault:sleep_ms=N__` fail, panic or slow down their forward pass.
    #[arg(long, hide = true)]
    pub inject_faults: bool,
}

fn parse_prompts(raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut prompts = BTreeMap::new();
    for p in raw {
        let Some((name, text)) = p.split_once('=') else {
            bail!("--prompt {p:?}: expected NAME=TEXT");
        };
        if name.is_empty() {
            bail!("--prompt {p:?}: the name is empty");
        }
        if prompts.insert(name.to_string(), text.to_string()).is_some() {
            bail!("--prompt {name:?} is given twice");
        }
    }
    Ok(prompts)
}

fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_target(true);
    // A second init (tests in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Runs the server until a shutdown signal; returns the exit code.
pub fn run(args: ServeArgs) -> Result<u8> {
    if args.workers == Some(0) || args.workers.is_some_and(|w| w > lanes::MAX_LANES) {
        bail!("--workers must be between 1 and {}", lanes::MAX_LANES);
    }
    if args.max_queue_tokens == 0 || args.max_client_batch_size == 0 || args.max_connections == 0 {
        bail!(
            "--max-queue-tokens, --max-client-batch-size and --max-connections must be at least 1"
        );
    }
    for (flag, v) in [
        ("--header-timeout-secs", args.header_timeout_secs),
        ("--body-timeout-secs", args.body_timeout_secs),
        ("--idle-timeout-secs", args.idle_timeout_secs),
        ("--request-timeout-secs", args.request_timeout_secs),
    ] {
        if v == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if args.max_body_bytes < 64 {
        bail!("--max-body-bytes must be at least 64");
    }
    let prompts = parse_prompts(&args.prompts)?;
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
    init_logging(args.log_format);
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("LANES_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let app = Arc::new(App {
        ready: OnceLock::new(),
        model_name,
        limits: Limits {
            max_client_batch_size: args.max_client_batch_size,
            max_body_bytes: args.max_body_bytes,
            body_timeout: Duration::from_secs(args.body_timeout_secs),
            request_timeout: Duration::from_secs(args.request_timeout_secs),
            auto_truncate: args.auto_truncate,
            prompts,
            default_prompt: args.default_prompt.clone(),
            api_key,
            max_connections: args.max_connections,
        },
        http: Arc::new(HttpMetrics::new()),
        shutting_down: Default::default(),
    });
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("lanes-http")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(&args, dir, app.clone()));
    // Connections still open after the deadline are dropped here.
    runtime.shutdown_timeout(Duration::from_millis(200));
    let drained = result?;
    if let Some(ready) = app.ready.get() {
        let stuck = ready.engine.shutdown_within(Duration::from_secs(2));
        if stuck > 0 {
            tracing::warn!(
                "{stuck} worker(s) still inside a forward pass at exit; not waiting for them"
            );
        }
    }
    let served = app.http.responses_with(200);
    if drained {
        tracing::info!("lanes serve: stopped cleanly ({served} responses with status 200)");
    } else {
        tracing::warn!("lanes serve: stopped at the shutdown deadline after force-closing slow connections ({served} responses with status 200)");
    }
    Ok(0)
}

/// Loads the device, the model and the engine.
fn load(args: &ServeArgs, dir: PathBuf) -> Result<Ready> {
    let t = Instant::now();
    let device = common::open_device(&args.device, args.workers.unwrap_or(8))?;
    let cuda = matches!(device.kind(), DeviceKind::Cuda(_));
    // On the CPU one worker per core (at most 4): more would only share the
    // cores and make every pass, hence a small request's wait, longer.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = args
        .workers
        .unwrap_or(if cuda { 8 } else { cores.clamp(1, 4) });
    let max_batch_tokens = args
        .max_batch_tokens
        .unwrap_or(if cuda { 16384 } else { 2048 });
    let encoder = dtype::load_encoder(&dir, &device, args.dtype)?;
    let precision = encoder.precision();
    let codec =
        Codec::from_file(&dir.join(lanes_nn::TOKENIZER_FILE)).map_err(anyhow::Error::msg)?;
    let config = EngineConfig {
        workers,
        max_batch_tokens,
        max_wait: Duration::from_millis(args.max_wait_ms),
        batching: !args.no_batching,
        max_queue_tokens: args.max_queue_tokens,
        inject_faults: args.inject_faults,
    };
    let engine =
        // (The engine's error already says "cannot start the engine".)
        Engine::start(Arc::new(encoder), codec, config)?;
    let batching = if args.no_batching {
        "off (one request per forward pass)".to_string()
    } else {
        format!(
            "up to {max_batch_tokens} tokens a pass, waiting at most {} ms",
            args.max_wait_ms
        )
    };
    tracing::info!(
        "lanes serve: model on {} ({precision}) loaded in {:.2} s; {workers} workers; batching {batching}; queue {} tokens",
        device.name(),
        t.elapsed().as_secs_f64(),
        args.max_queue_tokens
    );
    Ok(Ready {
        engine,
        device: device.name().to_string(),
        dtype: precision.name(),
        workers,
        max_batch_tokens,
    })
}

/// Binds, loads, serves until a signal. `Ok(true)`: every connection closed
/// in time; `Ok(false)`: the deadline cut some off.
async fn serve(args: &ServeArgs, dir: PathBuf, app: Arc<App>) -> Result<bool> {
    // Signal handlers go in before the address is printed, so a SIGTERM sent
    // as soon as the address is read is a graceful shutdown, not a kill.
    let signal = shutdown_signal().context("cannot install signal handlers")?;
    tokio::pin!(signal);
    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {addr} (is another server using this port?)"))?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{bound}").context("cannot write stdout")?;
        out.flush().context("cannot write stdout")?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let open = Arc::new(Open::default());
    let limits = ConnLimits {
        max_connections: args.max_connections,
        header_timeout: Duration::from_secs(args.header_timeout_secs),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
    };
    let acceptor = tokio::spawn(conn::accept_loop(
        listener,
        routes::router(app.clone()),
        limits,
        app.http.clone(),
        open.clone(),
        stop_rx,
    ));

    let loader = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || load(&args, dir))
    };
    tokio::pin!(loader);
    let name = tokio::select! {
        loaded = &mut loader => {
            let ready = loaded.context("the model loader failed")?;
            match ready {
                Ok(r) => {
                    let _ = app.ready.set(Arc::new(r));
                    (&mut signal).await
                }
                Err(e) => {
                    let _ = stop_tx.send(true);
                    return Err(e);
                }
            }
        }
        name = &mut signal => name,
    };

    app.shutting_down.store(true, Ordering::SeqCst);
    let n = app.http.in_flight.get();
    tracing::info!("lanes serve: {name}: no new connections; finishing {n} request(s) in flight");
    let _ = stop_tx.send(true);
    let _ = acceptor.await;
    let grace = Duration::from_secs(args.shutdown_timeout_secs);
    if tokio::time::timeout(grace, open.drained()).await.is_ok() {
        return Ok(true);
    }
    let left = open.count();
    app.http.connections_timed_out.inc_by(left as u64);
    tracing::warn!(
        "lanes serve: shutdown deadline ({} s) reached; force-closing {left} connection(s) still open",
        args.shutdown_timeout_secs
    );
    Ok(false)
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
