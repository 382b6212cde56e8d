//! The encoder on a GPU in every precision, with and without CUDA graphs.
//!
//! 1. float16 and bfloat16 against float32 on the fixture texts (cosine >= 0.9999
//!    and >= 0.999 per embedding), and graph replays against eager runs of the
//!    same encoder (first pass captures, second replays).
//! 2. Eight threads replaying graphs on their own lanes against one eager thread.
//!
//! Skips (prints `SKIPPED (no CUDA)`) without a GPU, fails instead under
//! `LANES_REQUIRE_CUDA=1`.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use common::{cosine, cuda, fixtures, max_abs_diff, model_dir, Rng};
use lanes::Lease;
use lanes_nn::Encoder;

/// The fixture texts as mixed batches of 1, 2, 7 and 25 texts (several token
/// buckets, and batches of one shape with different token counts).
fn precision_batches(texts: &[&str]) -> Vec<Vec<usize>> {
    let n = texts.len();
    let mut batches: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    batches.extend((0..n).collect::<Vec<_>>().chunks(2).map(|c| c.to_vec()));
    batches.extend(
        (0..n)
            .rev()
            .collect::<Vec<_>>()
            .chunks(7)
            .map(|c| c.to_vec()),
    );
    batches.push((0..n).collect());
    batches
}

fn embed_all(enc: &Encoder, lane: &Lease, texts: &[&str], batches: &[Vec<usize>]) -> Vec<Vec<f32>> {
    batches
        .iter()
        .map(|idx| {
            let batch: Vec<&str> = idx.iter().map(|&i| texts[i]).collect();
            let tokens = enc.tokenizer().encode_batch(&batch).unwrap();
            enc.forward(lane, &tokens).unwrap()
        })
        .collect()
}

#[test]
fn half_precisions_stay_close_to_f32_and_graphs_replay_what_eager_computes() {
    use lanes_nn::{EncoderOptions, Precision};
    let Some(dev) = cuda() else { return };
    let Some(dir) = model_dir() else { return };
    let texts: Vec<&str> = fixtures().iter().map(|f| f.text.as_str()).collect();
    let batches = precision_batches(&texts);
    let auto = Encoder::load(&dir, &dev).unwrap();
    assert_eq!(auto.precision(), Precision::F16, "auto is float16 on CUDA");
    drop(auto);
    let mut f32_eager = Vec::new();
    // (precision, min cosine against the f32 path, max |diff| graph vs eager)
    for (p, min_cos, tol) in [
        (Precision::F32, 0.99999, 1e-5f32),
        (Precision::F16, 0.9999, 2e-3),
        (Precision::BF16, 0.999, 1e-2),
    ] {
        let enc = Encoder::load_with(&dir, &dev, EncoderOptions { precision: p }).unwrap();
        assert_eq!(enc.precision(), p);
        let lane = dev.lease().unwrap();
        dev.set_graphs(false);
        let eager = embed_all(&enc, &lane, &texts, &batches);
        assert_eq!(enc.graph_counts().replays, 0, "{p}: graphs off");
        dev.set_graphs(true);
        // Twice: the first pass captures, the second replays.
        for pass in 0..2 {
            let graphed = embed_all(&enc, &lane, &texts, &batches);
            for (b, (g, e)) in graphed.iter().zip(&eager).enumerate() {
                let (c, d) = (cosine(g, e), max_abs_diff(g, e));
                assert!(
                    c >= 0.99999 && d <= tol,
                    "{p} pass {pass} batch {:?}: graph vs eager cosine {c:.8}, max |diff| {d:.3e}",
                    batches[b]
                );
            }
        }
        let counts = enc.graph_counts();
        eprintln!("{p}: {counts:?}");
        assert_eq!(counts.fallbacks, 0, "{p}: no capture failed");
        assert!(counts.captures >= 1, "{p}: {counts:?}");
        assert_eq!(
            counts.replays,
            2 * batches.len() as u64,
            "{p}: every forward replayed"
        );
        if p == Precision::F32 {
            f32_eager = eager;
            continue;
        }
        let h = enc.config().hidden_size;
        let mut worst = 1.0f64;
        for (got, want) in eager.iter().zip(&f32_eager) {
            for (g, w) in got.chunks(h).zip(want.chunks(h)) {
                worst = worst.min(cosine(g, w));
            }
        }
        eprintln!("{p} vs float32 on the fixture texts: min cosine {worst:.6}");
        assert!(
            worst >= min_cos,
            "{p} vs float32: min cosine {worst:.6} < {min_cos}"
        );
    }
}

#[test]
fn eight_threads_replay_graphs_on_their_lanes() {
    let Some(dev) = cuda() else { return };
    let Some(dir) = model_dir() else { return };
    let enc = Arc::new(Encoder::load(&dir, &dev).unwrap());
    let texts: Arc<Vec<String>> = Arc::new(fixtures().iter().map(|f| f.text.clone()).collect());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batches = Arc::new(precision_batches(&refs));
    dev.set_graphs(false);
    let expected = Arc::new(embed_all(&enc, &dev.lease().unwrap(), &refs, &batches));
    dev.set_graphs(true);
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let (dev, enc, texts, batches, expected) = (
                dev.clone(),
                enc.clone(),
                texts.clone(),
                batches.clone(),
                expected.clone(),
            );
            std::thread::spawn(move || {
                let lane = dev.lease().unwrap();
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let mut rng = Rng(t);
                let mut worst = 0f32;
                for _ in 0..4 * batches.len() {
                    let b = rng.below(batches.len());
                    let got = embed_all(&enc, &lane, &refs, &batches[b..b + 1]);
                    worst = worst.max(max_abs_diff(&got[0], &expected[b]));
                }
                worst
            })
        })
        .collect();
    let worst = handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .fold(0.0, f32::max);
    let counts = enc.graph_counts();
    eprintln!("8 threads with graphs: {counts:?}, max |diff| vs one eager thread {worst:.3e}");
    assert!(counts.replays > 0 && counts.fallbacks == 0, "{counts:?}");
    assert!(
        worst <= 2e-3,
        "threads' graph replays disagree: {worst:.3e}"
    );
}
