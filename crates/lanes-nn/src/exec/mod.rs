//! The fused operations of a BERT forward, one implementation per backend.
//!
//! The forward pass ([`crate::encoder`]) is written once against [`Exec`]; the host
//! backend runs each op as a job on the lane's worker thread ([`host::HostExec`]),
//! the CUDA backend as NVRTC kernels and cuBLAS calls on the lane's stream. Every
//! pointer is device memory from the caching allocator (or the model's weights);
//! ops are enqueued on the lane and never wait on the host.

use lanes::{DevicePtr, Lease};

use crate::Result;

pub mod host;

#[cfg(feature = "cuda")]
pub mod cuda;

/// Shape of one forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence (padded).
    pub seq: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
}

impl Dims {
    /// `batch * seq`: the rows of every activation.
    pub fn rows(&self) -> usize {
        self.batch * self.seq
    }
    /// Size of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// The embedding tables on the device.
#[derive(Clone, Copy, Debug)]
pub struct EmbedTables {
    /// `[vocab, hidden]`.
    pub word: DevicePtr,
    /// `[max_pos, hidden]`.
    pub position: DevicePtr,
    /// `[type_vocab, hidden]`.
    pub token_type: DevicePtr,
    /// LayerNorm scale `[hidden]`.
    pub gamma: DevicePtr,
    /// LayerNorm shift `[hidden]`.
    pub beta: DevicePtr,
}

/// A backend's implementation of the fused ops. All pointers are valid device
/// memory of the lane's device sized as documented; the caller keeps them alive
/// (stream-ordered) until the work has run.
pub trait Exec: Send + Sync + 'static {
    /// `out[r] = LayerNorm(word[ids[r]] + position[r % seq] + token_type[types[r]])`;
    /// `ids`, `types` are `u32 [rows]`, `out` is `[rows, hidden]`.
    #[allow(clippy::too_many_arguments)]
    fn embed_ln(
        &self,
        lane: &Lease,
        d: Dims,
        ids: DevicePtr,
        types: DevicePtr,
        t: &EmbedTables,
        eps: f32,
        out: DevicePtr,
    ) -> Result<()>;

    /// `out = act(x · wᵀ + b)` with `x [rows, k]`, `w [n, k]`, `b [n]`, `out [rows, n]`;
    /// `gelu` selects the exact (erf) GELU.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        lane: &Lease,
        rows: usize,
        k: usize,
        n: usize,
        x: DevicePtr,
        w: DevicePtr,
        b: DevicePtr,
        gelu: bool,
        out: DevicePtr,
    ) -> Result<()>;

    /// Multi-head self-attention from the fused projection `qkv [rows, 3*hidden]`
    /// (q, k, v side by side per row) with the key mask `mask f32 [batch, seq]`
    /// (1 = token, 0 = padding); writes the context `out [rows, hidden]`.
    fn attention(
        &self,
        lane: &Lease,
        d: Dims,
        qkv: DevicePtr,
        mask: DevicePtr,
        out: DevicePtr,
    ) -> Result<()>;

    /// `out = LayerNorm(x + residual)` over rows of `dim`.
    #[allow(clippy::too_many_arguments)]
    fn add_layer_norm(
        &self,
        lane: &Lease,
        rows: usize,
        dim: usize,
        x: DevicePtr,
        residual: DevicePtr,
        gamma: DevicePtr,
        beta: DevicePtr,
        eps: f32,
        out: DevicePtr,
    ) -> Result<()>;

    /// Mean of `hidden [batch, seq, dim]` over the mask, then L2-normalized:
    /// `out [batch, dim]`.
    fn pool_normalize(
        &self,
        lane: &Lease,
        d: Dims,
        hidden: DevicePtr,
        mask: DevicePtr,
        out: DevicePtr,
    ) -> Result<()>;
}

/// The executor for a device.
pub fn for_device(device: &lanes::Device) -> Result<Box<dyn Exec>> {
    match device.kind() {
        lanes::DeviceKind::Cpu => Ok(Box::new(host::HostExec)),
        #[cfg(feature = "cuda")]
        lanes::DeviceKind::Cuda(_) => Ok(Box::new(cuda::CudaExec::new(device)?)),
        #[cfg(not(feature = "cuda"))]
        lanes::DeviceKind::Cuda(_) => Err(crate::NnError::Unsupported(
            "this build of lanes-nn has no CUDA kernels (feature `cuda` off)".into(),
        )),
    }
}
