//! Each kernel against a naive f64 implementation on small random inputs.

use super::*;
use crate::weights::HostTensor;
use proptest::prelude::*;

/// Deterministic xorshift values in [-scale, scale).
fn rand_vec(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - y).abs())
        .fold(0.0, f64::max)
}

fn naive_linear(x: &[f32], rows: usize, in_dim: usize, w: &[f32], b: &[f32]) -> Vec<f64> {
    let out_dim = b.len();
    let mut out = vec![0.0; rows * out_dim];
    for r in 0..rows {
        for o in 0..out_dim {
            let dot: f64 = (0..in_dim)
                .map(|i| f64::from(x[r * in_dim + i]) * f64::from(w[o * in_dim + i]))
                .sum();
            out[r * out_dim + o] = dot + f64::from(b[o]);
        }
    }
    out
}

/// Attention per packed sequence, in f64.
fn naive_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    offsets: &[u32],
    heads: usize,
    hd: usize,
) -> Vec<f64> {
    let hidden = heads * hd;
    let mut out = vec![0.0; q.len()];
    let idx = |t: usize, h: usize, d: usize| t * hidden + h * hd + d;
    for w in offsets.windows(2) {
        let r = w[0] as usize..w[1] as usize;
        for h in 0..heads {
            for i in r.clone() {
                let scores: Vec<f64> = r
                    .clone()
                    .map(|j| {
                        let dot: f64 = (0..hd)
                            .map(|d| f64::from(q[idx(i, h, d)]) * f64::from(k[idx(j, h, d)]))
                            .sum();
                        dot / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..hd {
                    out[idx(i, h, d)] = r
                        .clone()
                        .zip(&e)
                        .map(|(j, e)| e / sum * f64::from(v[idx(j, h, d)]))
                        .sum();
                }
            }
        }
    }
    out
}

/// Offsets of `batch` packed sequences of 1 to `max_len` tokens (seed-derived).
fn offsets_for(batch: usize, max_len: usize, seed: u64) -> Vec<u32> {
    let lens = rand_vec(seed ^ 0xabc, batch, 1.0);
    let mut offsets = vec![0u32];
    for l in lens {
        let len = 1 + ((l.abs() * max_len as f32) as usize).min(max_len - 1);
        offsets.push(offsets.last().unwrap() + len as u32);
    }
    offsets
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn linear_matches_naive(rows in 0usize..7, in_dim in 1usize..70, out_dim in 1usize..40, seed: u64) {
        let x = rand_vec(seed, rows * in_dim, 2.0);
        let w = rand_vec(seed ^ 1, out_dim * in_dim, 0.5);
        let b = rand_vec(seed ^ 2, out_dim, 1.0);
        let mut out = vec![f32::NAN; rows * out_dim];
        linear(&x, rows, in_dim, &w, &b, &mut out);
        prop_assert!(max_diff(&out, &naive_linear(&x, rows, in_dim, &w, &b)) < 1e-4);
    }

    #[test]
    fn attention_matches_naive(batch in 1usize..4, seq in 1usize..12, heads in 1usize..4, hd in 1usize..9, seed: u64) {
        let offsets = offsets_for(batch, seq, seed);
        let n = *offsets.last().unwrap() as usize * heads * hd;
        let (q, k, v) = (rand_vec(seed, n, 2.0), rand_vec(seed ^ 3, n, 2.0), rand_vec(seed ^ 5, n, 1.0));
        let mut out = vec![f32::NAN; n];
        attention(&q, &k, &v, &offsets, heads, hd, &mut out);
        let want = naive_attention(&q, &k, &v, &offsets, heads, hd);
        prop_assert!(max_diff(&out, &want) < 1e-5, "diff {}", max_diff(&out, &want));
    }

    #[test]
    fn layer_norm_matches_naive(rows in 0usize..5, dim in 1usize..50, seed: u64) {
        let x = rand_vec(seed, rows * dim, 3.0);
        let g = rand_vec(seed ^ 7, dim, 1.0);
        let b = rand_vec(seed ^ 11, dim, 1.0);
        let mut out = vec![0.0; rows * dim];
        layer_norm(&x, rows, dim, &g, &b, 1e-12, &mut out);
        let mut want = vec![0.0f64; rows * dim];
        for r in 0..rows {
            let row: Vec<f64> = x[r * dim..(r + 1) * dim].iter().map(|&v| f64::from(v)).collect();
            let mean = row.iter().sum::<f64>() / dim as f64;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / dim as f64;
            for i in 0..dim {
                want[r * dim + i] = (row[i] - mean) / (var + 1e-12).sqrt() * f64::from(g[i]) + f64::from(b[i]);
            }
        }
        prop_assert!(max_diff(&out, &want) < 1e-5);
    }

    #[test]
    fn pool_and_normalize_match_naive(batch in 1usize..4, seq in 1usize..10, dim in 1usize..20, seed: u64) {
        let offsets = offsets_for(batch, seq, seed);
        let hidden = rand_vec(seed, *offsets.last().unwrap() as usize * dim, 2.0);
        let mut out = vec![f32::NAN; batch * dim];
        mean_pool(&hidden, &offsets, dim, &mut out);
        let mut want = vec![0.0f64; batch * dim];
        for b in 0..batch {
            let (lo, hi) = (offsets[b] as usize, offsets[b + 1] as usize);
            for d in 0..dim {
                let s: f64 = (lo..hi).map(|t| f64::from(hidden[t * dim + d])).sum();
                want[b * dim + d] = s / (hi - lo) as f64;
            }
        }
        prop_assert!(max_diff(&out, &want) < 1e-5);
        l2_normalize(&mut out, batch, dim);
        for b in 0..batch {
            let norm: f64 = want[b * dim..(b + 1) * dim].iter().map(|v| v * v).sum::<f64>().sqrt();
            want[b * dim..(b + 1) * dim].iter_mut().for_each(|v| *v /= norm.max(1e-12));
        }
        prop_assert!(max_diff(&out, &want) < 1e-5);
    }
}

#[test]
fn comparison_detects_a_wrong_kernel() {
    // The tolerance used above must be tight enough to catch a real bug,
    // e.g. forgetting the bias or the attention scale.
    let (rows, in_dim, out_dim) = (3, 16, 8);
    let x = rand_vec(1, rows * in_dim, 2.0);
    let w = rand_vec(2, out_dim * in_dim, 0.5);
    let b = rand_vec(3, out_dim, 1.0);
    let mut out = vec![0.0; rows * out_dim];
    linear(&x, rows, in_dim, &w, &vec![0.0; out_dim], &mut out);
    assert!(max_diff(&out, &naive_linear(&x, rows, in_dim, &w, &b)) > 1e-2);

    let n = 2 * 5 * 2 * 4;
    let (q, k, v) = (
        rand_vec(4, n, 2.0),
        rand_vec(5, n, 2.0),
        rand_vec(6, n, 1.0),
    );
    // Attending across the sequence boundary is caught.
    let mut out = vec![0.0; n];
    attention(&q, &k, &v, &[0, 10], 2, 4, &mut out);
    assert!(max_diff(&out, &naive_attention(&q, &k, &v, &[0, 3, 10], 2, 4)) > 1e-3);
}

#[test]
fn gelu_matches_exact_values() {
    // 0.5·x·erfc(−x/√2) from Python's math.erfc.
    let cases = [
        (0.0, 0.0),
        (1.0, 0.841_344_746_068_542_9),
        (-1.0, -0.158_655_253_931_457_05),
        (0.5, 0.345_731_230_637_006_56),
        (-3.0, -0.004_049_694_094_890_287),
        (3.0, 2.995_950_305_905_11),
        (-10.0, -7.619_853_024_160_593e-23),
    ];
    for (x, want) in cases {
        let got = f64::from(gelu(x));
        assert!(
            (got - want).abs() <= 1e-7 * want.abs().max(1e-20),
            "gelu({x}) = {got}, want {want}"
        );
    }
    let mut v = vec![1.0, -1.0];
    gelu_inplace(&mut v);
    assert_eq!(v, vec![gelu(1.0), gelu(-1.0)]);
}

#[test]
fn softmax_rows_sum_to_one() {
    let mut s = vec![1.0, 2.0, 3.0, 100.0];
    softmax_inplace(&mut s);
    assert!(s[3] > 0.99 && s[0] < s[1] && s[1] < s[2]);
    assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    let mut s = vec![-2.0, -2.0];
    softmax_inplace(&mut s);
    assert!(s.iter().all(|p| (p - 0.5).abs() < 1e-6), "{s:?}");
}

#[test]
fn offsets_are_checked() {
    check_offsets(&[0, 2, 2, 5], 5).expect("valid, with an empty sequence");
    check_offsets(&[0], 0).expect("empty batch");
    for bad in [&[][..], &[1, 5], &[0, 3, 2, 5], &[0, 4]] {
        assert!(check_offsets(bad, 5).is_err(), "{bad:?}");
    }
}

#[test]
fn add_and_normalize_edge_cases() {
    let mut x = vec![1.0, 2.0];
    add_inplace(&mut x, &[0.5, -2.0]);
    assert_eq!(x, vec![1.5, 0.0]);
    let mut z = vec![0.0; 4];
    l2_normalize(&mut z, 1, 4);
    assert_eq!(z, vec![0.0; 4]);
    let mut p = vec![0.0; 2];
    mean_pool(&[], &[0, 0], 2, &mut p);
    assert_eq!(p, vec![0.0, 0.0]);
}

/// word (5 rows), position (4 rows), token_type (2 rows), 3 wide.
fn tiny_embeddings() -> [HostTensor; 3] {
    let t = |name: &str, rows: usize, seed: u64| {
        HostTensor::new(name, vec![rows, 3], rand_vec(seed, rows * 3, 1.0)).expect("consistent")
    };
    [t("word", 5, 1), t("position", 4, 2), t("token_type", 2, 3)]
}

fn tables(w: &[HostTensor; 3]) -> [Table<'_>; 3] {
    [(&w[0]).into(), (&w[1]).into(), (&w[2]).into()]
}

#[test]
fn embed_sums_the_three_tables() {
    let w = tiny_embeddings();
    let (ids, types) = ([4u32, 0, 2, 1], [1u32, 0, 0, 1]);
    let mut out = vec![0.0; 4 * 3];
    // Sequences of 3 and 1 tokens: positions 0, 1, 2, 0.
    embed(&ids, &types, &[0, 3, 4], tables(&w), &mut out).expect("ids in range");
    for (t, pos) in [0usize, 1, 2, 0].into_iter().enumerate() {
        for d in 0..3 {
            let want = w[0].data[ids[t] as usize * 3 + d]
                + w[2].data[types[t] as usize * 3 + d]
                + w[1].data[pos * 3 + d];
            assert_eq!(out[t * 3 + d], want);
        }
    }
}

#[test]
fn embed_rejects_out_of_range_ids() {
    let w = tiny_embeddings();
    let mut out = vec![0.0; 3];
    let err = embed(&[5], &[0], &[0, 1], tables(&w), &mut out).expect_err("id 5 of 5 rows");
    assert!(
        err.to_string().contains("word") && err.to_string().contains('5'),
        "{err}"
    );
    assert!(embed(&[0], &[2], &[0, 1], tables(&w), &mut out).is_err());
    let mut out = vec![0.0; 5 * 3];
    assert!(
        embed(&[0; 5], &[0; 5], &[0, 5], tables(&w), &mut out).is_err(),
        "position 4 of 4 rows"
    );
    embed(&[0; 5], &[0; 5], &[0, 3, 5], tables(&w), &mut out).expect("positions restart");
    assert!(embed(&[0; 5], &[0; 5], &[0, 3, 4], tables(&w), &mut out).is_err());
}
