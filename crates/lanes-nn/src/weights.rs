//! Host-side (CPU memory) weights of the encoder, loaded from safetensors.
//!
//! [`HostWeights::load`] reads `model.safetensors` and `config.json`, checks
//! every tensor's dtype and shape against the [`BertConfig`], converts F16
//! and BF16 to f32, and hands back typed per-layer structs. Tensor names may
//! carry a `bert.` prefix or not; `embeddings.position_ids` and the `pooler.*`
//! tensors are ignored, any other unknown tensor is an error (it usually means
//! the file and `config.json` disagree about the model).
//!
//! Linear weights keep the torch layout `[out, in]`, row-major.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::config::BertConfig;
use crate::error::{NnError, Result};
use crate::files::{ModelFiles, CONFIG_FILE};

/// One named f32 tensor in host memory, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Canonical name, without any `bert.` prefix (e.g. `encoder.layer.0.attention.self.query.weight`).
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Builds a tensor, checking that `data` holds exactly `shape`'s element count.
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let name = name.into();
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(NnError::ShapeMismatch {
                name,
                expected: shape,
                actual: vec![data.len()],
            });
        }
        Ok(Self { name, shape, data })
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// The embedding tables and the LayerNorm that follows them.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingWeights {
    /// `[vocab_size, hidden]`.
    pub word: HostTensor,
    /// `[max_position_embeddings, hidden]`.
    pub position: HostTensor,
    /// `[type_vocab_size, hidden]`.
    pub token_type: HostTensor,
    /// LayerNorm scale, `[hidden]`.
    pub ln_gamma: HostTensor,
    /// LayerNorm shift, `[hidden]`.
    pub ln_beta: HostTensor,
}

/// One transformer layer. `*_w` are `[out, in]`, `*_b` are `[out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// Query projection `[hidden, hidden]`.
    pub q_w: HostTensor,
    /// Query bias `[hidden]`.
    pub q_b: HostTensor,
    /// Key projection `[hidden, hidden]`.
    pub k_w: HostTensor,
    /// Key bias `[hidden]`.
    pub k_b: HostTensor,
    /// Value projection `[hidden, hidden]`.
    pub v_w: HostTensor,
    /// Value bias `[hidden]`.
    pub v_b: HostTensor,
    /// Attention output projection `[hidden, hidden]`.
    pub o_w: HostTensor,
    /// Attention output bias `[hidden]`.
    pub o_b: HostTensor,
    /// LayerNorm after attention, scale `[hidden]`.
    pub ln1_g: HostTensor,
    /// LayerNorm after attention, shift `[hidden]`.
    pub ln1_b: HostTensor,
    /// Feed-forward up projection `[intermediate, hidden]`.
    pub i_w: HostTensor,
    /// Feed-forward up bias `[intermediate]`.
    pub i_b: HostTensor,
    /// Feed-forward down projection `[hidden, intermediate]`.
    pub out_w: HostTensor,
    /// Feed-forward down bias `[hidden]`.
    pub out_b: HostTensor,
    /// LayerNorm after the feed-forward, scale `[hidden]`.
    pub ln2_g: HostTensor,
    /// LayerNorm after the feed-forward, shift `[hidden]`.
    pub ln2_b: HostTensor,
}

impl LayerWeights {
    /// The 16 tensors in canonical order (the order of [`layer_tensor_specs`]).
    pub fn tensors(&self) -> [&HostTensor; 16] {
        [
            &self.q_w,
            &self.q_b,
            &self.k_w,
            &self.k_b,
            &self.v_w,
            &self.v_b,
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

/// All weights of the encoder, f32 in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostWeights {
    /// The config the shapes were checked against.
    pub config: BertConfig,
    /// Embedding tables and their LayerNorm.
    pub embeddings: EmbeddingWeights,
    /// `config.num_hidden_layers` layers, first to last.
    pub layers: Vec<LayerWeights>,
}

/// Dtype of the tensors written by [`HostWeights::to_safetensors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDtype {
    /// 32-bit float (lossless).
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

/// Names and shapes of the embedding tensors, in canonical order.
pub fn embedding_tensor_specs(cfg: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![cfg.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![cfg.max_position_embeddings, h],
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![cfg.type_vocab_size, h],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ]
}

/// Names and shapes of layer `i`'s 16 tensors, in the field order of [`LayerWeights`].
pub fn layer_tensor_specs(cfg: &BertConfig, i: usize) -> Vec<(String, Vec<usize>)> {
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let p = format!("encoder.layer.{i}.");
    let lin = |name: &str, out: usize, inp: usize| {
        [
            (format!("{p}{name}.weight"), vec![out, inp]),
            (format!("{p}{name}.bias"), vec![out]),
        ]
    };
    let ln = |name: &str| {
        [
            (format!("{p}{name}.weight"), vec![h]),
            (format!("{p}{name}.bias"), vec![h]),
        ]
    };
    [
        lin("attention.self.query", h, h),
        lin("attention.self.key", h, h),
        lin("attention.self.value", h, h),
        lin("attention.output.dense", h, h),
        ln("attention.output.LayerNorm"),
        lin("intermediate.dense", f, h),
        lin("output.dense", h, f),
        ln("output.LayerNorm"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Names and shapes of every tensor the encoder needs, in canonical order.
pub fn all_tensor_specs(cfg: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let mut specs = embedding_tensor_specs(cfg);
    for i in 0..cfg.num_hidden_layers {
        specs.extend(layer_tensor_specs(cfg, i));
    }
    specs
}

/// `t` must be named `name`, have shape `shape` and hold that many values.
fn check_tensor(t: &HostTensor, name: &str, shape: &[usize]) -> Result<()> {
    if t.name != name {
        return Err(NnError::InvalidInput(format!(
            "tensor {} found where {name} belongs",
            t.name
        )));
    }
    if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
        return Err(NnError::ShapeMismatch {
            name: name.to_string(),
            expected: shape.to_vec(),
            actual: if t.shape == shape {
                vec![t.data.len()]
            } else {
                t.shape.clone()
            },
        });
    }
    Ok(())
}

/// Tensors present in checkpoints that the encoder does not use.
fn is_ignored(name: &str) -> bool {
    name == "embeddings.position_ids" || name.starts_with("pooler.")
}

impl HostWeights {
    /// Loads weights from a model folder (`model.safetensors` + `config.json`)
    /// or from a safetensors file (with `config.json` next to it). A path
    /// that does not exist is taken for a missing folder unless it ends in
    /// `.safetensors`.
    pub fn load(dir_or_file: impl AsRef<Path>) -> Result<Self> {
        let path = dir_or_file.as_ref();
        let is_file_path = path.is_file()
            || (!path.exists() && path.extension().is_some_and(|e| e == "safetensors"));
        let (weights, config) = if is_file_path {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            ModelFiles::require_dir(dir)?;
            if !path.is_file() {
                return Err(NnError::ModelFileMissing {
                    dir: dir.to_path_buf(),
                    file: path
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into()),
                });
            }
            (
                path.to_path_buf(),
                ModelFiles::require_file(dir, CONFIG_FILE)?,
            )
        } else {
            let files = ModelFiles::locate_weights(path)?;
            (files.weights, files.config)
        };
        let cfg = BertConfig::from_file(&config)?;
        Self::load_with_config(&weights, &cfg)
    }

    /// Loads a safetensors file, checking it against an explicit config.
    pub fn load_with_config(file: impl AsRef<Path>, cfg: &BertConfig) -> Result<Self> {
        let file = file.as_ref();
        let bytes = std::fs::read(file).map_err(|source| NnError::Io {
            path: file.to_path_buf(),
            source,
        })?;
        Self::from_safetensors_bytes(&bytes, cfg, file)
    }

    /// Parses safetensors bytes; `origin` is only used in error messages.
    pub fn from_safetensors_bytes(bytes: &[u8], cfg: &BertConfig, origin: &Path) -> Result<Self> {
        cfg.validate()?;
        let st = SafeTensors::deserialize(bytes).map_err(|source| NnError::Safetensors {
            path: origin.to_path_buf(),
            source,
        })?;
        let mut reader = Reader::new(&st, origin)?;
        let mut tensors = reader.take_all(&embedding_tensor_specs(cfg))?;
        for i in 0..cfg.num_hidden_layers {
            tensors.extend(reader.take_all(&layer_tensor_specs(cfg, i))?);
        }
        reader.finish()?;
        Self::from_tensors(cfg, tensors)
    }

    /// Assembles weights from tensors in canonical order (that of
    /// [`tensors`](Self::tensors)), checking names and shapes against `cfg`.
    pub fn from_tensors(cfg: &BertConfig, tensors: Vec<HostTensor>) -> Result<Self> {
        cfg.validate()?;
        let specs = all_tensor_specs(cfg);
        if tensors.len() != specs.len() {
            return Err(NnError::InvalidInput(format!(
                "{} tensors given, the config needs {}",
                tensors.len(),
                specs.len()
            )));
        }
        for (t, (name, shape)) in tensors.iter().zip(&specs) {
            check_tensor(t, name, shape)?;
        }
        let mut it = tensors.into_iter();
        let mut next = || it.next().ok_or_else(|| internal("tensor count"));
        let embeddings = EmbeddingWeights {
            word: next()?,
            position: next()?,
            token_type: next()?,
            ln_gamma: next()?,
            ln_beta: next()?,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| layer_from_vec((0..16).map(|_| next()).collect::<Result<_>>()?))
            .collect::<Result<_>>()?;
        Ok(Self {
            config: cfg.clone(),
            embeddings,
            layers,
        })
    }

    /// Deterministic pseudo-random weights for `cfg` (values in ±0.1, LayerNorm
    /// scales near 1): a stand-in model for tests that need no download.
    pub fn synthetic(cfg: &BertConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 0.2 - 0.1
        };
        let tensors = all_tensor_specs(cfg)
            .into_iter()
            .map(|(name, shape)| {
                let n = shape.iter().product();
                let gamma = name.ends_with("LayerNorm.weight");
                let data = (0..n)
                    .map(|_| next() + if gamma { 1.0 } else { 0.0 })
                    .collect();
                HostTensor::new(name, shape, data)
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_tensors(cfg, tensors)
    }

    /// Re-checks every tensor's name, shape and length against `self.config`
    /// (the fields are public, so they may have been changed since loading).
    pub fn check(&self) -> Result<()> {
        let specs = all_tensor_specs(&self.config);
        let tensors = self.tensors();
        if tensors.len() != specs.len() {
            return Err(NnError::InvalidInput(format!(
                "weights have {} layers, config says {}",
                self.layers.len(),
                self.config.num_hidden_layers
            )));
        }
        for (t, (name, shape)) in tensors.into_iter().zip(&specs) {
            check_tensor(t, name, shape)?;
        }
        Ok(())
    }

    /// Every tensor in canonical order: embeddings, then each layer's 16.
    pub fn tensors(&self) -> Vec<&HostTensor> {
        let e = &self.embeddings;
        let mut all = vec![&e.word, &e.position, &e.token_type, &e.ln_gamma, &e.ln_beta];
        for layer in &self.layers {
            all.extend(layer.tensors());
        }
        all
    }

    /// Serializes the weights as a safetensors file image (canonical names, no prefix).
    pub fn to_safetensors(&self, dtype: StoreDtype) -> Result<Vec<u8>> {
        let (st_dtype, buffers): (Dtype, Vec<Vec<u8>>) = match dtype {
            StoreDtype::F32 => (Dtype::F32, self.encode_all(|x| x.to_le_bytes().to_vec())),
            StoreDtype::F16 => (
                Dtype::F16,
                self.encode_all(|x| half::f16::from_f32(x).to_le_bytes().to_vec()),
            ),
            StoreDtype::BF16 => (
                Dtype::BF16,
                self.encode_all(|x| half::bf16::from_f32(x).to_le_bytes().to_vec()),
            ),
        };
        let ser_err = |source| NnError::Safetensors {
            path: PathBuf::from("<in-memory weights>"),
            source,
        };
        let mut views = Vec::with_capacity(buffers.len());
        for (t, buf) in self.tensors().into_iter().zip(&buffers) {
            let view = safetensors::tensor::TensorView::new(st_dtype, t.shape.clone(), buf)
                .map_err(ser_err)?;
            views.push((t.name.clone(), view));
        }
        safetensors::serialize(views, &None).map_err(ser_err)
    }

    /// Writes [`to_safetensors`](Self::to_safetensors) to `path`.
    pub fn save(&self, path: impl AsRef<Path>, dtype: StoreDtype) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_safetensors(dtype)?;
        std::fs::write(path, bytes).map_err(|source| NnError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    fn encode_all(&self, f: impl Fn(f32) -> Vec<u8>) -> Vec<Vec<u8>> {
        self.tensors()
            .iter()
            .map(|t| t.data.iter().flat_map(|&x| f(x)).collect())
            .collect()
    }
}

fn internal(what: &str) -> NnError {
    NnError::InvalidInput(format!("internal: {what}"))
}

/// Moves 16 tensors (in [`layer_tensor_specs`] order) into a [`LayerWeights`].
fn layer_from_vec(t: Vec<HostTensor>) -> Result<LayerWeights> {
    let arr: [HostTensor; 16] = t.try_into().map_err(|_| internal("layer tensor count"))?;
    let [q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln1_g, ln1_b, i_w, i_b, out_w, out_b, ln2_g, ln2_b] =
        arr;
    Ok(LayerWeights {
        q_w,
        q_b,
        k_w,
        k_b,
        v_w,
        v_b,
        o_w,
        o_b,
        ln1_g,
        ln1_b,
        i_w,
        i_b,
        out_w,
        out_b,
        ln2_g,
        ln2_b,
    })
}

/// Looks tensors up by canonical name and tracks which stored ones were used.
struct Reader<'a, 'data> {
    st: &'a SafeTensors<'data>,
    origin: &'a Path,
    /// canonical name → stored name, for every stored tensor not yet taken.
    pending: HashMap<String, String>,
}

impl<'a, 'data> Reader<'a, 'data> {
    fn new(st: &'a SafeTensors<'data>, origin: &'a Path) -> Result<Self> {
        let mut pending = HashMap::new();
        for stored in st.names() {
            let canonical = stored.strip_prefix("bert.").unwrap_or(stored);
            if is_ignored(canonical) {
                continue;
            }
            if pending
                .insert(canonical.to_string(), stored.clone())
                .is_some()
            {
                // Both `x` and `bert.x` are present: ambiguous.
                return Err(NnError::UnexpectedTensor {
                    path: origin.to_path_buf(),
                    name: stored.clone(),
                });
            }
        }
        Ok(Self {
            st,
            origin,
            pending,
        })
    }

    fn take_all(&mut self, specs: &[(String, Vec<usize>)]) -> Result<Vec<HostTensor>> {
        specs.iter().map(|(n, s)| self.take(n, s)).collect()
    }

    fn take(&mut self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let stored = self
            .pending
            .remove(name)
            .ok_or_else(|| NnError::MissingTensor {
                path: self.origin.to_path_buf(),
                name: name.to_string(),
            })?;
        let view = self
            .st
            .tensor(&stored)
            .map_err(|source| NnError::Safetensors {
                path: self.origin.to_path_buf(),
                source,
            })?;
        let actual = view.shape().to_vec();
        if actual != expected {
            return Err(NnError::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                actual,
            });
        }
        let data = to_f32(name, view.dtype(), view.data())?;
        HostTensor::new(name, actual, data)
    }

    /// Fails on the first stored tensor that no spec asked for.
    fn finish(self) -> Result<()> {
        let mut left: Vec<_> = self.pending.into_values().collect();
        left.sort();
        match left.into_iter().next() {
            Some(name) => Err(NnError::UnexpectedTensor {
                path: self.origin.to_path_buf(),
                name,
            }),
            None => Ok(()),
        }
    }
}

/// Decodes little-endian F32, F16 or BF16 bytes to f32.
fn to_f32(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(NnError::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    })
}
