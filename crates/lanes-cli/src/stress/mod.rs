//! `lanes stress`: many threads × many requests of real inference, every result
//! compared with a single-threaded reference, every counter back to its baseline.
//!
//! 1. The suite: `--distinct` requests of batch 1..=`--max-batch` and
//!    1..=`--max-len` tokens, texts and synthetic token sequences, all derived from
//!    `--seed` ([`requests`]).
//! 2. The reference pass: each request once, on one lane of the same device, one
//!    after the other. The small ones are also checked against the host reference
//!    forward (the `anchor` check; `--no-anchor` skips it).
//! 3. The run: `--threads` threads, each leasing its own lane (and giving it back
//!    and leasing again every few requests), run `--requests` requests each, picked
//!    from the suite by the seed. Every row is compared with its reference
//!    (cosine ≥ 0.99999 and max |diff| ≤ 1e-5).
//! 4. The baseline: afterwards the allocator's allocated bytes, the leases held,
//!    the pooled events handed out and the pending callbacks must equal what they
//!    were before the run.
//!
//! The run passes only if every check holds; the exit code is 0 only then.
//! `--inject oom:P` makes a fraction P of the caching allocator's allocations fail
//! during the run: the device's allocator is armed with
//! [`lanes::Allocator::set_inject_oom`] after the reference pass and disarmed when
//! the threads are done; each failed allocation returns [`lanes::Error::Injected`]
//! (the draws are a hash of `--seed` and a counter, so a single-threaded run fails
//! the same allocations every time). Every request allocates, warm cache or not, so
//! every request draws. Requests that hit one must end with that error (surfaced as
//! [`lanes_nn::NnError::Runtime`]), and nothing else: any other error fails the
//! run. The others must still match, and nothing may leak. The report counts the
//! failures from the allocator's `injected_failures` over the run.
//!
//! Test hooks (hidden from `--help`): `--plant mismatch` perturbs thread 0's first
//! result by 1e-3 before it is compared; `--plant leak` makes thread 0 allocate
//! 4 KiB and forget the buffer; `--plant lease-leak` makes it forget a lease. Each
//! must make the run fail; the tests prove it.

pub mod compare;
pub mod engine;
pub mod report;
pub mod requests;
mod worker;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use lanes::Device;
use lanes_nn::{Encoder, Model};

// `requests` reaches the one generator as `super::Rng`.
use crate::rng::Rng;

pub use engine::{prepare, run_stress, Plant, RunConfig};
pub use report::StressReport;
pub use requests::Shapes;

/// Arguments of `lanes stress`.
#[derive(Args, Debug, Clone)]
pub struct StressArgs {
    /// Model folder (else $LANES_MODEL, else ./models/all-MiniLM-L6-v2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Threads, each on its own lane.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Requests per thread.
    #[arg(long, default_value_t = 16)]
    pub requests: usize,
    /// Distinct requests in the suite (each gets a reference).
    #[arg(long, default_value_t = 16)]
    pub distinct: usize,
    /// Largest batch of a request (1..=32).
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Longest sequence of a request in tokens (1..=256).
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    /// Fault injection during the run (not the reference pass): `oom:P` fails a
    /// fraction P of the caching allocator's allocations, deterministic per --seed.
    /// Requests that hit one must end with the injected error; the rest must match.
    #[arg(long, value_name = "oom:P", value_parser = parse_inject)]
    pub inject: Option<f64>,
    /// Seed of the requests, the schedule and the injected failures.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Skip the check of the device's references against the host reference forward.
    #[arg(long)]
    pub no_anchor: bool,
    /// One JSON object instead of the summary line.
    #[arg(long)]
    pub json: bool,
    /// Test hook: plant a failure the checks must catch.
    #[arg(long, value_enum, hide = true)]
    pub plant: Option<Plant>,
    /// A thread gives its lane back and leases one again every this many requests.
    #[arg(long, default_value_t = 4, hide = true)]
    pub relay_every: usize,
}

/// Parses `oom:P` with P in 0..=1.
pub fn parse_inject(s: &str) -> std::result::Result<f64, String> {
    let p = s
        .strip_prefix("oom:")
        .ok_or_else(|| format!("expected oom:P (e.g. oom:0.3), not `{s}`"))?;
    let p: f64 = p
        .parse()
        .map_err(|_| format!("`{p}` is not a probability"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("the probability {p} is outside 0..=1"));
    }
    Ok(p)
}

impl StressArgs {
    /// The suite's shapes, validated.
    pub fn shapes(&self) -> Result<Shapes> {
        Shapes::checked(self.distinct, self.max_batch, self.max_len)
    }
}

/// Loads the encoder onto `device` and, unless skipped, the host model for the anchor.
pub fn load(
    dir: &std::path::Path,
    device: &Device,
    anchor: bool,
) -> Result<(Encoder, Option<Model>)> {
    let encoder = Encoder::load(dir, device)
        .with_context(|| format!("cannot load the model from {}", dir.display()))?;
    let host = if anchor {
        Some(
            Model::load(dir)
                .with_context(|| format!("cannot load the host model from {}", dir.display()))?,
        )
    } else {
        None
    };
    Ok((encoder, host))
}

/// Runs `lanes stress`; 0 only if the run passed.
pub fn run(args: StressArgs) -> Result<u8> {
    if args.threads == 0 || args.requests == 0 {
        bail!("--threads and --requests must be at least 1");
    }
    let shapes = args.shapes()?;
    let dir = crate::common::model_dir(args.model.clone())?;
    let device = crate::common::open_device_seeded(&args.device, args.threads, args.seed)?;
    let (encoder, host) = load(&dir, &device, !args.no_anchor)?;
    let suite = prepare(&encoder, host.as_ref(), shapes, args.seed)?;
    drop(host);
    let cfg = RunConfig {
        threads: args.threads,
        requests: args.requests,
        seed: args.seed,
        relay_every: args.relay_every,
        inject: args.inject,
        plant: args.plant,
        progress: !args.json,
    };
    let report = run_stress(&encoder, &suite, &cfg)?;
    print_report(&report, args.json)?;
    Ok(if report.passed { 0 } else { 1 })
}

/// Prints the JSON object, or the summary line and, on failure, what failed.
pub fn print_report(report: &StressReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    println!("{}", report.summary());
    if !report.passed {
        if let Some(m) = &report.first_mismatch {
            println!("  first mismatch: {m}");
        }
        if let Some(e) = &report.first_error {
            println!("  first error: {e}");
        }
        for c in report.checks.iter().filter(|c| !c.passed) {
            println!("  check {} failed: {}", c.name, c.detail);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_parses_probabilities_only() {
        assert_eq!(parse_inject("oom:0.3"), Ok(0.3));
        assert_eq!(parse_inject("oom:1"), Ok(1.0));
        assert!(parse_inject("0.3").is_err());
        assert!(parse_inject("oom:1.5").is_err());
        assert!(parse_inject("oom:x").is_err());
    }
}
