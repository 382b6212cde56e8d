//! `--dtype auto|float32|float16|bfloat16` of `embed`, `bench`, `stress` and
//! `verify`, and the one place the encoder is loaded with it.
//!
//! The flag's values map one to one onto [`lanes_nn::Precision`]; what they mean
//! on a device (`auto` is float16 on CUDA and float32 on the CPU; the CPU computes
//! in float32 only, so float16 or bfloat16 there is an error naming both) is
//! lanes-nn's rule, [`lanes_nn::precision::check_supported`], not repeated here.

use std::path::Path;

use anyhow::{Context, Result};
use clap::ValueEnum;
use lanes::Device;
use lanes_nn::{Encoder, EncoderOptions, Precision};

/// The `--dtype` flag's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum Dtype {
    /// float16 on CUDA, float32 on the CPU.
    Auto,
    /// 32-bit floats everywhere.
    Float32,
    /// float16 weights and activations, float32 accumulation (CUDA only).
    Float16,
    /// bfloat16 weights and activations, float32 accumulation (CUDA only).
    Bfloat16,
}

impl From<Dtype> for Precision {
    fn from(d: Dtype) -> Precision {
        match d {
            Dtype::Auto => Precision::Auto,
            Dtype::Float32 => Precision::F32,
            Dtype::Float16 => Precision::F16,
            Dtype::Bfloat16 => Precision::BF16,
        }
    }
}

/// What `dtype` means on `device` (never [`Precision::Auto`]), or an error when
/// the device cannot compute in it.
pub fn resolve(dtype: Dtype, device: &Device) -> Result<Precision> {
    Ok(lanes_nn::precision::check_supported(
        dtype.into(),
        device.kind(),
        device.name(),
    )?)
}

/// Loads the encoder from `dir` onto `device` computing in `dtype`; its
/// [`Encoder::precision`] is the resolved precision.
pub fn load_encoder(dir: &Path, device: &Device, dtype: Dtype) -> Result<Encoder> {
    // Checked first, so an unsupported precision is named without a model load.
    resolve(dtype, device)?;
    let options = EncoderOptions {
        precision: dtype.into(),
    };
    Encoder::load_with(dir, device, options)
        .with_context(|| format!("cannot load the model from {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_maps_to_its_precision_and_the_cpu_refuses_half() {
        for d in Dtype::value_variants() {
            let name = d.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(Precision::from(*d).name(), name, "flag and precision agree");
        }
        let cpu = crate::common::open_device("cpu", 1).unwrap();
        assert_eq!(resolve(Dtype::Auto, &cpu).unwrap(), Precision::F32);
        assert_eq!(resolve(Dtype::Float32, &cpu).unwrap(), Precision::F32);
        for d in [Dtype::Float16, Dtype::Bfloat16] {
            let err = format!("{:#}", resolve(d, &cpu).unwrap_err());
            assert!(
                err.contains(Precision::from(d).name()) && err.contains("float32 only"),
                "{err}"
            );
        }
    }
}
