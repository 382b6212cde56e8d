//! The packed, multi-dtype kernels of `exec/fused.cu` and the tensor-core GEMM
//! (`LaneBlas::gemm_ex`) on a GPU, each for f32, f16 and bf16 activations, against
//! the CPU kernels of `lanes_nn::cpu` run in f32 on the same (dtype-rounded) inputs.
//!
//! Packed batches have ragged lengths (1 token, odd lengths, 128 and past the
//! 128-key tile). f32 results must match the CPU within 1e-5 (1e-6 where the math
//! is the same op for op); f16 / bf16 ones within their rounding
//! (`|diff| <= tol * (1 + |ref|)`, tol 2e-3 / 1.6e-2) and with cosine >= 0.9999 /
//! 0.999 over the whole output.
//!
//! Then the whole MiniLM forward through [`CudaExec`] (the `Exec` ops, weights
//! converted to each dtype; biases and LayerNorm parameters f32) on the 25 fixture
//! texts as one packed batch: f32 against the fixture (cosine >= 0.99999, max
//! |diff| <= 1e-5), f16 and bf16 against f32 (cosine >= 0.9999 / 0.999 per text).
//!
//! Each test opens CUDA device 0; without one it prints `SKIPPED (no CUDA)` and
//! passes, unless `LANES_REQUIRE_CUDA=1`, when it fails. The forward test needs the
//! model (`$LANES_MODEL`, else `<workspace>/models/all-MiniLM-L6-v2`) and the
//! fixture (`$LANES_FIXTURE`, else this crate's copy).
#![cfg(feature = "cuda")]

use std::ffi::c_void;

use lanes::backend::cuda::{kernel_arg, CudaBackend, CudaFunction, CudaLane, GemmType, Op};
use lanes::{Buffer, Device, Lease};
use lanes_nn::exec::cuda::CudaExec;
use lanes_nn::exec::{EmbedTables, Exec};
use lanes_nn::{cpu, DType, Model, Tensor, TensorMut};

mod common;

use common::{cosine, cuda, Dt, Rng, DTYPES};

const MODULE: &str = "lanes_nn_fused";
const SOURCE: &str = include_str!("../src/exec/fused.cu");

/// The cuBLAS element type of `dt`.
fn gemm_type(dt: Dt) -> GemmType {
    match dt {
        Dt::F32 => GemmType::F32,
        Dt::F16 => GemmType::F16,
        Dt::Bf16 => GemmType::BF16,
    }
}

/// Device 0, its lane and the compiled module.
struct Gpu {
    dev: Device,
    lease: Lease,
    backend_fn: Box<dyn Fn(&str) -> CudaFunction>,
}

impl Gpu {
    fn open() -> Option<Gpu> {
        let dev = cuda()?;
        let lease = dev.lease().expect("lease a lane");
        let dev2 = dev.clone();
        let backend_fn = Box::new(move |name: &str| {
            dev2.backend()
                .as_any()
                .downcast_ref::<CudaBackend>()
                .expect("a CUDA device")
                .function(MODULE, SOURCE, name)
                .unwrap_or_else(|e| panic!("kernel {name}: {e}"))
        });
        Some(Gpu {
            dev,
            lease,
            backend_fn,
        })
    }
    fn lane(&self) -> &CudaLane {
        self.lease
            .raw()
            .as_any()
            .downcast_ref::<CudaLane>()
            .expect("a CUDA lane")
    }
    fn f(&self, name: &str) -> CudaFunction {
        (self.backend_fn)(name)
    }
    fn up(&self, bytes: &[u8]) -> Buffer {
        let buf = self.lease.alloc(bytes.len().max(16)).expect("alloc");
        self.lease.upload(&buf, bytes).expect("upload");
        buf
    }
    fn up_t(&self, dt: Dt, v: &[f32]) -> Buffer {
        self.up(&dt.encode(v))
    }
    fn up_u32(&self, v: &[u32]) -> Buffer {
        self.up(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>())
    }
    fn zeros(&self, bytes: usize) -> Buffer {
        self.up(&vec![0u8; bytes])
    }
    fn down_t(&self, dt: Dt, buf: &Buffer, n: usize) -> Vec<f32> {
        let mut bytes = vec![0u8; n * dt.size()];
        self.lease.download(buf, &mut bytes).expect("download");
        dt.decode(&bytes)
    }
    /// Launches `name` with 1-D blocks.
    fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &mut [*mut c_void],
    ) {
        let f = self.f(name);
        // SAFETY: each caller passes the argument list of `name` as fused.cu declares
        // it, with buffers allocated above holding what the kernel reads and writes
        // (shapes stated at each call); the buffers outlive the blocking download
        // that follows every launch.
        unsafe { self.lane().launch(&f, grid, (block, 1, 1), smem, args) }
            .unwrap_or_else(|e| panic!("launch {name}: {e}"));
    }
}

/// Sequence lengths of the packed test batches: one token, odd lengths, exactly
/// one 128-key tile and past it.
const LENS: [usize; 6] = [1, 7, 128, 130, 33, 64];

fn offsets(lens: &[usize]) -> Vec<u32> {
    let mut o = vec![0u32];
    for &l in lens {
        o.push(o.last().copied().unwrap_or(0) + l as u32);
    }
    o
}

/// Asserts `got` matches `want` for `dt`: `|diff| <= tol * (1 + |want|)` and the
/// cosine bound; `tight` overrides the f32 tolerance.
fn check(what: &str, dt: Dt, got: &[f32], want: &[f32], tight: Option<f32>) {
    assert_eq!(got.len(), want.len(), "{what} {dt:?}: length");
    let (mut tol, min_cos) = dt.tol();
    if dt == Dt::F32 {
        tol = tight.unwrap_or(tol);
    }
    let mut worst = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what} {dt:?}: element {i} is {g}");
        let d = (g - w).abs() / (1.0 + w.abs());
        worst = worst.max(d);
        assert!(
            d <= tol,
            "{what} {dt:?}: element {i}: {g} vs {w} (scaled diff {d:.3e} > {tol:.1e})"
        );
    }
    let c = cosine(got, want);
    assert!(c >= min_cos, "{what} {dt:?}: cosine {c} < {min_cos}");
    eprintln!("{what} {dt:?}: max scaled diff {worst:.3e}, cosine {c:.9}");
}

/// Which attention kernel a case runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Attn {
    /// `flash_attn_{T}_c{C}`: CUDA cores, every dtype.
    Flash,
    /// `tc_attn_{T}_d{D}`: tensor cores, f16 / bf16, head_dim 32 or 64.
    TensorCore,
    /// `row_attn_f32_d{D}`: a thread per query, f32, head_dim 32 or 64.
    Rows,
    /// `row_attn4_f32_d{D}`: four threads per query, f32, head_dim 32 or 64.
    Rows4,
}

/// Runs one attention kernel on a packed batch of [`LENS`] and checks it against
/// `cpu::attention` per sequence (q, k, v with the bias added).
fn attention_case(gpu: &Gpu, dt: Dt, heads: usize, d: usize, kind: Attn) {
    let hidden = heads * d;
    let offs = offsets(&LENS);
    let rows = *offs.last().unwrap() as usize;
    let mut rng = Rng(11 + d as u64);
    let qkv = rng.vec_in(dt, rows * 3 * hidden, -1.5, 1.5);
    let bias: Vec<f32> = rng.vec_in(Dt::F32, 3 * hidden, -0.3, 0.3);
    let mut want = vec![0f32; rows * hidden];
    let split = |part: usize| -> Vec<f32> {
        (0..rows * hidden)
            .map(|i| {
                let (r, c) = (i / hidden, i % hidden);
                qkv[r * 3 * hidden + part * hidden + c] + bias[part * hidden + c]
            })
            .collect()
    };
    let (q, k, v) = (split(0), split(1), split(2));
    cpu::attention(&q, &k, &v, &offs, heads, d, &mut want);
    let want: Vec<f32> = want.iter().map(|&x| dt.round(x)).collect();
    let qkv_b = gpu.up_t(dt, &qkv);
    let bias_b = gpu.up_t(Dt::F32, &bias);
    let off_b = gpu.up_u32(&offs);
    let out_b = gpu.zeros(rows * hidden * dt.size());
    let max_len = *LENS.iter().max().unwrap();
    let (qp, bp, op, outp) = (qkv_b.ptr().0, bias_b.ptr().0, off_b.ptr().0, out_b.ptr().0);
    let (h_u, d_u, scale) = (heads as u32, d as u32, 1.0 / (d as f32).sqrt());
    let (tok_u, max_u) = (rows as u32, max_len as u32);
    let grid_yz = (heads as u32, LENS.len() as u32);
    match kind {
        Attn::Flash => {
            let c = d.div_ceil(32).next_power_of_two();
            let kt = 128 / c;
            let smem = 4 * (2 * kt * (d + 1) + 16 * d + 16 * kt);
            let mut args = [
                kernel_arg(&qp),
                kernel_arg(&bp),
                kernel_arg(&op),
                kernel_arg(&outp),
                kernel_arg(&tok_u),
                kernel_arg(&max_u),
                kernel_arg(&h_u),
                kernel_arg(&d_u),
                kernel_arg(&scale),
            ];
            gpu.launch(
                &format!("flash_attn_{}_c{c}", dt.suffix()),
                (max_len.div_ceil(16) as u32, grid_yz.0, grid_yz.1),
                128,
                smem as u32,
                &mut args,
            );
        }
        Attn::TensorCore | Attn::Rows | Attn::Rows4 => {
            // One argument list (no head size): (name, queries a block, threads).
            let (name, queries, threads) = match kind {
                Attn::TensorCore => (format!("tc_attn_{}_d{d}", dt.suffix()), 64, 128),
                Attn::Rows4 => (format!("row_attn4_f32_d{d}"), 16, 64),
                _ => (format!("row_attn_f32_d{d}"), 64, 64),
            };
            let mut args = [
                kernel_arg(&qp),
                kernel_arg(&bp),
                kernel_arg(&op),
                kernel_arg(&outp),
                kernel_arg(&tok_u),
                kernel_arg(&max_u),
                kernel_arg(&h_u),
                kernel_arg(&scale),
            ];
            gpu.launch(
                &name,
                (max_len.div_ceil(queries) as u32, grid_yz.0, grid_yz.1),
                threads,
                0,
                &mut args,
            );
        }
    }
    let got = gpu.down_t(dt, &out_b, rows * hidden);
    check(&format!("{kind:?} attention D={d}"), dt, &got, &want, None);
}

#[test]
fn flash_attention_matches_cpu_on_packed_batches() {
    let Some(gpu) = Gpu::open() else { return };
    for dt in DTYPES {
        for (heads, d) in [(12usize, 32usize), (2, 64), (1, 96)] {
            attention_case(&gpu, dt, heads, d, Attn::Flash);
        }
    }
}

#[test]
fn row_attention_matches_cpu_on_packed_batches() {
    let Some(gpu) = Gpu::open() else { return };
    for (heads, d) in [(12usize, 32usize), (2, 64)] {
        attention_case(&gpu, Dt::F32, heads, d, Attn::Rows);
        attention_case(&gpu, Dt::F32, heads, d, Attn::Rows4);
    }
}

#[test]
fn tensor_core_attention_matches_cpu_on_packed_batches() {
    let Some(gpu) = Gpu::open() else { return };
    for dt in [Dt::F16, Dt::Bf16] {
        for (heads, d) in [(12usize, 32usize), (2, 64)] {
            attention_case(&gpu, dt, heads, d, Attn::TensorCore);
        }
    }
}

/// `add_ln_{T}_{V}` (scalar, with a bias) or `add_ln4_{T}_{V}` (4 values a lane
/// per access, no bias) against the CPU LayerNorm, in place over `x`.
fn add_layer_norm_case(gpu: &Gpu, dt: Dt, dim: usize, vectorized: bool) {
    let rows = 37;
    let mut rng = Rng(dim as u64);
    let x = rng.vec_in(dt, rows * dim, -2.0, 2.0);
    let res = rng.vec_in(dt, rows * dim, -2.0, 2.0);
    let bias = rng.vec_in(Dt::F32, dim, -0.5, 0.5);
    let g = rng.vec_in(Dt::F32, dim, 0.5, 1.5);
    let be = rng.vec_in(Dt::F32, dim, -0.2, 0.2);
    let summed: Vec<f32> = (0..rows * dim)
        .map(|i| {
            if vectorized {
                x[i] + res[i]
            } else {
                (x[i] + bias[i % dim]) + res[i]
            }
        })
        .collect();
    let mut want = vec![0f32; rows * dim];
    cpu::layer_norm(&summed, rows, dim, &g, &be, 1e-12, &mut want);
    let want: Vec<f32> = want.iter().map(|&v| dt.round(v)).collect();
    let (xb, rb, bb, gb, beb) = (
        gpu.up_t(dt, &x),
        gpu.up_t(dt, &res),
        gpu.up_t(Dt::F32, &bias),
        gpu.up_t(Dt::F32, &g),
        gpu.up_t(Dt::F32, &be),
    );
    // In place over `x`: the kernel reads a row before writing it.
    let (xp, rp, bp, gp, bep) = (xb.ptr().0, rb.ptr().0, bb.ptr().0, gb.ptr().0, beb.ptr().0);
    let (rows_u, dim_u, eps) = (rows as u32, dim as u32, 1e-12f32);
    let mut args = if vectorized {
        vec![
            kernel_arg(&xp),
            kernel_arg(&rp),
            kernel_arg(&gp),
            kernel_arg(&bep),
            kernel_arg(&xp),
            kernel_arg(&rows_u),
            kernel_arg(&dim_u),
            kernel_arg(&eps),
        ]
    } else {
        vec![
            kernel_arg(&xp),
            kernel_arg(&bp),
            kernel_arg(&rp),
            kernel_arg(&gp),
            kernel_arg(&bep),
            kernel_arg(&xp),
            kernel_arg(&rows_u),
            kernel_arg(&dim_u),
            kernel_arg(&eps),
        ]
    };
    let v = [4usize, 12, 32]
        .into_iter()
        .find(|&v| dim <= 32 * v)
        .unwrap();
    let name = if vectorized { "add_ln4" } else { "add_ln" };
    gpu.launch(
        &format!("{name}_{}_{v}", dt.suffix()),
        (rows.div_ceil(4) as u32, 1, 1),
        128,
        0,
        &mut args,
    );
    let got = gpu.down_t(dt, &xb, rows * dim);
    check(&format!("{name} dim={dim}"), dt, &got, &want, Some(1e-6));
}

#[test]
fn add_layer_norm_with_bias_matches_cpu() {
    let Some(gpu) = Gpu::open() else { return };
    for dt in DTYPES {
        for dim in [384usize, 100, 1024, 30] {
            add_layer_norm_case(&gpu, dt, dim, false);
        }
    }
}

#[test]
fn vectorized_add_layer_norm_matches_cpu() {
    let Some(gpu) = Gpu::open() else { return };
    for dt in DTYPES {
        // 100: a lane's last 4-value group past the row's end; 1024: every group used.
        for dim in [384usize, 100, 1024, 128] {
            add_layer_norm_case(&gpu, dt, dim, true);
        }
    }
}

#[test]
fn embed_layer_norm_uses_positions_within_each_sequence() {
    let Some(gpu) = Gpu::open() else { return };
    let (vocab, types, max_pos, dim) = (50usize, 2usize, 200usize, 384usize);
    for dt in DTYPES {
        let mut rng = Rng(5);
        let word = rng.vec_in(dt, vocab * dim, -1.0, 1.0);
        let tt = rng.vec_in(dt, types * dim, -0.3, 0.3);
        let pos = rng.vec_in(dt, max_pos * dim, -0.5, 0.5);
        let g = rng.vec_in(Dt::F32, dim, 0.5, 1.5);
        let be = rng.vec_in(Dt::F32, dim, -0.2, 0.2);
        let offs = offsets(&LENS);
        let rows = *offs.last().unwrap() as usize;
        let ids: Vec<u32> = (0..rows)
            .map(|_| (rng.next_u64() % vocab as u64) as u32)
            .collect();
        let tys: Vec<u32> = (0..rows)
            .map(|_| (rng.next_u64() % types as u64) as u32)
            .collect();
        let mut summed = vec![0f32; rows * dim];
        for (b, &len) in LENS.iter().enumerate() {
            for p in 0..len {
                let r = offs[b] as usize + p;
                let (w, t) = (ids[r] as usize, tys[r] as usize);
                for i in 0..dim {
                    summed[r * dim + i] = (word[w * dim + i] + tt[t * dim + i]) + pos[p * dim + i];
                }
            }
        }
        let mut want = vec![0f32; rows * dim];
        cpu::layer_norm(&summed, rows, dim, &g, &be, 1e-12, &mut want);
        let want: Vec<f32> = want.iter().map(|&v| dt.round(v)).collect();
        let bufs = [
            gpu.up_u32(&ids),
            gpu.up_u32(&tys),
            gpu.up_u32(&offs),
            gpu.up_t(dt, &word),
            gpu.up_t(dt, &pos),
            gpu.up_t(dt, &tt),
            gpu.up_t(Dt::F32, &g),
            gpu.up_t(Dt::F32, &be),
            gpu.zeros(rows * dim * dt.size()),
        ];
        let p: Vec<u64> = bufs.iter().map(|b| b.ptr().0).collect();
        let (batch, rows_u, dim_u, eps) = (LENS.len() as u32, rows as u32, dim as u32, 1e-12f32);
        let (vocab_u, pos_u, types_u) = (vocab as u32, max_pos as u32, types as u32);
        let mut args = [
            kernel_arg(&p[0]),
            kernel_arg(&p[1]),
            kernel_arg(&p[2]),
            kernel_arg(&batch),
            kernel_arg(&p[3]),
            kernel_arg(&p[4]),
            kernel_arg(&p[5]),
            kernel_arg(&p[6]),
            kernel_arg(&p[7]),
            kernel_arg(&p[8]),
            kernel_arg(&rows_u),
            kernel_arg(&dim_u),
            kernel_arg(&eps),
            kernel_arg(&vocab_u),
            kernel_arg(&pos_u),
            kernel_arg(&types_u),
        ];
        gpu.launch(
            &format!("embed_ln_{}_12", dt.suffix()),
            (rows.div_ceil(4) as u32, 1, 1),
            128,
            0,
            &mut args,
        );
        let got = gpu.down_t(dt, &bufs[8], rows * dim);
        check("embed_ln", dt, &got, &want, Some(1e-6));
    }
}

/// `pool_mean`'s block: `FPOOL_GROUPS` (16) warps.
const POOL_THREADS: u32 = 16 * 32;

#[test]
fn pool_mean_matches_cpu() {
    let Some(gpu) = Gpu::open() else { return };
    // MiniLM's width, and one that leaves a partial block of 32 columns.
    for (dim, dt) in [384usize, 100]
        .into_iter()
        .flat_map(|d| DTYPES.map(|t| (d, t)))
    {
        let offs = offsets(&LENS);
        let rows = *offs.last().unwrap() as usize;
        let mut rng = Rng(9);
        let hidden = rng.vec_in(dt, rows * dim, -1.0, 1.0);
        let mut want = vec![0f32; LENS.len() * dim];
        cpu::mean_pool(&hidden, &offs, dim, &mut want);
        let (hb, ob) = (gpu.up_t(dt, &hidden), gpu.up_u32(&offs));
        let out = gpu.zeros(LENS.len() * dim * 4);
        let (hp, op, outp, dim_u) = (hb.ptr().0, ob.ptr().0, out.ptr().0, dim as u32);
        let tok_u = rows as u32;
        let mut args = [
            kernel_arg(&hp),
            kernel_arg(&op),
            kernel_arg(&outp),
            kernel_arg(&tok_u),
            kernel_arg(&dim_u),
        ];
        gpu.launch(
            &format!("pool_mean_{}", dt.suffix()),
            (LENS.len() as u32, dim.div_ceil(32) as u32, 1),
            POOL_THREADS,
            0,
            &mut args,
        );
        // The output is f32 for every input dtype, computed from the T inputs
        // exactly as the CPU does: tight for all.
        let got = gpu.down_t(Dt::F32, &out, LENS.len() * dim);
        check("pool_mean", Dt::F32, &got, &want, Some(1e-6));
    }
}

#[test]
fn gemm_ex_and_bias_gelu_match_cpu() {
    let Some(gpu) = Gpu::open() else { return };
    let blas = gpu.lane().blas().expect("cuBLAS");
    for dt in DTYPES {
        for (rows, k, n, gelu) in [
            (353usize, 384usize, 1536usize, true),
            (129, 1536, 384, false),
            (5, 384, 1152, false),
        ] {
            let mut rng = Rng((rows * n) as u64);
            let x = rng.vec_in(dt, rows * k, -1.0, 1.0);
            let w = rng.vec_in(dt, n * k, -0.1, 0.1);
            let b = rng.vec_in(Dt::F32, n, -0.5, 0.5);
            let mut want = vec![0f32; rows * n];
            cpu::linear(&x, rows, k, &w, &b, &mut want);
            if gelu {
                cpu::gelu_inplace(&mut want);
            }
            let want: Vec<f32> = want.iter().map(|&v| dt.round(v)).collect();
            let (xb, wb, bb) = (gpu.up_t(dt, &x), gpu.up_t(dt, &w), gpu.up_t(Dt::F32, &b));
            let out = gpu.zeros(rows * n * dt.size());
            // Row-major out[rows, n] = x · wᵀ: column-major C (n × rows) = wᵀ · x.
            // SAFETY: x holds rows*k, w n*k and out rows*n elements of `dt`, all
            // allocated on this lane and alive until the download below.
            unsafe {
                blas.gemm_ex(
                    Op::T,
                    Op::N,
                    (n, rows, k),
                    1.0,
                    gemm_type(dt),
                    (wb.ptr(), k),
                    (xb.ptr(), k),
                    0.0,
                    gemm_type(dt),
                    (out.ptr(), n),
                )
            }
            .expect("gemm_ex");
            let (op, bp, total, n_u, g) = (
                out.ptr().0,
                bb.ptr().0,
                (rows * n) as u32,
                n as u32,
                i32::from(gelu),
            );
            let mut args = [
                kernel_arg(&op),
                kernel_arg(&bp),
                kernel_arg(&total),
                kernel_arg(&n_u),
                kernel_arg(&g),
            ];
            gpu.launch(
                &format!("bias_act_vec_{}", dt.suffix()),
                (64, 1, 1),
                256,
                0,
                &mut args,
            );
            let got = gpu.down_t(dt, &out, rows * n);
            check(
                &format!("gemm_ex+bias_act {rows}x{k}x{n} gelu={gelu}"),
                dt,
                &got,
                &want,
                None,
            );
        }
    }
}

#[test]
fn conversions_round_to_nearest_even() {
    let Some(gpu) = Gpu::open() else { return };
    let mut rng = Rng(3);
    let mut x: Vec<f32> = (0..4099).map(|_| rng.f32(-70000.0, 70000.0)).collect();
    x.extend([0.0, -0.0, 1.0, 65504.0, 65520.0, 1e-8, -1e-8, 3.0e38]);
    for dt in [Dt::F16, Dt::Bf16] {
        let xb = gpu.up_t(Dt::F32, &x);
        let out = gpu.zeros(x.len() * 2);
        let (xp, op, n) = (xb.ptr().0, out.ptr().0, x.len() as u32);
        let mut args = [kernel_arg(&xp), kernel_arg(&op), kernel_arg(&n)];
        gpu.launch(
            &format!("convert_f32_{}", dt.suffix()),
            (8, 1, 1),
            256,
            0,
            &mut args,
        );
        let mut got = vec![0u8; x.len() * 2];
        gpu.lease.download(&out, &mut got).expect("download");
        assert_eq!(
            got,
            dt.encode(&x),
            "convert_f32_{}: bits differ from the half crate",
            dt.suffix()
        );
        // And back to f32: exact.
        let back = gpu.zeros(x.len() * 4);
        let (bp2, op2) = (out.ptr().0, back.ptr().0);
        let mut args = [kernel_arg(&bp2), kernel_arg(&op2), kernel_arg(&n)];
        gpu.launch(
            &format!("convert_{}_f32", dt.suffix()),
            (8, 1, 1),
            256,
            0,
            &mut args,
        );
        let want: Vec<f32> = x.iter().map(|&v| dt.round(v)).collect();
        let got = gpu.down_t(Dt::F32, &back, x.len());
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "convert_{}_f32 is not exact",
            dt.suffix()
        );
    }
}

/// Offsets that run backwards and past the tokens, ids past the tables: every
/// kernel clamps them (compute-sanitizer memcheck runs this test), and the
/// outputs stay finite.
#[test]
fn bad_offsets_and_ids_stay_in_bounds() {
    let Some(gpu) = Gpu::open() else { return };
    let (tokens, heads, d, dim) = (60usize, 12usize, 32usize, 384usize);
    let offs: Vec<u32> = vec![0, 50, 20, 9999, 7];
    let batch = offs.len() - 1;
    let max_len = 40usize;
    for dt in [Dt::F16, Dt::F32] {
        let mut rng = Rng(21);
        let off_b = gpu.up_u32(&offs);
        let (op, tok_u, max_u, batch_u) =
            (off_b.ptr().0, tokens as u32, max_len as u32, batch as u32);
        // Attention (both kernels where they exist).
        let qkv = gpu.up_t(dt, &rng.vec_in(dt, tokens * 3 * dim, -1.0, 1.0));
        let out = gpu.zeros(tokens * dim * dt.size());
        let (qp, outp, null, h_u, d_u, scale) = (
            qkv.ptr().0,
            out.ptr().0,
            0u64,
            heads as u32,
            d as u32,
            1.0f32 / (d as f32).sqrt(),
        );
        let mut args = [
            kernel_arg(&qp),
            kernel_arg(&null),
            kernel_arg(&op),
            kernel_arg(&outp),
            kernel_arg(&tok_u),
            kernel_arg(&max_u),
            kernel_arg(&h_u),
            kernel_arg(&d_u),
            kernel_arg(&scale),
        ];
        let smem = 4 * (2 * 128 * (d + 1) + 16 * d + 16 * 128);
        gpu.launch(
            &format!("flash_attn_{}_c1", dt.suffix()),
            (max_len.div_ceil(16) as u32, heads as u32, batch_u),
            128,
            smem as u32,
            &mut args,
        );
        if dt != Dt::F32 {
            let mut args = [
                kernel_arg(&qp),
                kernel_arg(&null),
                kernel_arg(&op),
                kernel_arg(&outp),
                kernel_arg(&tok_u),
                kernel_arg(&max_u),
                kernel_arg(&h_u),
                kernel_arg(&scale),
            ];
            gpu.launch(
                &format!("tc_attn_{}_d32", dt.suffix()),
                (max_len.div_ceil(64) as u32, heads as u32, batch_u),
                128,
                0,
                &mut args,
            );
        }
        let got = gpu.down_t(dt, &out, tokens * dim);
        assert!(
            got.iter().all(|v| v.is_finite()),
            "attention {dt:?}: non-finite output"
        );
        // Embedding with ids, types past their tables (5 rows each).
        let ids: Vec<u32> = (0..tokens as u32).map(|i| i * 1000).collect();
        let table = gpu.up_t(dt, &rng.vec_in(dt, 5 * dim, -1.0, 1.0));
        let g = gpu.up_t(Dt::F32, &vec![1.0; dim]);
        let ids_b = gpu.up_u32(&ids);
        let emb = gpu.zeros(tokens * dim * dt.size());
        let (ip, tp, gp, ep) = (ids_b.ptr().0, table.ptr().0, g.ptr().0, emb.ptr().0);
        let (dim_u, eps, five) = (dim as u32, 1e-12f32, 5u32);
        let mut args = [
            kernel_arg(&ip),
            kernel_arg(&ip),
            kernel_arg(&op),
            kernel_arg(&batch_u),
            kernel_arg(&tp),
            kernel_arg(&tp),
            kernel_arg(&tp),
            kernel_arg(&gp),
            kernel_arg(&gp),
            kernel_arg(&ep),
            kernel_arg(&tok_u),
            kernel_arg(&dim_u),
            kernel_arg(&eps),
            kernel_arg(&five),
            kernel_arg(&five),
            kernel_arg(&five),
        ];
        gpu.launch(
            &format!("embed_ln_{}_12", dt.suffix()),
            (tokens.div_ceil(4) as u32, 1, 1),
            128,
            0,
            &mut args,
        );
        let got = gpu.down_t(dt, &emb, tokens * dim);
        assert!(
            got.iter().all(|v| v.is_finite()),
            "embed_ln {dt:?}: non-finite output"
        );
        // Pooling.
        let pooled = gpu.zeros(batch * dim * 4);
        let pp = pooled.ptr().0;
        let mut args = [
            kernel_arg(&ep),
            kernel_arg(&op),
            kernel_arg(&pp),
            kernel_arg(&tok_u),
            kernel_arg(&dim_u),
        ];
        gpu.launch(
            &format!("pool_mean_{}", dt.suffix()),
            (batch_u, dim.div_ceil(32) as u32, 1),
            POOL_THREADS,
            0,
            &mut args,
        );
        let got = gpu.down_t(Dt::F32, &pooled, batch * dim);
        assert!(
            got.iter().all(|v| v.is_finite()),
            "pool_mean {dt:?}: non-finite output"
        );
    }
}

// ---------------------------------------------------------------------------
// The whole forward per dtype on the fixture texts

/// A weight on the device with its dtype and shape.
struct DevTensor {
    name: &'static str,
    buf: Buffer,
    dtype: DType,
    shape: Vec<usize>,
}

impl DevTensor {
    fn new(gpu: &Gpu, name: &'static str, dt: Dt, data: &[f32], shape: &[usize]) -> DevTensor {
        DevTensor {
            name,
            buf: gpu.up_t(dt, data),
            dtype: dt.dtype(),
            shape: shape.to_vec(),
        }
    }
    fn t(&self) -> Tensor<'_> {
        Tensor::new(self.name, &self.buf, self.dtype, &self.shape).expect("weight tensor")
    }
}

/// One layer: `[qkv_w, qkv_b, o_w, o_b, ln1_g, ln1_b, i_w, i_b, out_w, out_b, ln2_g, ln2_b]`.
type DevLayer = Vec<DevTensor>;

/// The model's weights on the device: matrices and tables in `dt`, biases and
/// LayerNorm parameters f32.
fn upload_weights(gpu: &Gpu, model: &Model, dt: Dt) -> (Vec<DevTensor>, Vec<DevLayer>) {
    let e = &model.weights.embeddings;
    let emb = vec![
        DevTensor::new(gpu, "word", dt, &e.word.data, &e.word.shape),
        DevTensor::new(gpu, "position", dt, &e.position.data, &e.position.shape),
        DevTensor::new(
            gpu,
            "token_type",
            dt,
            &e.token_type.data,
            &e.token_type.shape,
        ),
        DevTensor::new(
            gpu,
            "emb_gamma",
            Dt::F32,
            &e.ln_gamma.data,
            &e.ln_gamma.shape,
        ),
        DevTensor::new(gpu, "emb_beta", Dt::F32, &e.ln_beta.data, &e.ln_beta.shape),
    ];
    let layers = model
        .weights
        .layers
        .iter()
        .map(|l| {
            let h = l.q_b.data.len();
            let qkv_w = [&l.q_w.data[..], &l.k_w.data, &l.v_w.data].concat();
            let qkv_b = [&l.q_b.data[..], &l.k_b.data, &l.v_b.data].concat();
            let m = |name, dt, t: &lanes_nn::HostTensor| {
                DevTensor::new(gpu, name, dt, &t.data, &t.shape)
            };
            vec![
                DevTensor::new(gpu, "qkv_w", dt, &qkv_w, &[3 * h, h]),
                DevTensor::new(gpu, "qkv_b", Dt::F32, &qkv_b, &[3 * h]),
                m("o_w", dt, &l.o_w),
                m("o_b", Dt::F32, &l.o_b),
                m("ln1_g", Dt::F32, &l.ln1_g),
                m("ln1_b", Dt::F32, &l.ln1_b),
                m("i_w", dt, &l.i_w),
                m("i_b", Dt::F32, &l.i_b),
                m("out_w", dt, &l.out_w),
                m("out_b", Dt::F32, &l.out_b),
                m("ln2_g", Dt::F32, &l.ln2_g),
                m("ln2_b", Dt::F32, &l.ln2_b),
            ]
        })
        .collect();
    (emb, layers)
}

/// MiniLM on `seqs` (token ids, one packed batch) through the `Exec` ops in `dt`:
/// the pooled, normalized embeddings `[batch, hidden]`.
fn forward_exec(gpu: &Gpu, ex: &CudaExec, model: &Model, dt: Dt, seqs: &[Vec<u32>]) -> Vec<f32> {
    let c = &model.config;
    let (h, inter, heads) = (c.hidden_size, c.intermediate_size, c.num_attention_heads);
    let eps = c.layer_norm_eps as f32;
    let (emb, layers) = upload_weights(gpu, model, dt);
    let ids: Vec<u32> = seqs.concat();
    let n = ids.len();
    let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let offs = offsets(&lens);
    let max_len = lens.iter().copied().max().unwrap_or(0);
    let batch = seqs.len();
    let (ids_b, types_b, offs_b) = (gpu.up_u32(&ids), gpu.up_u32(&vec![0; n]), gpu.up_u32(&offs));
    let act = |rows, cols| gpu.lease.alloc(rows * cols * dt.size()).expect("alloc");
    let ty = dt.dtype();
    let lane = &gpu.lease;
    let mut x = act(n, h);
    let tables = EmbedTables {
        word: emb[0].t(),
        position: emb[1].t(),
        token_type: emb[2].t(),
        gamma: emb[3].t(),
        beta: emb[4].t(),
    };
    ex.embed_ln(
        lane,
        Tensor::new("ids", &ids_b, DType::U32, &[n]).unwrap(),
        Tensor::new("types", &types_b, DType::U32, &[n]).unwrap(),
        Tensor::new("offsets", &offs_b, DType::U32, &[batch + 1]).unwrap(),
        &tables,
        eps,
        TensorMut::new("x", &mut x, ty, &[n, h]).unwrap(),
    )
    .expect("embed_ln");
    for l in &layers {
        let mut qkv = act(n, 3 * h);
        ex.linear(
            lane,
            Tensor::new("x", &x, ty, &[n, h]).unwrap(),
            l[0].t(),
            l[1].t(),
            false,
            TensorMut::new("qkv", &mut qkv, ty, &[n, 3 * h]).unwrap(),
        )
        .expect("qkv");
        let mut ctx = act(n, h);
        ex.attention(
            lane,
            Tensor::new("qkv", &qkv, ty, &[n, 3 * h]).unwrap(),
            Tensor::new("offsets", &offs_b, DType::U32, &[batch + 1]).unwrap(),
            max_len,
            heads,
            TensorMut::new("ctx", &mut ctx, ty, &[n, h]).unwrap(),
        )
        .expect("attention");
        let mut attn = act(n, h);
        ex.linear(
            lane,
            Tensor::new("ctx", &ctx, ty, &[n, h]).unwrap(),
            l[2].t(),
            l[3].t(),
            false,
            TensorMut::new("attn", &mut attn, ty, &[n, h]).unwrap(),
        )
        .expect("o");
        let mut h1 = act(n, h);
        ex.add_layer_norm(
            lane,
            Tensor::new("attn", &attn, ty, &[n, h]).unwrap(),
            Tensor::new("x", &x, ty, &[n, h]).unwrap(),
            l[4].t(),
            l[5].t(),
            eps,
            TensorMut::new("h1", &mut h1, ty, &[n, h]).unwrap(),
        )
        .expect("ln1");
        let mut up = act(n, inter);
        ex.linear(
            lane,
            Tensor::new("h1", &h1, ty, &[n, h]).unwrap(),
            l[6].t(),
            l[7].t(),
            true,
            TensorMut::new("up", &mut up, ty, &[n, inter]).unwrap(),
        )
        .expect("up");
        let mut down = act(n, h);
        ex.linear(
            lane,
            Tensor::new("up", &up, ty, &[n, inter]).unwrap(),
            l[8].t(),
            l[9].t(),
            false,
            TensorMut::new("down", &mut down, ty, &[n, h]).unwrap(),
        )
        .expect("down");
        let mut h2 = act(n, h);
        ex.add_layer_norm(
            lane,
            Tensor::new("down", &down, ty, &[n, h]).unwrap(),
            Tensor::new("h1", &h1, ty, &[n, h]).unwrap(),
            l[10].t(),
            l[11].t(),
            eps,
            TensorMut::new("h2", &mut h2, ty, &[n, h]).unwrap(),
        )
        .expect("ln2");
        x = h2;
    }
    let mut pooled = gpu.lease.alloc(batch * h * 4).expect("alloc");
    ex.pool_mean(
        lane,
        Tensor::new("x", &x, ty, &[n, h]).unwrap(),
        Tensor::new("offsets", &offs_b, DType::U32, &[batch + 1]).unwrap(),
        TensorMut::new("pooled", &mut pooled, DType::F32, &[batch, h]).unwrap(),
    )
    .expect("pool");
    let mut out = gpu.down_t(Dt::F32, &pooled, batch * h);
    cpu::l2_normalize(&mut out, batch, h);
    out
}

#[test]
fn f16_and_bf16_forward_match_f32_on_the_fixture() {
    let Some(gpu) = Gpu::open() else { return };
    let Some(model) = common::model() else { return };
    let fixtures = common::fixtures();
    let ex = CudaExec::new(&gpu.dev).expect("compile the kernels");
    let seqs: Vec<Vec<u32>> = fixtures.iter().map(|f| f.input_ids.clone()).collect();
    let h = model.config.hidden_size;
    let f32_out = forward_exec(&gpu, &ex, model, Dt::F32, &seqs);
    for (i, f) in fixtures.iter().enumerate() {
        let got = &f32_out[i * h..(i + 1) * h];
        let c = cosine(got, &f.embedding);
        let d = got
            .iter()
            .zip(&f.embedding)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            c >= 0.99999 && d <= 1e-5,
            "f32 text {i} vs fixture: cosine {c}, max |diff| {d:.3e}"
        );
    }
    for (dt, min_cos) in [(Dt::F16, 0.9999), (Dt::Bf16, 0.999)] {
        let out = forward_exec(&gpu, &ex, model, dt, &seqs);
        let mut worst = 1.0f64;
        for i in 0..seqs.len() {
            let c = cosine(&out[i * h..(i + 1) * h], &f32_out[i * h..(i + 1) * h]);
            worst = worst.min(c);
            assert!(
                c >= min_cos,
                "{dt:?} text {i} ({:?}): cosine {c} vs f32 < {min_cos}",
                fixtures[i].text
            );
        }
        eprintln!(
            "{dt:?} forward vs f32 on {} fixture texts: min cosine {worst:.7}",
            seqs.len()
        );
    }
}
