//! What every command shares: finding the model, opening the device.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lanes::{Device, DeviceConfig, Policy, Wait};

/// Where the model is looked for when `--model` is not given.
pub const DEFAULT_MODEL_DIR: &str = "models/all-MiniLM-L6-v2";

/// `--model DIR`, then `$LANES_MODEL`, then `./models/all-MiniLM-L6-v2`.
pub fn model_dir(arg: Option<PathBuf>) -> Result<PathBuf> {
    let (dir, from) = match (arg, std::env::var_os("LANES_MODEL")) {
        (Some(dir), _) => (dir, "--model"),
        (None, Some(env)) => (PathBuf::from(env), "$LANES_MODEL"),
        (None, None) => (PathBuf::from(DEFAULT_MODEL_DIR), "the default location"),
    };
    if !dir.is_dir() {
        bail!(
            "model folder {} (from {from}) does not exist; run scripts/fetch-model.sh or pass --model DIR",
            dir.display()
        );
    }
    Ok(dir)
}

/// Opens `spec` (`auto`, `cpu`, `cuda`, `cuda:N`) with `lanes` lanes, each leased
/// exclusively (a thread waits for a free lane).
pub fn open_device(spec: &str, lanes: usize) -> Result<Device> {
    let config = DeviceConfig {
        lanes: lanes.clamp(1, lanes::MAX_LANES),
        policy: Policy::Exclusive {
            wait: Wait::Forever,
        },
        ..Default::default()
    };
    Device::from_spec(spec, config).with_context(|| format!("cannot open device `{spec}`"))
}
