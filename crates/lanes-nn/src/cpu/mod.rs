//! Single-threaded CPU kernels on plain slices.
//!
//! These are the building blocks of the `reference`
//! forward pass and of CPU lane jobs. Each one runs on the calling thread
//! only (matrix products use `gemm` with `Parallelism::None`), allocates at
//! most a small scratch buffer, and follows torch's BERT numerics.
//!
//! Layout: activations are row-major `[tokens, dim]`, the tokens of all
//! sequences packed back to back; `offsets` (`batch + 1` entries, see
//! [`Tokens`](crate::Tokens)) say where each sequence starts and ends. Linear
//! weights are torch's `[out, in]`, row-major.
//!
//! # Panics
//!
//! Slice lengths that disagree with the given dimensions are programming
//! errors and panic (with a message naming the argument). Values from user
//! input (token ids) are checked and reported as [`NnError`] instead.

use crate::error::{NnError, Result};
use crate::weights::HostTensor;

#[cfg(test)]
mod tests;

fn check_len(what: &str, len: usize, expected: usize) {
    assert_eq!(
        len, expected,
        "{what}: slice length {len}, expected {expected}"
    );
}

/// Asserts that every element `(i, j)` with `i < rows`, `j < cols` of a
/// strided matrix lies inside a slice of length `len`.
fn check_strided(what: &str, len: usize, rows: usize, cols: usize, rs: usize, cs: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last < len,
        "{what}: strided view reaches index {last}, slice length {len}"
    );
}

/// A read-only strided matrix view for [`matmul`].
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    /// Row stride in elements.
    rs: usize,
    /// Column stride in elements.
    cs: usize,
}

/// `dst[m, n] = (accumulate ? dst : 0) + scale · lhs[m, k] · rhs[k, n]`,
/// single-threaded. `dst` is row-major with row stride `dst_rs`.
#[allow(clippy::too_many_arguments)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: View<'_>,
    rhs: View<'_>,
    accumulate: bool,
    scale: f32,
) {
    check_strided("matmul dst", dst.len(), m, n, dst_rs, 1);
    check_strided("matmul lhs", lhs.data.len(), m, k, lhs.rs, lhs.cs);
    check_strided("matmul rhs", rhs.data.len(), k, n, rhs.rs, rhs.cs);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| dst[i * dst_rs..i * dst_rs + n].fill(0.0));
        }
        return;
    }
    let s = |x: usize| x as isize;
    // SAFETY: the three `check_strided` calls above prove that every element
    // gemm reads or writes lies inside its slice; `dst` is a unique borrow, so
    // it does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            s(dst_rs),
            accumulate,
            lhs.data.as_ptr(),
            s(lhs.cs),
            s(lhs.rs),
            rhs.data.as_ptr(),
            s(rhs.cs),
            s(rhs.rs),
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Fully connected layer: `out[rows, out_dim] = x[rows, in_dim] · wᵀ + b`
/// with `w` in torch layout `[out_dim, in_dim]` and `out_dim = b.len()`.
pub fn linear(x: &[f32], rows: usize, in_dim: usize, w: &[f32], b: &[f32], out: &mut [f32]) {
    let out_dim = b.len();
    check_len("linear x", x.len(), rows * in_dim);
    check_len("linear w", w.len(), out_dim * in_dim);
    check_len("linear out", out.len(), rows * out_dim);
    for row in out.chunks_exact_mut(out_dim.max(1)) {
        row.copy_from_slice(&b[..row.len()]);
    }
    let lhs = View {
        data: x,
        rs: in_dim,
        cs: 1,
    };
    // wᵀ[kk, j] = w[j, kk]
    let rhs = View {
        data: w,
        rs: 1,
        cs: in_dim,
    };
    matmul((rows, out_dim, in_dim), out, out_dim, lhs, rhs, true, 1.0);
}

/// `x += y`, element-wise (the residual connections).
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    check_len("add_inplace y", y.len(), x.len());
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// Exact (erf-based) GELU, torch's default: `0.5·x·(1 + erf(x/√2))`.
///
/// Evaluated in f64 as `0.5·x·erfc(−x/√2)` with `libm::erfc` (the same
/// function, without the cancellation of `1 + erf` for very negative `x`),
/// so the result is the f32 nearest the exact value, up to an ulp.
pub fn gelu(x: f32) -> f32 {
    let x = f64::from(x);
    (0.5 * x * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)) as f32
}

/// Applies [`gelu`] to every element.
pub fn gelu_inplace(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = gelu(*v));
}

/// LayerNorm over the last dimension: `out = (x − mean) / √(var + eps) · g + b`,
/// with the biased variance, statistics accumulated in f64.
pub fn layer_norm(
    x: &[f32],
    rows: usize,
    dim: usize,
    g: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    check_len("layer_norm x", x.len(), rows * dim);
    check_len("layer_norm out", out.len(), rows * dim);
    out.copy_from_slice(x);
    layer_norm_inplace(out, rows, dim, g, b, eps);
}

/// In-place [`layer_norm`].
pub fn layer_norm_inplace(x: &mut [f32], rows: usize, dim: usize, g: &[f32], b: &[f32], eps: f32) {
    check_len("layer_norm x", x.len(), rows * dim);
    check_len("layer_norm gamma", g.len(), dim);
    check_len("layer_norm beta", b.len(), dim);
    if dim == 0 {
        return;
    }
    for row in x.chunks_exact_mut(dim) {
        let n = dim as f64;
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let rstd = 1.0 / (var + f64::from(eps)).sqrt();
        for ((v, &gi), &bi) in row.iter_mut().zip(g).zip(b) {
            *v = ((f64::from(*v) - mean) * rstd) as f32 * gi + bi;
        }
    }
}

/// Softmax of one score row in place: subtracts the row maximum, sums in f64.
pub fn softmax_inplace(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += f64::from(*s);
    }
    let inv = (1.0 / sum) as f32;
    scores.iter_mut().for_each(|s| *s *= inv);
}

/// Checks that `offsets` describes `tokens` packed tokens: it starts at 0, never
/// decreases and ends at `tokens`. Every kernel below that takes offsets needs
/// this (and panics without it); callers holding a [`Tokens`](crate::Tokens)
/// have it by construction.
pub fn check_offsets(offsets: &[u32], tokens: usize) -> Result<()> {
    let ok = offsets.first() == Some(&0)
        && offsets.windows(2).all(|w| w[0] <= w[1])
        && offsets.last().map(|&l| l as usize) == Some(tokens);
    if ok {
        Ok(())
    } else {
        Err(NnError::InvalidInput(format!(
            "offsets {:?}... do not split {tokens} tokens into sequences",
            &offsets[..offsets.len().min(8)]
        )))
    }
}

/// The token ranges of the sequences `offsets` describes.
fn ranges(offsets: &[u32]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    offsets.windows(2).map(|w| w[0] as usize..w[1] as usize)
}

/// Multi-head scaled dot-product attention over packed sequences.
///
/// `q`, `k`, `v` and `out` are `[tokens, heads·head_dim]` (head `h` in columns
/// `h·head_dim ..`); each query attends to the keys of its own sequence
/// (`offsets`, checked with [`check_offsets`]):
/// `out = softmax(q·kᵀ/√head_dim) · v` per sequence and head.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    offsets: &[u32],
    heads: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    let hidden = heads * head_dim;
    let tokens = q.len() / hidden.max(1);
    let n = tokens * hidden;
    check_len("attention q", q.len(), n);
    check_len("attention k", k.len(), n);
    check_len("attention v", v.len(), n);
    check_len("attention out", out.len(), n);
    assert!(
        check_offsets(offsets, tokens).is_ok(),
        "attention offsets: {offsets:?} for {tokens} tokens"
    );
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut scores = Vec::new();
    for r in ranges(offsets) {
        let seq = r.len();
        if seq == 0 {
            continue;
        }
        scores.resize(seq * seq, 0.0);
        for h in 0..heads {
            let base = r.start * hidden + h * head_dim;
            // scores[i, j] = scale · q[i, :] · k[j, :]
            let qv = View {
                data: &q[base..],
                rs: hidden,
                cs: 1,
            };
            let kt = View {
                data: &k[base..],
                rs: 1,
                cs: hidden,
            };
            matmul((seq, seq, head_dim), &mut scores, seq, qv, kt, false, scale);
            for row in scores.chunks_exact_mut(seq) {
                softmax_inplace(row);
            }
            // out[i, :] = Σ_j p[i, j] · v[j, :]
            let p = View {
                data: &scores,
                rs: seq,
                cs: 1,
            };
            let vv = View {
                data: &v[base..],
                rs: hidden,
                cs: 1,
            };
            matmul(
                (seq, head_dim, seq),
                &mut out[base..],
                hidden,
                p,
                vv,
                false,
                1.0,
            );
        }
    }
}

/// An embedding table as [`embed`] reads it: `[rows, dim]` values and a name for
/// errors.
#[derive(Clone, Copy, Debug)]
pub struct Table<'a> {
    /// The tensor name errors quote.
    pub name: &'a str,
    /// Row-major `[rows, dim]`.
    pub data: &'a [f32],
}

impl<'a> From<&'a HostTensor> for Table<'a> {
    fn from(t: &'a HostTensor) -> Self {
        Table {
            name: &t.name,
            data: &t.data,
        }
    }
}

/// Embedding lookup over packed sequences:
/// `out[t] = word[ids[t]] + token_type[type_ids[t]] + position[t − start of its sequence]`
/// (summed in that order, as torch does). Fails on an id or a position outside
/// its table, naming the table.
pub fn embed(
    ids: &[u32],
    type_ids: &[u32],
    offsets: &[u32],
    [word, position, token_type]: [Table<'_>; 3],
    out: &mut [f32],
) -> Result<()> {
    let tokens = ids.len();
    check_len("embed type_ids", type_ids.len(), tokens);
    check_offsets(offsets, tokens)?;
    let dim = out.len() / tokens.max(1);
    check_len("embed out", out.len(), tokens * dim);
    for r in ranges(offsets) {
        for (pos, t) in r.enumerate() {
            let w = table_row(word, ids[t] as usize, dim, "token id")?;
            let kind = table_row(token_type, type_ids[t] as usize, dim, "token type id")?;
            let p = table_row(position, pos, dim, "position")?;
            let dst = &mut out[t * dim..(t + 1) * dim];
            for (i, o) in dst.iter_mut().enumerate() {
                *o = (w[i] + kind[i]) + p[i];
            }
        }
    }
    Ok(())
}

/// Row `id` of an embedding table with rows of `dim` values, or an error
/// naming the table when `id` is out of range.
fn table_row<'t>(table: Table<'t>, id: usize, dim: usize, what: &str) -> Result<&'t [f32]> {
    table.data.get(id * dim..(id + 1) * dim).ok_or_else(|| {
        let rows = table.data.len() / dim.max(1);
        NnError::InvalidInput(format!(
            "{what} {id} out of range for {} ({rows} rows)",
            table.name
        ))
    })
}

/// Mean over each packed sequence: `out[b] = Σ_{t in b} hidden[t] / max(len, 1e-9)`
/// (sentence-transformers' mean pooling; an empty sequence pools to zeros).
/// `out` is `[batch, dim]`, `offsets` checked with [`check_offsets`].
pub fn mean_pool(hidden: &[f32], offsets: &[u32], dim: usize, out: &mut [f32]) {
    let tokens = hidden.len() / dim.max(1);
    check_len("mean_pool hidden", hidden.len(), tokens * dim);
    let batch = offsets.len().saturating_sub(1);
    check_len("mean_pool out", out.len(), batch * dim);
    assert!(
        check_offsets(offsets, tokens).is_ok(),
        "mean_pool offsets: {offsets:?} for {tokens} tokens"
    );
    let mut acc = vec![0.0f64; dim];
    for (b, r) in ranges(offsets).enumerate() {
        acc.fill(0.0);
        let count = r.len() as f64;
        for row in hidden[r.start * dim..r.end * dim].chunks_exact(dim.max(1)) {
            acc.iter_mut()
                .zip(row)
                .for_each(|(a, &x)| *a += f64::from(x));
        }
        let denom = count.max(1e-9);
        for (o, a) in out[b * dim..(b + 1) * dim].iter_mut().zip(&acc) {
            *o = (a / denom) as f32;
        }
    }
}

/// Scales each of the `rows` rows of `x` to unit L2 norm:
/// `x / max(‖x‖, 1e-12)` (torch's `F.normalize`). A zero row stays zero.
pub fn l2_normalize(x: &mut [f32], rows: usize, dim: usize) {
    check_len("l2_normalize x", x.len(), rows * dim);
    for row in x.chunks_exact_mut(dim.max(1)) {
        // Eight partial sums (in f64): independent chains the compiler vectorizes;
        // a single running sum would serialize on the add latency (this runs on
        // the host after every forward, 512 rows of 384 at a time).
        let mut acc = [0f64; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += f64::from(v) * f64::from(v);
            }
        }
        let tail: f64 = chunks
            .remainder()
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum();
        let norm = (acc.iter().sum::<f64>() + tail).sqrt();
        let inv = 1.0 / norm.max(1e-12);
        row.iter_mut()
            .for_each(|v| *v = (f64::from(*v) * inv) as f32);
    }
}
