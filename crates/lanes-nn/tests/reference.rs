//! The CPU reference forward against sentence-transformers' embeddings.
//!
//! The fixture stores 7 decimals, so a perfect match still differs by up to
//! 5e-8 per element; the bounds below (cosine ≥ 0.99999, max |diff| ≤ 1e-5)
//! leave room for fp32 summation-order differences only.

mod common;

use common::{cosine, max_abs_diff, norm, Fixture};
use lanes_nn::{reference, BertConfig, HostWeights, Model, Tokens};

const MIN_COSINE: f64 = 0.99999;
const MAX_DIFF: f32 = 1e-5;

/// Embeds the fixtures at `indices` in one padded batch and checks each row;
/// returns (worst max |diff|, worst cosine).
fn check_batch(model: &Model, indices: &[usize]) -> (f32, f64) {
    let fx = common::fixtures();
    let texts: Vec<&str> = indices.iter().map(|&i| fx[i].text.as_str()).collect();
    let out = model.embed_reference(&texts).expect("forward");
    let dim = model.config.hidden_size;
    assert_eq!(out.len(), indices.len() * dim);
    let (mut worst_diff, mut worst_cos) = (0.0f32, 1.0f64);
    for (row, &i) in indices.iter().enumerate() {
        let got = &out[row * dim..(row + 1) * dim];
        let f: &Fixture = &fx[i];
        let (diff, cos) = (max_abs_diff(got, &f.embedding), cosine(got, &f.embedding));
        assert!(
            diff <= MAX_DIFF && cos >= MIN_COSINE,
            "fixture #{i} {:?} in batch {indices:?}: max|diff| {diff:e}, cosine {cos}",
            f.text
        );
        assert!((norm(got) - 1.0).abs() < 1e-5, "unit norm");
        worst_diff = worst_diff.max(diff);
        worst_cos = worst_cos.min(cos);
    }
    (worst_diff, worst_cos)
}

#[test]
fn each_fixture_alone_matches_sentence_transformers() {
    let Some(model) = common::model() else { return };
    let (mut diff, mut cos) = (0.0f32, 1.0f64);
    for i in 0..common::fixtures().len() {
        let (d, c) = check_batch(model, &[i]);
        diff = diff.max(d);
        cos = cos.min(c);
    }
    eprintln!(
        "batch of 1: max |diff| {diff:e}, 1 - min cosine {:e}",
        1.0 - cos
    );
}

#[test]
fn all_fixtures_in_one_padded_batch_match() {
    let Some(model) = common::model() else { return };
    let all: Vec<usize> = (0..common::fixtures().len()).collect();
    let (diff, cos) = check_batch(model, &all);
    eprintln!(
        "batch of 25: max |diff| {diff:e}, 1 - min cosine {:e}",
        1.0 - cos
    );
}

#[test]
fn random_subsets_match() {
    let Some(model) = common::model() else { return };
    let n = common::fixtures().len();
    let mut state = 0x5eed_u64;
    let mut rand = move |m: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        ((state >> 33) as usize) % m
    };
    for _ in 0..6 {
        let size = 2 + rand(6);
        let subset: Vec<usize> = (0..size).map(|_| rand(n)).collect();
        check_batch(model, &subset);
    }
    // The long (256-token) text next to the empty one: maximal padding.
    check_batch(model, &[12, 23, 12]);
}

#[test]
fn empty_text_gives_the_fixture_unit_vector() {
    let Some(model) = common::model() else { return };
    let fx = &common::fixtures()[12];
    assert_eq!(fx.text, "");
    let out = model.embed_reference(&[""]).expect("forward");
    assert!(out.iter().all(|v| v.is_finite()));
    assert!((norm(&out) - 1.0).abs() < 1e-6);
    assert!(max_abs_diff(&out, &fx.embedding) <= MAX_DIFF);
}

#[test]
fn padding_does_not_change_a_text_embedding() {
    let Some(model) = common::model() else { return };
    let alone = model
        .embed_reference(&["A man is eating food."])
        .expect("forward");
    let long = "word ".repeat(300);
    let padded = model
        .embed_reference(&["A man is eating food.", &long])
        .expect("forward");
    assert!(max_abs_diff(&alone, &padded[..alone.len()]) <= 1e-6);
}

#[test]
fn empty_batch_gives_no_rows() {
    let Some(model) = common::model() else { return };
    assert!(model.embed_reference(&[]).expect("forward").is_empty());
}

#[test]
fn bad_encoded_inputs_are_errors_not_panics() {
    let cfg = BertConfig {
        hidden_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 16,
        max_position_embeddings: 4,
        type_vocab_size: 2,
        vocab_size: 10,
        ..BertConfig::minilm_l6()
    };
    let w = HostWeights::synthetic(&cfg, 1).expect("synthetic");
    let ok = Tokens::from_sequences(&[(vec![1, 2, 3], vec![0; 3])]).expect("encoded");
    let out = reference::forward(&w, &cfg, &ok).expect("valid input");
    assert!((norm(&out) - 1.0).abs() < 1e-5);

    let bad_id = Tokens::from_sequences(&[(vec![1, 10], vec![0; 2])]).expect("encoded");
    let err = reference::forward(&w, &cfg, &bad_id).expect_err("id 10 of 10");
    assert!(err.to_string().contains("10"), "{err}");
    let bad_type = Tokens::from_sequences(&[(vec![1, 2], vec![0, 2])]).expect("encoded");
    assert!(reference::forward(&w, &cfg, &bad_type).is_err());
    let too_long = Tokens::from_sequences(&[(vec![1; 5], vec![0; 5])]).expect("encoded");
    let err = reference::forward(&w, &cfg, &too_long).expect_err("5 > 4 positions");
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");
    // Positions restart in each sequence: two of 3 fit where one of 5 does not.
    let packed = Tokens::from_sequences(&[(vec![1; 3], vec![0; 3]), (vec![2; 2], vec![0; 2])])
        .expect("encoded");
    let out = reference::forward(&w, &cfg, &packed).expect("both within 4 positions");
    assert_eq!(out.len(), 2 * cfg.hidden_size);
    let other_cfg = BertConfig {
        intermediate_size: 32,
        ..cfg.clone()
    };
    assert!(reference::forward(&w, &other_cfg, &ok).is_err());
    let mut broken = w.clone();
    broken.layers[0].i_w.data.pop();
    let err = reference::forward(&broken, &cfg, &ok).expect_err("tensor too short");
    assert!(
        err.to_string()
            .contains("encoder.layer.0.intermediate.dense.weight"),
        "{err}"
    );
}
