//! The checking logic of `lanes stress`, as library functions that `verify` and
//! the tests call directly: [`prepare`] builds the suite and its single-threaded
//! references, [`run_stress`] runs it on many threads and checks every result and
//! every counter that must return to its baseline.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lanes::{Allocator, Device, DeviceStats, Lease};
use lanes_nn::{Encoder, Model};
use serde::Serialize;

use super::compare::{fmt_opt, max_opt, min_opt, Compare, ANCHOR_TOLERANCE, RESULT_TOLERANCE};
use super::report::{baseline_check, Check, StressReport};
use super::requests::{self, Input, Request, Shapes};
use super::worker::{note_error, panicked, worker, Tally};

/// The anchor compares requests of at most this many padded tokens.
const ANCHOR_MAX_TOKENS: usize = 512;

/// A failure planted on purpose, to prove the checks catch it (test hook:
/// `lanes stress --plant KIND`, hidden from `--help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plant {
    /// Thread 0 perturbs its first result by 1e-3 before it is compared.
    Mismatch,
    /// Thread 0 allocates 4 KiB on its lane and forgets the buffer.
    Leak,
    /// Thread 0 forgets a clone of its last lease (the lane stays leased).
    LeaseLeak,
}

/// The suite and its references.
pub struct Suite {
    /// The distinct requests.
    pub requests: Vec<Request>,
    /// Each request's single-threaded result, `rows × hidden`.
    pub references: Vec<Vec<f32>>,
    /// Embedding width.
    pub hidden: usize,
    /// The device reference against the host reference forward, if checked.
    pub anchor: Option<Check>,
    /// Time of the reference pass.
    pub reference_seconds: f64,
    /// The seed the requests came from.
    pub seed: u64,
}

/// Runs one request on `lane`: `rows × hidden` values.
pub fn execute(encoder: &Encoder, lane: &Lease, req: &Request) -> lanes_nn::Result<Vec<f32>> {
    match &req.input {
        Input::Tokens(enc) => encoder.forward(lane, enc),
        Input::Texts(texts) => {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let embs = encoder.embed_on(lane, &refs)?;
            Ok(embs.into_iter().flat_map(|e| e.vector).collect())
        }
    }
}

/// Builds the suite for `seed` and computes every request's reference on one lane
/// of the encoder's device, one request after the other. With `host_model`, the
/// small requests' references are also compared with the host reference forward
/// (the anchor: a device that is consistently wrong would otherwise pass).
pub fn prepare(
    encoder: &Encoder,
    host_model: Option<&Model>,
    shapes: Shapes,
    seed: u64,
) -> Result<Suite> {
    let vocab = encoder.config().vocab_size;
    let requests = requests::generate(encoder.tokenizer(), vocab, shapes, seed)?;
    let hidden = encoder.config().hidden_size;
    let start = Instant::now();
    let lane = encoder
        .device()
        .lease()
        .context("cannot lease a lane for the reference pass")?;
    let mut references = Vec::with_capacity(requests.len());
    for req in &requests {
        let out = execute(encoder, &lane, req)
            .with_context(|| format!("reference pass, {}", req.describe()))?;
        anyhow::ensure!(
            out.len() == req.rows() * hidden,
            "reference pass, {}: {} values, expected {} rows × {hidden}",
            req.describe(),
            out.len(),
            req.rows()
        );
        references.push(out);
    }
    drop(lane);
    let anchor = match host_model {
        Some(model) => Some(anchor(model, &requests, &references, hidden)?),
        None => None,
    };
    Ok(Suite {
        requests,
        references,
        hidden,
        anchor,
        reference_seconds: start.elapsed().as_secs_f64(),
        seed,
    })
}

fn anchor(
    model: &Model,
    requests: &[Request],
    references: &[Vec<f32>],
    hidden: usize,
) -> Result<Check> {
    let mut cmp = Compare::default();
    let mut checked = Vec::new();
    for (req, reference) in requests.iter().zip(references) {
        if req.padded_tokens() > ANCHOR_MAX_TOKENS {
            continue;
        }
        let enc = match &req.input {
            Input::Tokens(enc) => enc.clone(),
            Input::Texts(texts) => {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                model.tokenizer.encode_batch(&refs)?
            }
        };
        let host = lanes_nn::reference::forward(&model.weights, &model.config, &enc)
            .with_context(|| format!("host reference forward, {}", req.describe()))?;
        cmp.rows(&host, reference, hidden, ANCHOR_TOLERANCE);
        checked.push(req.index);
    }
    let passed = cmp.bad_rows == 0 && !checked.is_empty();
    Ok(Check {
        name: "anchor".into(),
        passed,
        detail: format!(
            "device reference vs host reference forward on {} requests: {} rows, min cosine {}, max |diff| {}",
            checked.len(),
            cmp.rows,
            fmt_opt(cmp.min_cosine),
            fmt_opt(cmp.max_abs_diff)
        ),
        figures: serde_json::json!({
            "requests": checked, "rows": cmp.rows, "bad_rows": cmp.bad_rows,
            "min_cosine": cmp.min_cosine, "max_abs_diff": cmp.max_abs_diff,
            "tolerance": ANCHOR_TOLERANCE,
        }),
    })
}

/// How a run is driven.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Threads, each on its own lane.
    pub threads: usize,
    /// Requests per thread.
    pub requests: usize,
    /// Picks which suite request each (thread, step) runs.
    pub seed: u64,
    /// A thread gives its lane back and leases one again every this many requests.
    pub relay_every: usize,
    /// `--inject oom:P`: the fraction of the allocator's allocations that fail
    /// during the run (deterministic per the device's allocator seed).
    pub inject: Option<f64>,
    /// A planted failure (test hook).
    pub plant: Option<Plant>,
    /// Draw a progress bar (only on a terminal).
    pub progress: bool,
}

/// Runs `cfg.threads` threads × `cfg.requests` requests of `suite` on the encoder's
/// device, each thread on its own lane, compares every result with its reference
/// and checks that allocated bytes, leases, pooled events and callbacks are back
/// to their baseline. With `cfg.inject`, the device's allocator fails that
/// fraction of its allocations while the threads run (armed after the baseline is
/// taken, disarmed before it is checked).
pub fn run_stress(encoder: &Encoder, suite: &Suite, cfg: &RunConfig) -> Result<StressReport> {
    let device = encoder.device();
    anyhow::ensure!(cfg.threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(
        cfg.threads <= device.lanes(),
        "{} threads need {} lanes but the device has {}",
        cfg.threads,
        cfg.threads,
        device.lanes()
    );
    anyhow::ensure!(!suite.requests.is_empty(), "the suite has no requests");
    device
        .synchronize()
        .context("cannot synchronize the device before the run")?;
    let base = device.stats();
    let total = cfg.threads * cfg.requests;
    let progress = progress_bar(cfg.progress, total);
    let seq = AtomicU64::new(0);
    let armed = Armed::arm(device.allocator(), cfg.inject);
    let start = Instant::now();
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cfg.threads)
            .map(|t| {
                let (seq, progress) = (&seq, &progress);
                s.spawn(move || worker(encoder, suite, cfg, t, seq, progress.as_ref()))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| panicked()))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    drop(armed);
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    let after = settle(device, &base);
    let injected_failures = after.alloc.injected_failures - base.alloc.injected_failures;
    // Every allocation while armed drew: those served plus those failed.
    let armed_draws = match cfg.inject {
        Some(_) => {
            (after.alloc.cache_hits + after.alloc.cache_misses + after.alloc.injected_failures)
                - (base.alloc.cache_hits + base.alloc.cache_misses + base.alloc.injected_failures)
        }
        None => 0,
    };

    let mut t = Tally::default();
    for x in tallies {
        t.completed += x.completed;
        t.errors += x.errors;
        t.unclean += x.unclean;
        t.mismatches += x.mismatches;
        t.cmp.rows += x.cmp.rows;
        t.cmp.bad_rows += x.cmp.bad_rows;
        t.cmp.min_cosine = min_opt(t.cmp.min_cosine, x.cmp.min_cosine);
        t.cmp.max_abs_diff = max_opt(t.cmp.max_abs_diff, x.cmp.max_abs_diff);
        if let Some(m) = x.first_mismatch {
            if t.first_mismatch.as_ref().is_none_or(|(s, _)| m.0 < *s) {
                t.first_mismatch = Some(m);
            }
        }
        if let Some((key, msg)) = x.first_error {
            note_error(&mut t.first_error, key, || msg);
        }
    }
    let leaked = after.alloc.allocated_bytes as i64 - base.alloc.allocated_bytes as i64;
    let mut checks = Vec::new();
    checks.push(Check {
        name: "results".into(),
        passed: t.mismatches == 0
            && t.completed + t.errors == total
            && (t.completed > 0 || cfg.inject.is_some()),
        detail: format!(
            "{} of {total} results compared ({} rows): {} mismatches, min cosine {}, max |diff| {}",
            t.completed,
            t.cmp.rows,
            t.mismatches,
            fmt_opt(t.cmp.min_cosine),
            fmt_opt(t.cmp.max_abs_diff)
        ),
        figures: serde_json::json!({
            "compared": t.completed, "rows": t.cmp.rows, "mismatches": t.mismatches,
            "mismatched_rows": t.cmp.bad_rows, "min_cosine": t.cmp.min_cosine,
            "max_abs_diff": t.cmp.max_abs_diff, "tolerance": RESULT_TOLERANCE,
        }),
    });
    checks.push(Check {
        name: "errors".into(),
        passed: t.unclean == 0 && (cfg.inject.is_some() || t.errors == 0),
        detail: match cfg.inject {
            Some(p) => format!(
                "{} requests failed with the injected allocation error ({injected_failures} of {armed_draws} allocations failed at p={p}), {} with another error",
                t.errors - t.unclean,
                t.unclean
            ),
            None => format!("{} requests failed", t.errors),
        },
        figures: serde_json::json!({
            "errors": t.errors, "unclean": t.unclean, "injected": injected_failures,
            "allocs_while_armed": armed_draws,
            "first": t.first_error.as_ref().map(|e| e.1.clone()),
        }),
    });
    checks.push(baseline_check(
        "allocated_bytes",
        base.alloc.allocated_bytes,
        after.alloc.allocated_bytes,
        "allocator bytes in live blocks",
    ));
    checks.push(baseline_check(
        "leases",
        base.leases_outstanding,
        after.leases_outstanding,
        "leases held",
    ));
    checks.push(baseline_check(
        "events",
        base.events_outstanding,
        after.events_outstanding,
        "pooled events handed out",
    ));
    checks.push(baseline_check(
        "callbacks",
        base.callbacks_pending,
        after.callbacks_pending,
        "completion callbacks pending",
    ));
    if let Some(a) = &suite.anchor {
        checks.push(a.clone());
    }
    Ok(StressReport {
        passed: checks.iter().all(|c| c.passed),
        device: device.name().to_string(),
        threads: cfg.threads,
        requests: total,
        completed: t.completed,
        errors: t.errors,
        unclean_errors: t.unclean,
        mismatches: t.mismatches,
        mismatched_rows: t.cmp.bad_rows,
        rows_checked: t.cmp.rows,
        min_cosine: t.cmp.min_cosine,
        max_abs_diff: t.cmp.max_abs_diff,
        leaked_bytes: leaked,
        leases_outstanding: excess(after.leases_outstanding, base.leases_outstanding),
        events_outstanding: excess(after.events_outstanding, base.events_outstanding),
        callbacks_pending: excess(after.callbacks_pending, base.callbacks_pending),
        injected_failures,
        inject: cfg.inject,
        distinct: suite.requests.len(),
        seed: suite.seed,
        seconds,
        reference_seconds: suite.reference_seconds,
        first_mismatch: t.first_mismatch.map(|m| m.1),
        first_error: t.first_error.map(|e| e.1),
        plant: cfg.plant,
        checks,
    })
}

/// The allocator's fault injection, armed for the run and disarmed on drop (also
/// when the run unwinds).
struct Armed<'a>(Option<&'a Allocator>);

impl<'a> Armed<'a> {
    fn arm(allocator: &'a Allocator, p: Option<f64>) -> Armed<'a> {
        match p {
            Some(p) => {
                allocator.set_inject_oom(Some(p));
                Armed(Some(allocator))
            }
            None => Armed(None),
        }
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.0 {
            a.set_inject_oom(None);
        }
    }
}

/// What a run left behind beyond the baseline (a counter below its baseline is
/// not a leak; its check still fails, the report keeps both figures).
fn excess(after: usize, baseline: usize) -> usize {
    after.saturating_sub(baseline)
}

/// The device's stats once the counters have settled back to `base` (completion
/// callbacks finish on their own thread), or after 2 s, whichever comes first.
fn settle(device: &Device, base: &DeviceStats) -> DeviceStats {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let _ = device.synchronize();
        let s = device.stats();
        let settled = s.alloc.allocated_bytes == base.alloc.allocated_bytes
            && s.leases_outstanding == base.leases_outstanding
            && s.events_outstanding == base.events_outstanding
            && s.callbacks_pending == base.callbacks_pending;
        if settled || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn progress_bar(enabled: bool, total: usize) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} requests {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}
