//! `lanes`: parse the command line, dispatch, return an exit code. The libraries
//! do the work.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod common;
mod embed;
mod serve;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed(args) => embed::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Loadgen(args) => serve::loadgen::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("lanes: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
