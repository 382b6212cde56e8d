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

/// Cosine similarity of two vectors (f64 sums; 1 for two zero vectors).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 && nb == 0.0 {
        return 1.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

/// Largest absolute difference of two vectors' components (NaN wins).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| if d.is_nan() || d > m { d } else { m })
}

/// A JSON array of numbers as `f32`s.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or_else(|| panic!("not a number: {x}")) as f32)
        .collect()
}

/// The fixture texts with their sentence-transformers embeddings
/// (`crates/lanes-nn/tests/fixtures/minilm_reference.jsonl`).
pub fn fixture() -> Vec<serde_json::Value> {
    let candidates = [
        std::env::var_os("LANES_FIXTURE").map(PathBuf::from),
        Some(workspace_root().join("crates/lanes-nn/tests/fixtures/minilm_reference.jsonl")),
    ];
    let path = candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .expect("fixture minilm_reference.jsonl not found (set LANES_FIXTURE)");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line"))
        .collect()
}

/// Runs `cmd` and samples its peak resident set (`VmHWM` of /proc/PID/status)
/// until it exits; returns the exit code, stderr and the peak in bytes (Linux only).
pub fn run_peak_rss(cmd: &mut Command) -> (i32, String, u64) {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the lanes binary runs");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        // VmHWM only grows; the last value read before the exit is the peak
        // (up to the last few milliseconds).
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb * 1024);
            }
        }
        if let Some(status) = child.try_wait().expect("wait for lanes") {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let err = reader.join().unwrap_or_default();
    (status.code().unwrap_or(-1), err, peak)
}
