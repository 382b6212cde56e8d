//! `BertConfig`: the hyper-parameters read from a Hugging Face `config.json`.
//!
//! Only the fields the encoder needs are read; the rest of the file is
//! ignored. Every field is checked by name, so a bad file produces an error
//! such as ``bad config field `num_attention_heads`: hidden_size 384 is not
//! divisible by 5`` rather than a panic later in the forward pass.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{NnError, Result};

/// Hyper-parameters of a BERT encoder (all-MiniLM-L6-v2: 384 hidden, 6
/// layers, 12 heads, 1536 intermediate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; divides `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Rows of the position-embedding table: the longest sequence the model takes.
    pub max_position_embeddings: usize,
    /// Rows of the token-type (segment) embedding table.
    pub type_vocab_size: usize,
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward layer; only `"gelu"` (exact erf GELU) is supported.
    pub hidden_act: String,
}

impl BertConfig {
    /// The all-MiniLM-L6-v2 configuration, for tests and tools that build
    /// weights without a `config.json`.
    pub fn minilm_l6() -> Self {
        Self {
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            vocab_size: 30522,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".to_string(),
        }
    }

    /// Reads and validates `config.json` (or any file with the same fields).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| NnError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| NnError::ConfigParse {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&value)
    }

    /// Builds a config from an already-parsed JSON object, checking every
    /// field by name, then [`validate`](Self::validate)s it.
    pub fn from_json(value: &Value) -> Result<Self> {
        if !value.is_object() {
            return Err(NnError::ConfigInvalid {
                field: "(root)",
                reason: "config must be a JSON object".to_string(),
            });
        }
        if let Some(kind) = value.get("position_embedding_type") {
            if kind.as_str() != Some("absolute") {
                return Err(NnError::ConfigInvalid {
                    field: "position_embedding_type",
                    reason: format!("only \"absolute\" is supported, found {kind}"),
                });
            }
        }
        let cfg = Self {
            hidden_size: usize_field(value, "hidden_size")?,
            num_hidden_layers: usize_field(value, "num_hidden_layers")?,
            num_attention_heads: usize_field(value, "num_attention_heads")?,
            intermediate_size: usize_field(value, "intermediate_size")?,
            max_position_embeddings: usize_field(value, "max_position_embeddings")?,
            type_vocab_size: usize_field(value, "type_vocab_size")?,
            vocab_size: usize_field(value, "vocab_size")?,
            layer_norm_eps: f64_field(value, "layer_norm_eps")?,
            hidden_act: str_field(value, "hidden_act")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the values describe a model this crate can run.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
            ("vocab_size", self.vocab_size),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(invalid(field, "must be at least 1".to_string()));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(invalid(
                "num_attention_heads",
                format!(
                    "hidden_size {} is not divisible by {} heads",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(invalid(
                "vocab_size",
                "does not fit token ids of u32".to_string(),
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(invalid(
                "layer_norm_eps",
                format!("must be finite and > 0, found {}", self.layer_norm_eps),
            ));
        }
        if self.hidden_act != "gelu" {
            return Err(invalid(
                "hidden_act",
                format!("only \"gelu\" is supported, found {:?}", self.hidden_act),
            ));
        }
        Ok(())
    }

    /// Width of one attention head (`hidden_size / num_attention_heads`).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

fn invalid(field: &'static str, reason: String) -> NnError {
    NnError::ConfigInvalid { field, reason }
}

fn get<'v>(value: &'v Value, field: &'static str) -> Result<&'v Value> {
    value
        .get(field)
        .ok_or_else(|| invalid(field, "missing".to_string()))
}

fn usize_field(value: &Value, field: &'static str) -> Result<usize> {
    let v = get(value, field)?;
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| invalid(field, format!("expected a non-negative integer, found {v}")))
}

fn f64_field(value: &Value, field: &'static str) -> Result<f64> {
    let v = get(value, field)?;
    v.as_f64()
        .ok_or_else(|| invalid(field, format!("expected a number, found {v}")))
}

fn str_field(value: &Value, field: &'static str) -> Result<String> {
    let v = get(value, field)?;
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| invalid(field, format!("expected a string, found {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minilm_json() -> Value {
        serde_json::to_value(BertConfig::minilm_l6()).expect("serializable")
    }

    #[test]
    fn minilm_roundtrips_and_validates() {
        let cfg = BertConfig::from_json(&minilm_json()).expect("valid");
        assert_eq!(cfg, BertConfig::minilm_l6());
        assert_eq!(cfg.head_dim(), 32);
    }

    fn err_of(mutate: impl FnOnce(&mut Value)) -> String {
        let mut v = minilm_json();
        mutate(&mut v);
        match BertConfig::from_json(&v) {
            Ok(_) => panic!("config should be rejected"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let msg = err_of(|v| {
            v.as_object_mut().map(|o| o.remove("hidden_size"));
        });
        assert!(
            msg.contains("hidden_size") && msg.contains("missing"),
            "{msg}"
        );
        let msg = err_of(|v| v["vocab_size"] = json!("many"));
        assert!(msg.contains("vocab_size"), "{msg}");
        let msg = err_of(|v| v["num_attention_heads"] = json!(5));
        assert!(
            msg.contains("num_attention_heads") && msg.contains("384"),
            "{msg}"
        );
        let msg = err_of(|v| v["hidden_act"] = json!("relu"));
        assert!(msg.contains("hidden_act") && msg.contains("relu"), "{msg}");
        let msg = err_of(|v| v["num_hidden_layers"] = json!(0));
        assert!(msg.contains("num_hidden_layers"), "{msg}");
        let msg = err_of(|v| v["layer_norm_eps"] = json!(-1.0));
        assert!(msg.contains("layer_norm_eps"), "{msg}");
        let msg = err_of(|v| v["position_embedding_type"] = json!("relative_key"));
        assert!(msg.contains("position_embedding_type"), "{msg}");
        let msg = err_of(|v| *v = json!([1, 2]));
        assert!(msg.contains("JSON object"), "{msg}");
    }

    #[test]
    fn unparsable_file_names_the_path() {
        let dir = std::env::temp_dir().join(format!("lanes-nn-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("config.json");
        std::fs::write(&path, "{ not json").expect("write");
        let err = BertConfig::from_file(&path).expect_err("must fail");
        assert!(err.to_string().contains("config.json"), "{err}");
        assert!(std::error::Error::source(&err).is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
