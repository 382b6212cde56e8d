//! Choosing a cuBLASLt algorithm by timing, not by the heuristic alone.
//!
//! `cublasLtMatmulAlgoGetHeuristic` ranks algorithms by a model of the GPU. For
//! small problems (a batch-1 forward's 128-row GEMMs) its first pick is often not
//! the fastest: the encoder's float32 GEMMs run SIMT kernels whose tile and
//! split-K choices matter more than the model knows. So a whole-device plan
//! ([`super::LaneBlasLt`], SM target 0) asks for up to [`CANDIDATES`] algorithms,
//! and its first matmul outside a capture times each of them on the lane's
//! stream with the caller's own operands ([`fastest`]) and keeps the fastest.
//!
//! - The choice is remembered per device ([`Memo`]): other lanes reuse it without
//!   timing (one measurement per shape per process, and every lane runs the same
//!   algorithm, so lanes agree bit for bit on a shape).
//! - Timing waits for the GPU (an event synchronization), once per shape, at the
//!   shape's first matmul: set-up work, like a kernel's first compile. Inside a
//!   capture nothing can be timed: a plan first met there takes the memo's
//!   choice if there is one, else the heuristic's first pick.
//! - Plans with an SM target are not timed: a narrow plan exists to leave the
//!   GPU to other lanes, and timing it alone would favour the wide kernels it is
//!   meant to avoid.
//! - Small outputs (at most [`SPLIT_MAX_OUTPUT`] elements: a batch-1 forward's
//!   GEMMs) also time split-K variants of the heuristic's first picks
//!   ([`split_k`]: K cut in 2 to 32 slices, reduced in f32 in the workspace, in a
//!   fixed order): with 128 rows there are too few output tiles to fill the GPU,
//!   and the heuristic's own split choices are few. (On the H200 none was ever
//!   the fastest for MiniLM's shapes: each split adds a reduction kernel; they
//!   cost about 2 ms of timing per shape, once.)
//! - `LANES_LT_TUNE=off` keeps the heuristic's first pick everywhere;
//!   `LANES_LT_CANDIDATES=N` asks the heuristic for N algorithms (default
//!   [`CANDIDATES`]); `LANES_LT_SPLITK=off` times no split-K variants;
//!   `LANES_LT_TUNE_LOG=1` prints each timing to stderr ([`report`]).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cudarc::cublaslt::sys::cublasLtMatmulAlgo_t;
use cudarc::driver::{result as drv, sys, DriverError};

use crate::sync::lock_std as lock;

/// How many of the heuristic's algorithms a whole-device plan times (unless
/// `LANES_LT_CANDIDATES` says otherwise).
pub const CANDIDATES: usize = 8;
/// The largest output (`m × n` elements) whose plans also time split-K variants.
pub const SPLIT_MAX_OUTPUT: u64 = 1 << 20;
/// The split counts tried on each of the heuristic's first [`SPLIT_BASES`] picks.
pub(crate) const SPLITS: [u32; 5] = [2, 4, 8, 16, 32];
/// How many of the heuristic's picks get split-K variants.
pub(crate) const SPLIT_BASES: usize = 3;
/// Timed rounds over the candidates (the best round of each counts).
const ROUNDS: usize = 2;
/// Matmuls per candidate per round, between two events.
const REPS: usize = 4;

/// Whether whole-device plans are timed (`LANES_LT_TUNE`, read once: `off` / `0`
/// / `false` turn it off; on by default).
pub fn tuning() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !env_off("LANES_LT_TUNE"))
}

/// Whether small outputs also time split-K variants (`LANES_LT_SPLITK`, read
/// once: `off` / `0` / `false` turn it off; on by default).
pub fn split_variants() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !env_off("LANES_LT_SPLITK"))
}

/// Whether each timing is printed to stderr (`LANES_LT_TUNE_LOG=1`, read once).
pub fn logging() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("LANES_LT_TUNE_LOG").is_ok_and(|v| !v.is_empty())
            && !env_off("LANES_LT_TUNE_LOG")
    })
}

/// One line on a timing: the problem (cuBLASLt's column-major `m × n × k`), the
/// microseconds of each candidate (`-` where it declined; `|` before the split-K
/// variants, which follow the heuristic's `from_heuristic`), and the pick.
pub(crate) fn report(
    device: &str,
    (m, n, k): (u64, u64, u64),
    from_heuristic: usize,
    times: &[Option<f32>],
    pick: Option<usize>,
) -> String {
    let mut line = format!("lanes: {device}: cuBLASLt {m}x{n}x{k} timed (us):");
    for (i, t) in times.iter().enumerate() {
        if i == from_heuristic {
            line.push_str(" |");
        }
        match t {
            Some(t) => line.push_str(&format!(" {t:.2}")),
            None => line.push_str(" -"),
        }
    }
    match pick {
        Some(i) => line.push_str(&format!("; picked #{i}")),
        None => line.push_str("; none ran, the heuristic's pick stays"),
    }
    line
}

/// Whether the variable `name` says off (`off`, `0` or `false`).
fn env_off(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref().map(str::trim),
        Ok("off" | "0" | "false")
    )
}

/// How many algorithms to ask the heuristic for (`LANES_LT_CANDIDATES`, read
/// once, 1 to 64; [`CANDIDATES`] by default).
pub fn candidates() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("LANES_LT_CANDIDATES")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map_or(CANDIDATES, |n| n.clamp(1, 64))
    })
}

/// `algo` with its K dimension split `splits` ways and the partial sums reduced
/// in the compute type (f32) in the workspace: a deterministic order, unlike an
/// in-place reduction. The caller checks the result with
/// `cublasLtMatmulAlgoCheck` (not every algorithm takes every split).
pub(crate) fn split_k(
    algo: &cublasLtMatmulAlgo_t,
    splits: u32,
) -> Result<cublasLtMatmulAlgo_t, cudarc::cublaslt::result::CublasError> {
    use cudarc::cublaslt::sys as lt;
    let mut a = *algo;
    let scheme = lt::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
    for (attr, value) in [
        (
            lt::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_SPLITK_NUM,
            splits,
        ),
        (
            lt::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
            scheme,
        ),
    ] {
        // SAFETY: `a` is an initialized algorithm (a copy of the heuristic's); both
        // attributes are uint32, read from `value` during the call.
        unsafe {
            lt::cublasLtMatmulAlgoConfigSetAttribute(
                &mut a,
                attr,
                (&value as *const u32).cast(),
                std::mem::size_of::<u32>(),
            )
        }
        .result()?;
    }
    Ok(a)
}

/// The algorithms chosen by timing on one device, by plan key. Written once per
/// key (the first lane to time it), read when a lane builds a plan: never on a
/// matmul's hot path, which uses the lane's own plan.
pub(crate) struct Memo<K> {
    chosen: Mutex<HashMap<K, cublasLtMatmulAlgo_t>>,
}

impl<K: std::hash::Hash + Eq + Copy> Memo<K> {
    pub(crate) fn new() -> Memo<K> {
        Memo {
            chosen: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<cublasLtMatmulAlgo_t> {
        lock(&self.chosen).get(key).copied()
    }

    /// Records `algo` for `key` unless another lane got there first; returns the
    /// algorithm every lane uses from now on.
    pub(crate) fn settle(&self, key: K, algo: cublasLtMatmulAlgo_t) -> cublasLtMatmulAlgo_t {
        *lock(&self.chosen).entry(key).or_insert(algo)
    }
}

/// Whether `stream` is capturing (then nothing may be timed or waited for).
pub(crate) fn capturing(stream: sys::CUstream) -> Result<bool, DriverError> {
    // SAFETY: `stream` is a live stream of the current context (the caller's lane).
    let status = unsafe { drv::stream::is_capturing(stream) }?;
    Ok(status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
}

/// A timing event, destroyed when dropped.
struct TimingEvent(sys::CUevent);

impl TimingEvent {
    fn new() -> Result<TimingEvent, DriverError> {
        drv::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map(TimingEvent)
    }
}

impl Drop for TimingEvent {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            // SAFETY: created by `event::create`, destroyed once, here; the last
            // record was synchronized (or the event was never recorded).
            let _ = unsafe { drv::event::destroy(self.0) };
        });
    }
}

/// Times `run(i)` for `i < n` on `stream` and answers the index of the fastest,
/// with the microseconds per call of each (`None` where `run` declined: it
/// returns `false` when it enqueued nothing).
///
/// Each candidate runs once untimed (a first launch pays for loading its
/// kernel), then [`ROUNDS`] times [`REPS`] calls between two events; its best
/// round counts. Waits for the stream.
///
/// # Safety
/// `stream` is a live stream of the current context, not capturing, and `run`
/// enqueues only work that is valid to run repeatedly on it.
pub(crate) unsafe fn fastest(
    stream: sys::CUstream,
    n: usize,
    mut run: impl FnMut(usize) -> bool,
) -> Result<(Option<usize>, Vec<Option<f32>>), DriverError> {
    let (start, end) = (TimingEvent::new()?, TimingEvent::new()?);
    let mut usable: Vec<bool> = (0..n).map(&mut run).collect();
    let mut best: Vec<Option<f32>> = vec![None; n];
    for _ in 0..ROUNDS {
        for i in 0..n {
            if !usable[i] {
                continue;
            }
            // SAFETY: both events are live; `stream` is the caller's.
            unsafe { drv::event::record(start.0, stream) }?;
            let ran = (0..REPS).all(|_| run(i));
            // SAFETY: as above.
            unsafe { drv::event::record(end.0, stream) }?;
            // SAFETY: `end` was just recorded on a live stream.
            unsafe { drv::event::synchronize(end.0) }?;
            if !ran {
                usable[i] = false;
                best[i] = None;
                continue;
            }
            // SAFETY: both events were recorded and `end` has completed.
            let ms = unsafe { drv::event::elapsed(start.0, end.0) }?;
            let us = ms * 1000.0 / REPS as f32;
            best[i] = Some(best[i].map_or(us, |b: f32| b.min(us)));
        }
    }
    let pick = best
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.map(|t| (i, t)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i);
    Ok((pick, best))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_marks_the_split_variants_and_the_pick() {
        let line = report(
            "cuda:0",
            (1152, 128, 384),
            2,
            &[Some(9.5), None, Some(7.25)],
            Some(2),
        );
        assert_eq!(
            line,
            "lanes: cuda:0: cuBLASLt 1152x128x384 timed (us): 9.50 - | 7.25; picked #2"
        );
    }

    #[test]
    fn memo_keeps_the_first_choice_of_a_key() {
        let memo: Memo<u32> = Memo::new();
        let mut a = cublasLtMatmulAlgo_t { data: [0; 8] };
        let mut b = a;
        a.data[0] = 1;
        b.data[0] = 2;
        assert!(memo.get(&7).is_none());
        assert_eq!(memo.settle(7, a).data[0], 1);
        assert_eq!(
            memo.settle(7, b).data[0],
            1,
            "a later lane adopts the first"
        );
        assert_eq!(memo.get(&7).unwrap().data[0], 1);
        assert_eq!(memo.settle(8, b).data[0], 2);
    }
}
