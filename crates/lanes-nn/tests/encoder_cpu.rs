//! The device encoder on the CPU backend: every op runs as a job on a lane's worker
//! thread, through the caching allocator. Compared with the sentence-transformers
//! fixture and the single-threaded reference forward.

mod common;

use std::sync::Arc;

use common::{cosine, fixtures, max_abs_diff, model_dir};
use lanes::{Device, DeviceConfig, Policy, Wait};
use lanes_nn::{reference, Encoder};

fn cpu(lanes: usize) -> Device {
    Device::cpu(DeviceConfig {
        lanes,
        policy: Policy::Exclusive {
            wait: Wait::Forever,
        },
        ..Default::default()
    })
    .expect("cpu device")
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let cos = cosine(got, want);
    let diff = max_abs_diff(got, want);
    assert!(
        cos >= 0.99999 && diff <= 1e-5,
        "{what}: cosine {cos}, max |diff| {diff}"
    );
}

#[test]
fn fixture_texts_alone_and_in_mixed_batches_match_sentence_transformers() {
    let Some(dir) = model_dir() else { return };
    let device = cpu(4);
    let enc = Encoder::load(&dir, &device).expect("load");
    let fx = fixtures();
    // Alone.
    for (i, f) in fx.iter().enumerate() {
        let out = enc.embed(&[f.text.as_str()]).expect("embed");
        assert_eq!(out[0].tokens, f.n_tokens, "fixture {i} token count");
        assert_close(&out[0].vector, &f.embedding, &format!("fixture {i} alone"));
    }
    // All 25 in one padded batch, and a reversed mixed batch with repeats.
    let texts: Vec<&str> = fx.iter().map(|f| f.text.as_str()).collect();
    let all = enc.embed(&texts).expect("embed batch");
    for (i, (e, f)) in all.iter().zip(fx).enumerate() {
        assert_close(
            &e.vector,
            &f.embedding,
            &format!("fixture {i} in the full batch"),
        );
    }
    let mixed: Vec<usize> = vec![23, 0, 12, 24, 5, 5, 16];
    let batch: Vec<&str> = mixed.iter().map(|&i| fx[i].text.as_str()).collect();
    let out = enc.embed(&batch).expect("embed mixed");
    for (e, &i) in out.iter().zip(&mixed) {
        assert_close(
            &e.vector,
            &fx[i].embedding,
            &format!("fixture {i} in a mixed batch"),
        );
    }
    device.unbind_current();
    let stats = device.stats();
    assert_eq!(stats.leases_outstanding, 0, "no lease left behind");
}

#[test]
fn device_forward_equals_the_reference_forward() {
    let Some(dir) = model_dir() else { return };
    let model = common::model().expect("model");
    let device = cpu(2);
    let enc = Encoder::load(&dir, &device).expect("load");
    let texts = [
        "a",
        "The quick brown fox jumps over the lazy dog.",
        "",
        "lanes lanes lanes",
    ];
    let encoded = enc.tokenizer().encode_batch(&texts).expect("tokenize");
    let want = reference::forward(&model.weights, &model.config, &encoded).expect("reference");
    let lane = device.lease().expect("lease");
    let got = enc.forward(&lane, &encoded).expect("forward");
    assert_eq!(got.len(), want.len());
    assert!(
        max_abs_diff(&got, &want) <= 1e-6,
        "max diff {}",
        max_abs_diff(&got, &want)
    );
}

#[test]
fn forward_mean_is_the_raw_mean_that_forward_normalizes() {
    let Some(dir) = model_dir() else { return };
    let device = cpu(1);
    let enc = Encoder::load(&dir, &device).expect("load");
    let texts = ["a", "The quick brown fox jumps over the lazy dog.", ""];
    let encoded = enc.tokenizer().encode_batch(&texts).expect("tokenize");
    let lane = device.lease().expect("lease");
    let raw = enc.forward_mean(&lane, &encoded).expect("forward_mean");
    let unit = enc.forward(&lane, &encoded).expect("forward");
    let h = enc.config().hidden_size;
    // The raw rows are not unit vectors (MiniLM's means have norms of a few units).
    for row in raw.chunks_exact(h) {
        let norm = row
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((norm - 1.0).abs() > 0.05, "raw row of norm {norm}");
    }
    // `forward` is exactly `forward_mean` normalized on the host.
    let mut normalized = raw.clone();
    lanes_nn::cpu::l2_normalize(&mut normalized, texts.len(), h);
    assert_eq!(normalized, unit);
    // And the raw mean is the reference's hidden-state mean: its direction is
    // the reference embedding's.
    for (i, (r, u)) in raw.chunks_exact(h).zip(unit.chunks_exact(h)).enumerate() {
        assert!(
            cosine(r, u) > 0.999_999,
            "text {i}: raw vs normalized direction"
        );
    }
}

#[test]
fn sixteen_threads_sharing_one_model_match_one_thread() {
    let Some(dir) = model_dir() else { return };
    let device = cpu(16);
    let enc = Arc::new(Encoder::load(&dir, &device).expect("load"));
    let texts: Arc<Vec<String>> = Arc::new(fixtures().iter().map(|f| f.text.clone()).collect());
    // Requests: single texts and pairs (padded batches), each computed once on one
    // thread first; every thread must then reproduce them bit for bit.
    let n = texts.len();
    let requests: Arc<Vec<Vec<usize>>> = Arc::new(
        (0..n)
            .map(|i| vec![i])
            .chain((0..n).map(|i| vec![i, (i * 7 + 3) % n]))
            .collect(),
    );
    let single: Arc<Vec<Vec<Vec<f32>>>> = Arc::new({
        let lane = device.lease().expect("lease");
        requests
            .iter()
            .map(|r| {
                let batch: Vec<&str> = r.iter().map(|&i| texts[i].as_str()).collect();
                enc.embed_on(&lane, &batch)
                    .expect("embed")
                    .into_iter()
                    .map(|e| e.vector)
                    .collect()
            })
            .collect()
    });
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let (enc, texts, requests, single) = (enc.clone(), texts.clone(), requests.clone(), single.clone());
            std::thread::spawn(move || {
                let lane = enc.device().current_lane().expect("lane");
                assert!(lane.is_exclusive());
                let mut lanes_seen = vec![lane.index()];
                for k in 0..requests.len() / 2 {
                    let r = (t * 5 + k) % requests.len();
                    let batch: Vec<&str> = requests[r].iter().map(|&i| texts[i].as_str()).collect();
                    let out = enc.embed(&batch).expect("embed");
                    for (row, e) in out.iter().enumerate() {
                        assert!(
                            e.vector == single[r][row],
                            "thread {t}: request {r} row {row} differs from the single-threaded run (max |diff| {})",
                            max_abs_diff(&e.vector, &single[r][row])
                        );
                    }
                    lanes_seen.push(enc.device().current_lane().expect("lane").index());
                }
                lanes_seen
            })
        })
        .collect();
    let mut lanes: Vec<usize> = Vec::new();
    for h in handles {
        let seen = h.join().expect("thread");
        assert!(seen.iter().all(|&l| l == seen[0]), "a thread kept one lane");
        lanes.push(seen[0]);
    }
    lanes.sort();
    lanes.dedup();
    assert_eq!(lanes.len(), 16, "16 threads held 16 distinct lanes");
    assert_eq!(
        device.stats().leases_outstanding,
        0,
        "thread exit released every lease"
    );
}

#[test]
fn cpu_encoder_is_f32_and_refuses_half_precisions() {
    use lanes_nn::{EncoderOptions, NnError, Precision};
    let Some(dir) = model_dir() else { return };
    let device = cpu(1);
    let enc = Encoder::load(&dir, &device).expect("auto on the CPU");
    assert_eq!(enc.precision(), Precision::F32);
    let f32_opts = EncoderOptions {
        precision: Precision::F32,
    };
    let enc = Encoder::load_with(&dir, &device, f32_opts).expect("float32");
    assert_eq!(enc.precision(), Precision::F32);
    for p in [Precision::F16, Precision::BF16] {
        let err = Encoder::load_with(&dir, &device, EncoderOptions { precision: p })
            .err()
            .expect("half precisions are refused on the CPU");
        assert!(matches!(err, NnError::Unsupported(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(p.name()) && msg.contains(device.name()),
            "{msg}"
        );
    }
    // The CPU lanes never capture graphs.
    let lane = device.lease().expect("lane");
    enc.embed_on(&lane, &["one", "two"]).expect("embed");
    enc.embed_on(&lane, &["one", "two"]).expect("embed");
    assert_eq!(enc.graph_counts(), lanes_nn::GraphCounts::default());
}
