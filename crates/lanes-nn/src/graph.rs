//! CUDA graphs for the encoder: one captured forward per (batch, token bucket,
//! precision) per lane, replayed.
//!
//! A forward of `batch` sequences and `n` tokens in all runs as the graph of its
//! key `(encoder, batch, token_bucket(n), precision)`, captured on the lane the
//! first time that key is seen there ([`lanes::Lease::graph`], a bounded per-lane
//! cache owned by the device). The graph's fixed buffers are its inputs (ids and
//! type ids for `bucket` tokens, offsets for `batch + 1`, packed in one buffer)
//! and its output (the pooled f32 embeddings): a replay uploads the batch into
//! them with one copy, launches the graph and downloads the output. Kernels read
//! the sequence boundaries from the device `offsets` buffer and their grids are
//! sized for the bucket, so one graph serves every batch of its key: the
//! `bucket - n` rows past the last sequence are computed and ignored (attention
//! and pooling never read them).
//!
//! Graphs are used only where they can be: a CUDA lane held exclusively
//! (capture needs it), graphs on (`LANES_GRAPHS=off` or
//! [`lanes::Device::set_graphs`] turn them off), buckets of
//! at most [`MAX_GRAPH_TOKENS`] (bigger batches are not launch-bound), and a
//! lane that has run one forward eagerly (kernels and cuBLAS set themselves up
//! on first use, which must not happen inside a capture; the lane's BLAS handles
//! are made before its first forward, `set_up_blas`). Otherwise, and when a
//! capture fails, the forward runs eagerly; [`GraphCounts`] says how often each
//! happened.

use std::sync::atomic::{AtomicU64, Ordering};

use lanes::{Buffer, DeviceKind, Lease};

use crate::encoder::Share;
use crate::error::{NnError, Result};
use crate::forward::Inputs;
use crate::tensor::{DType, Tensor, TensorMut};
use crate::tokens::Tokens;

/// The largest token bucket run as a graph.
pub const MAX_GRAPH_TOKENS: usize = 8192;

/// The smallest token bucket.
const MIN_BUCKET: usize = 16;

/// The token capacity of the graph for a batch of `n` tokens: `n` rounded up to
/// a quarter-octave step (16, 20, 24, 28, 32, 40, 48, 56, 64, 80, ...), so a graph
/// computes at most 25 % more rows than the batch holds.
pub fn token_bucket(n: usize) -> usize {
    if n <= MIN_BUCKET {
        return MIN_BUCKET;
    }
    let step = n.next_power_of_two() / 8;
    n.div_ceil(step) * step
}

/// How the encoder's forwards ran (totals over all lanes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphCounts {
    /// Graphs captured.
    pub captures: u64,
    /// Forwards replayed from a graph (captures included).
    pub replays: u64,
    /// Captures that failed, after which the forward ran eagerly.
    pub fallbacks: u64,
}

/// Distinguishes encoders in the per-lane graph caches, which the device owns and
/// which outlive any one encoder.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Enqueues one forward's ops for the given inputs and pooled output (the
/// encoder's [`crate::forward::enqueue`] with its weights bound).
pub(crate) type Enqueue<'e> = dyn Fn(&Lease, &Inputs<'_>, TensorMut<'_>) -> Result<()> + 'e;

/// What a graph's shape depends on besides the batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ModelShape {
    /// Hidden size (the pooled output's width).
    pub(crate) hidden: usize,
    /// Position embeddings (bounds `max_len`).
    pub(crate) max_positions: usize,
    /// The activation dtype.
    pub(crate) dtype: DType,
    /// The GEMM share the forward plans for (narrow and wide forwards capture
    /// different GEMM kernels, so they are different graphs).
    pub(crate) share: Share,
}

/// One encoder's graphs: its id in the lanes' caches and its counters.
#[derive(Debug)]
pub(crate) struct Graphs {
    /// Unique per encoder (part of every key).
    id: u64,
    /// Bit `i`: lane `i` has run a forward eagerly.
    warm: AtomicU64,
    captures: AtomicU64,
    replays: AtomicU64,
    fallbacks: AtomicU64,
}

impl Graphs {
    /// A fresh id and zero counts.
    pub(crate) fn new() -> Graphs {
        Graphs {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            warm: AtomicU64::new(0),
            captures: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        }
    }

    /// Lane `lane` ran a forward eagerly.
    pub(crate) fn warmed(&self, lane: usize) {
        if lane < 64 {
            self.warm.fetch_or(1 << lane, Ordering::Relaxed);
        }
    }

    fn is_warm(&self, lane: usize) -> bool {
        lane < 64 && self.warm.load(Ordering::Relaxed) & (1 << lane) != 0
    }

    /// The counts so far.
    pub(crate) fn counts(&self) -> GraphCounts {
        GraphCounts {
            captures: self.captures.load(Ordering::Relaxed),
            replays: self.replays.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
        }
    }

    /// Runs `tokens` as a graph replay on `lane` when graphs apply (see the
    /// module docs); `Ok(None)` means: run it eagerly. `tokens` was checked by
    /// the encoder, `enqueue` enqueues its ops.
    pub(crate) fn forward(
        &self,
        lane: &Lease,
        tokens: &Tokens,
        model: ModelShape,
        enqueue: &Enqueue<'_>,
    ) -> Result<Option<Vec<f32>>> {
        let (batch, n, h) = (tokens.batch(), tokens.total_tokens(), model.hidden);
        // (`Lease::graph` answers `None` itself when the device has graphs off.)
        if !lane.is_exclusive()
            || lane.device().kind() == DeviceKind::Cpu
            || !self.is_warm(lane.index())
        {
            return Ok(None);
        }
        let bucket = token_bucket(n);
        let Some(key) = key(self.id, batch, bucket, model.dtype, model.share)
            .filter(|_| bucket <= MAX_GRAPH_TOKENS)
        else {
            return Ok(None);
        };
        let max_len = bucket.min(model.max_positions);
        // (The lane's BLAS handles exist: `Encoder::prepare_lane` made them before
        // its first forward, and a capture needs them made.)
        let mut captured = false;
        let graph = lane.graph(key, |l| {
            captured = true;
            capture(
                enqueue,
                l,
                Shape {
                    batch,
                    bucket,
                    h,
                    max_len,
                },
            )
            .map_err(|e| match e {
                NnError::Runtime(r) => r,
                other => lanes::Error::InvalidArgument(format!("capturing the forward: {other}")),
            })
        });
        let graph = match graph {
            Ok(Some(g)) => g,
            Ok(None) => return Ok(None),
            Err(_) => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
        };
        if captured {
            self.captures.fetch_add(1, Ordering::Relaxed);
        }
        let [inputs, pooled] = graph.buffers() else {
            return Ok(None);
        };
        lane.upload(inputs, bytemuck::cast_slice(&packed_inputs(tokens, bucket)))?;
        graph.launch(lane)?;
        let mut out = vec![0f32; batch * h];
        lane.download(pooled, bytemuck::cast_slice_mut(&mut out))?;
        self.replays.fetch_add(1, Ordering::Relaxed);
        Ok(Some(out))
    }
}

/// The cache key of a graph: 16 bits of encoder id, 4 of precision and share
/// (bits 0-1 the dtype, bits 2-3 the share), 20 of batch and 24 of bucket; `None`
/// when a field does not fit (then no graph is used).
fn key(encoder: u64, batch: usize, bucket: usize, dtype: DType, share: Share) -> Option<u64> {
    let d = match dtype {
        DType::F32 => 1u64,
        DType::F16 => 2,
        DType::BF16 => 3,
        DType::U32 => return None,
    } | match share {
        Share::Wide => 0,
        Share::Shared => 4,
        Share::Crowded => 8,
    };
    if batch >= 1 << 20 || bucket >= 1 << 24 {
        return None;
    }
    Some((encoder & 0xffff) << 48 | d << 44 | (batch as u64) << 24 | bucket as u64)
}

/// Creates the lane's cuBLAS handle, and its cuBLASLt handle and workspace where
/// the dtype's GEMMs use cuBLASLt, unless they exist: at model load and on each
/// lane's first forward (`Encoder::prepare_lane`), before any capture, where
/// creating them would fail (and, for the process's first handle, load cuBLAS
/// inside a request). (A lane whose cuBLASLt cannot be created runs its 16-bit GEMMs
/// through cuBLAS, so that failure is not one.) cuBLASLt's per-shape plans
/// (descriptors and a heuristic query, host-only) may still be built during the
/// capture, for the bucket's row count when it differs from the eager forward's:
/// `cublasGemmEx` runs the same heuristic internally on every call, captured or
/// not.
pub(crate) fn set_up_blas(lane: &Lease, dtype: DType) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Some(cuda) = lane
        .raw()
        .as_any()
        .downcast_ref::<lanes::backend::cuda::CudaLane>()
    {
        cuda.blas()?;
        let lt16 =
            matches!(dtype, DType::F16 | DType::BF16) && crate::exec::cuda::blaslt_from_env();
        if lt16 || (dtype == DType::F32 && crate::exec::cuda::f32_lt()) {
            let _ = cuda.blas_lt();
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (lane, dtype);
    Ok(())
}

/// The fixed shape of one graph.
#[derive(Clone, Copy)]
struct Shape {
    batch: usize,
    bucket: usize,
    h: usize,
    max_len: usize,
}

/// The graph's inputs packed as one upload: the ids, then the type ids, each
/// `bucket` u32 (the rows past the batch's tokens zero), then the `batch + 1`
/// offsets. One copy per replay instead of three: each copy is a driver call and
/// a step on the lane's stream (about 7 µs of a batch-1 forward's frame on the
/// H200, `lanes bench launch`'s `replay+copies`).
fn packed_inputs(tokens: &Tokens, bucket: usize) -> Vec<u32> {
    let n = tokens.total_tokens();
    let mut words = vec![0u32; 2 * bucket + tokens.offsets().len()];
    words[..n].copy_from_slice(tokens.ids());
    words[bucket..bucket + n].copy_from_slice(tokens.type_ids());
    words[2 * bucket..].copy_from_slice(tokens.offsets());
    words
}

/// Inside a capture: allocates the graph's fixed buffers and enqueues the forward;
/// returns `[inputs, pooled]`, `inputs` laid out as [`packed_inputs`] writes it.
fn capture(enqueue: &Enqueue<'_>, l: &Lease, s: Shape) -> Result<Vec<Buffer>> {
    let word = DType::U32.size();
    let packed = l.alloc((2 * s.bucket + s.batch + 1) * word)?;
    let mut pooled = l.alloc(s.batch * s.h * 4)?;
    let inputs = Inputs {
        ids: Tensor::part("ids", &packed, 0, DType::U32, &[s.bucket])?,
        types: Tensor::part(
            "type_ids",
            &packed,
            s.bucket * word,
            DType::U32,
            &[s.bucket],
        )?,
        offsets: Tensor::part(
            "offsets",
            &packed,
            2 * s.bucket * word,
            DType::U32,
            &[s.batch + 1],
        )?,
        max_len: s.max_len,
    };
    let pooled_t = TensorMut::new("pooled", &mut pooled, DType::F32, &[s.batch, s.h])?;
    enqueue(l, &inputs, pooled_t)?;
    Ok(vec![packed, pooled])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_with_at_most_a_quarter_to_spare() {
        let mut last = 0;
        for n in 1..=MAX_GRAPH_TOKENS {
            let b = token_bucket(n);
            assert!(b >= n && b >= last, "{n} -> {b}");
            if n > MIN_BUCKET {
                assert!((b - n) * 4 < b, "{n} -> {b}: more than 25 % padding");
            }
            last = b;
        }
        assert_eq!(token_bucket(1), 16);
        assert_eq!(token_bucket(128), 128);
        assert_eq!(token_bucket(129), 160);
        assert_eq!(token_bucket(100), 112);
        let distinct: std::collections::BTreeSet<usize> = (1..=4096).map(token_bucket).collect();
        // 16, then four per octave from 32 to 4096.
        assert_eq!(distinct.len(), 1 + 4 * 8, "buckets up to 4096");
    }

    #[test]
    fn packed_inputs_put_each_part_where_capture_views_it() {
        let tokens = Tokens::from_sequences(&[
            (vec![101, 7, 102], vec![0, 0, 1]),
            (vec![101, 9], vec![0, 1]),
        ])
        .unwrap();
        let bucket = token_bucket(tokens.total_tokens());
        let words = packed_inputs(&tokens, bucket);
        assert_eq!(words.len(), 2 * bucket + 3);
        assert_eq!(&words[..5], &[101, 7, 102, 101, 9]);
        assert!(words[5..bucket].iter().all(|&w| w == 0), "padding ids zero");
        assert_eq!(&words[bucket..bucket + 5], &[0, 0, 1, 0, 1]);
        assert!(words[bucket + 5..2 * bucket].iter().all(|&w| w == 0));
        assert_eq!(&words[2 * bucket..], &[0, 3, 5]);
    }

    #[test]
    fn keys_separate_every_field() {
        let w = Share::Wide;
        let k = |e, b, t, d, s| key(e, b, t, d, s).unwrap();
        let base = k(1, 8, 128, DType::F16, w);
        assert_ne!(base, k(2, 8, 128, DType::F16, w));
        assert_ne!(base, k(1, 9, 128, DType::F16, w));
        assert_ne!(base, k(1, 8, 160, DType::F16, w));
        assert_ne!(base, k(1, 8, 128, DType::BF16, w));
        assert_ne!(base, k(1, 8, 128, DType::F16, Share::Shared));
        let all: std::collections::BTreeSet<u64> = [DType::F32, DType::F16, DType::BF16]
            .into_iter()
            .flat_map(|d| [w, Share::Shared, Share::Crowded].map(|s| k(1, 8, 128, d, s)))
            .collect();
        assert_eq!(all.len(), 9, "precision and share never collide");
        assert_eq!(key(1, 1 << 20, 16, DType::F32, w), None);
        assert_eq!(key(1, 1, 16, DType::U32, w), None);
    }
}
