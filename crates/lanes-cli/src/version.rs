//! `lanes version`: what this binary is and which sources it was built from.
//!
//! The provenance is embedded by `build.rs`; [`tree`] recomputes the source hash
//! of a checkout with the very same function (`source_hash.rs`), so `lanes verify`
//! can refuse a binary built from other sources.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

/// The hash function shared with `build.rs`.
pub mod tree {
    include!("source_hash.rs");
}

/// What `build.rs` recorded about this build.
#[derive(Clone, Debug, Serialize)]
pub struct Provenance {
    /// The package version.
    pub version: &'static str,
    /// SHA-256 of the workspace sources the binary was built from.
    pub source_hash: &'static str,
    /// How many files that hash covers.
    pub source_files: usize,
    /// `git rev-parse HEAD` at build time.
    pub git_commit: &'static str,
    /// `clean`, `dirty` (tracked files modified) or `unknown`.
    pub git_state: &'static str,
    /// `rustc -V`.
    pub rustc: &'static str,
    /// `release` or `debug`.
    pub profile: &'static str,
    /// Enabled cargo features of lanes-cli.
    pub features: &'static str,
    /// Build time, seconds since the Unix epoch.
    pub built_unix: u64,
}

/// This binary's provenance.
pub fn provenance() -> Provenance {
    Provenance {
        version: env!("CARGO_PKG_VERSION"),
        source_hash: env!("LANES_SOURCE_HASH"),
        source_files: env!("LANES_SOURCE_FILES").parse().unwrap_or(0),
        git_commit: env!("LANES_GIT_COMMIT"),
        git_state: env!("LANES_GIT_STATE"),
        rustc: env!("LANES_RUSTC"),
        profile: env!("LANES_PROFILE"),
        features: env!("LANES_FEATURES"),
        built_unix: env!("LANES_BUILT_UNIX").parse().unwrap_or(0),
    }
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-11-01T10:15:00Z`).
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

/// The workspace root holding `crates/lanes-cli`: `start` or its nearest ancestor.
pub fn find_workspace_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| d.join("crates/lanes-cli/Cargo.toml").is_file() && d.join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
}

/// Arguments of `lanes version`.
#[derive(Args, Debug)]
pub struct VersionArgs {
    /// Also print the source hash, git commit and state, rustc, profile, features
    /// and build time.
    #[arg(long, short)]
    pub verbose: bool,
    /// One JSON object with every field.
    #[arg(long)]
    pub json: bool,
}

/// Runs `lanes version`.
pub fn run(args: VersionArgs) -> Result<u8> {
    let p = provenance();
    if args.json {
        println!("{}", serde_json::to_string(&p)?);
        return Ok(0);
    }
    println!("lanes {}", p.version);
    if args.verbose {
        println!("source hash:  {} ({} files)", p.source_hash, p.source_files);
        println!("git commit:   {} ({})", p.git_commit, p.git_state);
        println!("rustc:        {}", p.rustc);
        println!("profile:      {}", p.profile);
        println!(
            "features:     {}",
            if p.features.is_empty() {
                "(none)"
            } else {
                p.features
            }
        );
        println!("built:        {} ({})", rfc3339(p.built_unix), p.built_unix);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn the_embedded_hash_is_a_sha256() {
        let p = provenance();
        assert_eq!(p.source_hash.len(), 64, "{}", p.source_hash);
        assert!(p.source_hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(p.source_files > 0);
    }

    #[test]
    fn the_workspace_root_is_found_from_a_subfolder() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let root = find_workspace_root(&here).expect("the crate lives in a workspace");
        assert!(root.join("crates/lanes-cli").is_dir());
    }
}
