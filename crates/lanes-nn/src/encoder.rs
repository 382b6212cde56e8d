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

use crate::exec::{self, Dims, EmbedTables, Exec};
use crate::weights::HostWeights;
use crate::{BertConfig, Encoded, ModelFiles, NnError, Result, Tokenizer};

/// One text's embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    /// Tokens the model saw (with [CLS] and [SEP], after truncation).
    pub tokens: usize,
    /// The L2-normalized sentence embedding.
    pub vector: Vec<f32>,
}

struct DeviceLayer {
    qkv_w: Buffer,
    qkv_b: Buffer,
    o_w: Buffer,
    o_b: Buffer,
    ln1_g: Buffer,
    ln1_b: Buffer,
    i_w: Buffer,
    i_b: Buffer,
    out_w: Buffer,
    out_b: Buffer,
    ln2_g: Buffer,
    ln2_b: Buffer,
}

impl DeviceLayer {
    fn buffers(&self) -> [&Buffer; 12] {
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
    word: Buffer,
    position: Buffer,
    token_type: Buffer,
    gamma: Buffer,
    beta: Buffer,
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
        let up = |data: &[f32]| -> Result<Buffer> {
            let buf = lane.alloc(data.len() * 4)?;
            lane.upload(&buf, bytes_of(data))?;
            Ok(buf)
        };
        let e = &weights.embeddings;
        let emb = DeviceEmbeddings {
            word: up(&e.word.data)?,
            position: up(&e.position.data)?,
            token_type: up(&e.token_type.data)?,
            gamma: up(&e.ln_gamma.data)?,
            beta: up(&e.ln_beta.data)?,
        };
        let mut layers = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            let qkv_w: Vec<f32> = [&l.q_w.data[..], &l.k_w.data, &l.v_w.data].concat();
            let qkv_b: Vec<f32> = [&l.q_b.data[..], &l.k_b.data, &l.v_b.data].concat();
            layers.push(DeviceLayer {
                qkv_w: up(&qkv_w)?,
                qkv_b: up(&qkv_b)?,
                o_w: up(&l.o_w.data)?,
                o_b: up(&l.o_b.data)?,
                ln1_g: up(&l.ln1_g.data)?,
                ln1_b: up(&l.ln1_b.data)?,
                i_w: up(&l.i_w.data)?,
                i_b: up(&l.i_b.data)?,
                out_w: up(&l.out_w.data)?,
                out_b: up(&l.out_b.data)?,
                ln2_g: up(&l.ln2_g.data)?,
                ln2_b: up(&l.ln2_b.data)?,
            });
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

    /// Tokenizes and embeds `texts` as one padded batch on this thread's lane.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>> {
        let lane = self.device.current_lane()?;
        self.embed_on(&lane, texts)
    }

    /// Tokenizes and embeds `texts` as one padded batch on `lane`.
    pub fn embed_on(&self, lane: &Lease, texts: &[&str]) -> Result<Vec<Embedding>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self.tokenizer.encode_batch(texts)?;
        let flat = self.forward(lane, &enc)?;
        let h = self.config.hidden_size;
        Ok(flat
            .chunks_exact(h)
            .zip(&enc.lengths)
            .map(|(v, &tokens)| Embedding {
                tokens,
                vector: v.to_vec(),
            })
            .collect())
    }

    /// Runs the encoder on a tokenized batch; returns `batch × hidden` embeddings.
    pub fn forward(&self, lane: &Lease, enc: &Encoded) -> Result<Vec<f32>> {
        enc.check()?;
        let lane_device = lane.device();
        if !lane_device.same_as(&self.device) {
            return Err(NnError::InvalidInput(format!(
                "a lane of {} was used with a model on {}",
                lane_device.name(),
                self.device.name()
            )));
        }
        let c = &self.config;
        if let Some(&bad) = enc.ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(NnError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary ({})",
                c.vocab_size
            )));
        }
        if let Some(&bad) = enc
            .type_ids
            .iter()
            .find(|&&t| t as usize >= c.type_vocab_size)
        {
            return Err(NnError::InvalidInput(format!(
                "token type {bad} is outside 0..{}",
                c.type_vocab_size
            )));
        }
        if enc.seq > c.max_position_embeddings {
            return Err(NnError::InvalidInput(format!(
                "sequence of {} tokens exceeds the model's {} positions",
                enc.seq, c.max_position_embeddings
            )));
        }
        self.prepare_lane(lane)?;
        let d = Dims {
            batch: enc.batch,
            seq: enc.seq,
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
        };
        let (rows, h, inter, eps) = (
            d.rows(),
            d.hidden,
            c.intermediate_size,
            c.layer_norm_eps as f32,
        );
        let f32s = |n: usize| lane.alloc(n * 4);

        let ids = lane.alloc(rows * 4)?;
        lane.upload(&ids, bytes_of_u32(&enc.ids))?;
        let types = lane.alloc(rows * 4)?;
        lane.upload(&types, bytes_of_u32(&enc.type_ids))?;
        let mask = f32s(rows)?;
        lane.upload(&mask, bytes_of(&enc.mask))?;

        let ex = &*self.exec;
        let tables = EmbedTables {
            word: self.emb.word.ptr(),
            position: self.emb.position.ptr(),
            token_type: self.emb.token_type.ptr(),
            gamma: self.emb.gamma.ptr(),
            beta: self.emb.beta.ptr(),
        };
        let mut x = f32s(rows * h)?;
        ex.embed_ln(lane, d, ids.ptr(), types.ptr(), &tables, eps, x.ptr())?;
        for l in &self.layers {
            let qkv = f32s(rows * 3 * h)?;
            ex.linear(
                lane,
                rows,
                h,
                3 * h,
                x.ptr(),
                l.qkv_w.ptr(),
                l.qkv_b.ptr(),
                false,
                qkv.ptr(),
            )?;
            let ctx = f32s(rows * h)?;
            ex.attention(lane, d, qkv.ptr(), mask.ptr(), ctx.ptr())?;
            drop(qkv);
            let attn = f32s(rows * h)?;
            ex.linear(
                lane,
                rows,
                h,
                h,
                ctx.ptr(),
                l.o_w.ptr(),
                l.o_b.ptr(),
                false,
                attn.ptr(),
            )?;
            drop(ctx);
            let h1 = f32s(rows * h)?;
            ex.add_layer_norm(
                lane,
                rows,
                h,
                attn.ptr(),
                x.ptr(),
                l.ln1_g.ptr(),
                l.ln1_b.ptr(),
                eps,
                h1.ptr(),
            )?;
            drop(attn);
            let up = f32s(rows * inter)?;
            ex.linear(
                lane,
                rows,
                h,
                inter,
                h1.ptr(),
                l.i_w.ptr(),
                l.i_b.ptr(),
                true,
                up.ptr(),
            )?;
            let down = f32s(rows * h)?;
            ex.linear(
                lane,
                rows,
                inter,
                h,
                up.ptr(),
                l.out_w.ptr(),
                l.out_b.ptr(),
                false,
                down.ptr(),
            )?;
            drop(up);
            let h2 = f32s(rows * h)?;
            ex.add_layer_norm(
                lane,
                rows,
                h,
                down.ptr(),
                h1.ptr(),
                l.ln2_g.ptr(),
                l.ln2_b.ptr(),
                eps,
                h2.ptr(),
            )?;
            // Freed buffers return to this lane's cache: later work on the lane is
            // ordered after the ops above, so reuse is safe without a wait.
            x = h2;
        }
        let pooled = f32s(enc.batch * h)?;
        ex.pool_normalize(lane, d, x.ptr(), mask.ptr(), pooled.ptr())?;
        let mut out = vec![0f32; enc.batch * h];
        lane.download(&pooled, bytes_of_mut(&mut out))?;
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
        for b in [&e.word, &e.position, &e.token_type, &e.gamma, &e.beta] {
            b.record_use(lane.index());
        }
        for l in &self.layers {
            for b in l.buffers() {
                b.record_use(lane.index());
            }
        }
        self.lanes_ready.fetch_or(bit, Ordering::AcqRel);
        Ok(())
    }
}

fn bytes_of(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern of it is a valid u8 slice.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn bytes_of_u32(v: &[u32]) -> &[u8] {
    // SAFETY: as for `bytes_of`.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn bytes_of_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: every byte pattern is a valid f32, so writing bytes cannot create an
    // invalid value.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}
