//! Loading must report bad folders and files by name, never panic.
//!
//! Most cases use a tiny synthetic model written to a temporary folder; the
//! truncated-file and wrong-shape cases are repeated on the real model.

mod common;

use std::path::{Path, PathBuf};

use lanes_nn::{BertConfig, HostWeights, Model, NnError, StoreDtype, CONFIG_FILE, WEIGHTS_FILE};
use safetensors::Dtype;

fn tiny_cfg() -> BertConfig {
    BertConfig {
        hidden_size: 8,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 16,
        max_position_embeddings: 6,
        type_vocab_size: 2,
        vocab_size: 12,
        ..BertConfig::minilm_l6()
    }
}

/// A raw tensor to serialize: (name, dtype, shape, little-endian bytes).
type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

/// The tiny synthetic model's tensors as F32 raw tensors.
fn tiny_raw() -> Vec<Raw> {
    let w = HostWeights::synthetic(&tiny_cfg(), 7).expect("synthetic");
    w.tensors()
        .into_iter()
        .map(|t| {
            let bytes = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (t.name.clone(), Dtype::F32, t.shape.clone(), bytes)
        })
        .collect()
}

fn serialize(raw: &[Raw]) -> Vec<u8> {
    let views: Vec<_> = raw
        .iter()
        .map(|(n, d, s, b)| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("valid view");
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize(views, &None).expect("serializes")
}

/// A temp model folder with the tiny `config.json` and the given weights bytes.
fn tiny_dir(name: &str, weights: &[u8]) -> PathBuf {
    let dir = common::temp_dir(name);
    let cfg = serde_json::to_string(&tiny_cfg()).expect("json");
    std::fs::write(dir.join(CONFIG_FILE), cfg).expect("write config");
    std::fs::write(dir.join(WEIGHTS_FILE), weights).expect("write weights");
    dir
}

fn load_err(dir: &Path) -> NnError {
    match HostWeights::load(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_folder_and_files_are_named() {
    let err = HostWeights::load("/definitely/not/a/model").expect_err("missing");
    assert!(matches!(err, NnError::ModelDirMissing { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("/definitely/not/a/model") && msg.contains("scripts/fetch-model.sh"),
        "{msg}"
    );
    assert!(Model::load("/definitely/not/a/model").is_err());

    let dir = tiny_dir("missing-files", &serialize(&tiny_raw()));
    HostWeights::load(&dir).expect("complete for weights");
    let err = Model::load(&dir).expect_err("no tokenizer.json");
    assert!(
        err.to_string().contains("tokenizer.json")
            && err.to_string().contains(&*dir.to_string_lossy())
    );
    std::fs::remove_file(dir.join(CONFIG_FILE)).expect("rm");
    assert!(load_err(&dir).to_string().contains("config.json"));
    std::fs::remove_file(dir.join(WEIGHTS_FILE)).expect("rm");
    let err = load_err(&dir);
    assert!(
        matches!(&err, NnError::ModelFileMissing { file, .. } if file == WEIGHTS_FILE),
        "{err}"
    );
    let err = HostWeights::load(dir.join("other.safetensors")).expect_err("absent file");
    assert!(err.to_string().contains("other.safetensors"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncated_and_corrupt_files_name_the_file() {
    let full = serialize(&tiny_raw());
    for (case, bytes) in [
        ("truncated", &full[..full.len() - 10]),
        ("header-only", &full[..12]),
        ("empty", &full[..0]),
    ] {
        let dir = tiny_dir(case, bytes);
        let err = load_err(&dir);
        assert!(
            matches!(err, NnError::Safetensors { .. }),
            "{case}: {err:?}"
        );
        assert!(
            err.to_string().contains("model.safetensors"),
            "{case}: {err}"
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "{case}: source chained"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    let dir = tiny_dir("garbage", b"\x10\0\0\0\0\0\0\0{not json at all");
    assert!(matches!(load_err(&dir), NnError::Safetensors { .. }));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_unexpected_wrong_shape_and_wrong_dtype_tensors() {
    let name = "encoder.layer.1.output.dense.bias";
    let mut raw = tiny_raw();
    raw.retain(|r| r.0 != name);
    let dir = tiny_dir("missing-tensor", &serialize(&raw));
    let err = load_err(&dir);
    assert!(
        matches!(err, NnError::MissingTensor { .. }) && err.to_string().contains(name),
        "{err}"
    );

    let mut raw = tiny_raw();
    raw.push((
        "encoder.layer.2.output.dense.bias".into(),
        Dtype::F32,
        vec![1],
        vec![0; 4],
    ));
    let dir = tiny_dir("extra-tensor", &serialize(&raw));
    let err = load_err(&dir);
    assert!(
        err.to_string()
            .contains("encoder.layer.2.output.dense.bias"),
        "{err}"
    );

    let name = "encoder.layer.0.intermediate.dense.weight";
    let mut raw = tiny_raw();
    let t = raw.iter_mut().find(|r| r.0 == name).expect("present");
    t.2 = vec![8, 16];
    let dir = tiny_dir("wrong-shape", &serialize(&raw));
    let msg = load_err(&dir).to_string();
    assert!(
        msg.contains(name) && msg.contains("[16, 8]") && msg.contains("[8, 16]"),
        "{msg}"
    );

    let name = "embeddings.LayerNorm.bias";
    let mut raw = tiny_raw();
    let t = raw.iter_mut().find(|r| r.0 == name).expect("present");
    t.1 = Dtype::I32;
    let dir = tiny_dir("wrong-dtype", &serialize(&raw));
    let err = load_err(&dir);
    assert!(matches!(err, NnError::UnsupportedDtype { .. }), "{err:?}");
    assert!(
        err.to_string().contains(name) && err.to_string().contains("I32"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bert_prefix_position_ids_and_pooler_are_accepted() {
    let want = HostWeights::synthetic(&tiny_cfg(), 7).expect("synthetic");
    let mut raw: Vec<Raw> = tiny_raw()
        .into_iter()
        .map(|(n, d, s, b)| (format!("bert.{n}"), d, s, b))
        .collect();
    raw.push((
        "bert.embeddings.position_ids".into(),
        Dtype::I64,
        vec![1, 6],
        vec![0; 48],
    ));
    raw.push((
        "bert.pooler.dense.bias".into(),
        Dtype::F32,
        vec![8],
        vec![0; 32],
    ));
    let dir = tiny_dir("prefixed", &serialize(&raw));
    assert_eq!(HostWeights::load(&dir).expect("loads"), want);
    // A file path works as well as a folder.
    assert_eq!(
        HostWeights::load(dir.join(WEIGHTS_FILE)).expect("loads"),
        want
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn f16_and_bf16_copies_load_as_f32() {
    let want = HostWeights::synthetic(&tiny_cfg(), 3).expect("synthetic");
    for (dtype, tol) in [
        (StoreDtype::F32, 0.0),
        (StoreDtype::F16, 1e-3),
        (StoreDtype::BF16, 1e-2),
    ] {
        let dir = tiny_dir("half", &want.to_safetensors(dtype).expect("serializes"));
        let got = HostWeights::load(&dir).expect("loads");
        for (a, b) in got.tensors().into_iter().zip(want.tensors()) {
            assert_eq!((&a.name, &a.shape), (&b.name, &b.shape));
            assert!(
                common::max_abs_diff(&a.data, &b.data) <= tol,
                "{dtype:?} {}",
                a.name
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn bad_config_json_names_the_field() {
    let dir = tiny_dir("bad-config", &serialize(&tiny_raw()));
    let mut cfg = serde_json::to_value(tiny_cfg()).expect("json");
    cfg.as_object_mut().map(|o| o.remove("intermediate_size"));
    std::fs::write(dir.join(CONFIG_FILE), cfg.to_string()).expect("write");
    assert!(load_err(&dir).to_string().contains("intermediate_size"));
    std::fs::write(dir.join(CONFIG_FILE), "[1, 2").expect("write");
    let err = load_err(&dir);
    assert!(matches!(err, NnError::ConfigParse { .. }) && err.to_string().contains("config.json"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn real_model_truncated_or_reshaped_is_reported() {
    let Some(model_dir) = common::model_dir() else {
        return;
    };
    let bytes = std::fs::read(model_dir.join(WEIGHTS_FILE)).expect("read model");
    let config = std::fs::read(model_dir.join(CONFIG_FILE)).expect("read config");
    let dir = common::temp_dir("real-truncated");
    std::fs::write(dir.join(CONFIG_FILE), &config).expect("write");
    std::fs::write(dir.join(WEIGHTS_FILE), &bytes[..bytes.len() / 2]).expect("write");
    let err = load_err(&dir);
    assert!(matches!(err, NnError::Safetensors { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&*dir.join(WEIGHTS_FILE).to_string_lossy()),
        "{err}"
    );

    let cfg = BertConfig::from_file(model_dir.join(CONFIG_FILE)).expect("config");
    let mut w = HostWeights::load_with_config(model_dir.join(WEIGHTS_FILE), &cfg).expect("loads");
    let t = &mut w.layers[3].i_w;
    t.shape = vec![1536, 383];
    t.data.truncate(1536 * 383);
    std::fs::write(
        dir.join(WEIGHTS_FILE),
        w.to_safetensors(StoreDtype::F32).expect("ser"),
    )
    .expect("write");
    let msg = load_err(&dir).to_string();
    assert!(
        msg.contains("encoder.layer.3.intermediate.dense.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("[1536, 384]") && msg.contains("[1536, 383]"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn real_model_f16_copy_still_embeds_closely() {
    let Some(model) = common::model() else { return };
    let f16 = model
        .weights
        .to_safetensors(StoreDtype::F16)
        .expect("serializes");
    let w = HostWeights::from_safetensors_bytes(&f16, &model.config, Path::new("<f16 copy>"))
        .expect("loads");
    let fx = &common::fixtures()[0];
    let enc = model
        .tokenizer
        .encode_batch(&[fx.text.as_str()])
        .expect("encodes");
    let out = lanes_nn::reference::forward(&w, &model.config, &enc).expect("forward");
    let cos = common::cosine(&out, &fx.embedding);
    assert!(cos > 0.9999, "f16 weights cosine {cos}");
}
