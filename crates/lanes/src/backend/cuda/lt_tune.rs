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
//! - `LANES_LT_TUNE=off` keeps the heuristic's first pick everywhere;
//!   `LANES_LT_TUNE_LOG=1` prints each timing to stderr ([`report`]).
//!
//! (Split-K variants of the heuristic's picks were timed too for a while: on the
//! H200 none was ever the fastest for MiniLM's shapes, each split adding a
//! reduction kernel, so they were dropped.)

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cudarc::cublaslt::sys::cublasLtMatmulAlgo_t;
use cudarc::driver::{result as drv, sys, DriverError};

use crate::graph_cache::switch_on;
use crate::sync::lock_std as lock;

/// How many of the heuristic's algorithms a whole-device plan times (for the
/// H200's float32 GEMMs the heuristic offers no more than 8).
pub const CANDIDATES: usize = 8;
/// Timed rounds over the candidates (the best round of each counts).
const ROUNDS: usize = 2;
/// Matmuls per candidate per round, between two events.
const REPS: usize = 4;

/// Whether whole-device plans are timed (`LANES_LT_TUNE`, read once: on unless
/// `off`, `0`, `false` or `no`).
pub fn tuning() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| switch_on(std::env::var("LANES_LT_TUNE").ok().as_deref()))
}

/// Whether each timing is printed to stderr (`LANES_LT_TUNE_LOG` set to
/// anything but empty or an off word; read once).
pub fn logging() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("LANES_LT_TUNE_LOG")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .is_some_and(|v| switch_on(Some(&v)))
    })
}

/// One line on a timing: the problem (cuBLASLt's column-major `m × n × k`), the
/// microseconds of each candidate in the heuristic's order (`-` where it
/// declined), and the pick.
pub(crate) fn report(
    device: &str,
    (m, n, k): (u64, u64, u64),
    times: &[Option<f32>],
    pick: Option<usize>,
) -> String {
    let mut line = format!("lanes: {device}: cuBLASLt {m}x{n}x{k} timed (us):");
    for t in times {
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
    fn report_lists_every_candidate_and_the_pick() {
        let line = report(
            "cuda:0",
            (1152, 128, 384),
            &[Some(9.5), None, Some(7.25)],
            Some(2),
        );
        assert_eq!(
            line,
            "lanes: cuda:0: cuBLASLt 1152x128x384 timed (us): 9.50 - 7.25; picked #2"
        );
        assert!(report("cuda:0", (1, 1, 1), &[None], None).ends_with("the heuristic's pick stays"));
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
