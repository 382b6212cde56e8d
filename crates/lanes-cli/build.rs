//! Embeds the build's provenance: the hash of the workspace sources (the same
//! function `lanes verify` runs on a tree), git commit and dirty flag, rustc
//! version, profile, features and build time.

use std::path::Path;
use std::process::Command;

include!("src/source_hash.rs");

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest).join("../..");
    let root = root.canonicalize().unwrap_or(root);
    for p in ["crates", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }

    let (hash, files) = hash_sources(&root).unwrap_or_else(|e| (format!("unhashable: {e}"), 0));
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    // Rerun when the commit moves: HEAD (in a worktree, its own git dir) and the
    // branch's ref (in the common dir). Only files that exist are named: cargo
    // reruns a build script on every build while a named file is missing, and
    // its fresh build time would then rebuild the binary every time.
    let git_dir = git(&["rev-parse", "--absolute-git-dir"]);
    let common_dir = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]);
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let mut watched = Vec::new();
    if let Some(d) = &git_dir {
        watched.push(Path::new(d).join("HEAD"));
    }
    if let (Some(c), Some(b)) = (&common_dir, &branch) {
        watched.push(Path::new(c).join(b));
        watched.push(Path::new(c).join("packed-refs"));
    }
    for p in watched.iter().filter(|p| p.is_file()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if s.is_empty() => "clean",
        Some(_) => "dirty",
        None => "unknown",
    };
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(|f| f.to_lowercase()))
        .collect();
    features.sort();
    let built = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    println!("cargo:rustc-env=LANES_SOURCE_HASH={hash}");
    println!("cargo:rustc-env=LANES_SOURCE_FILES={files}");
    println!("cargo:rustc-env=LANES_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=LANES_GIT_STATE={dirty}");
    println!("cargo:rustc-env=LANES_RUSTC={rustc_version}");
    println!(
        "cargo:rustc-env=LANES_PROFILE={}",
        std::env::var("PROFILE").unwrap_or_default()
    );
    println!("cargo:rustc-env=LANES_FEATURES={}", features.join(","));
    println!("cargo:rustc-env=LANES_BUILT_UNIX={built}");
}
