//! Helpers shared by the integration tests: finding the model and the
//! sentence-transformers fixture, temporary folders, vector comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lanes_nn::Model;
use serde::Deserialize;

/// One line of `minilm_reference.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct Fixture {
    pub text: String,
    pub n_tokens: usize,
    pub input_ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The model folder: `$LANES_MODEL`, else `<workspace>/models/all-MiniLM-L6-v2`.
///
/// If it is missing the test fails with a hint to run `scripts/fetch-model.sh`,
/// unless `LANES_SKIP_MODEL_TESTS=1`, in which case this prints `skipped: ...`
/// to stderr and returns `None`.
pub fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LANES_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models/all-MiniLM-L6-v2"));
    let complete = ["model.safetensors", "tokenizer.json", "config.json"]
        .iter()
        .all(|f| dir.join(f).is_file());
    if complete {
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
        "model not found in {}: run scripts/fetch-model.sh (or set LANES_MODEL to a folder with \
         model.safetensors, tokenizer.json and config.json; LANES_SKIP_MODEL_TESTS=1 skips)",
        dir.display()
    );
}

/// The model, loaded once per test binary; `None` when skipped.
pub fn model() -> Option<&'static Model> {
    static MODEL: OnceLock<Model> = OnceLock::new();
    let dir = model_dir()?;
    Some(MODEL.get_or_init(|| match Model::load(&dir) {
        Ok(m) => m,
        Err(e) => panic!("cannot load model from {}: {e:?}", dir.display()),
    }))
}

/// The 25 fixture lines: `$LANES_FIXTURE`, else this crate's copy of
/// `shared/fixtures/minilm_reference.jsonl`.
pub fn fixtures() -> &'static [Fixture] {
    static FIXTURES: OnceLock<Vec<Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let path = std::env::var_os("LANES_FIXTURE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.jsonl")
            });
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
        let lines: Vec<Fixture> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("fixture line is valid JSON"))
            .collect();
        assert_eq!(
            lines.len(),
            25,
            "fixture {} should have 25 lines",
            path.display()
        );
        lines
    })
}

/// A fresh, empty temporary folder unique to this process and `name`.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lanes-nn-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Cosine similarity, accumulated in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let na: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Largest absolute element-wise difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Euclidean norm, accumulated in f64.
pub fn norm(a: &[f32]) -> f64 {
    a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}
