//! The encoder's weights on a device, converted once to the forward's dtype.
//!
//! Per the kernels' dtype table: the GEMM weight matrices, their biases and the
//! three embedding tables are stored in the activation dtype `T` (f32, f16 or
//! bf16, converted on the host with the `half` crate: cuBLASLt's fused bias
//! epilogue takes a 16-bit output's bias only in that type); LayerNorm parameters
//! stay f32. Each weight knows its dtype and shape, so it hands ops a [`Tensor`]
//! that says so.

use lanes::{Buffer, Lease};

use crate::config::BertConfig;
use crate::error::Result;
use crate::exec::EmbedTables;
use crate::tensor::{DType, Tensor};
use crate::weights::{HostTensor, HostWeights};

/// A weight on the device: its buffer, dtype and shape.
pub(crate) struct Weight {
    name: &'static str,
    buf: Buffer,
    dtype: DType,
    shape: Vec<usize>,
}

impl Weight {
    /// Uploads f32 `data` of `shape` on `lane`, converted to `dtype` (a float type).
    fn upload(
        lane: &Lease,
        name: &'static str,
        data: &[f32],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Weight> {
        let bytes: Vec<u8> = match dtype {
            DType::F16 => {
                let v: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
                bytemuck::cast_slice(&v).to_vec()
            }
            DType::BF16 => {
                let v: Vec<half::bf16> = data.iter().map(|&x| half::bf16::from_f32(x)).collect();
                bytemuck::cast_slice(&v).to_vec()
            }
            DType::F32 | DType::U32 => bytemuck::cast_slice(data).to_vec(),
        };
        let buf = lane.alloc(bytes.len())?;
        lane.upload(&buf, &bytes)?;
        Ok(Weight {
            name,
            buf,
            dtype,
            shape: shape.to_vec(),
        })
    }

    /// A host tensor, uploaded as `dtype`.
    fn of(lane: &Lease, name: &'static str, t: &HostTensor, dtype: DType) -> Result<Weight> {
        Weight::upload(lane, name, &t.data, &t.shape, dtype)
    }

    /// The weight as an op's input.
    pub(crate) fn t(&self) -> Result<Tensor<'_>> {
        Tensor::new(self.name, &self.buf, self.dtype, &self.shape)
    }
}

/// One transformer layer's weights (q, k and v fused into one projection).
pub(crate) struct DeviceLayer {
    pub(crate) qkv_w: Weight,
    pub(crate) qkv_b: Weight,
    pub(crate) o_w: Weight,
    pub(crate) o_b: Weight,
    pub(crate) ln1_g: Weight,
    pub(crate) ln1_b: Weight,
    pub(crate) i_w: Weight,
    pub(crate) i_b: Weight,
    pub(crate) out_w: Weight,
    pub(crate) out_b: Weight,
    pub(crate) ln2_g: Weight,
    pub(crate) ln2_b: Weight,
}

impl DeviceLayer {
    fn all(&self) -> [&Weight; 12] {
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

/// The embedding tables and their LayerNorm.
pub(crate) struct DeviceEmbeddings {
    word: Weight,
    position: Weight,
    token_type: Weight,
    gamma: Weight,
    beta: Weight,
}

impl DeviceEmbeddings {
    /// The tables as [`crate::exec::Exec::embed_ln`] takes them.
    pub(crate) fn tables(&self) -> Result<EmbedTables<'_>> {
        Ok(EmbedTables {
            word: self.word.t()?,
            position: self.position.t()?,
            token_type: self.token_type.t()?,
            gamma: self.gamma.t()?,
            beta: self.beta.t()?,
        })
    }

    fn all(&self) -> [&Weight; 5] {
        [
            &self.word,
            &self.position,
            &self.token_type,
            &self.gamma,
            &self.beta,
        ]
    }
}

/// Every weight of the encoder on one device.
pub(crate) struct DeviceWeights {
    pub(crate) emb: DeviceEmbeddings,
    pub(crate) layers: Vec<DeviceLayer>,
    /// The activation dtype the matrices and tables are stored in.
    pub(crate) dtype: DType,
}

impl DeviceWeights {
    /// Uploads `weights` on `lane`, matrices and tables as `dtype`.
    pub(crate) fn upload(
        lane: &Lease,
        config: &BertConfig,
        weights: &HostWeights,
        dtype: DType,
    ) -> Result<DeviceWeights> {
        let h = config.hidden_size;
        let f32 = DType::F32;
        let e = &weights.embeddings;
        let emb = DeviceEmbeddings {
            word: Weight::of(lane, "word_embeddings", &e.word, dtype)?,
            position: Weight::of(lane, "position_embeddings", &e.position, dtype)?,
            token_type: Weight::of(lane, "token_type_embeddings", &e.token_type, dtype)?,
            gamma: Weight::of(lane, "embeddings_ln_gamma", &e.ln_gamma, f32)?,
            beta: Weight::of(lane, "embeddings_ln_beta", &e.ln_beta, f32)?,
        };
        let mut layers = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            let qkv_w: Vec<f32> = [&l.q_w.data[..], &l.k_w.data, &l.v_w.data].concat();
            let qkv_b: Vec<f32> = [&l.q_b.data[..], &l.k_b.data, &l.v_b.data].concat();
            layers.push(DeviceLayer {
                qkv_w: Weight::upload(lane, "qkv_w", &qkv_w, &[3 * h, h], dtype)?,
                qkv_b: Weight::upload(lane, "qkv_b", &qkv_b, &[3 * h], dtype)?,
                o_w: Weight::of(lane, "attn_out_w", &l.o_w, dtype)?,
                o_b: Weight::of(lane, "attn_out_b", &l.o_b, dtype)?,
                ln1_g: Weight::of(lane, "attn_ln_gamma", &l.ln1_g, f32)?,
                ln1_b: Weight::of(lane, "attn_ln_beta", &l.ln1_b, f32)?,
                i_w: Weight::of(lane, "ffn_in_w", &l.i_w, dtype)?,
                i_b: Weight::of(lane, "ffn_in_b", &l.i_b, dtype)?,
                out_w: Weight::of(lane, "ffn_out_w", &l.out_w, dtype)?,
                out_b: Weight::of(lane, "ffn_out_b", &l.out_b, dtype)?,
                ln2_g: Weight::of(lane, "ffn_ln_gamma", &l.ln2_g, f32)?,
                ln2_b: Weight::of(lane, "ffn_ln_beta", &l.ln2_b, f32)?,
            });
        }
        Ok(DeviceWeights { emb, layers, dtype })
    }

    /// Marks every weight buffer as used by `lane` (its free then waits for it).
    pub(crate) fn record_use(&self, lane: usize) {
        let layers = self.layers.iter().flat_map(|l| l.all());
        for w in self.emb.all().into_iter().chain(layers) {
            w.buf.record_use(lane);
        }
    }
}
