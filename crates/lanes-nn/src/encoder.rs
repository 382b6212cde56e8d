//! The sentence encoder on a device: weights uploaded once, forward on any lane.
//!
//! One `Arc<Encoder>` serves any number of threads. Each call runs on the caller's
//! lane: inputs are uploaded, ~70 ops are enqueued through the backend's [`Exec`]
//! ([`crate::forward`]), and the only host wait is the final copy of the
//! embeddings. On CUDA, with an exclusive lease, the ops of a (batch, token
//! bucket, precision) shape are captured once per lane into a CUDA graph and
//! replayed ([`crate::graph`]); `LANES_GRAPHS=off` runs them eagerly.
//!
//! Weights are uploaded once per device on one lane, converted to the encoder's
//! [`Precision`], which records a ready event; every other lane waits on that
//! event once (no device-wide sync) and marks the weights as used by it, so the
//! allocator never recycles them under a lane that may still read them.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use lanes::{Device, Event, Lease};

use crate::config::BertConfig;
use crate::device_weights::DeviceWeights;
use crate::error::{NnError, Result};
use crate::exec::{self, Exec};
use crate::files::ModelFiles;
use crate::forward::{self, Inputs};
use crate::graph::{GraphCounts, Graphs, ModelShape};
use crate::precision::{self, EncoderOptions, Precision};
use crate::tensor::{DType, Tensor, TensorMut};
use crate::tokenizer::Tokenizer;
use crate::tokens::Tokens;
use crate::weights::HostWeights;

/// One text's embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    /// Tokens the model saw (with [CLS] and [SEP], after truncation).
    pub tokens: usize,
    /// The sentence embedding: L2-normalized, except where a caller built it
    /// from [`Encoder::forward_mean`]'s raw mean.
    pub vector: Vec<f32>,
}

/// all-MiniLM-L6-v2 (any BERT encoder with mean pooling) on one device.
pub struct Encoder {
    device: Device,
    config: BertConfig,
    tokenizer: Tokenizer,
    exec: Box<dyn Exec>,
    weights: DeviceWeights,
    precision: Precision,
    /// Recorded on the upload lane after the last weight copy.
    ready: Event,
    /// Bit `i` is set once lane `i` has waited on `ready` and marked the weights as
    /// used by it. Set with `fetch_or` by the first forward on that lane; a race
    /// between two threads sharing a lane only repeats idempotent work.
    lanes_ready: AtomicU64,
    /// This encoder's CUDA graphs (id, warm lanes, counts).
    graphs: Graphs,
    /// Forwards in progress, over all lanes: incremented when one starts, decremented
    /// when it ends (by [`InFlight`]). A forward that starts while others run
    /// plans its small GEMMs narrower ([`share_of`]).
    in_flight: AtomicUsize,
}

/// One forward counted in [`Encoder::in_flight`] for its duration.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    /// Counts a forward in; returns the guard and the count including it.
    fn enter(n: &'a AtomicUsize) -> (InFlight<'a>, usize) {
        let now = n.fetch_add(1, Ordering::Relaxed) + 1;
        (InFlight(n), now)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// SMs a forward's small GEMMs plan for when a few other forwards run beside it
/// (cuBLASLt's `SM_COUNT_TARGET`, see [`lanes::backend::cuda::CudaLane::set_sm_budget`]).
///
/// Measured on the H200 (132 SMs), float16 batch 1 × 128 tokens, one run each
/// (`scripts/gpu-experiments.sh`): 16 threads give 16,009 forwards/s planned for
/// the whole GPU, 42,944 for 16 SMs, 44,553 for 8; 32 threads 48,690 for 16 SMs,
/// 64,454 for 8; one thread 5,320 whole, 4,812 for 16 SMs, 4,349 for 8. So a
/// forward alone plans wide, one among a few others for 16 SMs, one in a crowd
/// ([`CROWDED_AT`] forwards or more) for [`CROWDED_SMS`].
pub const SHARED_SMS: u32 = 16;

/// SMs a forward's small GEMMs plan for in a crowd (see [`SHARED_SMS`]).
pub const CROWDED_SMS: u32 = 8;

/// Packed tokens up to which a forward's GEMMs narrow under concurrency (the
/// rows of its GEMMs; bigger ones fill the GPU on their own).
pub const NARROW_MAX_TOKENS: usize = 1024;

/// Forwards in flight (this one included) from which a forward is in a crowd.
pub const CROWDED_AT: usize = 8;

/// The GEMM share of a forward that starts with `in_flight` forwards running
/// (itself included).
pub(crate) fn share_of(in_flight: usize) -> Share {
    share_from(in_flight, CROWDED_AT)
}

/// [`share_of`] with the crowd starting at `crowded_at` forwards.
fn share_from(in_flight: usize, crowded_at: usize) -> Share {
    match in_flight {
        0 | 1 => Share::Wide,
        n if n < crowded_at => Share::Shared,
        _ => Share::Crowded,
    }
}

/// Forwards in flight from which an f32 forward is in a crowd (its GEMMs then
/// leave `small_linear` for narrow cuBLASLt plans): `LANES_F32_CROWDED_AT`, else
/// [`F32_CROWDED_AT`].
fn f32_crowded_at() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("LANES_F32_CROWDED_AT")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n >= 2)
            .unwrap_or(F32_CROWDED_AT)
    })
}

/// The default of `LANES_F32_CROWDED_AT` (forwards in flight from which an f32
/// forward is in a crowd and leaves `small_linear`). Measured on the H200, f32 batch 1 × 128
/// tokens, forwards/s by threads (one run each): the thread count at the
/// threshold dips (its forwards flip between `small_linear` and narrow cuBLASLt
/// graphs), so the threshold sits where the fewest common thread counts do:
///
/// | crowd from | 2 | 4 | 6 | 8 | 16 |
/// |---|---:|---:|---:|---:|---:|
/// | 3 | 3,975 | 4,340 | 6,247 | 7,168 | 9,924 |
/// | 4 | 3,948 | 4,280 | 6,322 | 7,168 | 9,926 |
/// | 6 | 3,903 | 5,677 | 5,422 | 7,095 | 9,934 |
/// | 8 | 3,978 | 5,682 | 6,676 | 6,076 | 9,933 |
/// | (no `small_linear`) | 2,799 | 4,965 | | 7,154 | 9,750 |
pub const F32_CROWDED_AT: usize = 6;

/// How much of the GPU a forward's small GEMMs plan for (ordered from the
/// widest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Share {
    /// The whole device (lowest latency for a forward alone).
    Wide,
    /// [`SHARED_SMS`] SMs.
    Shared,
    /// [`CROWDED_SMS`] SMs (most throughput when many forwards run at once).
    Crowded,
}

impl Share {
    /// The lane SM budget of this share (0: the whole device).
    pub(crate) fn sms(self) -> u32 {
        match self {
            Share::Wide => 0,
            Share::Shared => SHARED_SMS,
            Share::Crowded => CROWDED_SMS,
        }
    }
}

impl Encoder {
    /// Loads the model folder (`model.safetensors`, `tokenizer.json`, `config.json`)
    /// and uploads the weights to `device` in the [`Precision::Auto`] precision.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Encoder> {
        Encoder::load_with(dir, device, EncoderOptions::default())
    }

    /// As [`Encoder::load`], with `options` (the precision). A precision the
    /// device's executor cannot compute in (float16 or bfloat16 on the CPU) is
    /// [`NnError::Unsupported`], reported before anything is loaded.
    pub fn load_with(
        dir: impl AsRef<Path>,
        device: &Device,
        options: EncoderOptions,
    ) -> Result<Encoder> {
        precision::check_supported(options.precision, device.kind(), device.name())?;
        let files = ModelFiles::locate(dir.as_ref())?;
        let config = BertConfig::from_file(&files.config)?;
        let weights = HostWeights::load_with_config(&files.weights, &config)?;
        let tokenizer = Tokenizer::from_file(&files.tokenizer)?;
        Encoder::from_parts_with(config, &weights, tokenizer, device, options)
    }

    /// Uploads `weights` to `device` in the [`Precision::Auto`] precision.
    pub fn from_parts(
        config: BertConfig,
        weights: &HostWeights,
        tokenizer: Tokenizer,
        device: &Device,
    ) -> Result<Encoder> {
        Encoder::from_parts_with(
            config,
            weights,
            tokenizer,
            device,
            EncoderOptions::default(),
        )
    }

    /// Uploads `weights` to `device`, converted once to `options.precision`.
    pub fn from_parts_with(
        config: BertConfig,
        weights: &HostWeights,
        tokenizer: Tokenizer,
        device: &Device,
        options: EncoderOptions,
    ) -> Result<Encoder> {
        let precision =
            precision::check_supported(options.precision, device.kind(), device.name())?;
        let dtype = precision.dtype().unwrap_or(DType::F32);
        let exec = exec::for_device(device)?;
        let lane = device.lease()?;
        let device_weights = DeviceWeights::upload(&lane, &config, weights, dtype)?;
        // Load cuBLAS (and create this lane's handles) at load time, not in the
        // first request.
        crate::graph::set_up_blas(&lane, dtype)?;
        let ready = lane.record()?;
        let lanes_ready = AtomicU64::new(1u64 << lane.index());
        Ok(Encoder {
            device: device.clone(),
            config,
            tokenizer,
            exec,
            weights: device_weights,
            precision,
            ready,
            lanes_ready,
            graphs: Graphs::new(),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The precision the encoder computes in (resolved: never [`Precision::Auto`]).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// How many forwards were captured into, replayed from, or fell back from CUDA
    /// graphs (see [`crate::graph`]).
    pub fn graph_counts(&self) -> GraphCounts {
        self.graphs.counts()
    }

    /// Tokenizes and embeds `texts` as one packed batch on this thread's lane.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>> {
        let lane = self.device.current_lane()?;
        self.embed_on(&lane, texts)
    }

    /// Tokenizes and embeds `texts` as one packed batch on `lane`.
    pub fn embed_on(&self, lane: &Lease, texts: &[&str]) -> Result<Vec<Embedding>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let tokens = self.tokenizer.encode_batch(texts)?;
        let flat = self.forward(lane, &tokens)?;
        let h = self.config.hidden_size;
        Ok(flat
            .chunks_exact(h)
            .zip(tokens.lengths())
            .map(|(v, n)| Embedding {
                tokens: n,
                vector: v.to_vec(),
            })
            .collect())
    }

    /// Checks that `tokens` can run on this model from `lane`: the lane's device,
    /// every id and type id in range, no sequence longer than the positions.
    fn check_input(&self, lane: &Lease, tokens: &Tokens) -> Result<()> {
        let lane_device = lane.device();
        if !lane_device.same_as(&self.device) {
            return Err(NnError::InvalidInput(format!(
                "a lane of {} was used with a model on {}",
                lane_device.name(),
                self.device.name()
            )));
        }
        let c = &self.config;
        if let Some(&bad) = tokens.ids().iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(NnError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary ({})",
                c.vocab_size
            )));
        }
        if let Some(&bad) = tokens
            .type_ids()
            .iter()
            .find(|&&t| t as usize >= c.type_vocab_size)
        {
            return Err(NnError::InvalidInput(format!(
                "token type {bad} is outside 0..{}",
                c.type_vocab_size
            )));
        }
        if tokens.max_len() > c.max_position_embeddings {
            return Err(NnError::InvalidInput(format!(
                "sequence of {} tokens exceeds the model's {} positions",
                tokens.max_len(),
                c.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// Runs the encoder on a packed batch; returns `batch × hidden` embeddings
    /// (f32 whatever the precision, L2-normalized, row-major): sentence-transformers'
    /// output. Only the batch's real tokens are computed (plus, when a CUDA graph
    /// replays, the padding of its token bucket).
    pub fn forward(&self, lane: &Lease, tokens: &Tokens) -> Result<Vec<f32>> {
        let mut out = self.forward_mean(lane, tokens)?;
        crate::cpu::l2_normalize(&mut out, tokens.batch(), self.config.hidden_size);
        Ok(out)
    }

    /// As [`Encoder::forward`], but returns the raw mean-pooled vectors (the
    /// mean of the last hidden states over each sequence's tokens, before L2
    /// normalization). [`Encoder::forward`] is this followed by
    /// [`crate::cpu::l2_normalize`] on the host, so the two agree exactly.
    pub fn forward_mean(&self, lane: &Lease, tokens: &Tokens) -> Result<Vec<f32>> {
        self.check_input(lane, tokens)?;
        let (batch, n, h) = (
            tokens.batch(),
            tokens.total_tokens(),
            self.config.hidden_size,
        );
        if n == 0 {
            // No tokens at all (an empty batch, or only empty sequences): every
            // mean is over nothing, zero.
            return Ok(vec![0.0; batch * h]);
        }
        self.prepare_lane(lane)?;
        let (_counted, in_flight) = InFlight::enter(&self.in_flight);
        // Bigger forwards fill the GPU on their own: always wide (one graph).
        // An f32 forward's crowd may start elsewhere (`small_linear`'s reach).
        let share = if n > NARROW_MAX_TOKENS {
            Share::Wide
        } else if self.weights.dtype == DType::F32 {
            share_from(in_flight, f32_crowded_at())
        } else {
            share_of(in_flight)
        };
        set_sm_budget(lane, share, self.weights.dtype);
        let model = ModelShape {
            hidden: h,
            max_positions: self.config.max_position_embeddings,
            dtype: self.weights.dtype,
            share,
        };
        let enqueue =
            |l: &Lease, inputs: &Inputs<'_>, pooled: TensorMut<'_>| self.enqueue(l, inputs, pooled);
        if let Some(out) = self.graphs.forward(lane, tokens, model, &enqueue)? {
            return Ok(out);
        }
        let out = self.forward_eager(lane, tokens)?;
        self.graphs.warmed(lane.index());
        Ok(out)
    }

    /// The forward without graphs: upload, enqueue every op, download.
    fn forward_eager(&self, lane: &Lease, tokens: &Tokens) -> Result<Vec<f32>> {
        let (batch, n, h) = (
            tokens.batch(),
            tokens.total_tokens(),
            self.config.hidden_size,
        );
        let upload = |data: &[u32]| -> Result<lanes::Buffer> {
            let buf = lane.alloc(std::mem::size_of_val(data))?;
            lane.upload(&buf, bytemuck::cast_slice(data))?;
            Ok(buf)
        };
        let (ids, types, offsets) = (
            upload(tokens.ids())?,
            upload(tokens.type_ids())?,
            upload(tokens.offsets())?,
        );
        let inputs = Inputs {
            ids: Tensor::new("ids", &ids, DType::U32, &[n])?,
            types: Tensor::new("type_ids", &types, DType::U32, &[n])?,
            offsets: Tensor::new("offsets", &offsets, DType::U32, &[batch + 1])?,
            max_len: tokens.max_len(),
        };
        let mut pooled = lane.alloc(batch * h * 4)?;
        let pooled_t = TensorMut::new("pooled", &mut pooled, DType::F32, &[batch, h])?;
        self.enqueue(lane, &inputs, pooled_t)?;
        let mut out = vec![0f32; batch * h];
        lane.download(&pooled, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }

    /// Enqueues the ops of one forward on `lane` (no copies, no host wait).
    fn enqueue(&self, lane: &Lease, inputs: &Inputs<'_>, pooled: TensorMut<'_>) -> Result<()> {
        forward::enqueue(
            &*self.exec,
            lane,
            &self.config,
            &self.weights,
            inputs,
            pooled,
        )
    }

    /// First use of a lane: wait for the weights' upload and mark them used by it.
    fn prepare_lane(&self, lane: &Lease) -> Result<()> {
        let bit = 1u64 << lane.index();
        if self.lanes_ready.load(Ordering::Acquire) & bit != 0 {
            return Ok(());
        }
        lane.wait(&self.ready)?;
        self.weights.record_use(lane.index());
        // The lane's BLAS handles now, on its first forward, rather than inside a
        // later one (the first handle of a process also loads cuBLAS: a second).
        crate::graph::set_up_blas(lane, self.weights.dtype)?;
        self.lanes_ready.fetch_or(bit, Ordering::AcqRel);
        Ok(())
    }
}

/// Sets `lane`'s SM budget and crowd hint for `share` (CUDA lanes; nothing
/// elsewhere). f32 GEMMs (no tensor cores) need more SMs than a crowd's share:
/// in a crowd they keep the shared one (measured on the H200, f32 batch 1 from
/// 16 threads, cuBLASLt: 8,242 forwards/s for 16 SMs, 7,181 for 8); the hint
/// moves them off `small_linear` there (see `exec::cuda::SmallLinear`).
fn set_sm_budget(lane: &Lease, share: Share, dtype: DType) {
    #[cfg(feature = "cuda")]
    if let Some(cuda) = lane
        .raw()
        .as_any()
        .downcast_ref::<lanes::backend::cuda::CudaLane>()
    {
        let sms = match (share, dtype) {
            (Share::Crowded, DType::F32) => Share::Shared.sms(),
            _ => share.sms(),
        };
        cuda.set_sm_budget(sms);
        cuda.set_crowded(share == Share::Crowded);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (lane, share, dtype);
}

#[cfg(test)]
mod share_tests {
    use super::*;

    #[test]
    fn shares_narrow_as_forwards_crowd_in() {
        assert_eq!(share_of(1), Share::Wide);
        assert_eq!(share_of(2), Share::Shared);
        assert_eq!(share_of(CROWDED_AT - 1), Share::Shared);
        assert_eq!(share_of(CROWDED_AT), Share::Crowded);
        assert_eq!(share_of(64), Share::Crowded);
        assert_eq!(share_from(3, 4), Share::Shared);
        assert_eq!(share_from(4, 4), Share::Crowded);
        assert_eq!(share_from(1, 2), Share::Wide);
        assert_eq!(share_from(2, 2), Share::Crowded);
        assert_eq!(Share::Wide.sms(), 0);
        assert!(Share::Shared.sms() > Share::Crowded.sms() && Share::Crowded.sms() > 0);
        // Shares are ordered widest first.
        assert_eq!(Share::Crowded.min(Share::Shared), Share::Shared);
        assert_eq!(Share::Wide.min(Share::Shared), Share::Wide);
    }

    #[test]
    fn in_flight_counts_a_forward_for_its_duration() {
        let n = AtomicUsize::new(0);
        let (a, first) = InFlight::enter(&n);
        let (b, second) = InFlight::enter(&n);
        assert_eq!((first, second), (1, 2));
        drop(a);
        assert_eq!(n.load(Ordering::Relaxed), 1);
        drop(b);
        assert_eq!(n.load(Ordering::Relaxed), 0);
    }
}
