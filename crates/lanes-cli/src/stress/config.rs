//! How a stress run is driven: its configuration and the failures a test may
//! plant in it.

use serde::Serialize;

/// A failure planted on purpose, to prove the checks catch it (test hook:
/// `lanes stress --plant KIND`, hidden from `--help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plant {
    /// Thread 0 perturbs its first result by 1e-3 before it is compared.
    Mismatch,
    /// Thread 0 allocates 4 KiB on its lane and forgets the buffer.
    Leak,
    /// Thread 0 forgets a clone of its last lease (the lane stays leased).
    LeaseLeak,
}

/// How a run is driven.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Threads, each on its own lane.
    pub threads: usize,
    /// Requests per thread.
    pub requests: usize,
    /// Picks which suite request each (thread, step) runs.
    pub seed: u64,
    /// A thread gives its lane back and leases one again every this many requests.
    pub relay_every: usize,
    /// `--inject oom:P`: the fraction of the allocator's allocations that fail
    /// during the run (deterministic per the device's allocator seed).
    pub inject: Option<f64>,
    /// A planted failure (test hook).
    pub plant: Option<Plant>,
    /// Draw a progress bar (only on a terminal).
    pub progress: bool,
}
