//! The crate's one error type.

use std::time::Duration;

/// How long an exclusive lease request may wait when every lane is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Fail at once.
    NoWait,
    /// Wait up to this long, then fail.
    For(Duration),
    /// Wait until a lane is free.
    Forever,
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::NoWait => write!(f, "no wait"),
            Wait::For(d) => write!(f, "a wait of {d:?}"),
            Wait::Forever => write!(f, "an unbounded wait"),
        }
    }
}

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Every lane of an exclusive pool was leased and none came free within the wait.
    #[error("lane pool of {device} exhausted: all {lanes} lanes are leased and none came free after {wait}")]
    PoolExhausted {
        /// The device whose pool was exhausted (`cpu`, `cuda:0`).
        device: String,
        /// The pool size.
        lanes: usize,
        /// The wait that was allowed.
        wait: Wait,
    },

    /// The caching allocator could not satisfy a request, even after releasing
    /// every cached segment and retrying once.
    #[error(
        "out of memory on {device}: requested {requested} bytes; {allocated} bytes allocated, \
         {reserved} bytes reserved by the caching allocator, limit {limit}"
    )]
    OutOfMemory {
        /// The device.
        device: String,
        /// Bytes requested (after rounding).
        requested: usize,
        /// Bytes handed out to live buffers.
        allocated: usize,
        /// Bytes held in segments (live + cached).
        reserved: usize,
        /// The byte limit, as text (`none` when unlimited).
        limit: String,
    },

    /// The backend refused an allocation (the raw device allocator is out of memory).
    #[error("{device}: the backend could not allocate {bytes} bytes")]
    BackendOutOfMemory {
        /// The device.
        device: String,
        /// Bytes asked of the backend.
        bytes: usize,
    },

    /// Work enqueued on a lane failed (for the host backend: it panicked). Reported to
    /// the holder of that lane at its next synchronization; the lane keeps working.
    #[error("work on lane {lane} of {device} failed: {message}")]
    LaneFailed {
        /// The device.
        device: String,
        /// The lane index.
        lane: usize,
        /// What failed.
        message: String,
    },

    /// A call was made with an argument the runtime cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The device was asked for an index it does not have.
    #[error("{device}: no such lane {lane} (pool has {lanes} lanes)")]
    NoSuchLane {
        /// The device.
        device: String,
        /// The index asked for.
        lane: usize,
        /// The pool size.
        lanes: usize,
    },

    /// No CUDA driver could be loaded on this machine.
    #[error("no CUDA driver found: {0}")]
    NoCudaDriver(String),

    /// A CUDA driver, NVRTC or cuBLAS call failed.
    #[error("CUDA error on {device} during {op}: {message}")]
    Cuda {
        /// The device.
        device: String,
        /// The operation (e.g. `cuStreamCreate`, `nvrtc compile of layer_norm`).
        op: String,
        /// The driver's message.
        message: String,
    },

    /// A buffer was used with a device it does not belong to, or after its
    /// block was reused (the generation does not match).
    #[error("stale or foreign buffer: {0}")]
    StaleBuffer(String),

    /// The device shut down while callbacks were still pending.
    #[error("shutdown of {device} timed out after {waited:?} with {pending} completion callbacks still pending")]
    ShutdownTimedOut {
        /// The device.
        device: String,
        /// How long shutdown waited.
        waited: Duration,
        /// Callbacks that had not finished.
        pending: usize,
    },

    /// The device cannot do this (e.g. graph capture on the CPU backend).
    #[error("{device} does not support {what}")]
    Unsupported {
        /// The device.
        device: String,
        /// What was asked for.
        what: String,
    },

    /// A graph capture failed, or a call that cannot be captured was made inside one.
    #[error("graph capture on lane {lane} of {device}: {message}")]
    Capture {
        /// The device.
        device: String,
        /// The lane being captured.
        lane: usize,
        /// What went wrong.
        message: String,
    },

    /// An injected fault (used by `lanes stress --inject`).
    #[error("injected fault: {0}")]
    Injected(String),
}

/// The [`Error::NoCudaDriver`] message when the driver library itself is absent
/// (a CPU-only machine): nothing for the user to fix.
pub(crate) const NO_LIBCUDA: &str =
    "libcuda.so.1 could not be loaded (no NVIDIA driver on this machine)";

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
