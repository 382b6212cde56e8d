//! The sentence encoder on a device: weights uploaded once, forward on any lane.
//!
//! One `Arc<Encoder>` serves any number of threads. Each call runs on the caller's
//! lane: inputs are uploaded, ~90 ops are enqueued through the backend's [`Exec`],
//! and the only host wait is the final copy of the embeddings. Weights are uploaded
//! once per device on one lane, which records a ready event; every other lane waits
//! on that event once (no device-wide sync) and marks the weights as used by it, so
//! the allocator never recycles them under a lane that may still read them.

use std::path::Path;

use lanes::{Buffer, Device, Event, Lease};

use crate::exec::{self, EmbedTables, Exec};
use crate::tensor::{DType, Tensor, TensorMut};
use crate::weights::HostWeights;
use crate::{BertConfig, ModelFiles, NnError, Result, Tokenizer, Tokens};

/// One text's embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    /// Tokens the model saw (with [CLS] and [SEP], after truncation).
    pub tokens: usize,
    /// The L2-normalized sentence embedding.
    pub vector: Vec<f32>,
}

/// A weight on the device: its buffer, dtype and shape.
struct Weight {
    name: &'static str,
    buf: Buffer,
    dtype: DType,
    shape: Vec<usize>,
}

impl Weight {
    /// Uploads f32 `data` of `shape` on `lane`.
    fn upload(lane: &Lease, name: &'static str, data: &[f32], shape: &[usize]) -> Result<Weight> {
        let buf = lane.alloc(std::mem::size_of_val(data))?;
        lane.upload(&buf, bytemuck::cast_slice(data))?;
        Ok(Weight {
            name,
            buf,
            dtype: DType::F32,
            shape: shape.to_vec(),
        })
    }

    fn t(&self) -> Result<Tensor<'_>> {
        Tensor::new(self.name, &self.buf, self.dtype, &self.shape)
    }
}

struct DeviceLayer {
    qkv_w: Weight,
    qkv_b: Weight,
    o_w: Weight,
    o_b: Weight,
    ln1_g: Weight,
    ln1_b: Weight,
    i_w: Weight,
    i_b: Weight,
    out_w: Weight,
    out_b: Weight,
    ln2_g: Weight,
    ln2_b: Weight,
}

impl DeviceLayer {
    fn weights(&self) -> [&Weight; 12] {
        [
            &self.qkv_w,
            &self.qkv_b,
            &self.o_w,
            &self.o_b,
            &self.ln1_g,
            &self.ln1_b,
            &self.i_w,
            &self.i_b,
            &self.out_w,
            &self.out_b,
            &self.ln2_g,
            &self.ln2_b,
        ]
    }
}

struct DeviceEmbeddings {
    word: Weight,
    position: Weight,
    token_type: Weight,
    gamma: Weight,
    beta: Weight,
}

impl DeviceEmbeddings {
    fn tables(&self) -> Result<EmbedTables<'_>> {
        Ok(EmbedTables {
            word: self.word.t()?,
            position: self.position.t()?,
            token_type: self.token_type.t()?,
            gamma: self.gamma.t()?,
            beta: self.beta.t()?,
        })
    }
}

/// all-MiniLM-L6-v2 (any BERT encoder with mean pooling) on one device.
pub struct Encoder {
    device: Device,
    config: BertConfig,
    tokenizer: Tokenizer,
    exec: Box<dyn Exec>,
    emb: DeviceEmbeddings,
    layers: Vec<DeviceLayer>,
    /// Recorded on the upload lane after the last weight copy.
    ready: Event,
    /// Bit `i` is set once lane `i` has waited on `ready` and marked the weights as
    /// used by it. Set with `fetch_or` by the first forward on that lane; a race
    /// between two threads sharing a lane only repeats idempotent work.
    lanes_ready: std::sync::atomic::AtomicU64,
}

impl Encoder {
    /// Loads the model folder (`model.safetensors`, `tokenizer.json`, `config.json`)
    /// and uploads the weights to `device`.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Encoder> {
        let files = ModelFiles::locate(dir.as_ref())?;
        let config = BertConfig::from_file(&files.config)?;
        let weights = HostWeights::load_with_config(&files.weights, &config)?;
        let tokenizer = Tokenizer::from_file(&files.tokenizer)?;
        Encoder::from_parts(config, &weights, tokenizer, device)
    }

    /// Uploads `weights` to `device`.
    pub fn from_parts(
        config: BertConfig,
        weights: &HostWeights,
        tokenizer: Tokenizer,
        device: &Device,
    ) -> Result<Encoder> {
        let exec = exec::for_device(device)?;
        let lane = device.lease()?;
        let (h, inter) = (config.hidden_size, config.intermediate_size);
        let up = |name, t: &crate::HostTensor| Weight::upload(&lane, name, &t.data, &t.shape);
        let e = &weights.embeddings;
        let emb = DeviceEmbeddings {
            word: up("word_embeddings", &e.word)?,
            position: up("position_embeddings", &e.position)?,
            token_type: up("token_type_embeddings", &e.token_type)?,
            gamma: up("embeddings_ln_gamma", &e.ln_gamma)?,
            beta: up("embeddings_ln_beta", &e.ln_beta)?,
        };
        let mut layers = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            let qkv_w: Vec<f32> = [&l.q_w.data[..], &l.k_w.data, &l.v_w.data].concat();
            let qkv_b: Vec<f32> = [&l.q_b.data[..], &l.k_b.data, &l.v_b.data].concat();
            layers.push(DeviceLayer {
                qkv_w: Weight::upload(&lane, "qkv_w", &qkv_w, &[3 * h, h])?,
                qkv_b: Weight::upload(&lane, "qkv_b", &qkv_b, &[3 * h])?,
                o_w: up("attn_out_w", &l.o_w)?,
                o_b: up("attn_out_b", &l.o_b)?,
                ln1_g: up("attn_ln_gamma", &l.ln1_g)?,
                ln1_b: up("attn_ln_beta", &l.ln1_b)?,
                i_w: up("ffn_in_w", &l.i_w)?,
                i_b: up("ffn_in_b", &l.i_b)?,
                out_w: up("ffn_out_w", &l.out_w)?,
                out_b: up("ffn_out_b", &l.out_b)?,
                ln2_g: up("ffn_ln_gamma", &l.ln2_g)?,
                ln2_b: up("ffn_ln_beta", &l.ln2_b)?,
            });
            debug_assert_eq!(l.i_w.shape, [inter, h]);
        }
        let ready = lane.record()?;
        let lanes_ready = std::sync::atomic::AtomicU64::new(1u64 << lane.index());
        Ok(Encoder {
            device: device.clone(),
            config,
            tokenizer,
            exec,
            emb,
            layers,
            ready,
            lanes_ready,
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
    /// (f32, L2-normalized, row-major). Only the batch's real tokens are computed.
    pub fn forward(&self, lane: &Lease, tokens: &Tokens) -> Result<Vec<f32>> {
        self.check_input(lane, tokens)?;
        let c = &self.config;
        let (batch, n, h) = (tokens.batch(), tokens.total_tokens(), c.hidden_size);
        if n == 0 {
            // No tokens at all (an empty batch, or only empty sequences): every
            // mean is over nothing, zero, and stays zero when normalized.
            return Ok(vec![0.0; batch * h]);
        }
        self.prepare_lane(lane)?;
        let (inter, eps, heads) = (
            c.intermediate_size,
            c.layer_norm_eps as f32,
            c.num_attention_heads,
        );
        let max_len = tokens.max_len();
        let upload = |data: &[u32]| -> Result<Buffer> {
            let buf = lane.alloc(std::mem::size_of_val(data))?;
            lane.upload(&buf, bytemuck::cast_slice(data))?;
            Ok(buf)
        };
        let ids = upload(tokens.ids())?;
        let types = upload(tokens.type_ids())?;
        let offsets = upload(tokens.offsets())?;
        let ids = Tensor::new("ids", &ids, DType::U32, &[n])?;
        let types = Tensor::new("type_ids", &types, DType::U32, &[n])?;
        let offsets = Tensor::new("offsets", &offsets, DType::U32, &[batch + 1])?;

        let act = |cols: usize| lane.alloc(n * cols * 4);

        let ex = &*self.exec;
        let mut x = act(h)?;
        let tables = self.emb.tables()?;
        ex.embed_ln(
            lane,
            ids,
            types,
            offsets,
            &tables,
            eps,
            act_out("x", n, &mut x, h)?,
        )?;
        for l in &self.layers {
            let mut qkv = act(3 * h)?;
            let x_t = act_in("x", n, &x, h)?;
            ex.linear(
                lane,
                x_t,
                l.qkv_w.t()?,
                l.qkv_b.t()?,
                false,
                act_out("qkv", n, &mut qkv, 3 * h)?,
            )?;
            let mut ctx = act(h)?;
            ex.attention(
                lane,
                act_in("qkv", n, &qkv, 3 * h)?,
                offsets,
                max_len,
                heads,
                act_out("ctx", n, &mut ctx, h)?,
            )?;
            drop(qkv);
            let mut attn = act(h)?;
            ex.linear(
                lane,
                act_in("ctx", n, &ctx, h)?,
                l.o_w.t()?,
                l.o_b.t()?,
                false,
                act_out("attn", n, &mut attn, h)?,
            )?;
            drop(ctx);
            let mut h1 = act(h)?;
            let (g, b) = (l.ln1_g.t()?, l.ln1_b.t()?);
            ex.add_layer_norm(
                lane,
                act_in("attn", n, &attn, h)?,
                x_t,
                g,
                b,
                eps,
                act_out("h1", n, &mut h1, h)?,
            )?;
            drop(attn);
            let mut up = act(inter)?;
            ex.linear(
                lane,
                act_in("h1", n, &h1, h)?,
                l.i_w.t()?,
                l.i_b.t()?,
                true,
                act_out("up", n, &mut up, inter)?,
            )?;
            let mut down = act(h)?;
            ex.linear(
                lane,
                act_in("up", n, &up, inter)?,
                l.out_w.t()?,
                l.out_b.t()?,
                false,
                act_out("down", n, &mut down, h)?,
            )?;
            drop(up);
            let mut h2 = act(h)?;
            let (g, b) = (l.ln2_g.t()?, l.ln2_b.t()?);
            ex.add_layer_norm(
                lane,
                act_in("down", n, &down, h)?,
                act_in("h1", n, &h1, h)?,
                g,
                b,
                eps,
                act_out("h2", n, &mut h2, h)?,
            )?;
            // Freed buffers return to this lane's cache: later work on the lane is
            // ordered after the ops above, so reuse is safe without a wait.
            x = h2;
        }
        let mut pooled = lane.alloc(batch * h * 4)?;
        let pooled_t = TensorMut::new("pooled", &mut pooled, DType::F32, &[batch, h])?;
        ex.pool_normalize(lane, act_in("x", n, &x, h)?, offsets, pooled_t)?;
        let mut out = vec![0f32; batch * h];
        lane.download(&pooled, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }

    /// First use of a lane: wait for the weights' upload and mark them used by it.
    fn prepare_lane(&self, lane: &Lease) -> Result<()> {
        use std::sync::atomic::Ordering;
        let bit = 1u64 << lane.index();
        if self.lanes_ready.load(Ordering::Acquire) & bit != 0 {
            return Ok(());
        }
        lane.wait(&self.ready)?;
        let e = &self.emb;
        for w in [&e.word, &e.position, &e.token_type, &e.gamma, &e.beta] {
            w.buf.record_use(lane.index());
        }
        for l in &self.layers {
            for w in l.weights() {
                w.buf.record_use(lane.index());
            }
        }
        self.lanes_ready.fetch_or(bit, Ordering::AcqRel);
        Ok(())
    }
}

/// An f32 activation `[rows, cols]` as an op's input.
fn act_in<'a>(name: &'static str, rows: usize, buf: &'a Buffer, cols: usize) -> Result<Tensor<'a>> {
    Tensor::new(name, buf, DType::F32, &[rows, cols])
}

/// An f32 activation `[rows, cols]` as an op's output.
fn act_out<'a>(
    name: &'static str,
    rows: usize,
    buf: &'a mut Buffer,
    cols: usize,
) -> Result<TensorMut<'a>> {
    TensorMut::new(name, buf, DType::F32, &[rows, cols])
}
