//! `lanes loadgen` (hidden): a bounded closed-loop HTTP load generator for
//! `lanes serve`, so the benchmark needs nothing but the `lanes` binary (the GPU
//! machine has no cargo to install `oha` with).
//!
//! `--concurrency` client threads each keep one HTTP/1.1 keep-alive connection
//! (a `ureq` agent) and send a request as soon as the previous one is answered, for
//! `--duration-secs` (and at most `--max-requests` in all). Loopback targets only.
//! Prints one line: `concurrency=C requests=N ok=N non_2xx=N errors=N rps=R
//! p50_ms=.. p90_ms=.. p99_ms=.. max_ms=..` (latency of 2xx answers only).

use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

/// Texts the requests carry, of varied lengths (about 8 to 60 tokens).
const TEXTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "Thread-safe parallel inference keeps every lane busy without a global lock.",
    "How do I reset my password if I no longer have access to the email address on my account?",
    "GPU streams let independent work overlap.",
    "The caching allocator recycles device memory across lanes, parking blocks until other streams are done with them.",
    "Paris is the capital of France.",
    "Dynamic batching coalesces concurrent requests into one forward pass, trading a little latency for a lot of throughput when many clients are waiting at once.",
    "It rained all day.",
    "Sentence embeddings map text to vectors so that similar meanings lie close together.",
    "Please summarize the quarterly report and highlight the three biggest risks for next year.",
    "A cat sits on the mat.",
    "Every stress run compares each result with a single-threaded reference, so a crash-free run is not mistaken for a correct one.",
    "What time does the library open on Sundays?",
    "Rust's ownership model turns many lifecycle races into compile errors.",
    "The committee postponed its decision until more data on the long-term effects of the policy could be gathered and reviewed by independent experts.",
];

/// Arguments of `lanes loadgen`.
#[derive(Args, Debug)]
pub struct LoadgenArgs {
    /// Server address, e.g. http://127.0.0.1:8080 (loopback only).
    #[arg(long)]
    pub url: String,
    /// Route to load: /v1/embeddings (OpenAI body), /embed or / (TEI body).
    #[arg(long, default_value = "/v1/embeddings")]
    pub path: String,
    /// Concurrent clients (threads, one connection each).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// How long to send requests.
    #[arg(long, default_value_t = 5.0)]
    pub duration_secs: f64,
    /// Requests before this many seconds are sent but not measured.
    #[arg(long, default_value_t = 0.5)]
    pub warmup_secs: f64,
    /// Texts per request.
    #[arg(long, default_value_t = 1)]
    pub inputs_per_request: usize,
    /// Upper bound on requests sent in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_requests: u64,
    /// Wait up to this long for GET /health to answer 200 before starting.
    #[arg(long, default_value_t = 60.0)]
    pub wait_ready_secs: f64,
}

#[derive(Default)]
struct ClientStats {
    ok_latencies_us: Vec<u64>,
    non_2xx: u64,
    errors: u64,
}

/// Runs the load; returns the exit code (1 if no request succeeded).
pub fn run(args: LoadgenArgs) -> Result<u8> {
    if args.concurrency == 0 || args.concurrency > 1024 {
        bail!("--concurrency must be between 1 and 1024");
    }
    let duration_ok = (0.0..=3600.0).contains(&args.duration_secs) && args.duration_secs != 0.0;
    if !duration_ok || !(0.0..=3600.0).contains(&args.warmup_secs) {
        bail!("--duration-secs must be in (0, 3600] and --warmup-secs in [0, 3600]");
    }
    if args.inputs_per_request == 0 {
        bail!("--inputs-per-request must be at least 1");
    }
    let (hostport, _addr) = loopback_addr(&args.url)?;
    let base = format!("http://{hostport}");
    wait_ready(
        &base,
        Duration::from_secs_f64(args.wait_ready_secs.max(0.0)),
    )?;

    let sent = AtomicU64::new(0);
    let start = Instant::now();
    let warm_until = start + Duration::from_secs_f64(args.warmup_secs);
    let end = warm_until + Duration::from_secs_f64(args.duration_secs);
    let stats: Vec<ClientStats> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.concurrency)
            .map(|c| {
                let (args, base, sent) = (&args, &base, &sent);
                s.spawn(move || client(c, base, args, sent, warm_until, end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let measured = end
        .min(Instant::now())
        .saturating_duration_since(warm_until)
        .as_secs_f64();
    let mut lat: Vec<u64> = stats
        .iter()
        .flat_map(|s| s.ok_latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let non_2xx: u64 = stats.iter().map(|s| s.non_2xx).sum();
    let errors: u64 = stats.iter().map(|s| s.errors).sum();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        lat[i.clamp(1, lat.len()) - 1] as f64 / 1000.0
    };
    println!(
        "concurrency={} requests={} ok={} non_2xx={non_2xx} errors={errors} rps={:.1} texts_per_s={:.1} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        args.concurrency,
        lat.len() as u64 + non_2xx + errors,
        lat.len(),
        lat.len() as f64 / measured.max(1e-9),
        (lat.len() * args.inputs_per_request) as f64 / measured.max(1e-9),
        pct(50.0),
        pct(90.0),
        pct(99.0),
        pct(100.0),
    );
    Ok(if lat.is_empty() { 1 } else { 0 })
}

/// Parses `http://HOST:PORT[/...]` and refuses anything that is not loopback.
fn loopback_addr(url: &str) -> Result<(String, SocketAddr)> {
    let rest = url
        .strip_prefix("http://")
        .context("--url must start with http://")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {hostport} (expected HOST:PORT)"))?
        .collect();
    let Some(&addr) = addrs.first() else {
        bail!("{hostport} resolves to no address")
    };
    if !addrs.iter().all(|a| a.ip().is_loopback()) {
        bail!("lanes loadgen only targets loopback addresses (127.0.0.0/8, ::1), not {hostport}");
    }
    Ok((hostport.to_string(), addr))
}

/// One agent per client: one keep-alive connection, generous timeouts.
fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .max_idle_connections_per_host(1)
        .build()
}

/// Sends `request` (with `body`, if any), reads the whole answer (so the
/// connection is reused) and returns its status; `Err` for transport errors.
fn exchange(request: ureq::Request, body: Option<&str>) -> Result<u16, String> {
    let result = match body {
        Some(b) => request
            .set("Content-Type", "application/json")
            .send_string(b),
        None => request.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => return Err(t.to_string()),
    };
    let status = response.status();
    let _ = std::io::copy(
        &mut response.into_reader().take(64 << 20),
        &mut std::io::sink(),
    );
    Ok(status)
}

fn wait_ready(base: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let agent = agent();
    loop {
        match exchange(agent.get(&format!("{base}/health")), None) {
            Ok(200) => return Ok(()),
            Ok(code) if start.elapsed() >= limit => {
                bail!("GET /health answered {code} for {limit:?}")
            }
            Err(e) if start.elapsed() >= limit => bail!("no server at {base} after {limit:?}: {e}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn client(
    c: usize,
    base: &str,
    args: &LoadgenArgs,
    sent: &AtomicU64,
    warm_until: Instant,
    end: Instant,
) -> ClientStats {
    let mut stats = ClientStats::default();
    let agent = agent();
    let url = format!("{base}{}", args.path);
    let field = if args.path == "/v1/embeddings" {
        "input"
    } else {
        "inputs"
    };
    let mut i = c * 7;
    while Instant::now() < end && sent.fetch_add(1, Ordering::Relaxed) < args.max_requests {
        let texts: Vec<&str> = (0..args.inputs_per_request)
            .map(|k| TEXTS[(i + k) % TEXTS.len()])
            .collect();
        i += 1;
        let body = serde_json::json!({ field: texts }).to_string();
        let t = Instant::now();
        let result = exchange(agent.post(&url), Some(&body));
        if t < warm_until {
            continue;
        }
        match result {
            Ok(code) if (200..300).contains(&code) => {
                stats.ok_latencies_us.push(t.elapsed().as_micros() as u64)
            }
            Ok(_) => stats.non_2xx += 1,
            Err(_) => {
                stats.errors += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert!(loopback_addr("http://127.0.0.1:8080").is_ok());
        assert!(loopback_addr("http://127.0.0.1:8080/v1/embeddings").is_ok());
        assert!(loopback_addr("http://[::1]:8080").is_ok());
        assert!(loopback_addr("http://10.0.0.1:80").is_err());
        assert!(loopback_addr("https://127.0.0.1:80").is_err());
    }
}
