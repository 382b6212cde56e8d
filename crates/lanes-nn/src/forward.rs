//! One forward pass as a sequence of [`Exec`] ops, written once for eager runs
//! and for CUDA-graph capture.
//!
//! [`enqueue`] takes the batch already on the device (ids, type ids, offsets) and
//! a pooled output tensor, allocates every activation on the lane (inside a capture
//! the allocations come from the graph's pool), enqueues the ops and returns: no
//! copy, no host synchronization, so the same call can be captured into a graph.

use lanes::{Buffer, Lease};

use crate::config::BertConfig;
use crate::device_weights::DeviceWeights;
use crate::error::Result;
use crate::exec::Exec;
use crate::tensor::{DType, Tensor, TensorMut};

/// The batch of one forward on the device.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Inputs<'a> {
    /// Token ids, `u32 [tokens]` (rows past `offsets[batch]` are computed but unused).
    pub(crate) ids: Tensor<'a>,
    /// Token-type ids, `u32 [tokens]`.
    pub(crate) types: Tensor<'a>,
    /// Sequence boundaries, `u32 [batch + 1]`.
    pub(crate) offsets: Tensor<'a>,
    /// A bound on every sequence's length (attention sizes its work by it).
    pub(crate) max_len: usize,
}

/// Enqueues the whole encoder on `lane`: embeddings, every layer, then mean
/// pooling into `pooled` (f32 `[batch, hidden]`, not normalized).
pub(crate) fn enqueue(
    ex: &dyn Exec,
    lane: &Lease,
    c: &BertConfig,
    w: &DeviceWeights,
    inp: &Inputs<'_>,
    pooled: TensorMut<'_>,
) -> Result<()> {
    let Inputs {
        ids,
        types,
        offsets,
        max_len,
    } = *inp;
    let (n, h, t) = (ids.numel(), c.hidden_size, w.dtype);
    let (inter, eps, heads) = (
        c.intermediate_size,
        c.layer_norm_eps as f32,
        c.num_attention_heads,
    );
    let act = |cols: usize| lane.alloc(n * cols * t.size());
    let mut x = act(h)?;
    let tables = w.emb.tables()?;
    ex.embed_ln(
        lane,
        ids,
        types,
        offsets,
        &tables,
        eps,
        act_out("x", n, &mut x, h, t)?,
    )?;
    for l in &w.layers {
        let mut qkv = act(3 * h)?;
        let x_t = act_in("x", n, &x, h, t)?;
        ex.linear(
            lane,
            x_t,
            l.qkv_w.t()?,
            l.qkv_b.t()?,
            false,
            act_out("qkv", n, &mut qkv, 3 * h, t)?,
        )?;
        let mut ctx = act(h)?;
        ex.attention(
            lane,
            act_in("qkv", n, &qkv, 3 * h, t)?,
            offsets,
            max_len,
            heads,
            act_out("ctx", n, &mut ctx, h, t)?,
        )?;
        drop(qkv);
        let mut attn = act(h)?;
        ex.linear(
            lane,
            act_in("ctx", n, &ctx, h, t)?,
            l.o_w.t()?,
            l.o_b.t()?,
            false,
            act_out("attn", n, &mut attn, h, t)?,
        )?;
        drop(ctx);
        let mut h1 = act(h)?;
        let (g, b) = (l.ln1_g.t()?, l.ln1_b.t()?);
        ex.add_layer_norm(
            lane,
            act_in("attn", n, &attn, h, t)?,
            x_t,
            g,
            b,
            eps,
            act_out("h1", n, &mut h1, h, t)?,
        )?;
        drop(attn);
        let mut up = act(inter)?;
        ex.linear(
            lane,
            act_in("h1", n, &h1, h, t)?,
            l.i_w.t()?,
            l.i_b.t()?,
            true,
            act_out("up", n, &mut up, inter, t)?,
        )?;
        let mut down = act(h)?;
        ex.linear(
            lane,
            act_in("up", n, &up, inter, t)?,
            l.out_w.t()?,
            l.out_b.t()?,
            false,
            act_out("down", n, &mut down, h, t)?,
        )?;
        drop(up);
        let mut h2 = act(h)?;
        let (g, b) = (l.ln2_g.t()?, l.ln2_b.t()?);
        ex.add_layer_norm(
            lane,
            act_in("down", n, &down, h, t)?,
            act_in("h1", n, &h1, h, t)?,
            g,
            b,
            eps,
            act_out("h2", n, &mut h2, h, t)?,
        )?;
        // Freed buffers return to this lane's cache: later work on the lane is
        // ordered after the ops above, so reuse is safe without a wait.
        x = h2;
    }
    ex.pool_mean(lane, act_in("x", n, &x, h, t)?, offsets, pooled)?;
    Ok(())
}

/// An activation `[rows, cols]` of dtype `t` as an op's input.
fn act_in<'a>(
    name: &'static str,
    rows: usize,
    buf: &'a Buffer,
    cols: usize,
    t: DType,
) -> Result<Tensor<'a>> {
    Tensor::new(name, buf, t, &[rows, cols])
}

/// An activation `[rows, cols]` of dtype `t` as an op's output.
fn act_out<'a>(
    name: &'static str,
    rows: usize,
    buf: &'a mut Buffer,
    cols: usize,
    t: DType,
) -> Result<TensorMut<'a>> {
    TensorMut::new(name, buf, t, &[rows, cols])
}
