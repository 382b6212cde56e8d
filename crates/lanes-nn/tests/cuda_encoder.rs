//! The CUDA executor and the encoder on a GPU.
//!
//! 1. Every fused op on random packed inputs (odd sequence lengths, several head
//!    sizes) against the CPU kernels of `lanes_nn::cpu`.
//! 2. The full encoder on the sentence-transformers fixture, each text alone and in
//!    mixed batches, against the fixture and against `lanes_nn::reference::forward`
//!    (cosine ≥ 0.99999, max |diff| ≤ 1e-5 per embedding).
//! 3. Sixteen threads sharing one `Arc<Encoder>`, each on its own lane, against one
//!    thread.
//!
//! Every test opens CUDA device 0 and, where that fails (no driver, no GPU: CI),
//! prints `SKIPPED (no CUDA): <error>` to stderr and passes, unless
//! `LANES_REQUIRE_CUDA=1` (the GPU suite), which makes it fail. The model and the
//! fixture are found as `tests/common` says (`$LANES_MODEL`, `$LANES_FIXTURE`).
#![cfg(feature = "cuda")]

use std::sync::Arc;

use lanes::{Buffer, Device, DeviceConfig, Lease};
use lanes_nn::exec::cuda::{CudaExec, Gemm};
use lanes_nn::exec::{EmbedTables, Exec};
use lanes_nn::{
    cpu, reference, DType, Encoder, EncoderOptions, Model, Precision, Tensor, TensorMut, Tokens,
};

mod common;

use common::{cosine, cuda, fixtures, max_abs_diff, model_dir, Rng};

// ---------------------------------------------------------------------------
// Setup

fn up<T: bytemuck::Pod>(lane: &Lease, data: &[T]) -> Buffer {
    let buf = lane
        .alloc(std::mem::size_of_val(data).max(1))
        .expect("alloc");
    lane.upload(&buf, bytemuck::cast_slice(data))
        .expect("upload");
    buf
}

fn up_f32(lane: &Lease, data: &[f32]) -> Buffer {
    up(lane, data)
}

fn up_u32(lane: &Lease, data: &[u32]) -> Buffer {
    up(lane, data)
}

fn down(lane: &Lease, buf: &Buffer, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    lane.download(buf, bytemuck::cast_slice_mut(&mut out))
        .expect("download");
    out
}

/// An f32 input tensor.
fn f<'a>(name: &'static str, buf: &'a Buffer, shape: &[usize]) -> Tensor<'a> {
    Tensor::new(name, buf, DType::F32, shape).expect("tensor fits its buffer")
}

/// A u32 input tensor.
fn u<'a>(name: &'static str, buf: &'a Buffer, shape: &[usize]) -> Tensor<'a> {
    Tensor::new(name, buf, DType::U32, shape).expect("tensor fits its buffer")
}

/// An f32 output tensor.
fn o<'a>(name: &'static str, buf: &'a mut Buffer, shape: &[usize]) -> TensorMut<'a> {
    TensorMut::new(name, buf, DType::F32, shape).expect("tensor fits its buffer")
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Offsets of `batch` packed sequences of 1..=max_len tokens, the first one full.
fn random_offsets(rng: &mut Rng, batch: usize, max_len: usize) -> Vec<u32> {
    let mut offsets = vec![0u32];
    for b in 0..batch {
        let len = if b == 0 {
            max_len
        } else {
            1 + rng.below(max_len)
        };
        offsets.push(offsets[b] + len as u32);
    }
    offsets
}

// ---------------------------------------------------------------------------
// 1. The ops against the CPU kernels

/// `(batch, seq, hidden, heads)`: head sizes 32, 64, 96, 16; sequence lengths
/// below, across and well past the 32-lane and 64-key tiles; 700 tokens forces
/// fewer queries per block (shared memory).
const SHAPES: [(usize, usize, usize, usize); 8] = [
    (1, 1, 64, 2),
    (3, 37, 64, 2),
    (2, 130, 384, 12),
    (2, 45, 128, 2),
    (1, 19, 96, 1),
    (4, 7, 64, 4),
    (2, 300, 64, 2),
    (1, 700, 64, 2),
];

#[test]
fn attention_matches_cpu() {
    let Some(dev) = cuda() else { return };
    let ex = CudaExec::new(&dev).expect("compile the kernels");
    let lane = dev.lease().unwrap();
    let mut rng = Rng(1);
    for (batch, seq, hidden, heads) in SHAPES {
        let offsets = random_offsets(&mut rng, batch, seq);
        let rows = *offsets.last().unwrap() as usize;
        let qkv = rng.vec(rows * 3 * hidden, -2.0, 2.0);
        let (g_qkv, g_off) = (up_f32(&lane, &qkv), up_u32(&lane, &offsets));
        let mut g_out = lane.alloc(rows * hidden * 4).unwrap();
        ex.attention(
            &lane,
            f("qkv", &g_qkv, &[rows, 3 * hidden]),
            u("offsets", &g_off, &[batch + 1]),
            seq,
            heads,
            o("ctx", &mut g_out, &[rows, hidden]),
        )
        .unwrap();
        let got = down(&lane, &g_out, rows * hidden);

        let (mut q, mut k, mut v) = (
            vec![0f32; rows * hidden],
            vec![0f32; rows * hidden],
            vec![0f32; rows * hidden],
        );
        for r in 0..rows {
            let src = &qkv[r * 3 * hidden..(r + 1) * 3 * hidden];
            q[r * hidden..(r + 1) * hidden].copy_from_slice(&src[..hidden]);
            k[r * hidden..(r + 1) * hidden].copy_from_slice(&src[hidden..2 * hidden]);
            v[r * hidden..(r + 1) * hidden].copy_from_slice(&src[2 * hidden..]);
        }
        let mut want = vec![0f32; rows * hidden];
        cpu::attention(&q, &k, &v, &offsets, heads, hidden / heads, &mut want);
        let diff = max_abs_diff(&got, &want);
        let what = format!("attention batch {batch} max_len {seq} hidden {hidden} heads {heads}");
        eprintln!("{what}: max |diff| {diff:.3e}");
        assert!(diff <= 1e-5, "{what}: max |diff| {diff:.3e}");
    }
}

#[test]
fn linear_matches_cpu() {
    let Some(dev) = cuda() else { return };
    let lane = dev.lease().unwrap();
    for gemm in [Gemm::Cublas, Gemm::Fused, Gemm::Auto] {
        let ex = CudaExec::with_gemm(&dev, gemm).expect("compile the kernels");
        let mut rng = Rng(2);
        // (rows, k, n, gelu): MiniLM's four projections (split over K for the fused
        // kernel), more rows, an odd width and depth, a single row.
        for (rows, k, n, gelu) in [
            (74, 384, 1152, false),
            (74, 384, 384, false),
            (111, 384, 1536, true),
            (111, 1536, 384, false),
            (300, 384, 1536, true),
            (1030, 384, 384, false),
            (33, 50, 13, true),
            (70, 333, 67, false),
            (1, 8, 4, true),
        ] {
            let x = rng.vec(rows * k, -1.0, 1.0);
            let w = rng.vec(n * k, -0.2, 0.2);
            let b = rng.vec(n, -0.5, 0.5);
            let (gx, gw, gb) = (up_f32(&lane, &x), up_f32(&lane, &w), up_f32(&lane, &b));
            let mut gout = lane.alloc(rows * n * 4).unwrap();
            ex.linear(
                &lane,
                f("x", &gx, &[rows, k]),
                f("w", &gw, &[n, k]),
                f("b", &gb, &[n]),
                gelu,
                o("out", &mut gout, &[rows, n]),
            )
            .unwrap();
            let got = down(&lane, &gout, rows * n);
            let mut want = vec![0f32; rows * n];
            cpu::linear(&x, rows, k, &w, &b, &mut want);
            if gelu {
                cpu::gelu_inplace(&mut want);
            }
            let diff = max_abs_diff(&got, &want);
            let scale = max_abs(&want).max(1.0);
            eprintln!("linear {gemm:?} rows {rows} k {k} n {n} gelu {gelu}: max |diff| {diff:.3e} (max |out| {scale:.2})");
            assert!(
                diff <= 2e-6 * scale * (k as f32).sqrt(),
                "linear {gemm:?} {rows}x{k}x{n}: max |diff| {diff:.3e}"
            );
        }
    }
}

#[test]
fn layer_norms_and_pooling_match_cpu() {
    let Some(dev) = cuda() else { return };
    let ex = CudaExec::new(&dev).expect("compile the kernels");
    let lane = dev.lease().unwrap();
    let mut rng = Rng(3);
    let eps = 1e-12f32;
    for (batch, seq, hidden) in [
        (3, 37, 384),
        (2, 5, 100),
        (1, 1, 32),
        (2, 9, 768),
        (1, 3, 1000),
    ] {
        let offsets = random_offsets(&mut rng, batch, seq);
        let rows = *offsets.last().unwrap() as usize;
        let g_off = up_u32(&lane, &offsets);
        let g = rng.vec(hidden, 0.5, 1.5);
        let be = rng.vec(hidden, -0.3, 0.3);
        let (gg, gbe) = (up_f32(&lane, &g), up_f32(&lane, &be));

        // add_layer_norm
        let x = rng.vec(rows * hidden, -3.0, 3.0);
        let r = rng.vec(rows * hidden, -1.0, 2.0);
        let (gx, gr) = (up_f32(&lane, &x), up_f32(&lane, &r));
        let mut gout = lane.alloc(rows * hidden * 4).unwrap();
        ex.add_layer_norm(
            &lane,
            f("x", &gx, &[rows, hidden]),
            f("residual", &gr, &[rows, hidden]),
            f("gamma", &gg, &[hidden]),
            f("beta", &gbe, &[hidden]),
            eps,
            o("out", &mut gout, &[rows, hidden]),
        )
        .unwrap();
        let got = down(&lane, &gout, rows * hidden);
        let mut want: Vec<f32> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
        cpu::layer_norm_inplace(&mut want, rows, hidden, &g, &be, eps);
        let diff = max_abs_diff(&got, &want);
        eprintln!("add_layer_norm rows {rows} dim {hidden}: max |diff| {diff:.3e}");
        assert!(
            diff <= 1e-5,
            "add_layer_norm rows {rows} dim {hidden}: {diff:.3e}"
        );

        // embed_ln
        let (vocab, types_n) = (50usize, 2usize);
        let word = rng.vec(vocab * hidden, -1.0, 1.0);
        let pos = rng.vec(seq * hidden, -0.5, 0.5);
        let tt = rng.vec(types_n * hidden, -0.2, 0.2);
        let ids: Vec<u32> = (0..rows).map(|_| rng.below(vocab) as u32).collect();
        let types: Vec<u32> = (0..rows).map(|_| rng.below(types_n) as u32).collect();
        let (gw, gp, gt) = (
            up_f32(&lane, &word),
            up_f32(&lane, &pos),
            up_f32(&lane, &tt),
        );
        let (gi, gty) = (up_u32(&lane, &ids), up_u32(&lane, &types));
        let tables = EmbedTables {
            word: f("word", &gw, &[vocab, hidden]),
            position: f("position", &gp, &[seq, hidden]),
            token_type: f("token_type", &gt, &[types_n, hidden]),
            gamma: f("gamma", &gg, &[hidden]),
            beta: f("beta", &gbe, &[hidden]),
        };
        let mut gemb = lane.alloc(rows * hidden * 4).unwrap();
        ex.embed_ln(
            &lane,
            u("ids", &gi, &[rows]),
            u("types", &gty, &[rows]),
            u("offsets", &g_off, &[batch + 1]),
            &tables,
            eps,
            o("x", &mut gemb, &[rows, hidden]),
        )
        .unwrap();
        let got = down(&lane, &gemb, rows * hidden);
        let mut want = vec![0f32; rows * hidden];
        let positions = Tokens::from_parts(ids.clone(), types.clone(), offsets.clone())
            .unwrap()
            .positions()
            .collect::<Vec<_>>();
        for rr in 0..rows {
            let (id, ty, p) = (ids[rr] as usize, types[rr] as usize, positions[rr]);
            for i in 0..hidden {
                want[rr * hidden + i] =
                    (word[id * hidden + i] + tt[ty * hidden + i]) + pos[p * hidden + i];
            }
        }
        cpu::layer_norm_inplace(&mut want, rows, hidden, &g, &be, eps);
        let diff = max_abs_diff(&got, &want);
        eprintln!("embed_ln rows {rows} dim {hidden}: max |diff| {diff:.3e}");
        assert!(
            diff <= 1e-5,
            "embed_ln rows {rows} dim {hidden}: {diff:.3e}"
        );

        // pool_mean
        let h = rng.vec(rows * hidden, -2.0, 2.0);
        let gh = up_f32(&lane, &h);
        let mut gpool = lane.alloc(batch * hidden * 4).unwrap();
        ex.pool_mean(
            &lane,
            f("hidden", &gh, &[rows, hidden]),
            u("offsets", &g_off, &[batch + 1]),
            o("pooled", &mut gpool, &[batch, hidden]),
        )
        .unwrap();
        let got = down(&lane, &gpool, batch * hidden);
        let mut want = vec![0f32; batch * hidden];
        cpu::mean_pool(&h, &offsets, hidden, &mut want);
        let diff = max_abs_diff(&got, &want);
        eprintln!("pool_mean batch {batch} seq {seq} dim {hidden}: max |diff| {diff:.3e}");
        assert!(diff <= 1e-6, "pool_mean: {diff:.3e}");
    }
}

#[test]
fn cpu_lane_is_rejected() {
    let Some(dev) = cuda() else { return };
    let ex = CudaExec::new(&dev).expect("compile the kernels");
    let cpu_dev = Device::cpu(DeviceConfig::default()).unwrap();
    let lane = cpu_dev.lease().unwrap();
    let (x, mut out) = (up_f32(&lane, &[0.0; 4]), lane.alloc(16).unwrap());
    let err = ex
        .linear(
            &lane,
            f("x", &x, &[2, 2]),
            f("w", &x, &[2, 2]),
            f("b", &x, &[2]),
            false,
            o("out", &mut out, &[2, 2]),
        )
        .unwrap_err();
    eprintln!("{err}");
    assert!(CudaExec::new(&cpu_dev).is_err());
    // And CUDA memory on a CUDA lane with a mismatched shape.
    let gl = dev.lease().unwrap();
    let (gx, mut gout) = (up_f32(&gl, &[0.0; 4]), gl.alloc(16).unwrap());
    let err = ex
        .linear(
            &gl,
            f("x", &gx, &[2, 2]),
            f("w", &gx, &[1, 4]),
            f("b", &gx, &[1]),
            false,
            o("out", &mut gout, &[2, 1]),
        )
        .unwrap_err();
    assert!(err.to_string().contains("tensor w"), "{err}");
}

// ---------------------------------------------------------------------------
// 2. The encoder against the fixture and the CPU reference

struct Stats {
    min_cos: f64,
    max_diff: f32,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            min_cos: 1.0,
            max_diff: 0.0,
        }
    }
    fn check(&mut self, what: &str, got: &[f32], want: &[f32]) {
        let (c, d) = (cosine(got, want), max_abs_diff(got, want));
        self.min_cos = self.min_cos.min(c);
        self.max_diff = self.max_diff.max(d);
        assert!(
            c >= 0.99999 && d <= 1e-5,
            "{what}: cosine {c:.8}, max |diff| {d:.3e}"
        );
    }
}

#[test]
fn encoder_matches_fixture_and_reference() {
    let Some(dev) = cuda() else { return };
    let Some(dir) = model_dir() else { return };
    let fx = fixtures();
    let model = Model::load(&dir).expect("load the model on the host");
    let enc = load_f32(&dir, &dev).expect("load the model on the GPU");
    let lane = dev.lease().unwrap();
    let h = model.config.hidden_size;
    let (mut vs_fixture, mut vs_reference) = (Stats::new(), Stats::new());

    // Each text alone.
    for (i, f) in fx.iter().enumerate() {
        let got = enc.embed_on(&lane, &[f.text.as_str()]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].tokens, f.n_tokens, "text {i}: token count");
        let tok = model.tokenizer.encode_batch(&[f.text.as_str()]).unwrap();
        assert_eq!(
            tok.row_ids(0).unwrap(),
            &f.input_ids[..],
            "text {i}: token ids"
        );
        vs_fixture.check(
            &format!("text {i} alone vs fixture"),
            &got[0].vector,
            &f.embedding,
        );
        let want = reference::forward(&model.weights, &model.config, &tok).unwrap();
        vs_reference.check(
            &format!("text {i} alone vs reference"),
            &got[0].vector,
            &want,
        );
    }

    // Mixed batches: all 25, reversed, and groups of 7 (padding in every batch).
    let texts: Vec<&str> = fx.iter().map(|f| f.text.as_str()).collect();
    let all: Vec<usize> = (0..fx.len()).collect();
    let rev: Vec<usize> = all.iter().rev().copied().collect();
    let mut batches = vec![all.clone(), rev];
    batches.extend(all.chunks(7).map(|c| c.to_vec()));
    batches.push(vec![3, 17, 3, 0, 24]);
    for idx in &batches {
        let batch: Vec<&str> = idx.iter().map(|&i| texts[i]).collect();
        let got = enc.embed_on(&lane, &batch).unwrap();
        let tok = model.tokenizer.encode_batch(&batch).unwrap();
        let want = reference::forward(&model.weights, &model.config, &tok).unwrap();
        for (j, &i) in idx.iter().enumerate() {
            vs_fixture.check(
                &format!("text {i} in batch {idx:?} vs fixture"),
                &got[j].vector,
                &fx[i].embedding,
            );
            vs_reference.check(
                &format!("text {i} in batch {idx:?} vs reference"),
                &got[j].vector,
                &want[j * h..(j + 1) * h],
            );
        }
    }
    eprintln!(
        "GPU vs fixture: min cosine {:.9}, max |diff| {:.3e}; GPU vs CPU reference: min cosine {:.9}, max |diff| {:.3e}",
        vs_fixture.min_cos, vs_fixture.max_diff, vs_reference.min_cos, vs_reference.max_diff
    );
}

// ---------------------------------------------------------------------------
// 3. Many threads, one encoder

#[test]
fn sixteen_threads_share_one_encoder() {
    let Some(dev) = cuda() else { return };
    let Some(dir) = model_dir() else { return };
    let fx = fixtures();
    let enc = Arc::new(load_f32(&dir, &dev).expect("load the model on the GPU"));
    let texts: Arc<Vec<String>> = Arc::new(fx.iter().map(|f| f.text.clone()).collect());

    // Requests: every text alone, then mixed batches.
    let mut requests: Vec<Vec<usize>> = (0..texts.len()).map(|i| vec![i]).collect();
    requests.push((0..texts.len()).collect());
    requests.extend(
        (0..texts.len())
            .collect::<Vec<_>>()
            .chunks(6)
            .map(|c| c.to_vec()),
    );
    requests.push(vec![24, 1, 12]);
    let requests = Arc::new(requests);

    let run = |lane: &Lease, enc: &Encoder, idx: &[usize], texts: &[String]| -> Vec<Vec<f32>> {
        let batch: Vec<&str> = idx.iter().map(|&i| texts[i].as_str()).collect();
        enc.embed_on(lane, &batch)
            .unwrap()
            .into_iter()
            .map(|e| e.vector)
            .collect()
    };
    let expected: Vec<Vec<Vec<f32>>> = {
        let lane = dev.lease().unwrap();
        requests
            .iter()
            .map(|r| run(&lane, &enc, r, &texts))
            .collect()
    };
    let expected = Arc::new(expected);

    let threads = 16;
    let rounds = 3;
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (dev, enc, texts, requests, expected, barrier) = (
                dev.clone(),
                enc.clone(),
                texts.clone(),
                requests.clone(),
                expected.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                let lane = dev.lease().unwrap();
                barrier.wait();
                let (mut max_diff, mut identical, mut total) = (0f32, 0usize, 0usize);
                let mut rng = Rng(100 + t as u64);
                for _ in 0..rounds * requests.len() {
                    let r = rng.below(requests.len());
                    let got = run(&lane, &enc, &requests[r], &texts);
                    for (g, w) in got.iter().zip(&expected[r]) {
                        max_diff = max_diff.max(max_abs_diff(g, w));
                        identical += usize::from(g == w);
                        total += 1;
                    }
                }
                (lane.index(), max_diff, identical, total)
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .collect();
    let mut lanes_used: Vec<usize> = results.iter().map(|r| r.0).collect();
    lanes_used.sort_unstable();
    lanes_used.dedup();
    assert_eq!(lanes_used.len(), threads, "each thread had its own lane");
    let max_diff = results.iter().map(|r| r.1).fold(0.0, f32::max);
    let identical: usize = results.iter().map(|r| r.2).sum();
    let total: usize = results.iter().map(|r| r.3).sum();
    eprintln!("{threads} threads: {total} embeddings, {identical} bit-identical to one thread, max |diff| {max_diff:.3e}");
    assert!(
        max_diff <= 1e-6,
        "threads disagree with one thread: max |diff| {max_diff:.3e}"
    );
}

/// These tests hold the float32 path to the fixture's tolerances; `Encoder::load`
/// resolves to float16 on CUDA (cuda_precision.rs covers the half precisions).
fn load_f32(dir: &std::path::Path, dev: &Device) -> lanes_nn::Result<Encoder> {
    let options = EncoderOptions {
        precision: Precision::F32,
    };
    Encoder::load_with(dir, dev, options)
}
