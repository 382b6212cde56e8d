//! The single-threaded CPU forward pass: the correctness reference.
//!
//! Every other execution path (GPU lanes, multi-threaded CPU lanes) is
//! compared against [`forward`]. It is a direct composition of the
//! [`cpu`](crate::cpu) kernels in the order of Hugging Face's `BertModel`
//! followed by sentence-transformers' mean pooling and L2 normalization:
//!
//! ```text
//! x = LayerNorm(word[ids] + type[type_ids] + position[0..len])
//! per layer:
//!     ctx = Attention(x·Wqᵀ+bq, x·Wkᵀ+bk, x·Wvᵀ+bv) within each sequence
//!     x   = LayerNorm(ctx·Woᵀ + bo + x)
//!     x   = LayerNorm(GELU(x·Wiᵀ + bi)·Woutᵀ + bout + x)
//! embedding = normalize(mean of x over the sequence's tokens)
//! ```
//!
//! The batch is packed ([`Tokens`]): no padded token is ever computed.

use crate::config::BertConfig;
use crate::cpu;
use crate::error::{NnError, Result};
use crate::tokens::Tokens;
use crate::weights::{HostWeights, LayerWeights};

/// Sentence embeddings of a batch: `batch × hidden_size` values, row-major,
/// each row L2-normalized.
///
/// Fails (never panics) if `cfg` is not the config the weights were checked
/// against, if a sequence is longer than `max_position_embeddings`, or if
/// `tokens` holds an id outside the vocabulary.
pub fn forward(weights: &HostWeights, cfg: &BertConfig, tokens: &Tokens) -> Result<Vec<f32>> {
    let hidden = hidden_states(weights, cfg, tokens)?;
    let dim = cfg.hidden_size;
    let mut pooled = vec![0.0; tokens.batch() * dim];
    cpu::mean_pool(&hidden, tokens.offsets(), dim, &mut pooled);
    cpu::l2_normalize(&mut pooled, tokens.batch(), dim);
    Ok(pooled)
}

/// The encoder's last hidden state, `[total tokens, hidden_size]`, before pooling.
pub fn hidden_states(weights: &HostWeights, cfg: &BertConfig, tokens: &Tokens) -> Result<Vec<f32>> {
    let mut x = embeddings(weights, cfg, tokens)?;
    let mut scratch = LayerScratch::new(cfg, tokens.total_tokens());
    for layer in &weights.layers {
        layer_forward(layer, cfg, tokens.offsets(), &mut x, &mut scratch);
    }
    Ok(x)
}

/// Embedding sum followed by the embedding LayerNorm: `[total tokens, hidden]`.
pub fn embeddings(weights: &HostWeights, cfg: &BertConfig, tokens: &Tokens) -> Result<Vec<f32>> {
    check_inputs(weights, cfg, tokens)?;
    let (rows, dim) = (tokens.total_tokens(), cfg.hidden_size);
    let e = &weights.embeddings;
    let mut x = vec![0.0; rows * dim];
    let tables = [
        (&e.word).into(),
        (&e.position).into(),
        (&e.token_type).into(),
    ];
    cpu::embed(
        tokens.ids(),
        tokens.type_ids(),
        tokens.offsets(),
        tables,
        &mut x,
    )?;
    let eps = cfg.layer_norm_eps as f32;
    cpu::layer_norm_inplace(&mut x, rows, dim, &e.ln_gamma.data, &e.ln_beta.data, eps);
    Ok(x)
}

/// Scratch buffers for [`layer_forward`], sized for `rows` token rows.
#[derive(Debug, Clone)]
pub struct LayerScratch {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    ctx: Vec<f32>,
    proj: Vec<f32>,
    ffn: Vec<f32>,
}

impl LayerScratch {
    /// Buffers for `rows` tokens of a model with `cfg`.
    pub fn new(cfg: &BertConfig, rows: usize) -> Self {
        let h = vec![0.0; rows * cfg.hidden_size];
        Self {
            q: h.clone(),
            k: h.clone(),
            v: h.clone(),
            ctx: h.clone(),
            proj: h,
            ffn: vec![0.0; rows * cfg.intermediate_size],
        }
    }
}

/// One transformer layer applied in place to `x` (`[tokens, hidden]`, the
/// sequences packed as `offsets` says).
///
/// # Panics
///
/// If the slice sizes disagree with `offsets` and `cfg` (use
/// [`hidden_states`] for checked inputs).
pub fn layer_forward(
    layer: &LayerWeights,
    cfg: &BertConfig,
    offsets: &[u32],
    x: &mut [f32],
    s: &mut LayerScratch,
) {
    let h = cfg.hidden_size;
    let rows = x.len() / h.max(1);
    let eps = cfg.layer_norm_eps as f32;
    cpu::linear(x, rows, h, &layer.q_w.data, &layer.q_b.data, &mut s.q);
    cpu::linear(x, rows, h, &layer.k_w.data, &layer.k_b.data, &mut s.k);
    cpu::linear(x, rows, h, &layer.v_w.data, &layer.v_b.data, &mut s.v);
    let heads = cfg.num_attention_heads;
    cpu::attention(&s.q, &s.k, &s.v, offsets, heads, cfg.head_dim(), &mut s.ctx);
    cpu::linear(
        &s.ctx,
        rows,
        h,
        &layer.o_w.data,
        &layer.o_b.data,
        &mut s.proj,
    );
    cpu::add_inplace(x, &s.proj);
    cpu::layer_norm_inplace(x, rows, h, &layer.ln1_g.data, &layer.ln1_b.data, eps);

    cpu::linear(x, rows, h, &layer.i_w.data, &layer.i_b.data, &mut s.ffn);
    cpu::gelu_inplace(&mut s.ffn);
    let f = cfg.intermediate_size;
    cpu::linear(
        &s.ffn,
        rows,
        f,
        &layer.out_w.data,
        &layer.out_b.data,
        &mut s.proj,
    );
    cpu::add_inplace(x, &s.proj);
    cpu::layer_norm_inplace(x, rows, h, &layer.ln2_g.data, &layer.ln2_b.data, eps);
}

/// Everything [`forward`] needs to run without panicking.
fn check_inputs(weights: &HostWeights, cfg: &BertConfig, tokens: &Tokens) -> Result<()> {
    if cfg != &weights.config {
        return Err(NnError::InvalidInput(format!(
            "config {cfg:?} differs from the one the weights were loaded with ({:?})",
            weights.config
        )));
    }
    weights.check()?;
    if tokens.max_len() > cfg.max_position_embeddings {
        return Err(NnError::InvalidInput(format!(
            "sequence length {} exceeds max_position_embeddings {}",
            tokens.max_len(),
            cfg.max_position_embeddings
        )));
    }
    Ok(())
}
