//! What a stress run reports: its checks, its first mismatch, its figures.

use serde::Serialize;

use super::compare::fmt_opt;
use super::config::Plant;

/// One check of a run, with its figures.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// `results`, `errors`, `allocated_bytes`, `leases`, `events`, `callbacks`, `anchor`.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// One line for people.
    pub detail: String,
    /// The numbers behind it.
    pub figures: serde_json::Value,
}

/// The first result that did not match its reference.
#[derive(Clone, Debug, Serialize)]
pub struct Mismatch {
    /// The thread that ran it.
    pub thread: usize,
    /// The thread's step (0-based).
    pub step: usize,
    /// The suite request.
    pub request: usize,
    /// What that request is.
    pub description: String,
    /// The first bad row (`None`: the result had the wrong size).
    pub row: Option<usize>,
    /// Its cosine similarity to the reference row.
    pub cosine: Option<f64>,
    /// Its largest absolute difference.
    pub max_abs_diff: Option<f64>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "thread {} step {} ({})",
            self.thread, self.step, self.description
        )?;
        match self.row {
            Some(row) => write!(
                f,
                ", row {row}: cosine {}, max |diff| {}",
                fmt_opt(self.cosine),
                fmt_opt(self.max_abs_diff)
            ),
            None => write!(f, ": the result has the wrong number of values"),
        }
    }
}

/// What a run found. `passed` only if every check held.
#[derive(Clone, Debug, Serialize)]
pub struct StressReport {
    /// Every check held.
    pub passed: bool,
    /// The device (`cpu`, `cuda:0`).
    pub device: String,
    /// The precision the encoder computed in (`float32`, `float16`, `bfloat16`).
    pub dtype: &'static str,
    /// Threads, each on its own lane.
    pub threads: usize,
    /// Requests run (threads × requests per thread).
    pub requests: usize,
    /// Requests that returned a result (all compared).
    pub completed: usize,
    /// Requests that ended with an error.
    pub errors: usize,
    /// Errors that were not an (injected) allocation failure.
    pub unclean_errors: usize,
    /// Requests with at least one row outside the tolerance.
    pub mismatches: usize,
    /// Rows outside the tolerance.
    pub mismatched_rows: usize,
    /// Rows compared.
    pub rows_checked: usize,
    /// Least cosine similarity of any row (`null` if none was compared).
    pub min_cosine: Option<f64>,
    /// Largest absolute difference of any component.
    pub max_abs_diff: Option<f64>,
    /// Allocated bytes after the run minus before it.
    pub leaked_bytes: i64,
    /// Leases held after the run beyond those held before it (the absolute
    /// figures are in `checks`).
    pub leases_outstanding: usize,
    /// Pooled events handed out and not returned, beyond the baseline (the model
    /// holds its weights' ready event for its whole life).
    pub events_outstanding: usize,
    /// Completion callbacks not finished after the run, beyond the baseline.
    pub callbacks_pending: usize,
    /// Allocations failed on purpose.
    pub injected_failures: u64,
    /// `--inject oom:P`.
    pub inject: Option<f64>,
    /// Distinct suite requests.
    pub distinct: usize,
    /// The seed of the requests and of the schedule.
    pub seed: u64,
    /// The run's wall time (reference pass excluded).
    pub seconds: f64,
    /// The reference pass's wall time.
    pub reference_seconds: f64,
    /// The first result that did not match.
    pub first_mismatch: Option<Mismatch>,
    /// The first error, with its request.
    pub first_error: Option<String>,
    /// A planted failure, if any (test hook).
    pub plant: Option<Plant>,
    /// Every check with its figures.
    pub checks: Vec<Check>,
}

impl StressReport {
    /// One line: verdict and the main figures.
    pub fn summary(&self) -> String {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect();
        let mut s = format!(
            "lanes stress: {verdict}: {} requests on {} in {} with {} threads in {:.2} s: {} errors{}, {} mismatches \
             (min cosine {}, max |diff| {}), leaked {} B, {} leases / {} events outstanding",
            self.requests,
            self.device,
            self.dtype,
            self.threads,
            self.seconds,
            self.errors,
            match self.inject {
                Some(p) => format!(" ({} injected at p={p})", self.injected_failures),
                None => String::new(),
            },
            self.mismatches,
            fmt_opt(self.min_cosine),
            fmt_opt(self.max_abs_diff),
            self.leaked_bytes,
            self.leases_outstanding,
            self.events_outstanding,
        );
        if !failed.is_empty() {
            s.push_str(&format!("; failed checks: {}", failed.join(", ")));
        }
        s
    }
}

/// A counter that must equal its baseline after the run.
pub(crate) fn baseline_check(name: &str, baseline: usize, after: usize, what: &str) -> Check {
    Check {
        name: name.into(),
        passed: after == baseline,
        detail: format!("{what}: {after} after the run, {baseline} before"),
        figures: serde_json::json!({ "baseline": baseline, "after": after }),
    }
}
