//! The precision an [`Encoder`](crate::Encoder) computes in, and its load options.
//!
//! `auto` picks float16 on CUDA (what embedding servers run on GPUs) and float32
//! on the CPU (the only precision the CPU executor computes in). Weights are
//! converted once, on the host, when they are uploaded; LayerNorm parameters and
//! biases stay f32 whatever the precision, and the embeddings a forward returns are
//! always f32.

use std::fmt;
use std::str::FromStr;

use lanes::DeviceKind;

use crate::error::{NnError, Result};
use crate::tensor::DType;

/// The dtype of an encoder's weights and activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// float16 on CUDA, float32 on the CPU.
    #[default]
    Auto,
    /// IEEE float32 everywhere.
    F32,
    /// IEEE float16 weights and activations (f32 accumulation).
    F16,
    /// bfloat16 weights and activations (f32 accumulation).
    BF16,
}

impl Precision {
    /// The names [`FromStr`] accepts, as messages list them.
    pub const NAMES: &'static str = "auto, float32, float16, bfloat16";

    /// The precision `self` means on a device of `kind` (never [`Precision::Auto`]).
    pub fn resolve(self, kind: DeviceKind) -> Precision {
        match (self, kind) {
            (Precision::Auto, DeviceKind::Cpu) => Precision::F32,
            (Precision::Auto, DeviceKind::Cuda(_)) => Precision::F16,
            (p, _) => p,
        }
    }

    /// The tensor dtype of a resolved precision (`None` for [`Precision::Auto`]).
    pub fn dtype(self) -> Option<DType> {
        match self {
            Precision::Auto => None,
            Precision::F32 => Some(DType::F32),
            Precision::F16 => Some(DType::F16),
            Precision::BF16 => Some(DType::BF16),
        }
    }

    /// The name [`FromStr`] reads back (`auto`, `float32`, `float16`, `bfloat16`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "float32",
            Precision::F16 => "float16",
            Precision::BF16 => "bfloat16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = NnError;

    /// `auto`, `float32`, `float16` or `bfloat16` (any case; `f32`, `fp32`, `f16`,
    /// `fp16`, `half`, `bf16` too).
    fn from_str(s: &str) -> Result<Precision> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Precision::Auto),
            "float32" | "f32" | "fp32" => Ok(Precision::F32),
            "float16" | "f16" | "fp16" | "half" => Ok(Precision::F16),
            "bfloat16" | "bf16" => Ok(Precision::BF16),
            other => Err(NnError::InvalidInput(format!(
                "unknown dtype `{other}`: expected one of {}",
                Precision::NAMES
            ))),
        }
    }
}

/// How [`Encoder::load_with`](crate::Encoder::load_with) loads a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncoderOptions {
    /// The precision to compute in ([`Precision::Auto`] by default).
    pub precision: Precision,
}

/// The resolved precision for `kind`, or [`NnError::Unsupported`] naming the
/// precision and the device when the device's executor cannot compute in it.
pub fn check_supported(p: Precision, kind: DeviceKind, device: &str) -> Result<Precision> {
    let p = p.resolve(kind);
    match (p, kind) {
        (Precision::F32, _) | (_, DeviceKind::Cuda(_)) => Ok(p),
        (p, DeviceKind::Cpu) => Err(NnError::Unsupported(format!(
            "precision {p} on device {device}: the CPU executor computes in float32 only \
             (use --dtype float32 or auto)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_precision() {
        for p in [
            Precision::Auto,
            Precision::F32,
            Precision::F16,
            Precision::BF16,
        ] {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert_eq!(" FP16 ".parse::<Precision>().unwrap(), Precision::F16);
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::BF16);
        let err = "float8".parse::<Precision>().unwrap_err().to_string();
        assert!(
            err.contains("float8") && err.contains(Precision::NAMES),
            "{err}"
        );
    }

    #[test]
    fn auto_resolves_per_device() {
        assert_eq!(Precision::Auto.resolve(DeviceKind::Cpu), Precision::F32);
        assert_eq!(Precision::Auto.resolve(DeviceKind::Cuda(0)), Precision::F16);
        assert_eq!(Precision::BF16.resolve(DeviceKind::Cpu), Precision::BF16);
        assert_eq!(Precision::F16.dtype(), Some(DType::F16));
        assert_eq!(Precision::Auto.dtype(), None);
    }

    #[test]
    fn the_cpu_computes_in_f32_only() {
        assert_eq!(
            check_supported(Precision::Auto, DeviceKind::Cpu, "cpu").unwrap(),
            Precision::F32
        );
        let err = check_supported(Precision::F16, DeviceKind::Cpu, "cpu")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("float16") && err.contains("cpu") && err.contains("unsupported"),
            "{err}"
        );
        assert_eq!(
            check_supported(Precision::BF16, DeviceKind::Cuda(1), "cuda:1").unwrap(),
            Precision::BF16
        );
    }
}
