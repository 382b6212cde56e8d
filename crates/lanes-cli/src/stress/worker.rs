//! One stress thread: its schedule, its lane, its comparisons, its tally.

use std::sync::atomic::{AtomicU64, Ordering};

use lanes::Lease;
use lanes_nn::{Encoder, NnError};

use super::compare::{Compare, RESULT_TOLERANCE};
use super::engine::{execute, Plant, RunConfig, Suite};
use super::report::Mismatch;

/// What one thread saw.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) completed: usize,
    pub(crate) errors: usize,
    pub(crate) unclean: usize,
    pub(crate) mismatches: usize,
    pub(crate) cmp: Compare,
    /// (global sequence number, mismatch)
    pub(crate) first_mismatch: Option<(u64, Mismatch)>,
    /// ((clean, global sequence number), message): an unclean error ranks before
    /// a clean (injected) one, then the earlier one first.
    pub(crate) first_error: Option<((bool, u64), String)>,
}

/// `true` only for the allocator's injected failure ([`lanes::Error::Injected`]),
/// as the encoder surfaces it. Anything else, a real out-of-memory included, is not
/// what `--inject` planted and counts as unclean.
pub fn is_injected_failure(e: &NnError) -> bool {
    matches!(e, NnError::Runtime(lanes::Error::Injected(_)))
}

/// Which suite request thread `t` runs at step `j`.
fn pick(seed: u64, thread: usize, step: usize, distinct: usize) -> usize {
    let h = crate::rng::splitmix64(
        seed ^ (thread as u64).wrapping_mul(0x1000_0000_01b3) ^ ((step as u64) << 32),
    );
    (h % distinct as u64) as usize
}

/// The tally of a thread that panicked.
pub(crate) fn panicked() -> Tally {
    Tally {
        errors: 1,
        unclean: 1,
        first_error: Some(((false, 0), "a stress thread panicked".into())),
        ..Tally::default()
    }
}

/// Runs thread `t`'s share of the run.
pub(crate) fn worker(
    encoder: &Encoder,
    suite: &Suite,
    cfg: &RunConfig,
    t: usize,
    seq: &AtomicU64,
    progress: Option<&indicatif::ProgressBar>,
) -> Tally {
    let device = encoder.device();
    let mut tally = Tally::default();
    let mut lease: Option<Lease> = None;
    let mut planted = false;
    for step in 0..cfg.requests {
        let k = pick(cfg.seed, t, step, suite.requests.len());
        let req = &suite.requests[k];
        let n = seq.fetch_add(1, Ordering::Relaxed);
        if step % cfg.relay_every.max(1) == 0 {
            lease = None; // give the lane back before asking for one
        }
        let lane = match &lease {
            Some(l) => l.clone(),
            None => match device.lease() {
                Ok(l) => {
                    lease = Some(l.clone());
                    l
                }
                Err(e) => {
                    tally.errors += 1;
                    tally.unclean += 1;
                    note_error(&mut tally.first_error, (false, n), || {
                        format!("thread {t} step {step}: cannot lease a lane: {e}")
                    });
                    continue;
                }
            },
        };
        match execute(encoder, &lane, req) {
            Ok(mut out) => {
                tally.completed += 1;
                if cfg.plant == Some(Plant::Mismatch) && t == 0 && !planted && !out.is_empty() {
                    out[0] += 1e-3;
                    planted = true;
                }
                let want = &suite.references[k];
                if out.len() != want.len() {
                    tally.mismatches += 1;
                    tally.cmp.bad_rows += 1;
                    let m = Mismatch {
                        thread: t,
                        step,
                        request: k,
                        description: req.describe(),
                        row: None,
                        cosine: None,
                        max_abs_diff: None,
                    };
                    if tally.first_mismatch.is_none() {
                        tally.first_mismatch = Some((n, m));
                    }
                } else {
                    let (bad, first) = tally.cmp.rows(&out, want, suite.hidden, RESULT_TOLERANCE);
                    if bad > 0 {
                        tally.mismatches += 1;
                        if tally.first_mismatch.is_none() {
                            let (row, cos, diff) = first.unwrap_or((0, f64::NAN, f64::NAN));
                            tally.first_mismatch = Some((
                                n,
                                Mismatch {
                                    thread: t,
                                    step,
                                    request: k,
                                    description: req.describe(),
                                    row: Some(row),
                                    cosine: Some(cos),
                                    max_abs_diff: Some(diff),
                                },
                            ));
                        }
                    }
                }
            }
            Err(e) => {
                tally.errors += 1;
                let clean = cfg.inject.is_some() && is_injected_failure(&e);
                if !clean {
                    tally.unclean += 1;
                }
                note_error(&mut tally.first_error, (clean, n), || {
                    format!(
                        "thread {t} step {step} ({}): {}",
                        req.describe(),
                        error_chain(&e)
                    )
                });
            }
        }
        if let Some(p) = progress {
            p.inc(1);
        }
    }
    if t == 0 {
        if let Some(l) = &lease {
            match cfg.plant {
                Some(Plant::Leak) => {
                    if let Ok(buf) = l.alloc(4096) {
                        std::mem::forget(buf);
                    }
                }
                Some(Plant::LeaseLeak) => std::mem::forget(l.clone()),
                _ => {}
            }
        }
    }
    tally
}

/// Keeps the error that ranks first: unclean before clean, then the earlier.
pub(crate) fn note_error(
    slot: &mut Option<((bool, u64), String)>,
    key: (bool, u64),
    msg: impl FnOnce() -> String,
) {
    if slot.as_ref().is_none_or(|(k, _)| key < *k) {
        *slot = Some((key, msg()));
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let m = err.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = err.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_injected_failure_is_clean() {
        let e = NnError::from(lanes::Error::Injected("x".into()));
        assert!(is_injected_failure(&e));
        let e = NnError::from(lanes::Error::InvalidArgument("x".into()));
        assert!(!is_injected_failure(&e));
        let e = NnError::InvalidInput("injected fault: out of memory".into());
        assert!(!is_injected_failure(&e), "the message alone does not count");
    }

    #[test]
    fn the_schedule_covers_the_suite() {
        let mut seen = [false; 5];
        for t in 0..4 {
            for j in 0..16 {
                seen[pick(7, t, j, 5)] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }
}
