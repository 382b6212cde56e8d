//! Helpers shared by the integration tests: finding the model and the
//! sentence-transformers fixture, opening CUDA (or skipping), temporary folders,
//! vector comparisons, a deterministic generator.
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

/// `true` when `LANES_REQUIRE_CUDA=1` (the GPU suite): CUDA tests must run.
pub fn cuda_required() -> bool {
    std::env::var("LANES_REQUIRE_CUDA").is_ok_and(|v| v.trim() == "1")
}

/// CUDA device 0, or `None` after printing `SKIPPED (no CUDA): <error>` where it
/// cannot be opened (no driver, no GPU: CI). Under `LANES_REQUIRE_CUDA=1` a
/// missing device fails the test instead.
pub fn cuda() -> Option<lanes::Device> {
    match lanes::Device::cuda(0, lanes::DeviceConfig::default()) {
        Ok(d) => Some(d),
        Err(e) if cuda_required() => {
            panic!("LANES_REQUIRE_CUDA=1 but cuda:0 cannot be opened: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED (no CUDA): {e}");
            None
        }
    }
}

/// A small deterministic generator (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// `n` values uniform in `[lo, hi)`.
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(lo, hi)).collect()
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `n` values uniform in `[lo, hi)`, rounded to `dt` (as the device stores them).
    pub fn vec_in(&mut self, dt: Dt, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| dt.round(self.f32(lo, hi))).collect()
    }
}

/// An activation dtype of the GPU tests, with its host encoding and tolerances.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dt {
    F32,
    F16,
    Bf16,
}

/// Every activation dtype.
pub const DTYPES: [Dt; 3] = [Dt::F32, Dt::F16, Dt::Bf16];
/// The 16-bit ones.
pub const HALVES: [Dt; 2] = [Dt::F16, Dt::Bf16];

impl Dt {
    /// The kernels' name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Dt::F32 => "f32",
            Dt::F16 => "f16",
            Dt::Bf16 => "bf16",
        }
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        if self == Dt::F32 {
            4
        } else {
            2
        }
    }

    /// The tensor dtype.
    pub fn dtype(self) -> lanes_nn::DType {
        match self {
            Dt::F32 => lanes_nn::DType::F32,
            Dt::F16 => lanes_nn::DType::F16,
            Dt::Bf16 => lanes_nn::DType::BF16,
        }
    }

    /// `x` rounded to this dtype (as the device stores it).
    pub fn round(self, x: f32) -> f32 {
        match self {
            Dt::F32 => x,
            Dt::F16 => half::f16::from_f32(x).to_f32(),
            Dt::Bf16 => half::bf16::from_f32(x).to_f32(),
        }
    }

    /// Little-endian bytes of `v` in this dtype.
    pub fn encode(self, v: &[f32]) -> Vec<u8> {
        match self {
            Dt::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dt::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            Dt::Bf16 => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
        }
    }

    /// The values of little-endian bytes in this dtype.
    pub fn decode(self, b: &[u8]) -> Vec<f32> {
        match self {
            Dt::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dt::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dt::Bf16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }

    /// Tolerance per unit of magnitude (`|diff| <= tol * (1 + |ref|)`); minimum
    /// cosine.
    pub fn tol(self) -> (f32, f64) {
        match self {
            Dt::F32 => (1e-5, 0.999_999),
            Dt::F16 => (2e-3, 0.9999),
            Dt::Bf16 => (1.6e-2, 0.999),
        }
    }
}
