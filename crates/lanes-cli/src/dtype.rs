//! `--dtype auto|float32|float16|bfloat16` of `embed`, `bench` and `stress`, and
//! the one place the encoder is loaded with it.
//!
//! `auto` is float16 on a CUDA device and float32 on the CPU. The CPU backend
//! runs float32 only: float16 or bfloat16 there is an error naming the flag.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use lanes::{Device, DeviceKind};
use lanes_nn::Encoder;
use serde::Serialize;

/// The precision the encoder computes in (accumulation is always float32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// float16 on CUDA, float32 on the CPU.
    Auto,
    /// 32-bit floats everywhere.
    Float32,
    /// 16-bit floats (CUDA only).
    Float16,
    /// bfloat16 (CUDA only).
    Bfloat16,
}

impl Dtype {
    /// The name the flag and the reports use.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Auto => "auto",
            Dtype::Float32 => "float32",
            Dtype::Float16 => "float16",
            Dtype::Bfloat16 => "bfloat16",
        }
    }

    /// What `self` means on `device`: `auto` resolved; a half precision on the
    /// CPU is an error.
    pub fn resolve(self, device: &Device) -> Result<Dtype> {
        let cuda = matches!(device.kind(), DeviceKind::Cuda(_));
        match (self, cuda) {
            (Dtype::Auto, true) if adapter::HALF => Ok(Dtype::Float16),
            (Dtype::Auto, _) => Ok(Dtype::Float32),
            (Dtype::Float16 | Dtype::Bfloat16, false) => bail!(
                "--dtype {} needs a CUDA device; {} runs float32 only (use --dtype float32 or auto)",
                self.name(),
                device.name()
            ),
            (d, _) => Ok(d),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Loads the encoder from `dir` onto `device` computing in `dtype` (resolved
/// with [`Dtype::resolve`]); returns it with the resolved dtype.
pub fn load_encoder(dir: &Path, device: &Device, dtype: Dtype) -> Result<(Encoder, Dtype)> {
    let dtype = dtype.resolve(device)?;
    let encoder = adapter::load(dir, device, dtype)
        .with_context(|| format!("cannot load the model from {}", dir.display()))?;
    Ok((encoder, dtype))
}

/// The bridge to lanes-nn's encoder options.
mod adapter {
    use super::*;

    /// Whether the encoder computes in half precisions (lanes-nn without
    /// precision options: no, and `auto` on CUDA means float32 meanwhile).
    pub(super) const HALF: bool = false;

    /// Loads the encoder computing in `dtype` (resolved: never `Auto`).
    pub(super) fn load(dir: &Path, device: &Device, dtype: Dtype) -> Result<Encoder> {
        match dtype {
            Dtype::Float32 => Ok(Encoder::load(dir, device)?),
            other => bail!("--dtype {other}: this build's encoder computes in float32 only"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_float32_on_the_cpu_and_half_precisions_are_refused_there() {
        let cpu = crate::common::open_device("cpu", 1).unwrap();
        assert_eq!(Dtype::Auto.resolve(&cpu).unwrap(), Dtype::Float32);
        assert_eq!(Dtype::Float32.resolve(&cpu).unwrap(), Dtype::Float32);
        for d in [Dtype::Float16, Dtype::Bfloat16] {
            let err = d.resolve(&cpu).unwrap_err().to_string();
            assert!(
                err.contains(&format!("--dtype {d} needs a CUDA device")),
                "{err}"
            );
        }
    }
}
