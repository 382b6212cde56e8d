//! What every command shares: finding the model, opening the device, checking
//! list flags.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lanes::{AllocConfig, Device, DeviceConfig, Policy, Wait};

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
/// exclusively (a thread waits for a free lane), with the allocator's default
/// fault-injection seed. See [`open_device_seeded`].
pub fn open_device(spec: &str, lanes: usize) -> Result<Device> {
    open_device_seeded(spec, lanes, AllocConfig::default().seed)
}

/// Opens `spec` with `lanes` exclusive lanes (1..=[`lanes::MAX_LANES`]; anything
/// else is an error naming the count). The allocator's fault injector is seeded
/// with `seed` and off (`lanes stress --inject` arms it for its run).
///
/// The one implementation: [`open_device`] only fills in the default seed.
pub fn open_device_seeded(spec: &str, lanes: usize, seed: u64) -> Result<Device> {
    if lanes == 0 || lanes > lanes::MAX_LANES {
        bail!(
            "{lanes} lanes asked for (one per thread or worker); a device has 1..={}",
            lanes::MAX_LANES
        );
    }
    let config = DeviceConfig {
        lanes,
        policy: Policy::Exclusive {
            wait: Wait::Forever,
        },
        alloc: AllocConfig {
            inject_oom: None,
            seed,
            ..Default::default()
        },
    };
    Device::from_spec(spec, config).with_context(|| format!("cannot open device `{spec}`"))
}

/// The values of a list flag without repeats, in the order they first appear
/// (`--batch 8,1,8` runs 8 then 1, once each).
pub fn unique<T: PartialEq + Clone>(values: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(values.len());
    for v in values {
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

/// A `--threads`-like list: without repeats (first-appearance order), every
/// value in 1..=[`lanes::MAX_LANES`]; returns it with its largest value.
pub fn thread_counts(values: &[usize], flag: &str) -> Result<(Vec<usize>, usize)> {
    let list = unique(values);
    if list.is_empty() || list.contains(&0) {
        bail!("{flag} needs values of at least 1");
    }
    let max = list.iter().copied().max().unwrap_or(1);
    if max > lanes::MAX_LANES {
        bail!(
            "{flag} {max} exceeds the {} lanes a device can have",
            lanes::MAX_LANES
        );
    }
    Ok((list, max))
}

/// A list flag of sizes (`--batch`, `--bytes`): without repeats, every value ≥ 1.
pub fn sizes(values: &[usize], flag: &str) -> Result<Vec<usize>> {
    let list = unique(values);
    if list.is_empty() || list.contains(&0) {
        bail!("{flag} needs values of at least 1");
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_lose_repeats_and_keep_first_appearance_order() {
        assert_eq!(unique(&[8, 1, 8]), vec![8, 1]);
        assert_eq!(unique(&[3, 3, 2, 3, 1, 2]), vec![3, 2, 1]);
        assert_eq!(unique::<u8>(&[]), Vec::<u8>::new());
        assert_eq!(
            thread_counts(&[4, 1, 4, 2], "--threads").unwrap(),
            (vec![4, 1, 2], 4)
        );
        assert!(thread_counts(&[1, 0], "--threads").is_err());
        let err = thread_counts(&[65], "--threads").unwrap_err().to_string();
        assert!(err.contains("--threads 65"), "{err}");
        assert_eq!(sizes(&[8, 1, 8], "--batch").unwrap(), vec![8, 1]);
        assert!(sizes(&[], "--batch").is_err());
    }

    #[test]
    fn a_device_needs_one_to_max_lanes() {
        for n in [0, lanes::MAX_LANES + 1] {
            let err = open_device("cpu", n).unwrap_err().to_string();
            assert!(err.contains(&format!("{n} lanes asked for")), "{err}");
        }
        let d = open_device_seeded("cpu", 3, 7).unwrap();
        assert_eq!(d.lanes(), 3);
    }
}
