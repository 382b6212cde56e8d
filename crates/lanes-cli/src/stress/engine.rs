//! The run of `lanes stress`, as a library function that `verify` and the tests
//! call directly: [`run_stress`] runs a [`Suite`] on many threads and checks every
//! result and every counter that must return to its baseline.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lanes::{Allocator, Device, DeviceStats};
use lanes_nn::Encoder;

use super::compare::{fmt_opt, max_opt, min_opt, RESULT_TOLERANCE};
use super::config::RunConfig;
use super::report::{baseline_check, Check, StressReport};
use super::suite::Suite;
use super::worker::{note_error, panicked, worker, Tally};

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
    // The reference run may have cached CUDA graphs (their memory stays reserved
    // until cleared): the baseline is taken without them, and so is the final count.
    device.clear_graphs();
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
    // Cached CUDA graphs keep their activation memory reserved by design (until
    // evicted or cleared): drop them so the check sees whether they give it back.
    device.clear_graphs();
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
        dtype: suite.precision.name(),
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
