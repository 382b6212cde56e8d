//! `lanes verify`: a verification round that cannot run a stale build.
//!
//! 1. Provenance: the sources of the tree it runs in (the nearest folder upwards
//!    holding `crates/lanes-cli`, or `--source DIR`) are hashed with the function
//!    `build.rs` used; if the hash differs from the one embedded in this binary the
//!    round is refused with exit code 3, naming both hashes and the rebuild command.
//! 2. The stress suite (the same library functions as `lanes stress`) runs at each
//!    of `--threads` (4, 8, 16, 32 by default) on one device, against one set of
//!    single-threaded references.
//! 3. The round (time, source hash, git commit, device, every check of every run
//!    with its figures, clean or not) is appended to the ledger as one JSON line.
//!    The exit code is 0 only if the round is clean.
//!
//! `--status` prints how many consecutive clean rounds the tree's source hash has
//! (a round of another hash, an unclean round or a corrupt line ends the streak).

pub mod ledger;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::stress::{self, RunConfig, Shapes};
use crate::version::{self, provenance};

/// Exit code of a refused (stale) round.
pub const EXIT_STALE: u8 = 3;

/// The command that rebuilds this binary from the current sources.
pub const REBUILD: &str = "cargo build --release -p lanes-cli";

/// Arguments of `lanes verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Model folder (else $LANES_MODEL, else ./models/all-MiniLM-L6-v2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// The ledger (JSON lines), appended to.
    #[arg(long, default_value = "lanes-verify.jsonl")]
    pub ledger: PathBuf,
    /// The source tree to check the binary against (default: the workspace
    /// containing the current folder).
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Print the streak of consecutive clean rounds of the current sources; run nothing.
    #[arg(long)]
    pub status: bool,
    /// Thread counts of the stress runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32")]
    pub threads: Vec<usize>,
    /// Requests per thread in each stress run.
    #[arg(long, default_value_t = 16)]
    pub requests: usize,
    /// Distinct requests in the suite.
    #[arg(long, default_value_t = 16)]
    pub distinct: usize,
    /// Largest batch of a request (1..=32).
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Longest sequence of a request in tokens (1..=256).
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    /// Seed of the suite and the schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Skip the check of the device's references against the host reference forward.
    #[arg(long)]
    pub no_anchor: bool,
    /// Print the round (or the status) as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `lanes verify`: 0 for a clean round, 1 for an unclean one, 3 for a stale binary.
pub fn run(args: VerifyArgs) -> Result<u8> {
    let root = source_root(args.source.as_deref())?;
    let (tree_hash, files) = version::tree::hash_sources(&root)
        .with_context(|| format!("cannot hash the sources under {}", root.display()))?;
    let p = provenance();
    if args.status {
        return status(&args, &root, &tree_hash);
    }
    if tree_hash != p.source_hash {
        eprintln!(
            "lanes verify: refused: this binary was built from other sources than {}\n  \
             binary source hash: {} ({} files, git {} {})\n  \
             tree source hash:   {} ({} files)\n  \
             rebuild it with `{REBUILD}` and run verify again; a stale binary cannot verify these sources",
            root.display(),
            p.source_hash,
            p.source_files,
            p.git_commit,
            p.git_state,
            tree_hash,
            files
        );
        return Ok(EXIT_STALE);
    }
    let (threads, max) = crate::common::thread_counts(&args.threads, "--threads")?;
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    let shapes = Shapes::checked(args.distinct, args.max_batch, args.max_len)?;

    let start = Instant::now();
    let dir = crate::common::model_dir(args.model.clone())?;
    let device = crate::common::open_device_seeded(&args.device, max, args.seed)?;
    let (encoder, host) = stress::load(&dir, &device, !args.no_anchor)?;
    let suite = stress::prepare(&encoder, host.as_ref(), shapes, args.seed)?;
    drop(host);
    let mut runs = Vec::new();
    for &n in &threads {
        let cfg = RunConfig {
            threads: n,
            requests: args.requests,
            seed: args.seed,
            relay_every: 4,
            inject: None,
            plant: None,
            progress: !args.json,
        };
        let report = stress::run_stress(&encoder, &suite, &cfg)?;
        if !args.json {
            stress::print_report(&report, false)?;
        }
        runs.push(report);
    }
    let clean = runs.iter().all(|r| r.passed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let record = serde_json::json!({
        "kind": "lanes-verify-round",
        "time": version::rfc3339(now),
        "unix": now,
        "source_hash": tree_hash,
        "source_files": files,
        "binary_source_hash": p.source_hash,
        "git_commit": p.git_commit,
        "git_state": p.git_state,
        "version": p.version,
        "profile": p.profile,
        "features": p.features,
        "rustc": p.rustc,
        "device": device.name(),
        "seed": args.seed,
        "threads": threads,
        "requests_per_thread": args.requests,
        "distinct": suite.requests.len(),
        "reference_seconds": suite.reference_seconds,
        "seconds": start.elapsed().as_secs_f64(),
        "clean": clean,
        "runs": runs,
    });
    ledger::append(&args.ledger, &record)?;
    let entries = ledger::read(&args.ledger)?;
    let s = ledger::streak(&entries, &tree_hash);
    if args.json {
        println!("{}", serde_json::to_string(&record)?);
    } else {
        println!(
            "lanes verify: round {} on {} for source {}: {} consecutive clean rounds of this source; recorded in {}",
            if clean { "CLEAN" } else { "NOT CLEAN" },
            device.name(),
            ledger::short(&tree_hash),
            s.count,
            args.ledger.display()
        );
    }
    Ok(if clean { 0 } else { 1 })
}

/// `--source DIR`, or the workspace holding the current folder.
fn source_root(arg: Option<&Path>) -> Result<PathBuf> {
    match arg {
        Some(dir) => {
            if !dir.join("crates").is_dir() {
                bail!(
                    "--source {} holds no crates/ folder: not a lanes workspace",
                    dir.display()
                );
            }
            Ok(dir.to_path_buf())
        }
        None => {
            let cwd = std::env::current_dir().context("cannot read the current folder")?;
            version::find_workspace_root(&cwd).with_context(|| {
                format!(
                    "cannot find the lanes sources (a folder holding crates/lanes-cli) in or above {}; \
                     run verify inside the checkout or pass --source DIR",
                    cwd.display()
                )
            })
        }
    }
}

fn status(args: &VerifyArgs, root: &Path, tree_hash: &str) -> Result<u8> {
    let entries = ledger::read(&args.ledger)?;
    for e in &entries {
        if let ledger::Entry::Corrupt { line, reason } = e {
            eprintln!(
                "lanes verify: {} line {line} is corrupt: {reason}",
                args.ledger.display()
            );
        }
    }
    let s = ledger::streak(&entries, tree_hash);
    let p = provenance();
    let stale = p.source_hash != tree_hash;
    if args.json {
        let mut v = serde_json::to_value(&s)?;
        v["binary_source_hash"] = serde_json::json!(p.source_hash);
        v["binary_stale"] = serde_json::json!(stale);
        v["ledger"] = serde_json::json!(args.ledger.display().to_string());
        println!("{}", serde_json::to_string(&v)?);
        return Ok(0);
    }
    println!(
        "source {} ({}): {} consecutive clean round{}{} in {} ({} rounds{})",
        ledger::short(tree_hash),
        root.display(),
        s.count,
        if s.count == 1 { "" } else { "s" },
        s.last
            .as_ref()
            .map_or(String::new(), |t| format!(", most recent at {t}")),
        args.ledger.display(),
        s.rounds,
        if s.corrupt_lines.is_empty() {
            String::new()
        } else {
            format!(", corrupt lines {:?}", s.corrupt_lines)
        }
    );
    if let Some(by) = &s.ended_by {
        println!("  streak ended by {by}");
    }
    if stale {
        println!(
            "  note: this binary was built from source {}; rebuild with `{REBUILD}` before the next round",
            ledger::short(p.source_hash)
        );
    }
    Ok(0)
}
