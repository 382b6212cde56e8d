//! `lanes`: parse the command line, dispatch, return an exit code. The libraries
//! do the work.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod atomic_file;
mod bench;
mod common;
mod embed;
mod rng;
mod serve;
mod stress;
mod verify;
mod version;

/// Thread-safe parallel inference: many threads, one GPU, every result checked.
#[derive(Parser)]
#[command(name = "lanes", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts (stdin or a file) with all-MiniLM-L6-v2; JSONL out, in input order.
    Embed(embed::EmbedArgs),
    /// Serve embeddings over HTTP (OpenAI /v1/embeddings, TEI /embed, /health, /metrics).
    Serve(serve::ServeArgs),
    /// Closed-loop HTTP load against a loopback `lanes serve` (for the benchmark).
    #[command(hide = true)]
    Loadgen(serve::loadgen::LoadgenArgs),
    /// Many threads × many requests, every result checked against a reference and
    /// every counter against its baseline; exit 0 only on a pass.
    Stress(stress::StressArgs),
    /// Throughput, latency and scaling: a lane per thread vs one lane under a global lock.
    Bench(bench::BenchArgs),
    /// A verification round: refuse a stale binary, stress at 4-32 threads, record in a ledger.
    Verify(verify::VerifyArgs),
    /// The version; --verbose adds the source hash, git commit, rustc, profile, build time.
    Version(version::VersionArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed(args) => embed::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Loadgen(args) => serve::loadgen::run(args),
        Command::Stress(args) => stress::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Version(args) => version::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("lanes: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
