//! The tensor-core attention kernels of `exec/fused.cu` on a GPU: `tc2_attn_{T}_d{D}`
//! (v2, the default) and `tc_attn_{T}_d{D}` (v1), f16 and bf16, head_dim 32 and 64,
//! against `cpu::attention` (f32, on the same dtype-rounded q, k, v) and against
//! each other.
//!
//! Packed batches mix lengths around the tiles (1, 7, 63, 64, 65, 127, 128, 129,
//! 200, 512) with empty sequences; `max_len` below the longest sequence clamps
//! (rows past it must stay untouched); out-of-range offsets are clamped to the
//! tokens as `fseq_range` does. Raw launches take the f32 bias (added on load);
//! [`Exec::attention`] (no bias) runs through [`CudaExec`] with each
//! [`AttnKernel`]. Tolerances: `|diff| <= tol * (1 + |ref|)`, tol 2e-3 (f16) /
//! 1.6e-2 (bf16), cosine >= 0.9999 / 0.999.
//!
//! Each test opens CUDA device 0; without one it prints `SKIPPED (no CUDA)` and
//! passes, unless `LANES_REQUIRE_CUDA=1`, when it fails.
#![cfg(feature = "cuda")]

use std::ffi::c_void;

mod common;

use common::{cosine, cuda, Dt, Rng, HALVES as DTYPES};
use lanes::backend::cuda::{kernel_arg, CudaBackend, CudaLane};
use lanes::{Buffer, Device, Lease};
use lanes_nn::exec::cuda::{AttnKernel, CudaExec};
use lanes_nn::exec::Exec;
use lanes_nn::{cpu, DType, Tensor, TensorMut};

const MODULE: &str = "lanes_nn_fused";
const SOURCE: &str = include_str!("../src/exec/fused.cu");

/// What rows the kernels must not write hold (exactly representable in f16 / bf16).
const SENTINEL: f32 = 7.0;

/// Which raw kernel a case launches.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    /// `tc_attn_{T}_d{D}`: 128 threads, 64 queries a block.
    V1,
    /// `tc2_attn_{T}_d{D}`: 256 threads, 128 queries a block.
    V2,
}

impl Kernel {
    fn name(self, dt: Dt, d: usize) -> String {
        match self {
            Kernel::V1 => format!("tc_attn_{}_d{d}", dt.suffix()),
            Kernel::V2 => format!("tc2_attn_{}_d{d}", dt.suffix()),
        }
    }
    /// (threads, queries) per block.
    fn block(self) -> (u32, usize) {
        match self {
            Kernel::V1 => (128, 64),
            Kernel::V2 => (256, 128),
        }
    }
}

struct Gpu {
    dev: Device,
    lease: Lease,
}

impl Gpu {
    fn open() -> Option<Gpu> {
        let dev = cuda()?;
        let lease = dev.lease().expect("lease a lane");
        Some(Gpu { dev, lease })
    }
    fn lane(&self) -> &CudaLane {
        self.lease
            .raw()
            .as_any()
            .downcast_ref::<CudaLane>()
            .expect("a CUDA lane")
    }
    fn up(&self, bytes: &[u8]) -> Buffer {
        let buf = self.lease.alloc(bytes.len().max(16)).expect("alloc");
        self.lease.upload(&buf, bytes).expect("upload");
        buf
    }
    fn up_u32(&self, v: &[u32]) -> Buffer {
        self.up(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>())
    }
    fn down(&self, dt: Dt, buf: &Buffer, n: usize) -> Vec<f32> {
        let mut bytes = vec![0u8; n * 2];
        self.lease.download(buf, &mut bytes).expect("download");
        dt.decode(&bytes)
    }
    fn launch(&self, name: &str, grid: (u32, u32, u32), block: u32, args: &mut [*mut c_void]) {
        let f = self
            .dev
            .backend()
            .as_any()
            .downcast_ref::<CudaBackend>()
            .expect("a CUDA device")
            .function(MODULE, SOURCE, name)
            .unwrap_or_else(|e| panic!("kernel {name}: {e}"));
        // SAFETY: the callers pass the argument list of `name` as fused.cu declares it
        // (qkv, bias, offsets, out, tokens, max_len, heads, scale) with buffers
        // holding tokens × 3 × hidden / 3 × hidden f32 / batch + 1 u32 / tokens ×
        // hidden values; they outlive the blocking download that follows.
        unsafe { self.lane().launch(&f, grid, (block, 1, 1), 0, args) }
            .unwrap_or_else(|e| panic!("launch {name}: {e}"));
    }
}

/// Lengths around the 64-key tiles and the 128-query blocks, with empty sequences.
const LENS: [usize; 13] = [1, 7, 63, 64, 0, 65, 127, 128, 129, 200, 512, 0, 33];

fn offsets(lens: &[usize]) -> Vec<u32> {
    let mut o = vec![0u32];
    for &l in lens {
        o.push(o.last().copied().unwrap_or(0) + l as u32);
    }
    o
}

/// One packed attention problem (inputs on the host, rounded to `dt`).
struct Case {
    dt: Dt,
    heads: usize,
    d: usize,
    tokens: usize,
    offs: Vec<u32>,
    max_len: usize,
    qkv: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Case {
    fn new(dt: Dt, (heads, d): (usize, usize), lens: &[usize], max_len: usize, bias: bool) -> Case {
        let offs = offsets(lens);
        let tokens = *offs.last().unwrap() as usize;
        Case::raw(dt, (heads, d), tokens, offs, max_len, bias)
    }
    fn raw(
        dt: Dt,
        (heads, d): (usize, usize),
        tokens: usize,
        offs: Vec<u32>,
        max_len: usize,
        bias: bool,
    ) -> Case {
        let hidden = heads * d;
        let mut rng = Rng(0x5eed ^ (d as u64) << 8 ^ tokens as u64 ^ (bias as u64) << 20);
        Case {
            dt,
            heads,
            d,
            tokens,
            max_len,
            qkv: rng.vec_in(dt, tokens * 3 * hidden, -1.5, 1.5),
            bias: bias.then(|| rng.vec_in(Dt::F32, 3 * hidden, -0.3, 0.3)),
            offs,
        }
    }
    fn hidden(&self) -> usize {
        self.heads * self.d
    }
    /// Sequence b's rows as the kernels clamp them: [start, start + len).
    fn range(&self, b: usize) -> (usize, usize) {
        let t = self.tokens as u32;
        let s = self.offs[b].min(t);
        let e = self.offs[b + 1].max(s).min(t);
        (s as usize, ((e - s) as usize).min(self.max_len))
    }
    /// `cpu::attention` over the clamped sequences (q, k, v + bias, rounded to T as
    /// the kernels stage them); rows no sequence owns hold [`SENTINEL`], rows two
    /// sequences own (bad offsets: either may win) NaN.
    fn reference(&self) -> Vec<f32> {
        let hidden = self.hidden();
        let mut want = vec![SENTINEL; self.tokens * hidden];
        let mut owners = vec![0usize; self.tokens];
        let mut rows = Vec::new();
        let mut offs = vec![0u32];
        for b in 0..self.offs.len() - 1 {
            let (s, len) = self.range(b);
            rows.extend(s..s + len);
            offs.push(rows.len() as u32);
            for o in &mut owners[s..s + len] {
                *o += 1;
            }
        }
        if rows.is_empty() {
            return want;
        }
        let part = |p: usize| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| {
                    (0..hidden).map(move |c| {
                        let x = self.qkv[r * 3 * hidden + p * hidden + c];
                        match &self.bias {
                            Some(b) => self.dt.round(x + b[p * hidden + c]),
                            None => x,
                        }
                    })
                })
                .collect()
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let mut out = vec![0f32; rows.len() * hidden];
        cpu::attention(&q, &k, &v, &offs, self.heads, self.d, &mut out);
        for (i, &r) in rows.iter().enumerate() {
            let row = &mut want[r * hidden..(r + 1) * hidden];
            if owners[r] > 1 {
                row.fill(f32::NAN);
            } else {
                row.copy_from_slice(&out[i * hidden..(i + 1) * hidden]);
            }
        }
        want.iter().map(|&x| self.dt.round(x)).collect()
    }
    /// Runs a raw kernel on this case (output prefilled with [`SENTINEL`]).
    fn run(&self, gpu: &Gpu, kernel: Kernel) -> Vec<f32> {
        let hidden = self.hidden();
        let qkv_b = gpu.up(&self.dt.encode(&self.qkv));
        let bias_b = self
            .bias
            .as_ref()
            .map(|b| gpu.up(&b.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>()));
        let off_b = gpu.up_u32(&self.offs);
        let out_b = gpu.up(&self
            .dt
            .encode(&vec![SENTINEL; (self.tokens * hidden).max(1)]));
        let (qp, bp, op, outp) = (
            qkv_b.ptr().0,
            bias_b.as_ref().map_or(0u64, |b| b.ptr().0),
            off_b.ptr().0,
            out_b.ptr().0,
        );
        let (tok_u, max_u, h_u) = (self.tokens as u32, self.max_len as u32, self.heads as u32);
        let scale = 1.0f32 / (self.d as f32).sqrt();
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
        let (threads, qb) = kernel.block();
        let grid = (
            self.max_len.div_ceil(qb).max(1) as u32,
            self.heads as u32,
            (self.offs.len() - 1) as u32,
        );
        gpu.launch(&kernel.name(self.dt, self.d), grid, threads, &mut args);
        gpu.down(self.dt, &out_b, self.tokens * hidden)
    }
    fn what(&self) -> String {
        format!(
            "{:?} heads {} D {} tokens {} max_len {} bias {}",
            self.dt,
            self.heads,
            self.d,
            self.tokens,
            self.max_len,
            self.bias.is_some()
        )
    }
}

/// `got` matches `want`: elements holding [`SENTINEL`] in `want` hold it exactly in
/// `got` (attention outputs are convex combinations of values in [-1.8, 1.8], never
/// 7), NaN ones anything in [-2, 2], the others within the dtype's tolerance and
/// (together) its cosine.
fn check(what: &str, dt: Dt, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (tol, min_cos) = dt.tol();
    let mut worst = 0.0f32;
    let (mut g_all, mut w_all) = (Vec::new(), Vec::new());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g}");
        if w == SENTINEL {
            assert_eq!(g, SENTINEL, "{what}: element {i} was written");
            continue;
        }
        if w.is_nan() {
            assert!(g.abs() <= 2.0, "{what}: element {i} is {g}");
            continue;
        }
        g_all.push(g);
        w_all.push(w);
        let d = (g - w).abs() / (1.0 + w.abs());
        worst = worst.max(d);
        assert!(
            d <= tol,
            "{what}: element {i}: {g} vs {w} (scaled diff {d:.3e} > {tol:.1e})"
        );
    }
    assert!(!w_all.is_empty(), "{what}: nothing to compare");
    let c = cosine(&g_all, &w_all);
    assert!(c >= min_cos, "{what}: cosine {c} < {min_cos}");
    eprintln!("{what}: max scaled diff {worst:.3e}, cosine {c:.9}");
}

const SHAPES: [(usize, usize); 2] = [(12, 32), (2, 64)];

#[test]
fn tc2_attention_matches_cpu_on_mixed_lengths() {
    let Some(gpu) = Gpu::open() else { return };
    for dt in DTYPES {
        for shape in SHAPES {
            for bias in [false, true] {
                let case = Case::new(dt, shape, &LENS, 512, bias);
                let want = case.reference();
                check(
                    &format!("v2 {}", case.what()),
                    dt,
                    &case.run(&gpu, Kernel::V2),
                    &want,
                );
            }
        }
    }
}

#[test]
fn tc2_attention_matches_cpu_per_length() {
    let Some(gpu) = Gpu::open() else { return };
    for dt in DTYPES {
        for shape in SHAPES {
            for len in [1usize, 7, 63, 64, 65, 127, 128, 129, 200, 512] {
                // Three sequences of the length: blocks start mid-buffer.
                let case = Case::new(dt, shape, &[len; 3], len, false);
                let want = case.reference();
                check(
                    &format!("v2 len {len} {}", case.what()),
                    dt,
                    &case.run(&gpu, Kernel::V2),
                    &want,
                );
            }
        }
    }
}

#[test]
fn tc2_attention_clamps_to_max_len() {
    let Some(gpu) = Gpu::open() else { return };
    for dt in DTYPES {
        for shape in SHAPES {
            for max_len in [1usize, 64, 100, 129] {
                let case = Case::new(dt, shape, &LENS, max_len, max_len == 100);
                let want = case.reference();
                for kernel in [Kernel::V2, Kernel::V1] {
                    check(
                        &format!("{kernel:?} {}", case.what()),
                        dt,
                        &case.run(&gpu, kernel),
                        &want,
                    );
                }
            }
        }
    }
}

#[test]
fn tc2_attention_clamps_bad_offsets() {
    let Some(gpu) = Gpu::open() else { return };
    // Decreasing (two empty sequences, then one overlapping the second's rows 30..40),
    // past the tokens, and a last offset past them.
    let offs = vec![0u32, 12, 40, 30, 30, 45, 9999, 70];
    for dt in DTYPES {
        for shape in SHAPES {
            for max_len in [20usize, 200] {
                let case = Case::raw(dt, shape, 60, offs.clone(), max_len, true);
                let want = case.reference();
                for kernel in [Kernel::V2, Kernel::V1] {
                    check(
                        &format!("{kernel:?} bad offsets {}", case.what()),
                        dt,
                        &case.run(&gpu, kernel),
                        &want,
                    );
                }
            }
        }
    }
}

#[test]
fn tc2_and_tc1_agree() {
    let Some(gpu) = Gpu::open() else { return };
    for dt in DTYPES {
        for shape in SHAPES {
            let case = Case::new(dt, shape, &LENS, 512, true);
            let v1 = case.run(&gpu, Kernel::V1);
            let v2 = case.run(&gpu, Kernel::V2);
            check(&format!("v2 vs v1 {}", case.what()), dt, &v2, &v1);
        }
    }
}

/// `Exec::attention` through [`CudaExec`] with each kernel (no bias), at the
/// MiniLM shape and on the mixed batch; v1 and v2 against the CPU and each other.
#[test]
fn exec_attention_v1_and_v2_match_cpu() {
    let Some(gpu) = Gpu::open() else { return };
    let v2 = CudaExec::new(&gpu.dev)
        .expect("compile the kernels")
        .with_attention(AttnKernel::V2);
    let v1 = CudaExec::new(&gpu.dev)
        .expect("compile the kernels")
        .with_attention(AttnKernel::V1);
    assert_eq!(v1.attention_kernel(), AttnKernel::V1);
    for dt in DTYPES {
        for (shape, lens, max_len) in [
            ((12usize, 32usize), vec![128usize; 16], 128usize),
            ((12, 32), LENS.to_vec(), 512),
            ((2, 64), LENS.to_vec(), 300),
        ] {
            let case = Case::new(dt, shape, &lens, max_len, false);
            let want = case.reference();
            let hidden = case.hidden();
            let qkv_b = gpu.up(&dt.encode(&case.qkv));
            let off_b = gpu.up_u32(&case.offs);
            let mut outs = Vec::new();
            for ex in [&v1, &v2] {
                let mut out_b = gpu.up(&dt.encode(&vec![SENTINEL; case.tokens * hidden]));
                ex.attention(
                    &gpu.lease,
                    Tensor::new("qkv", &qkv_b, dt.dtype(), &[case.tokens, 3 * hidden]).unwrap(),
                    Tensor::new("offsets", &off_b, DType::U32, &[case.offs.len()]).unwrap(),
                    max_len,
                    case.heads,
                    TensorMut::new("ctx", &mut out_b, dt.dtype(), &[case.tokens, hidden]).unwrap(),
                )
                .expect("attention");
                let got = gpu.down(dt, &out_b, case.tokens * hidden);
                check(
                    &format!("exec {:?} {}", ex.attention_kernel(), case.what()),
                    dt,
                    &got,
                    &want,
                );
                outs.push(got);
            }
            check(
                &format!("exec v2 vs v1 {}", case.what()),
                dt,
                &outs[1],
                &outs[0],
            );
        }
    }
}
