//! Helpers of the `cli_*` tests: the built `lanes` binary, the model, JSON output.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// The model folder: `$LANES_MODEL`, else `<workspace>/models/all-MiniLM-L6-v2`.
/// Missing: the test fails with a hint, unless `LANES_SKIP_MODEL_TESTS=1` (then
/// `None`, and the test prints `skipped`).
pub fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LANES_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models/all-MiniLM-L6-v2"));
    if ["model.safetensors", "tokenizer.json", "config.json"]
        .iter()
        .all(|f| dir.join(f).is_file())
    {
        return Some(dir);
    }
    if std::env::var("LANES_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        eprintln!(
            "skipped: model not found in {} (LANES_SKIP_MODEL_TESTS=1)",
            dir.display()
        );
        return None;
    }
    panic!(
        "model not found in {}: run scripts/fetch-model.sh (or set LANES_MODEL)",
        dir.display()
    );
}

/// `lanes ARGS` with the model passed explicitly.
pub fn lanes(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lanes"));
    cmd.args(args);
    cmd
}

/// Runs `cmd`; returns the exit code, stdout and stderr.
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("the lanes binary runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Parses every non-empty stdout line as JSON.
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The one JSON object on stdout.
pub fn json_object(stdout: &str) -> serde_json::Value {
    let mut lines = json_lines(stdout);
    assert_eq!(lines.len(), 1, "expected one JSON object, got: {stdout}");
    lines.remove(0)
}

/// Copies the files the source hash covers (crates/**/*.{rs,toml,cu,cuh},
/// Cargo.toml, Cargo.lock) from `root` into `dest`.
pub fn copy_sources(root: &Path, dest: &Path) {
    fn walk(root: &Path, dir: &Path, dest: &Path) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, dest);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("rs" | "toml" | "cu" | "cuh")
            ) {
                let to = dest.join(path.strip_prefix(root).unwrap());
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(&path, &to).unwrap();
            }
        }
    }
    walk(root, &root.join("crates"), dest);
    for top in ["Cargo.toml", "Cargo.lock"] {
        if root.join(top).is_file() {
            std::fs::copy(root.join(top), dest.join(top)).unwrap();
        }
    }
}
