//! [`Exec`] on CUDA: NVRTC kernels (`kernels.cu` and `fused.cu`, compiled once per
//! device) and cuBLAS / cuBLASLt, all enqueued on the lane's stream. Nothing here
//! waits on the host.
//!
//! f32 (the reference precision; no TF32 anywhere):
//!
//! | op | launches |
//! | --- | --- |
//! | `embed_ln` | 1 (gather + LayerNorm, a warp per row) |
//! | `linear` | up to 256 rows on a lane not in a crowd: 1 `small_linear` (bias and erf GELU included; [`SmallLinear`]); else 1 exact-f32 cuBLASLt matmul with the bias in its epilogue (+ 1 erf-GELU pass); where cuBLASLt declines or `LANES_F32_LT=off`: `linear_tn` (+ split-K reduce) for small outputs, else SGEMM + a bias (+ GELU) kernel ([`Gemm`]) |
//! | `attention` | 1: `row_attn4_f32` (four threads a query) for a small forward alone, `row_attn_f32` (a thread per query) for big or SM-budgeted ones, `flash_attn_f32` / `kernels.cu`'s `attention_q*` where neither applies (`LANES_ATTN_F32` forces one) |
//! | `add_layer_norm` | 1 (`kernels.cu`'s `add_ln`, a warp per row) |
//! | `pool_mean` | 1 (a block per sequence and 32 columns; `fused.cu`'s kernel for every dtype) |
//!
//! Numerics follow [`crate::cpu`] closely: f32 data, LayerNorm statistics and pooling
//! sums in f64, softmax in f32 with an f32 (row kernel) or f64 sum, the erf GELU in
//! f64 (`linear_tn`) or f32 `erfcf` (`small_linear`'s epilogue, the pass over
//! cuBLASLt / SGEMM output; a few ulp apart); no fast math. Results agree with the
//! CPU to ~2e-7 on the fixture. A float32 batch-1 forward (128 tokens) is 44
//! launches (`1 + 6 × 7 + 1`) with `small_linear`, 50 without.
//!
//! f16 and bf16 (activations, tables, GEMM weights and biases; LayerNorm parameters
//! stay f32) run `fused.cu` and tensor-core GEMMs ([`fused`]): by default a
//! cuBLASLt matmul with the bias (and the tanh-approximated GELU) fused into its
//! epilogue, 44 launches a MiniLM forward (`1 + 6 × 7 + 1`); with
//! `LANES_CUBLASLT=off` ([`blaslt_from_env`]) `cublasGemmEx` plus a bias (+ exact
//! GELU) kernel, 68 launches (`1 + 6 × 11 + 1`).
//!
//! Every cuBLASLt plan is made for the lane's SM budget
//! ([`CudaLane::set_sm_budget`], set per forward by the encoder from the load),
//! for GEMMs of at most [`NARROW_MAX_ROWS`] rows.

use std::ffi::c_void;

mod fused;

pub use fused::AttnKernel;

use lanes::backend::cuda::{
    kernel_arg, CudaBackend, CudaFunction, CudaLane, Epilogue, GemmType, Op,
};
use lanes::{DeviceKind, DevicePtr, Lease};

use super::{EmbedTables, Exec};
use crate::tensor::{DType, Tensor, TensorMut};
use crate::{NnError, Result};

/// The dtypes the ops take: f32 here, f16 and bf16 in [`fused`].
const FLOATS: &[DType] = &[DType::F32, DType::F16, DType::BF16];

/// The NVRTC module name and its source.
const MODULE: &str = "lanes_nn_bert";
const SOURCE: &str = include_str!("kernels.cu");

/// Threads per block of the row kernels (`LN_WARPS` warps, one row each).
const LN_WARPS: u32 = 4;
/// Threads per block of the attention kernel (`ATT_WARPS` warps).
const ATT_WARPS: usize = 4;
/// Keys per shared-memory tile of the attention kernel (`ATT_KT`).
const ATT_KT: usize = 64;
/// Dynamic shared memory a block may use without opting in.
const SMEM_LIMIT: usize = 48 << 10;
/// Threads per block of the elementwise epilogue.
const EPI_THREADS: u32 = 256;

/// LayerNorm variants: values per lane (`dim <= 32 * V`) and kernel suffix.
const LN_VARIANTS: [usize; 3] = [4, 12, 32];

/// Output tile of `linear_tn` (`GM` × `GN`) and its K slice (`GK`).
const GM: usize = 64;
const GN: usize = 64;
const GK: usize = 16;
/// `linear_tn` splits K until about this many blocks run (H100 and H200 have 132
/// SMs), keeping at least `MIN_K_PER_SPLIT` of K per split.
const TARGET_BLOCKS: usize = 128;
const MIN_K_PER_SPLIT: usize = 128;

/// How [`Exec::linear`] runs.
///
/// Measured on an H100 (fp32, MiniLM shapes, 128 tokens a sequence): at batch 1
/// (2 row tiles) `linear_tn` takes 12–18 µs a projection against cuBLAS's 19–23 µs
/// (cuBLAS leaves most SMs idle); from batch 8 on cuBLAS is faster (down projection
/// at batch 32: 127 µs against 193 µs). Hence [`Gemm::Auto`], the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gemm {
    /// cuBLAS SGEMM (default math mode: no TF32), then a bias (+ GELU) kernel.
    Cublas,
    /// `linear_tn`: one tiled kernel with the bias (+ GELU) fused, split over K
    /// (plus a deterministic reduce kernel) when the output has too few tiles to
    /// fill the GPU.
    Fused,
    /// [`Gemm::Fused`] for outputs of fewer than [`Gemm::AUTO_TILES`] 64 × 64 tiles
    /// (small batches), else [`Gemm::Cublas`].
    Auto,
}

impl Gemm {
    /// Output tiles (64 × 64) below which [`Gemm::Auto`] takes the fused kernel.
    pub const AUTO_TILES: usize = 64;

    /// The path named by `LANES_NN_GEMM` (`cublas`, `fused`, `auto`), else
    /// [`Gemm::Auto`].
    pub fn from_env() -> Result<Gemm> {
        match std::env::var("LANES_NN_GEMM") {
            Err(_) => Ok(Gemm::Auto),
            Ok(v) => Gemm::parse(&v),
        }
    }

    /// Parses `cublas`, `fused` or `auto` (any case).
    pub fn parse(s: &str) -> Result<Gemm> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cublas" => Ok(Gemm::Cublas),
            "fused" => Ok(Gemm::Fused),
            "auto" => Ok(Gemm::Auto),
            other => Err(NnError::InvalidInput(format!(
                "LANES_NN_GEMM={other}: expected cublas, fused or auto"
            ))),
        }
    }

    /// Whether `linear` over `rows × n` outputs takes the fused kernel.
    fn fused(self, rows: usize, n: usize) -> bool {
        match self {
            Gemm::Cublas => false,
            Gemm::Fused => true,
            Gemm::Auto => rows.div_ceil(GM) * n.div_ceil(GN) < Gemm::AUTO_TILES,
        }
    }
}

/// Whether 16-bit `linear`s use cuBLASLt's fused-epilogue matmul: `false` when
/// `LANES_CUBLASLT` is `off` (or `0`, `false`, `no`), else `true`. Read once per
/// process.
pub fn blaslt_from_env() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LANES_CUBLASLT").map_or(true, |v| blaslt_setting(&v)))
}

/// Rows up to which a lane's SM budget ([`CudaLane::set_sm_budget`]) narrows
/// `linear`: bigger GEMMs fill the GPU on their own and run wide.
pub const NARROW_MAX_ROWS: usize = crate::encoder::NARROW_MAX_TOKENS;

/// Packed tokens up to which f32 attention takes the flash kernel.
pub const F32_FLASH_MAX_TOKENS: usize = 2048;

/// A usize knob from the environment.
fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The SM count cuBLASLt plans a 16-bit `linear` of `rows` rows for (its
/// `SM_COUNT_TARGET`; 0: the whole device): the lane's SM budget, or
/// `LANES_GEMM_SMS` where set (0 turns narrowing off), for at most
/// [`NARROW_MAX_ROWS`] rows. The variable is read once per process.
pub(crate) fn gemm_sms(lane: &CudaLane, rows: usize) -> u32 {
    static SMS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    if rows > NARROW_MAX_ROWS {
        return 0;
    }
    match *SMS.get_or_init(|| env_usize("LANES_GEMM_SMS")) {
        Some(n) => n.min(u32::MAX as usize) as u32,
        None => lane.sm_budget(),
    }
}

/// `linear_tn`'s split-K block target for `rows` rows on `lane`: `LANES_TN_BLOCKS`
/// where set; else [`TARGET_BLOCKS`] (fill the GPU: one forward alone), or a
/// quarter of it when the lane has an SM budget (other lanes' work shares the
/// GPU; measured on the H200, f32 batch 1 from 16 threads: 7,337 forwards/s with
/// 32 blocks against 7,037 with 128).
fn target_blocks(lane: &CudaLane, rows: usize) -> usize {
    static N: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    if let Some(n) = N.get_or_init(|| env_usize("LANES_TN_BLOCKS").filter(|&n| n > 0)) {
        return *n;
    }
    if lane.sm_budget() > 0 && rows <= NARROW_MAX_ROWS {
        TARGET_BLOCKS / 4
    } else {
        TARGET_BLOCKS
    }
}

/// Whether f32 `linear` under [`Gemm::Auto`] runs on cuBLASLt (exact f32:
/// `CUBLAS_COMPUTE_32F`, no TF32; the bias in its epilogue, the erf GELU after
/// it), planned for the lane's SM budget: `false` when `LANES_F32_LT` is `off`
/// (or `0`, `false`, `no`), else `true`. Measured on the H200, f32 batch 1 × 128
/// tokens, one run each: 1 thread 2,177 forwards/s against 1,884 on
/// `linear_tn`; 16 threads (16-SM budget) 8,242 against 7,619; batch 512
/// 14,596 seq/s against 12,995 on cuBLAS + the bias kernel.
pub(crate) fn f32_lt() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LANES_F32_LT").map_or(true, |v| blaslt_setting(&v)))
}

/// The f32 attention kernels, in `LANES_ATTN_F32`'s words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum F32Attn {
    /// `fused.cu`'s `row_attn_f32` (a thread per query; head_dim 32 or 64).
    Rows,
    /// `fused.cu`'s `row_attn4_f32` (four threads per query; head_dim 32 or 64).
    Rows4,
    /// `fused.cu`'s `flash_attn_f32`.
    Flash,
    /// `kernels.cu`'s `attention_q*` (score rows in shared memory).
    Kernels,
}

/// The f32 attention kernel `LANES_ATTN_F32=rows|rows4|flash|kernels` forces, if
/// any (read once per process). Unforced, f32 attention takes `rows4` for a forward
/// of at most [`F32_FLASH_MAX_TOKENS`] packed tokens alone on the GPU (no SM
/// budget) and `rows` for the others, where they apply (head_dim 32 or 64,
/// aligned); else `flash` up to that size and `kernels` above. Measured on the
/// H200 (f32, 128 tokens a sequence, `forward_bench`, µs a call): batch 1, flash
/// 16.2, rows 27.7, kernels 29.0; batch 512, rows 634-695, kernels 1,784, flash
/// 2,006.
fn f32_attn_forced() -> Option<F32Attn> {
    static MODE: std::sync::OnceLock<Option<F32Attn>> = std::sync::OnceLock::new();
    *MODE.get_or_init(
        || match std::env::var("LANES_ATTN_F32").as_deref().map(str::trim) {
            Ok("rows") => Some(F32Attn::Rows),
            Ok("rows4") => Some(F32Attn::Rows4),
            Ok("flash") => Some(F32Attn::Flash),
            Ok("kernels") => Some(F32Attn::Kernels),
            _ => None,
        },
    )
}

/// `LANES_CUBLASLT`'s value as a switch: off for `off`, `0`, `false`, `no`.
fn blaslt_setting(v: &str) -> bool {
    !matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "off" | "0" | "false" | "no"
    )
}

/// The most rows `small_linear` takes (a batch-1 forward has 128).
pub const SMALL_MAX_ROWS: usize = 256;
/// `small_linear`'s output tile width and block (`SL_TN`, `SL_WARPS` warps).
const SL_TN: usize = 32;
const SL_THREADS: u32 = 8 * 32;
/// Below this many 32-row tiles `small_linear` takes 16-row tiles (twice the
/// blocks: the H200 has 132 SMs, two blocks fit on each).
const SL_MIN_TILES: usize = 128;

/// When f32 `linear` under [`Gemm::Auto`] takes `small_linear` (one kernel,
/// bias and GELU included) for at most [`SMALL_MAX_ROWS`] rows: `LANES_F32_SMALL`
/// = `off`, `few` (the default: unless the lane is in a crowd,
/// `CudaLane::crowded`, which the encoder sets from [`crate::encoder::CROWDED_AT`]
/// forwards in flight) or `always`.
///
/// Measured on the H200, f32 batch 1 × 128 tokens, forwards/s, one run each
/// (`small_linear` always / never): 1 thread 2,872 / 2,368; 2 threads 3,967 /
/// 2,803; 4 threads 5,692 / 4,893; 8 threads 7,155 / 7,220; 16 threads 7,348 /
/// 9,842 (in a crowd the narrow cuBLASLt plans share the GPU better).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmallLinear {
    /// Never.
    Off,
    /// Unless the lane is in a crowd.
    Few,
    /// Always.
    Always,
}

/// [`SmallLinear`] from `LANES_F32_SMALL` (read once; unknown words mean the
/// default).
pub fn small_linear_mode() -> SmallLinear {
    static MODE: std::sync::OnceLock<SmallLinear> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("LANES_F32_SMALL") {
        Ok(v) if !blaslt_setting(&v) => SmallLinear::Off,
        Ok(v) if v.trim().eq_ignore_ascii_case("always") => SmallLinear::Always,
        _ => SmallLinear::Few,
    })
}

/// `(kchunk, splits)` of `linear_tn` for `rows × k → n`: K is split until about
/// [`TARGET_BLOCKS`] blocks run, each split at least [`MIN_K_PER_SPLIT`] deep (one
/// split when K is shallower); `kchunk` is a multiple of [`GK`] and the last split
/// is non-empty.
fn split_k(rows: usize, k: usize, n: usize, target: usize) -> (usize, usize) {
    let tiles = rows.div_ceil(GM) * n.div_ceil(GN);
    let max_splits = (k / MIN_K_PER_SPLIT).max(1);
    let want = target.div_ceil(tiles.max(1)).clamp(1, max_splits);
    let kchunk = k.div_ceil(want).div_ceil(GK) * GK;
    (kchunk, k.div_ceil(kchunk))
}

/// The CUDA executor of one device: the compiled kernels (shared by all lanes).
pub struct CudaExec {
    ordinal: usize,
    gemm: Gemm,
    /// 16-bit `linear` through cuBLASLt's fused epilogue ([`CudaExec::blaslt`]).
    blaslt: bool,
    /// `add_ln_{V}` and `embed_ln_{V}` per [`LN_VARIANTS`] entry.
    add_ln: [CudaFunction; 3],
    embed_ln: [CudaFunction; 3],
    bias_act: CudaFunction,
    bias_act4: CudaFunction,
    linear_tn: CudaFunction,
    splitk_reduce: CudaFunction,
    /// `small_linear_m32`, `small_linear_m16`.
    small_linear: [CudaFunction; 2],
    /// `attention_q{Q}_c{C}`, indexed `[log2 C][log2 Q]` (Q, C in 1, 2, 4).
    attention: [[CudaFunction; 3]; 3],
    /// The f16 / bf16 path.
    fused: fused::Fused,
}

impl CudaExec {
    /// Compiles the kernel module for `device` (once per device; NVRTC takes a
    /// second or two) and loads every kernel; `linear` runs as `LANES_NN_GEMM` says
    /// ([`Gemm::from_env`]).
    pub fn new(device: &lanes::Device) -> Result<CudaExec> {
        CudaExec::with_gemm(device, Gemm::from_env()?)
    }

    /// As [`CudaExec::new`], with `linear` on the given path (for f32; 16-bit
    /// `linear` follows `LANES_CUBLASLT`, see [`CudaExec::with_blaslt`]).
    pub fn with_gemm(device: &lanes::Device, gemm: Gemm) -> Result<CudaExec> {
        let ordinal = match device.kind() {
            DeviceKind::Cuda(n) => n,
            other => {
                return Err(NnError::Unsupported(format!(
                    "the CUDA executor needs a CUDA device, not {other:?} ({})",
                    device.name()
                )))
            }
        };
        let backend = device
            .backend()
            .as_any()
            .downcast_ref::<CudaBackend>()
            .ok_or_else(|| {
                NnError::Unsupported(format!(
                    "device {} is not driven by the CUDA backend",
                    device.name()
                ))
            })?;
        let f =
            |name: &str| -> Result<CudaFunction> { Ok(backend.function(MODULE, SOURCE, name)?) };
        let ln = |prefix: &str| -> Result<[CudaFunction; 3]> {
            Ok([
                f(&format!("{prefix}_{}", LN_VARIANTS[0]))?,
                f(&format!("{prefix}_{}", LN_VARIANTS[1]))?,
                f(&format!("{prefix}_{}", LN_VARIANTS[2]))?,
            ])
        };
        let att = |c: usize| -> Result<[CudaFunction; 3]> {
            Ok([
                f(&format!("attention_q1_c{c}"))?,
                f(&format!("attention_q2_c{c}"))?,
                f(&format!("attention_q4_c{c}"))?,
            ])
        };
        Ok(CudaExec {
            ordinal,
            gemm,
            blaslt: blaslt_from_env(),
            add_ln: ln("add_ln")?,
            embed_ln: ln("embed_ln")?,
            bias_act: f("bias_act")?,
            bias_act4: f("bias_act4")?,
            linear_tn: f("linear_tn")?,
            splitk_reduce: f("splitk_reduce")?,
            small_linear: [f("small_linear_m32")?, f("small_linear_m16")?],
            attention: [att(1)?, att(2)?, att(4)?],
            fused: fused::Fused::load(backend)?,
        })
    }

    /// The CUDA lane of `lease`, checked to belong to this executor's device.
    fn lane<'a>(&self, lease: &'a Lease) -> Result<&'a CudaLane> {
        let lane = lease
            .raw()
            .as_any()
            .downcast_ref::<CudaLane>()
            .ok_or_else(|| {
                NnError::Unsupported("the CUDA executor needs a lane of a CUDA device".into())
            })?;
        let kind = lease.device().kind();
        if kind != DeviceKind::Cuda(self.ordinal) {
            return Err(NnError::InvalidInput(format!(
                "a lane of {kind:?} was used with kernels loaded on cuda:{}",
                self.ordinal
            )));
        }
        Ok(lane)
    }

    /// The path `linear` takes.
    pub fn gemm(&self) -> Gemm {
        self.gemm
    }

    /// This executor with 16-bit `linear` on cuBLASLt's fused-epilogue matmul
    /// (`true`, where the lane's cuBLASLt takes the problem; else, transparently,
    /// the next path) or on `cublasGemmEx` + the bias (+ exact GELU) kernel
    /// (`false`). The default is [`blaslt_from_env`]. f32 is not affected.
    pub fn with_blaslt(mut self, on: bool) -> CudaExec {
        self.blaslt = on;
        self
    }

    /// Whether 16-bit `linear` tries cuBLASLt first (see [`CudaExec::with_blaslt`]).
    pub fn blaslt(&self) -> bool {
        self.blaslt
    }

    /// This executor with f16 / bf16 attention (head_dim 32 or 64) on `kernel`
    /// (the default is `LANES_ATTN`, read by [`CudaExec::with_gemm`], else
    /// [`AttnKernel::V2`]); for comparing the kernels.
    pub fn with_attention(mut self, kernel: AttnKernel) -> CudaExec {
        self.fused.attn = kernel;
        self
    }

    /// The tensor-core attention kernel f16 / bf16 `attention` takes.
    pub fn attention_kernel(&self) -> AttnKernel {
        self.fused.attn
    }

    /// `linear` as `linear_tn` (+ `splitk_reduce` when K is split).
    #[allow(clippy::too_many_arguments)]
    fn linear_fused(
        &self,
        lease: &Lease,
        lane: &CudaLane,
        (rows, k, n): (usize, usize, usize),
        x: DevicePtr,
        w: DevicePtr,
        b: DevicePtr,
        gelu: bool,
        out: DevicePtr,
    ) -> Result<()> {
        let (kchunk, splits) = split_k(rows, k, n, target_blocks(lane, rows));
        let grid = (
            u32_of("linear tiles", n.div_ceil(GN))?,
            u32_of("linear tiles", rows.div_ceil(GM))?,
            splits as u32,
        );
        if grid.1 > 65_535 {
            return Err(NnError::Unsupported(format!(
                "linear: {rows} rows exceed the launch grid"
            )));
        }
        let total = rows * n;
        let ws = if splits > 1 {
            Some(lease.alloc(splits * total * 4)?)
        } else {
            None
        };
        let (m_u, n_u, k_u, kc_u, gelu_i) = (
            rows as u32,
            n as u32,
            k as u32,
            kchunk as u32,
            i32::from(gelu),
        );
        let (xp, wp, bp, op) = (x.0, w.0, b.0, out.0);
        let wsp = ws.as_ref().map_or(0u64, |w| w.ptr().0);
        let mut args = [
            kernel_arg(&xp),
            kernel_arg(&wp),
            kernel_arg(&bp),
            kernel_arg(&op),
            kernel_arg(&wsp),
            kernel_arg(&m_u),
            kernel_arg(&n_u),
            kernel_arg(&k_u),
            kernel_arg(&kc_u),
            kernel_arg(&gelu_i),
        ];
        // SAFETY: the arguments match `linear_tn(x, w, bias, out, ws, M, N, K, kchunk,
        // gelu)`; x holds rows*k f32s, w n*k, b n, out rows*n (`Exec::linear`); ws,
        // written only when the grid has more than one split, holds splits*rows*n and
        // is allocated on this lane, so its reuse is ordered after this work; the
        // kernel bounds every tile access by M, N and the split's k range.
        unsafe { launch(lane, &self.linear_tn, grid, 256, 0, &mut args) }?;
        if let Some(ws) = ws {
            let (total_u, splits_u) = (total as u32, splits as u32);
            let wsp = ws.ptr().0;
            let mut args = [
                kernel_arg(&wsp),
                kernel_arg(&bp),
                kernel_arg(&op),
                kernel_arg(&total_u),
                kernel_arg(&n_u),
                kernel_arg(&splits_u),
                kernel_arg(&gelu_i),
            ];
            let grid = total_u.div_ceil(EPI_THREADS).clamp(1, 4096);
            // SAFETY: the arguments match `splitk_reduce(ws, bias, out, total, N,
            // splits, gelu)`; ws holds splits*total f32s written by the launch above
            // (same lane, so ordered before this), bias n, out total.
            unsafe {
                launch(
                    lane,
                    &self.splitk_reduce,
                    (grid, 1, 1),
                    EPI_THREADS,
                    0,
                    &mut args,
                )
            }?;
            // `ws` goes back to this lane's cache here: later work on the lane is
            // ordered after both kernels.
        }
        Ok(())
    }

    /// `linear` as `small_linear`: x 16-byte aligned with `k % 4 == 0` and w
    /// 16-byte aligned (the caller checked), at most [`SMALL_MAX_ROWS`] rows.
    #[allow(clippy::too_many_arguments)]
    fn small_linear_f32(
        &self,
        lane: &CudaLane,
        (rows, k, n): (usize, usize, usize),
        x: DevicePtr,
        w: DevicePtr,
        b: DevicePtr,
        gelu: bool,
        out: DevicePtr,
    ) -> Result<()> {
        // Row offsets in float4s are u32 in the kernel.
        u32_of("n * k", n.saturating_mul(k))?;
        u32_of("rows * k", rows.saturating_mul(k))?;
        let wide = rows.div_ceil(32) * n.div_ceil(SL_TN) >= SL_MIN_TILES;
        let (tm, f) = if wide {
            (32, &self.small_linear[0])
        } else {
            (16, &self.small_linear[1])
        };
        let grid = (
            u32_of("linear tiles", n.div_ceil(SL_TN))?,
            u32_of("linear tiles", rows.div_ceil(tm))?,
            1,
        );
        let (m_u, n_u, k_u, gelu_i) = (rows as u32, n as u32, k as u32, i32::from(gelu));
        let (xp, wp, bp, op) = (x.0, w.0, b.0, out.0);
        let mut args = [
            kernel_arg(&xp),
            kernel_arg(&wp),
            kernel_arg(&bp),
            kernel_arg(&op),
            kernel_arg(&m_u),
            kernel_arg(&n_u),
            kernel_arg(&k_u),
            kernel_arg(&gelu_i),
        ];
        // SAFETY: the arguments match `small_linear_m{TM}(x, w, bias, out, M, N, K,
        // gelu)`, the grid its TM x 32 tiles;
        // x holds rows*k f32s, w n*k, b n, out rows*n (`Exec::linear`), x and w
        // 16-byte aligned with k % 4 == 0 (the caller checked) so every float4 load
        // is aligned and inside its row; the kernel stores only m < M, n < N and
        // reads no row past M or N; the block is SL_WARPS warps, as its static
        // shared array assumes.
        unsafe { launch(lane, f, grid, SL_THREADS, 0, &mut args) }
    }

    /// `out[r, j] = act(out[r, j] + bias[j])` in place over the f32 `[total / n, n]`
    /// output of a GEMM; `bias` 0 (null) adds nothing (then only the GELU).
    fn bias_act_f32(
        &self,
        lane: &CudaLane,
        (out, total, n): (DevicePtr, u32, usize),
        bias: u64,
        gelu: bool,
    ) -> Result<()> {
        let gelu_i = i32::from(gelu);
        // Buffers from the caching allocator are 512-byte aligned; float4 needs 16.
        let vec4 = n % 4 == 0 && out.0 % 16 == 0 && bias % 16 == 0;
        let (f, count, width) = if vec4 {
            (&self.bias_act4, total / 4, n as u32 / 4)
        } else {
            (&self.bias_act, total, n as u32)
        };
        let out_p = out.0;
        let mut args = [
            kernel_arg(&out_p),
            kernel_arg(&bias),
            kernel_arg(&count),
            kernel_arg(&width),
            kernel_arg(&gelu_i),
        ];
        // A grid-stride loop: enough blocks to fill the GPU, no more.
        let grid = count.div_ceil(EPI_THREADS).clamp(1, 4096);
        // SAFETY: the arguments match `bias_act[4](out, bias, total, n, gelu)`; out
        // holds `total` f32s (the callers' GEMM output) and bias, unless null, n
        // f32s (`count` and `width` in float4 units for the vectorized kernel,
        // whose pointers were checked to be 16-byte aligned).
        unsafe { launch(lane, f, (grid, 1, 1), EPI_THREADS, 0, &mut args) }
    }

    /// The LayerNorm variant for rows of `dim`.
    fn ln_variant(&self, what: &str, dim: usize) -> Result<usize> {
        LN_VARIANTS
            .iter()
            .position(|&v| dim <= 32 * v)
            .ok_or_else(|| {
                NnError::Unsupported(format!(
                    "{what}: rows of {dim} values (the CUDA kernels take up to 1024)"
                ))
            })
    }
}

/// `v` as a kernel's `unsigned`, or an error naming `what`.
fn u32_of(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v)
        .ok()
        .filter(|&x| x <= i32::MAX as u32)
        .ok_or_else(|| {
            NnError::Unsupported(format!("{what} = {v} exceeds the CUDA kernels' 2^31 limit"))
        })
}

/// Enqueues `f` on `lane`.
///
/// # Safety
/// `args` matches `f`'s parameter list (number, order, types); every pointer among
/// them is device memory of the lane's device sized as `f` reads and writes it,
/// allocated until the kernel has run (stream order on this lane).
unsafe fn launch(
    lane: &CudaLane,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    args: &mut [*mut c_void],
) -> Result<()> {
    // SAFETY: forwarded from this function's contract.
    unsafe { lane.launch(f, grid, (block, 1, 1), smem, args) }?;
    Ok(())
}

impl Exec for CudaExec {
    fn embed_ln(
        &self,
        lease: &Lease,
        ids: Tensor<'_>,
        types: Tensor<'_>,
        offsets: Tensor<'_>,
        t: &EmbedTables<'_>,
        eps: f32,
        out: TensorMut<'_>,
    ) -> Result<()> {
        let d = super::check_embed_ln(lease, &ids, &types, &offsets, t, &out, FLOATS)?;
        if d.tokens == 0 || d.hidden == 0 {
            return Ok(());
        }
        if d.batch == 0 || d.vocab == 0 || d.max_pos == 0 || d.type_vocab == 0 {
            return Err(NnError::InvalidInput(format!(
                "embed_ln: {} tokens in {} sequences with tables of {}, {} and {} rows",
                d.tokens, d.batch, d.vocab, d.max_pos, d.type_vocab
            )));
        }
        let lane = self.lane(lease)?;
        let v = self.ln_variant("embed_ln", d.hidden)?;
        let dt = fused::activation_dtype(
            "embed_ln",
            &[
                (t.word.name(), t.word.dtype()),
                (t.position.name(), t.position.dtype()),
                (t.token_type.name(), t.token_type.dtype()),
                (out.name(), out.dtype()),
            ],
            &[
                (t.gamma.name(), t.gamma.dtype()),
                (t.beta.name(), t.beta.dtype()),
            ],
        )?;
        if dt != DType::F32 {
            let p = [
                ids.ptr(),
                types.ptr(),
                offsets.ptr(),
                t.word.ptr(),
                t.position.ptr(),
                t.token_type.ptr(),
                t.gamma.ptr(),
                t.beta.ptr(),
                out.ptr(),
            ];
            // SAFETY: `check_embed_ln` validated every tensor (shapes, device) and
            // `activation_dtype` the dtypes: the tables and out are `dt`, gamma / beta
            // f32, which is `Fused::embed_ln`'s contract.
            return unsafe {
                self.fused.embed_ln(
                    lane,
                    dt,
                    v,
                    (d.tokens, d.batch, d.hidden),
                    (d.vocab, d.max_pos, d.type_vocab),
                    p,
                    eps,
                )
            };
        }
        let (rows_u, batch_u, dim) = (
            u32_of("tokens", d.tokens)?,
            u32_of("batch", d.batch)?,
            u32_of("hidden", d.hidden)?,
        );
        let (vocab, max_pos, type_vocab) = (
            u32_of("vocab", d.vocab)?,
            u32_of("positions", d.max_pos)?,
            u32_of("token types", d.type_vocab)?,
        );
        u32_of("tokens * hidden", d.tokens * d.hidden)?;
        let (ids, types, offs, out) = (ids.ptr().0, types.ptr().0, offsets.ptr().0, out.ptr().0);
        let [word, pos, ty, g, b] =
            [t.word, t.position, t.token_type, t.gamma, t.beta].map(|x| x.ptr().0);
        let mut args = [
            kernel_arg(&ids),
            kernel_arg(&types),
            kernel_arg(&offs),
            kernel_arg(&batch_u),
            kernel_arg(&word),
            kernel_arg(&pos),
            kernel_arg(&ty),
            kernel_arg(&g),
            kernel_arg(&b),
            kernel_arg(&out),
            kernel_arg(&rows_u),
            kernel_arg(&dim),
            kernel_arg(&eps),
            kernel_arg(&vocab),
            kernel_arg(&max_pos),
            kernel_arg(&type_vocab),
        ];
        let grid = rows_u.div_ceil(LN_WARPS);
        // SAFETY: the arguments match `embed_ln_V(ids, types, offsets, batch, word,
        // position, token_type, gamma, beta, out, rows, dim, eps, vocab, max_pos,
        // type_vocab)`; `check_embed_ln` proved ids/types hold `tokens` u32s, offsets
        // batch + 1, out tokens × hidden f32s and the tables vocab, max_pos and
        // type_vocab rows of hidden (all >= 1), all memory of this device; the kernel
        // clamps every id, type and position into its table; dim <= 32 * V.
        unsafe {
            launch(
                lane,
                &self.embed_ln[v],
                (grid, 1, 1),
                LN_WARPS * 32,
                0,
                &mut args,
            )
        }
    }

    fn linear(
        &self,
        lease: &Lease,
        x: Tensor<'_>,
        w: Tensor<'_>,
        b: Tensor<'_>,
        gelu: bool,
        out: TensorMut<'_>,
    ) -> Result<()> {
        let (rows, k, n) = super::check_linear(lease, &x, &w, &b, &out, FLOATS)?;
        if rows == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            return Err(NnError::InvalidInput("linear: input width k = 0".into()));
        }
        let lane = self.lane(lease)?;
        let dt = fused::activation_dtype(
            "linear",
            &[
                (x.name(), x.dtype()),
                (w.name(), w.dtype()),
                (out.name(), out.dtype()),
            ],
            // (The bias is f32 or `dt`: `check_linear` checked it.)
            &[],
        )?;
        let total = u32_of("rows * n", rows.saturating_mul(n))?;
        let bias_dt = b.dtype();
        let (x, w, b, out) = (x.ptr(), w.ptr(), b.ptr(), out.ptr());
        if dt != DType::F32 {
            // SAFETY: `check_linear` validated the shapes and device, `activation_dtype`
            // the dtypes (x, w, out `dt`; b f32 or `dt`, as `bias_dt` says); out is a
            // unique borrow, distinct from the inputs: `Fused::linear`'s contract.
            return unsafe {
                self.fused.linear(
                    lane,
                    dt,
                    self.blaslt,
                    (rows, k, n),
                    x,
                    w,
                    (b, bias_dt),
                    gelu,
                    out,
                )
            };
        }
        // Few rows: `small_linear` (one kernel: on the H200 a 128-row GEMM on
        // cuBLASLt took 11-15 us, its best algorithm by timing, plus the GELU pass).
        let small = match small_linear_mode() {
            SmallLinear::Off => false,
            SmallLinear::Few => !lane.crowded(),
            SmallLinear::Always => true,
        };
        if small
            && self.gemm == Gemm::Auto
            && rows <= SMALL_MAX_ROWS
            && k % 4 == 0
            && x.0 % 16 == 0
            && w.0 % 16 == 0
        {
            return self.small_linear_f32(lane, (rows, k, n), x, w, b, gelu, out);
        }
        // cuBLASLt (the bias in its epilogue) next; `linear_tn` or cuBLAS where it
        // declines, with it off, or with the path forced (`LANES_NN_GEMM`).
        if f32_lt() && self.gemm == Gemm::Auto {
            if let Ok(lt) = lane.blas_lt() {
                // SAFETY: `check_linear` proved x holds rows*k f32s, w n*k, b n and
                // out rows*n, all memory of this lane's device, alive until the
                // matmul has run (stream order); out overlaps no input.
                let done = unsafe {
                    lt.matmul_bias(
                        (Op::T, Op::N),
                        (n, rows, k),
                        GemmType::F32,
                        (w, k),
                        (x, k),
                        GemmType::F32,
                        (out, n),
                        (b, GemmType::F32),
                        Epilogue::Bias,
                        gemm_sms(lane, rows),
                    )
                }?;
                if done {
                    // The exact GELU in place (the bias is already in).
                    return if gelu {
                        self.bias_act_f32(lane, (out, total, n), 0, true)
                    } else {
                        Ok(())
                    };
                }
            }
        }
        if self.gemm.fused(rows, n) {
            // Split-K scratch must stay addressable by u32 offsets too.
            u32_of("rows * k", rows.saturating_mul(k))?;
            u32_of("n * k", n.saturating_mul(k))?;
            return self.linear_fused(lease, lane, (rows, k, n), x, w, b, gelu, out);
        }
        // Row-major out[rows, n] = x[rows, k] · w[n, k]ᵀ is, column-major,
        // C (n × rows, ldc n) = op(A) · op(B) with A = w seen as k × n (lda k),
        // op(A) = Aᵀ (n × k), and B = x seen as k × rows (ldb k), op(B) = B.
        // SAFETY: `check_linear` proved x holds rows*k f32s, w n*k, out rows*n, all
        // memory of this lane's device, kept alive (stream order) until the GEMM has
        // run; out is a unique borrow, so it overlaps neither input.
        unsafe { lane.sgemm(Op::T, Op::N, n, rows, k, 1.0, w, k, x, k, 0.0, out, n) }?;
        self.bias_act_f32(lane, (out, total, n), b.0, gelu)
    }

    fn attention(
        &self,
        lease: &Lease,
        qkv: Tensor<'_>,
        offsets: Tensor<'_>,
        max_len: usize,
        heads: usize,
        out: TensorMut<'_>,
    ) -> Result<()> {
        let d = super::check_attention(lease, &qkv, &offsets, max_len, heads, &out, FLOATS)?;
        if d.tokens == 0 || d.hidden == 0 || d.batch == 0 || d.max_len == 0 {
            return Ok(());
        }
        let lane = self.lane(lease)?;
        let dt = fused::activation_dtype(
            "attention",
            &[(qkv.name(), qkv.dtype()), (out.name(), out.dtype())],
            &[],
        )?;
        let forced = f32_attn_forced();
        // Unforced, a small f32 forward alone takes `rows4` (latency: four
        // threads a query); big or narrow ones (SM-budgeted: throughput) take
        // `rows` (batch 512 on the H200: 695 µs against kernels' 1,784; batch 1
        // from 16 threads: 9,154 forwards/s against flash's 8,753).
        let small_alone = d.tokens <= F32_FLASH_MAX_TOKENS && lane.sm_budget() == 0;
        let rows = match forced {
            Some(F32Attn::Rows) => Some(false),
            Some(F32Attn::Rows4) => Some(true),
            Some(_) => None,
            None => Some(small_alone),
        };
        if let (DType::F32, Some(split)) = (dt, rows) {
            // SAFETY: as for `Fused::attention` below (f32).
            let done = unsafe {
                self.fused.row_attention_f32(
                    lane,
                    (d.tokens, d.batch, d.hidden, d.heads, d.max_len),
                    qkv.ptr(),
                    offsets.ptr(),
                    out.ptr(),
                    split,
                )
            }?;
            if done {
                return Ok(());
            }
        }
        let flash = match forced {
            Some(F32Attn::Flash) => true,
            Some(F32Attn::Kernels) => false,
            _ => d.tokens <= F32_FLASH_MAX_TOKENS,
        };
        if dt != DType::F32 || flash {
            // SAFETY: `check_attention` validated the shapes (qkv [tokens, 3 * hidden],
            // out [tokens, hidden], offsets batch + 1 u32s) and device, `activation_dtype`
            // the dtypes: `Fused::attention`'s contract.
            return unsafe {
                self.fused.attention(
                    lane,
                    dt,
                    (d.tokens, d.batch, d.hidden, d.heads, d.max_len),
                    qkv.ptr(),
                    offsets.ptr(),
                    out.ptr(),
                )
            };
        }
        let hd = d.head_dim;
        let c_idx = match hd.div_ceil(32) {
            1 => 0,
            2 => 1,
            3 | 4 => 2,
            _ => {
                return Err(NnError::Unsupported(format!(
                    "attention: head size {hd} (the CUDA kernel takes up to 128)"
                )))
            }
        };
        u32_of("tokens * 3 * hidden", d.tokens.saturating_mul(3 * d.hidden))?;
        // Queries per warp: 4 unless the score rows would not fit in shared memory.
        let smem_for = |q: usize| 4 * (q * ATT_WARPS * (hd + d.max_len) + ATT_KT * (hd + 1));
        let Some(q_idx) = (0..3).rev().find(|&i| smem_for(1 << i) <= SMEM_LIMIT) else {
            return Err(NnError::Unsupported(format!(
                "attention: sequences of {} tokens need more shared memory than a block has",
                d.max_len
            )));
        };
        let qb = (1usize << q_idx) * ATT_WARPS;
        let smem = smem_for(1 << q_idx) as u32;
        let grid = (
            u32_of("query tiles", d.max_len.div_ceil(qb))?,
            u32_of("heads", d.heads)?,
            u32_of("batch", d.batch)?,
        );
        if grid.1 > 65_535 || grid.2 > 65_535 {
            return Err(NnError::Unsupported(format!(
                "attention: {} heads × {} sequences exceed the launch grid",
                d.heads, d.batch
            )));
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let (tokens, max_len, heads, hd_u) =
            (d.tokens as u32, d.max_len as u32, d.heads as u32, hd as u32);
        let (qkv, offs, out) = (qkv.ptr().0, offsets.ptr().0, out.ptr().0);
        let mut args = [
            kernel_arg(&qkv),
            kernel_arg(&offs),
            kernel_arg(&out),
            kernel_arg(&tokens),
            kernel_arg(&max_len),
            kernel_arg(&heads),
            kernel_arg(&hd_u),
            kernel_arg(&scale),
        ];
        let f = &self.attention[c_idx][q_idx];
        // SAFETY: the arguments match `attention_qQ_cC(qkv, offsets, out, tokens,
        // max_len, heads, D, scale)`; `check_attention` proved qkv holds tokens × 3 ×
        // hidden f32s, offsets batch + 1 u32s and out tokens × hidden, all memory of
        // this device; the kernel clamps each sequence to [0, tokens) and to max_len,
        // for which the dynamic shared memory is laid out (< 48 KiB); the grid's z is
        // the batch, so offsets[b + 1] exists; head_dim <= 32 * C.
        unsafe { launch(lane, f, grid, (ATT_WARPS * 32) as u32, smem, &mut args) }
    }

    fn add_layer_norm(
        &self,
        lease: &Lease,
        x: Tensor<'_>,
        residual: Tensor<'_>,
        gamma: Tensor<'_>,
        beta: Tensor<'_>,
        eps: f32,
        out: TensorMut<'_>,
    ) -> Result<()> {
        let (rows, dim) =
            super::check_add_layer_norm(lease, &x, &residual, &gamma, &beta, &out, FLOATS)?;
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        let lane = self.lane(lease)?;
        let v = self.ln_variant("add_layer_norm", dim)?;
        let dt = fused::activation_dtype(
            "add_layer_norm",
            &[
                (x.name(), x.dtype()),
                (residual.name(), residual.dtype()),
                (out.name(), out.dtype()),
            ],
            &[(gamma.name(), gamma.dtype()), (beta.name(), beta.dtype())],
        )?;
        if dt != DType::F32 {
            let p = [x.ptr(), residual.ptr(), gamma.ptr(), beta.ptr(), out.ptr()];
            // SAFETY: `check_add_layer_norm` validated the shapes and device,
            // `activation_dtype` the dtypes (x, residual, out `dt`; gamma, beta f32):
            // `Fused::add_layer_norm`'s contract.
            return unsafe { self.fused.add_layer_norm(lane, dt, v, (rows, dim), p, eps) };
        }
        let (rows_u, dim_u) = (u32_of("rows", rows)?, u32_of("dim", dim)?);
        u32_of("rows * dim", rows.saturating_mul(dim))?;
        let [x, r, g, b] = [x, residual, gamma, beta].map(|t| t.ptr().0);
        let o = out.ptr().0;
        let mut args = [
            kernel_arg(&x),
            kernel_arg(&r),
            kernel_arg(&g),
            kernel_arg(&b),
            kernel_arg(&o),
            kernel_arg(&rows_u),
            kernel_arg(&dim_u),
            kernel_arg(&eps),
        ];
        let grid = rows_u.div_ceil(LN_WARPS);
        // SAFETY: the arguments match `add_ln_V(x, res, gamma, beta, out, rows, dim,
        // eps)`; `check_add_layer_norm` proved x, residual and out hold rows*dim f32s,
        // gamma and beta dim, all memory of this device; out is a unique borrow.
        unsafe {
            launch(
                lane,
                &self.add_ln[v],
                (grid, 1, 1),
                LN_WARPS * 32,
                0,
                &mut args,
            )
        }
    }

    fn pool_mean(
        &self,
        lease: &Lease,
        hidden: Tensor<'_>,
        offsets: Tensor<'_>,
        out: TensorMut<'_>,
    ) -> Result<()> {
        let (tokens, batch, dim) = super::check_pool(lease, &hidden, &offsets, &out, FLOATS)?;
        if batch == 0 || dim == 0 {
            return Ok(());
        }
        let lane = self.lane(lease)?;
        let dt = fused::activation_dtype("pool_mean", &[(hidden.name(), hidden.dtype())], &[])?;
        // SAFETY: `check_pool` validated the shapes (hidden [tokens, dim], offsets
        // batch + 1 u32s, out [batch, dim] f32) and device, `activation_dtype`
        // hidden's dtype: `Fused::pool_mean`'s contract. (One kernel for every
        // dtype: for f32 it is the same arithmetic as `cpu::mean_pool`.)
        unsafe {
            self.fused.pool_mean(
                lane,
                dt,
                (tokens, batch, dim),
                [hidden.ptr(), offsets.ptr(), out.ptr()],
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_every_kernel() {
        for prefix in ["add_ln", "embed_ln"] {
            for v in LN_VARIANTS {
                assert!(SOURCE.contains(&format!("LN_KERNELS({v})")), "{prefix}_{v}");
            }
        }
        for q in [1, 2, 4] {
            for c in [1, 2, 4] {
                assert!(
                    SOURCE.contains(&format!("ATT_KERNEL({q}, {c})")),
                    "attention_q{q}_c{c}"
                );
            }
        }
        assert!(SOURCE.contains(&format!("#define SL_TN {SL_TN}")));
        assert!(SOURCE.contains(&format!("#define SL_WARPS {}", SL_THREADS / 32)));
        assert!(SOURCE.contains("SL_KERNEL(32)") && SOURCE.contains("SL_KERNEL(16)"));
        for name in [
            "bias_act(",
            "bias_act4(",
            "linear_tn(",
            "splitk_reduce(",
            "small_linear_t(",
        ] {
            assert!(SOURCE.contains(&format!(" {name}")), "{name}");
        }
        assert!(SOURCE.contains(&format!("#define LN_WARPS {LN_WARPS}")));
        assert!(SOURCE.contains(&format!("#define ATT_WARPS {ATT_WARPS}")));
        assert!(SOURCE.contains(&format!("#define ATT_KT {ATT_KT}")));
        assert!(SOURCE.contains(&format!("#define GM {GM}")));
        assert!(SOURCE.contains(&format!("#define GN {GN}")));
        assert!(SOURCE.contains(&format!("#define GK {GK}")));
    }

    #[test]
    fn gemm_paths() {
        assert_eq!(Gemm::parse(" CUBLAS ").unwrap(), Gemm::Cublas);
        assert_eq!(Gemm::parse("fused").unwrap(), Gemm::Fused);
        assert_eq!(Gemm::parse("auto").unwrap(), Gemm::Auto);
        assert!(Gemm::parse("tf32").is_err());
        // MiniLM at batch 1 × 128 tokens: fused; at batch 8: cuBLAS.
        for n in [384, 1152, 1536] {
            assert!(Gemm::Auto.fused(128, n));
            assert!(!Gemm::Auto.fused(1024, n));
        }
        assert!(!Gemm::Cublas.fused(1, 1));
        assert!(Gemm::Fused.fused(100_000, 4096));
    }

    #[test]
    fn split_k_covers_k_exactly() {
        for rows in [1, 16, 128, 1000, 5000] {
            for k in [1, 8, 50, 128, 333, 384, 1536, 4096] {
                for n in [4, 13, 384, 1536] {
                    let (kchunk, splits) = split_k(rows, k, n, TARGET_BLOCKS);
                    assert!(kchunk % GK == 0 && kchunk > 0, "{rows} {k} {n}");
                    assert!(
                        splits >= 1 && splits * kchunk >= k && (splits - 1) * kchunk < k,
                        "{rows} {k} {n}"
                    );
                    assert!(splits <= (k / MIN_K_PER_SPLIT).max(1), "{rows} {k} {n}");
                }
            }
        }
        // Batch 1 × 128 tokens: the down projection (1536 → 384, 12 tiles) splits 11 ways.
        assert_eq!(split_k(128, 1536, 384, TARGET_BLOCKS).1, 11);
        assert_eq!(split_k(4096, 384, 1152, TARGET_BLOCKS).1, 1);
    }

    #[test]
    fn blaslt_switch() {
        for off in ["off", " OFF ", "0", "false", "no"] {
            assert!(!blaslt_setting(off), "{off}");
        }
        for on in ["on", "1", "", "yes", "auto"] {
            assert!(blaslt_setting(on), "{on}");
        }
    }

    #[test]
    fn u32_limits() {
        assert_eq!(u32_of("x", 7).unwrap(), 7);
        assert!(u32_of("x", 1 << 31).is_err());
    }
}
