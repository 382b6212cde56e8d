//! The fused operations of a BERT forward, one implementation per backend.
//!
//! The forward pass (`forward`, run by `encoder`) is written once against [`Exec`]; the host
//! backend runs each op as a job on the lane's worker thread ([`host::HostExec`]),
//! the CUDA backend as NVRTC kernels and cuBLAS calls on the lane's stream. Ops take
//! typed, size-checked views of device buffers ([`Tensor`], [`TensorMut`]); the
//! `check_*` functions here validate them once for both backends. Ops are enqueued
//! on the lane and never wait on the host.

use lanes::Lease;

use crate::tensor::{Check, DType, Tensor, TensorMut};
use crate::Result;

pub mod host;

#[cfg(feature = "cuda")]
pub mod cuda;

/// The embedding tables and their LayerNorm on the device.
#[derive(Clone, Copy, Debug)]
pub struct EmbedTables<'a> {
    /// `[vocab, hidden]`.
    pub word: Tensor<'a>,
    /// `[max_pos, hidden]`.
    pub position: Tensor<'a>,
    /// `[type_vocab, hidden]`.
    pub token_type: Tensor<'a>,
    /// LayerNorm scale `[hidden]`.
    pub gamma: Tensor<'a>,
    /// LayerNorm shift `[hidden]`.
    pub beta: Tensor<'a>,
}

/// A backend's implementation of the fused ops of a BERT forward over a packed
/// batch ([`crate::Tokens`]): activations are `[tokens, dim]`, the sequences back
/// to back, and `offsets` (`u32 [batch + 1]`, on the device) mark where each
/// starts and ends.
///
/// Every op checks the tensors it is given against each other (shapes, dtypes,
/// device) and fails with [`crate::NnError::OpMismatch`] naming the op and the
/// tensor; it never reads or writes outside a tensor's buffer, whatever the
/// *values* of ids and offsets (out-of-range ones are clamped or skipped by the
/// kernels; the encoder range-checks them on the host first). Work is enqueued on
/// the lane; the buffers are stream-ordered, so they may be dropped once the op
/// returns.
///
/// Dtypes: every op computes in one activation dtype `T` (the output's, which must
/// be one of the backend's `floats`); weight matrices and embedding tables are `T`
/// too, a linear's bias f32 or `T`, LayerNorm parameters always f32, the pooled
/// output always f32.
pub trait Exec: Send + Sync + 'static {
    /// `out[t] = LayerNorm(word[ids[t]] + token_type[types[t]] + position[p(t)])`
    /// where `p(t)` is `t`'s index within its sequence; `ids`, `types` are
    /// `u32 [tokens]`, `offsets` `u32 [batch + 1]`, `out` `[tokens, hidden]`.
    #[allow(clippy::too_many_arguments)]
    fn embed_ln(
        &self,
        lane: &Lease,
        ids: Tensor<'_>,
        types: Tensor<'_>,
        offsets: Tensor<'_>,
        tables: &EmbedTables<'_>,
        eps: f32,
        out: TensorMut<'_>,
    ) -> Result<()>;

    /// `out = act(x · wᵀ + b)` with `x [rows, k]`, `w [n, k]`, `b [n]`,
    /// `out [rows, n]`; `gelu` selects the exact (erf) GELU.
    fn linear(
        &self,
        lane: &Lease,
        x: Tensor<'_>,
        w: Tensor<'_>,
        b: Tensor<'_>,
        gelu: bool,
        out: TensorMut<'_>,
    ) -> Result<()>;

    /// Multi-head self-attention within each sequence from the fused projection
    /// `qkv [tokens, 3 * hidden]` (q, k, v side by side per row); writes the
    /// context `out [tokens, hidden]`. `max_len` bounds every sequence's length
    /// (the kernels size their work by it and clamp longer ones).
    fn attention(
        &self,
        lane: &Lease,
        qkv: Tensor<'_>,
        offsets: Tensor<'_>,
        max_len: usize,
        heads: usize,
        out: TensorMut<'_>,
    ) -> Result<()>;

    /// `out = LayerNorm(x + residual)` over rows of `x [rows, dim]`.
    #[allow(clippy::too_many_arguments)]
    fn add_layer_norm(
        &self,
        lane: &Lease,
        x: Tensor<'_>,
        residual: Tensor<'_>,
        gamma: Tensor<'_>,
        beta: Tensor<'_>,
        eps: f32,
        out: TensorMut<'_>,
    ) -> Result<()>;

    /// Mean of `hidden [tokens, dim]` over each sequence of `offsets` (f64 sums,
    /// as `cpu::mean_pool`; an empty sequence gives zeros): `out [batch, dim]`,
    /// not normalized (the encoder normalizes on the host after the copy).
    fn pool_mean(
        &self,
        lane: &Lease,
        hidden: Tensor<'_>,
        offsets: Tensor<'_>,
        out: TensorMut<'_>,
    ) -> Result<()>;
}

/// The validated dimensions of an [`Exec::embed_ln`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbedDims {
    /// Tokens of the batch.
    pub tokens: usize,
    /// Sequences of the batch.
    pub batch: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Rows of the word, position and token-type tables.
    pub vocab: usize,
    /// Rows of the position table.
    pub max_pos: usize,
    /// Rows of the token-type table.
    pub type_vocab: usize,
}

/// Checks the tensors of [`Exec::embed_ln`]; `floats` are the activation dtypes
/// the backend computes in (see [`Exec`] for which tensor takes which dtype).
pub fn check_embed_ln(
    lane: &Lease,
    ids: &Tensor<'_>,
    types: &Tensor<'_>,
    offsets: &Tensor<'_>,
    t: &EmbedTables<'_>,
    out: &TensorMut<'_>,
    floats: &[DType],
) -> Result<EmbedDims> {
    let c = Check { op: "embed_ln" };
    let [tokens] = c.shape("ids", ids.shape(), [None])?;
    c.shape("types", types.shape(), [Some(tokens)])?;
    let [n_off] = c.shape("offsets", offsets.shape(), [None])?;
    let [vocab, hidden] = c.shape("word", t.word.shape(), [None, None])?;
    let [max_pos, _] = c.shape("position", t.position.shape(), [None, Some(hidden)])?;
    let [type_vocab, _] = c.shape("token_type", t.token_type.shape(), [None, Some(hidden)])?;
    c.shape("gamma", t.gamma.shape(), [Some(hidden)])?;
    c.shape("beta", t.beta.shape(), [Some(hidden)])?;
    c.shape(out.name(), out.shape(), [Some(tokens), Some(hidden)])?;
    for x in [ids, types, offsets] {
        c.dtype(x.name(), x.dtype(), &[DType::U32])?;
    }
    let act = out.dtype();
    c.dtype(out.name(), act, floats)?;
    for x in [&t.word, &t.position, &t.token_type] {
        c.dtype(x.name(), x.dtype(), &[act])?;
    }
    for x in [&t.gamma, &t.beta] {
        c.dtype(x.name(), x.dtype(), &[DType::F32])?;
    }
    if n_off == 0 {
        return Err(empty_offsets(&c, offsets));
    }
    c.on_lane(
        lane,
        &[
            ids,
            types,
            offsets,
            &t.word,
            &t.position,
            &t.token_type,
            &t.gamma,
            &t.beta,
            &out.as_tensor(),
        ],
    )?;
    Ok(EmbedDims {
        tokens,
        batch: n_off - 1,
        hidden,
        vocab,
        max_pos,
        type_vocab,
    })
}

fn empty_offsets(c: &Check, offsets: &Tensor<'_>) -> crate::NnError {
    crate::NnError::OpMismatch {
        op: c.op,
        tensor: offsets.name().to_string(),
        expected: "batch + 1 >= 1 entries".into(),
        actual: "none".into(),
    }
}

/// Checks the tensors of [`Exec::linear`]; returns `(rows, k, n)`.
pub fn check_linear(
    lane: &Lease,
    x: &Tensor<'_>,
    w: &Tensor<'_>,
    b: &Tensor<'_>,
    out: &TensorMut<'_>,
    floats: &[DType],
) -> Result<(usize, usize, usize)> {
    let c = Check { op: "linear" };
    let [rows, k] = c.shape(x.name(), x.shape(), [None, None])?;
    let [n, _] = c.shape(w.name(), w.shape(), [None, Some(k)])?;
    c.shape(b.name(), b.shape(), [Some(n)])?;
    c.shape(out.name(), out.shape(), [Some(rows), Some(n)])?;
    let act = out.dtype();
    c.dtype(out.name(), act, floats)?;
    c.dtype(x.name(), x.dtype(), &[act])?;
    c.dtype(w.name(), w.dtype(), &[act])?;
    // The bias: f32, or the activation dtype (the 16-bit models keep theirs so,
    // for cuBLASLt's fused epilogue).
    c.dtype(b.name(), b.dtype(), &[DType::F32, act])?;
    c.on_lane(lane, &[x, w, b, &out.as_tensor()])?;
    Ok((rows, k, n))
}

/// The validated dimensions of an [`Exec::attention`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// Tokens of the batch.
    pub tokens: usize,
    /// Sequences of the batch.
    pub batch: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// The bound on sequence lengths.
    pub max_len: usize,
}

/// Checks the tensors of [`Exec::attention`].
pub fn check_attention(
    lane: &Lease,
    qkv: &Tensor<'_>,
    offsets: &Tensor<'_>,
    max_len: usize,
    heads: usize,
    out: &TensorMut<'_>,
    floats: &[DType],
) -> Result<AttentionDims> {
    let c = Check { op: "attention" };
    let [tokens, hidden] = c.shape(out.name(), out.shape(), [None, None])?;
    c.shape(qkv.name(), qkv.shape(), [Some(tokens), Some(3 * hidden)])?;
    let [n_off] = c.shape(offsets.name(), offsets.shape(), [None])?;
    if n_off == 0 {
        return Err(empty_offsets(&c, offsets));
    }
    if heads == 0 || hidden % heads != 0 {
        return Err(crate::NnError::OpMismatch {
            op: c.op,
            tensor: out.name().to_string(),
            expected: format!("a width that {heads} heads divide"),
            actual: format!("width {hidden}"),
        });
    }
    c.dtype(out.name(), out.dtype(), floats)?;
    c.dtype(qkv.name(), qkv.dtype(), &[out.dtype()])?;
    c.dtype(offsets.name(), offsets.dtype(), &[DType::U32])?;
    c.on_lane(lane, &[qkv, offsets, &out.as_tensor()])?;
    Ok(AttentionDims {
        tokens,
        batch: n_off - 1,
        hidden,
        heads,
        head_dim: hidden / heads,
        max_len,
    })
}

/// Checks the tensors of [`Exec::add_layer_norm`]; returns `(rows, dim)`.
pub fn check_add_layer_norm(
    lane: &Lease,
    x: &Tensor<'_>,
    residual: &Tensor<'_>,
    gamma: &Tensor<'_>,
    beta: &Tensor<'_>,
    out: &TensorMut<'_>,
    floats: &[DType],
) -> Result<(usize, usize)> {
    let c = Check {
        op: "add_layer_norm",
    };
    let [rows, dim] = c.shape(x.name(), x.shape(), [None, None])?;
    c.shape(residual.name(), residual.shape(), [Some(rows), Some(dim)])?;
    c.shape(gamma.name(), gamma.shape(), [Some(dim)])?;
    c.shape(beta.name(), beta.shape(), [Some(dim)])?;
    c.shape(out.name(), out.shape(), [Some(rows), Some(dim)])?;
    let act = out.dtype();
    c.dtype(out.name(), act, floats)?;
    for t in [x, residual] {
        c.dtype(t.name(), t.dtype(), &[act])?;
    }
    for t in [gamma, beta] {
        c.dtype(t.name(), t.dtype(), &[DType::F32])?;
    }
    c.on_lane(lane, &[x, residual, gamma, beta, &out.as_tensor()])?;
    Ok((rows, dim))
}

/// Checks the tensors of [`Exec::pool_mean`]; returns `(tokens, batch, dim)`.
pub fn check_pool(
    lane: &Lease,
    hidden: &Tensor<'_>,
    offsets: &Tensor<'_>,
    out: &TensorMut<'_>,
    floats: &[DType],
) -> Result<(usize, usize, usize)> {
    let c = Check { op: "pool_mean" };
    let [tokens, dim] = c.shape(hidden.name(), hidden.shape(), [None, None])?;
    let [n_off] = c.shape(offsets.name(), offsets.shape(), [None])?;
    if n_off == 0 {
        return Err(empty_offsets(&c, offsets));
    }
    c.shape(out.name(), out.shape(), [Some(n_off - 1), Some(dim)])?;
    c.dtype(hidden.name(), hidden.dtype(), floats)?;
    c.dtype(offsets.name(), offsets.dtype(), &[DType::U32])?;
    c.dtype(out.name(), out.dtype(), &[DType::F32])?;
    c.on_lane(lane, &[hidden, offsets, &out.as_tensor()])?;
    Ok((tokens, n_off - 1, dim))
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
