//! The 16-bit path of [`super::CudaExec`]: the packed kernels of `fused.cu` (NVRTC
//! module `lanes_nn_fused`, one kernel per activation dtype) and tensor-core GEMMs
//! with f32 accumulation: cuBLASLt with the bias and GELU fused into the GEMM's
//! epilogue ([`lanes::backend::cuda::LaneBlasLt::matmul_bias`]), else
//! [`lanes::backend::cuda::LaneBlas::gemm_ex`] and a bias (+ GELU) kernel.
//!
//! Dtypes: activations, embedding tables and GEMM weights are the forward's dtype
//! `T` (f16 or bf16); biases and LayerNorm parameters are f32; the pooled output
//! is f32. Math is f32 (f64 for LayerNorm statistics and pooling sums).
//!
//! GELU: the cuBLASLt epilogue computes the **tanh approximation** of GELU, the
//! model (and the `bias_act` kernels, and the f32 path) the exact erf GELU. The two
//! differ by at most 4.7e-4 in absolute value (at x ≈ ±2.70): a quarter of the
//! f16 output's rounding step at x ≈ 2.7 (2e-3; bf16's is 1.6e-2), and at x ≈
//! −2.7 (GELU ≈ −0.009) about f16's resolution near 1 (4.9e-4), i.e. an error of
//! the size 16-bit activations of order 1 carry anyway. `LANES_CUBLASLT=off` (read once,
//! [`super::blaslt_from_env`]) or [`super::CudaExec::with_blaslt`]`(false)` keep
//! the exact GELU (`cublasGemmEx` + `bias_act_vec_{T}`); so does every problem
//! cuBLASLt declines (no library, no algorithm, operands not 256-byte aligned),
//! transparently. The f32 path never uses cuBLASLt.
//!
//! | op | launches |
//! | --- | --- |
//! | `embed_ln` | 1 (`embed_ln_{T}_{V}`) |
//! | `linear` | 1 (`cublasLtMatmul`, epilogue `BIAS` or `GELU_BIAS`, bias in T); without cuBLASLt 2 (`cublasGemmEx` + `bias_act_vec_{T}[_t]`, bias and exact GELU in place) |
//! | `attention` | 1 (`tc2_attn_{T}_d{32,64}`: mma.sync flash attention, [`AttnKernel::V2`]; `tc_attn_{T}_d{32,64}` under [`AttnKernel::V1`]; other head sizes `flash_attn_{T}_c{C}`) |
//! | `add_layer_norm` | 1 (`add_ln4_{T}_{V}`, 4 values a lane per access; `add_ln_{T}_{V}` for unaligned rows) |
//! | `pool_mean` | 1 (`pool_mean_{T}`, f32 out; also the f32 path's) |
//!
//! The f32 instantiations of the same kernels are loaded too: f32 attention runs
//! `row_attn*_f32` / `flash_attn_f32` and f32 pooling `pool_mean_f32` from here;
//! [`super::CudaExec`] keeps its own f32 LayerNorm, `linear_tn` and GEMM epilogue
//! (the GPU tests compare the rest with the CPU).

use std::ffi::c_void;

use lanes::backend::cuda::{
    kernel_arg, CudaBackend, CudaFunction, CudaLane, Epilogue, GemmType, Op,
};
use lanes::DevicePtr;

use super::{gemm_sms, launch, u32_of, EPI_THREADS, LN_VARIANTS, LN_WARPS, SMEM_LIMIT};
use crate::tensor::DType;
use crate::{NnError, Result};

/// The NVRTC module name and its source.
pub const MODULE: &str = "lanes_nn_fused";
/// The CUDA source of the packed multi-dtype kernels.
pub const SOURCE: &str = include_str!("../fused.cu");

/// Threads per block of the attention kernels (`FA_WARPS`, `TC_WARPS` warps).
const ATT_THREADS: u32 = 128;
/// Queries per block of `flash_attn` (`FA_WARPS * FA_Q`) and of `tc_attn`.
const FA_QB: usize = 16;
const TC_QB: usize = 64;
/// Threads (`TC2_WARPS` warps) and queries (`TC2_BQ`) per block of `tc2_attn`.
const TC2_THREADS: u32 = 256;
const TC2_QB: usize = 128;
/// Threads, one query each, per block of `row_attn_f32` (`RA_Q`).
const RA_Q: u32 = 64;
/// Warps per block of `pool_mean` (`FPOOL_GROUPS`): each sums every 16th row.
const POOL_GROUPS: u32 = 16;

/// Which tensor-core attention kernel runs for f16 / bf16 with head_dim 32 or 64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernel {
    /// `tc_attn`: 64 queries and 4 warps a block, K / Vᵀ staged with scalar loads
    /// (kept for comparison).
    V1,
    /// `tc2_attn` (the default): 128 queries and 8 warps a block, 16-byte
    /// `cp.async` staging of Q / K / V in two stages, `ldmatrix(.trans)` fragments,
    /// exp2. Needs 16-byte aligned `qkv` and `out` (else `tc_attn` runs).
    V2,
}

impl AttnKernel {
    /// The kernel named by `LANES_ATTN` (`v1`, `v2`), else [`AttnKernel::V2`].
    pub fn from_env() -> Result<AttnKernel> {
        match std::env::var("LANES_ATTN") {
            Err(_) => Ok(AttnKernel::V2),
            Ok(v) => AttnKernel::parse(&v),
        }
    }

    /// Parses `v1` or `v2` (any case).
    pub fn parse(s: &str) -> Result<AttnKernel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v1" => Ok(AttnKernel::V1),
            "v2" => Ok(AttnKernel::V2),
            other => Err(NnError::InvalidInput(format!(
                "LANES_ATTN={other}: expected v1 or v2"
            ))),
        }
    }
}

/// The index of a float dtype in the kernel tables (f32, f16, bf16).
fn dtype_index(dt: DType) -> Result<usize> {
    match dt {
        DType::F32 => Ok(0),
        DType::F16 => Ok(1),
        DType::BF16 => Ok(2),
        DType::U32 => Err(NnError::Unsupported(
            "the CUDA kernels compute in f32, f16 or bf16, not u32".into(),
        )),
    }
}

/// The activation dtype of an op: every tensor of `act` (activations, tables,
/// GEMM weights) has the same float dtype, every tensor of `params` (biases,
/// LayerNorm parameters) is f32. Fails naming the first tensor that differs.
pub(super) fn activation_dtype(
    op: &'static str,
    act: &[(&'static str, DType)],
    params: &[(&'static str, DType)],
) -> Result<DType> {
    let Some(&(_, dt)) = act.first() else {
        return Err(NnError::Unsupported(format!("{op}: no activation tensor")));
    };
    let mismatch = |tensor: &str, expected: String, actual: DType| NnError::OpMismatch {
        op,
        tensor: tensor.to_string(),
        expected,
        actual: format!("dtype {actual}"),
    };
    if !dt.is_float() {
        return Err(mismatch(act[0].0, "f32, f16 or bf16".into(), dt));
    }
    if let Some(&(name, other)) = act.iter().find(|(_, d)| *d != dt) {
        return Err(mismatch(
            name,
            format!("dtype {dt}, as {}", act[0].0),
            other,
        ));
    }
    if let Some(&(name, other)) = params.iter().find(|(_, d)| *d != DType::F32) {
        return Err(mismatch(
            name,
            "dtype f32 (biases and LayerNorm parameters stay f32)".into(),
            other,
        ));
    }
    Ok(dt)
}

/// The cuBLAS element type of a 16-bit or f32 dtype.
fn gemm_type(dt: DType) -> Result<GemmType> {
    match dt {
        DType::F32 => Ok(GemmType::F32),
        DType::F16 => Ok(GemmType::F16),
        DType::BF16 => Ok(GemmType::BF16),
        DType::U32 => Err(NnError::Unsupported("linear in u32".into())),
    }
}

/// The checked launch values every attention kernel of `fused.cu` takes: `(qkv,
/// bias = null, offsets, out, tokens, max_len, heads[, D], scale)`.
struct AttnArgs {
    qkv: u64,
    bias: u64,
    offsets: u64,
    out: u64,
    tokens: u32,
    max_len: u32,
    heads: u32,
    head_dim: u32,
    batch: u32,
    scale: f32,
}

impl AttnArgs {
    /// Checks the extents against the kernels' 32-bit indexing and the grid's
    /// limits (heads and batch are its y and z).
    fn new(
        (tokens, batch, hidden, heads, max_len): (usize, usize, usize, usize, usize),
        qkv: DevicePtr,
        offsets: DevicePtr,
        out: DevicePtr,
    ) -> Result<AttnArgs> {
        u32_of("tokens * 3 * hidden", tokens.saturating_mul(3 * hidden))?;
        let head_dim = hidden / heads;
        let a = AttnArgs {
            qkv: qkv.0,
            bias: 0,
            offsets: offsets.0,
            out: out.0,
            tokens: u32_of("tokens", tokens)?,
            max_len: u32_of("max_len", max_len)?,
            heads: u32_of("heads", heads)?,
            head_dim: u32_of("head_dim", head_dim)?,
            batch: u32_of("batch", batch)?,
            scale: 1.0 / (head_dim as f32).sqrt(),
        };
        if a.heads > 65_535 || a.batch > 65_535 {
            return Err(NnError::Unsupported(format!(
                "attention: {heads} heads × {batch} sequences exceed the launch grid"
            )));
        }
        Ok(a)
    }

    /// `(query tiles, heads, batch)` for tiles of `queries` queries.
    fn grid(&self, max_len: usize, queries: usize) -> Result<(u32, u32, u32)> {
        Ok((
            u32_of("query tiles", max_len.div_ceil(queries))?,
            self.heads,
            self.batch,
        ))
    }

    /// The arguments without the head size (`tc_attn`, `tc2_attn`, `row_attn*`).
    fn common(&self) -> [*mut c_void; 8] {
        [
            kernel_arg(&self.qkv),
            kernel_arg(&self.bias),
            kernel_arg(&self.offsets),
            kernel_arg(&self.out),
            kernel_arg(&self.tokens),
            kernel_arg(&self.max_len),
            kernel_arg(&self.heads),
            kernel_arg(&self.scale),
        ]
    }

    /// The arguments with the head size before the scale (`flash_attn`).
    fn with_head_dim(&self) -> [*mut c_void; 9] {
        let c = self.common();
        [
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            c[6],
            kernel_arg(&self.head_dim),
            c[7],
        ]
    }
}

/// The kernels of `fused.cu`, indexed by dtype (f32, f16, bf16).
pub(super) struct Fused {
    /// `[dtype][LN variant]`.
    embed_ln: [[CudaFunction; 3]; 3],
    add_ln: [[CudaFunction; 3]; 3],
    /// `add_ln4_{T}_{V}`: 4 values a lane per access (dim % 4 == 0, aligned rows).
    add_ln4: [[CudaFunction; 3]; 3],
    bias_act_vec: [CudaFunction; 3],
    bias_act: [CudaFunction; 3],
    /// The same with the bias in T (f16, bf16).
    bias_act_vec_t: [CudaFunction; 2],
    bias_act_t: [CudaFunction; 2],
    /// `[dtype][log2 C]`, head_dim <= 32 * C.
    flash: [[CudaFunction; 3]; 3],
    /// `[f16, bf16][D = 32, 64]`: `tc_attn` (v1) and `tc2_attn` (v2).
    tc: [[CudaFunction; 2]; 2],
    tc2: [[CudaFunction; 2]; 2],
    /// `row_attn_f32_d{32, 64}`: f32 attention, a thread per query.
    rows: [CudaFunction; 2],
    /// `row_attn4_f32_d{32, 64}`: the same with four threads per query.
    rows4: [CudaFunction; 2],
    /// The tensor-core attention kernel `attention` takes.
    pub(super) attn: AttnKernel,
    pool: [CudaFunction; 3],
}

impl Fused {
    /// Compiles (once per device) and loads every kernel; attention as
    /// [`AttnKernel::from_env`] says.
    pub(super) fn load(backend: &CudaBackend) -> Result<Fused> {
        let attn = AttnKernel::from_env()?;
        let f =
            |name: String| -> Result<CudaFunction> { Ok(backend.function(MODULE, SOURCE, &name)?) };
        let per_dtype = |make: &dyn Fn(&str) -> Result<CudaFunction>| -> Result<[CudaFunction; 3]> {
            Ok([make("f32")?, make("f16")?, make("bf16")?])
        };
        let ln = |prefix: &str| -> Result<[[CudaFunction; 3]; 3]> {
            let row = |s: &str| -> Result<[CudaFunction; 3]> {
                Ok([
                    f(format!("{prefix}_{s}_{}", LN_VARIANTS[0]))?,
                    f(format!("{prefix}_{s}_{}", LN_VARIANTS[1]))?,
                    f(format!("{prefix}_{s}_{}", LN_VARIANTS[2]))?,
                ])
            };
            Ok([row("f32")?, row("f16")?, row("bf16")?])
        };
        let flash = |s: &str| -> Result<[CudaFunction; 3]> {
            Ok([
                f(format!("flash_attn_{s}_c1"))?,
                f(format!("flash_attn_{s}_c2"))?,
                f(format!("flash_attn_{s}_c4"))?,
            ])
        };
        let tc = |prefix: &str, s: &str| -> Result<[CudaFunction; 2]> {
            Ok([
                f(format!("{prefix}_{s}_d32"))?,
                f(format!("{prefix}_{s}_d64"))?,
            ])
        };
        Ok(Fused {
            embed_ln: ln("embed_ln")?,
            add_ln: ln("add_ln")?,
            add_ln4: ln("add_ln4")?,
            bias_act_vec: per_dtype(&|s| f(format!("bias_act_vec_{s}")))?,
            bias_act: per_dtype(&|s| f(format!("bias_act_{s}")))?,
            bias_act_vec_t: [
                f("bias_act_vec_f16_t".into())?,
                f("bias_act_vec_bf16_t".into())?,
            ],
            bias_act_t: [f("bias_act_f16_t".into())?, f("bias_act_bf16_t".into())?],
            flash: [flash("f32")?, flash("f16")?, flash("bf16")?],
            tc: [tc("tc_attn", "f16")?, tc("tc_attn", "bf16")?],
            tc2: [tc("tc2_attn", "f16")?, tc("tc2_attn", "bf16")?],
            rows: [f("row_attn_f32_d32".into())?, f("row_attn_f32_d64".into())?],
            rows4: [
                f("row_attn4_f32_d32".into())?,
                f("row_attn4_f32_d64".into())?,
            ],
            attn,
            pool: per_dtype(&|s| f(format!("pool_mean_{s}")))?,
        })
    }

    /// `embed_ln` in `dt`: tables in `dt`, gamma / beta f32.
    ///
    /// # Safety
    /// `check_embed_ln` validated the tensors: ids / types hold `tokens` u32s,
    /// offsets `batch + 1`, word / position / token_type `[vocab | max_pos |
    /// type_vocab, dim]` of `dt` (each >= 1 row), gamma / beta `dim` f32s, out
    /// `[tokens, dim]` of `dt`, all memory of the lane's device.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn embed_ln(
        &self,
        lane: &CudaLane,
        dt: DType,
        v: usize,
        (tokens, batch, dim): (usize, usize, usize),
        (vocab, max_pos, type_vocab): (usize, usize, usize),
        [ids, types, offsets, word, position, token_type, gamma, beta, out]: [DevicePtr; 9],
        eps: f32,
    ) -> Result<()> {
        let d = dtype_index(dt)?;
        let (rows_u, batch_u, dim_u) = (
            u32_of("tokens", tokens)?,
            u32_of("batch", batch)?,
            u32_of("hidden", dim)?,
        );
        u32_of("tokens * hidden", tokens.saturating_mul(dim))?;
        let (vocab_u, pos_u, ty_u) = (
            u32_of("vocab", vocab)?,
            u32_of("max_pos", max_pos)?,
            u32_of("type_vocab", type_vocab)?,
        );
        let p = [
            ids.0,
            types.0,
            offsets.0,
            word.0,
            position.0,
            token_type.0,
            gamma.0,
            beta.0,
            out.0,
        ];
        let mut args = [
            kernel_arg(&p[0]),
            kernel_arg(&p[1]),
            kernel_arg(&p[2]),
            kernel_arg(&batch_u),
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
            kernel_arg(&ty_u),
        ];
        let grid = rows_u.div_ceil(LN_WARPS);
        // SAFETY: the arguments match `embed_ln_{T}_{V}(ids, types, offsets, batch,
        // word, position, token_type, gamma, beta, out, rows, dim, eps, vocab, max_pos,
        // type_vocab)`; the extents are this function's contract; the kernel clamps
        // ids, types and positions to their tables and finds each row's sequence by
        // a binary search that stays within offsets[0..batch]; dim <= 32 * V.
        unsafe {
            launch(
                lane,
                &self.embed_ln[d][v],
                (grid, 1, 1),
                LN_WARPS * 32,
                0,
                &mut args,
            )
        }
    }

    /// `linear` in `dt`: `out = act(x · wᵀ + b)` on tensor cores (f32
    /// accumulation). With `blaslt`, `dt` 16-bit and the bias in `dt` (the encoder's
    /// 16-bit weights keep their biases so), one cuBLASLt matmul with the bias (+ tanh
    /// GELU) in its epilogue, where the lane's cuBLASLt takes the problem (it refuses
    /// an f32 bias with a 16-bit output); otherwise `cublasGemmEx`, then the bias (+
    /// exact GELU) in place.
    ///
    /// # Safety
    /// `check_linear` validated the tensors: x `[rows, k]`, w `[n, k]`, out
    /// `[rows, n]` of `dt`, b `n` values of `bias_dt` (f32 or `dt`); out is a distinct
    /// (mutably borrowed) buffer; all memory of the lane's device.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn linear(
        &self,
        lane: &CudaLane,
        dt: DType,
        blaslt: bool,
        (rows, k, n): (usize, usize, usize),
        x: DevicePtr,
        w: DevicePtr,
        (b, bias_dt): (DevicePtr, DType),
        gelu: bool,
        out: DevicePtr,
    ) -> Result<()> {
        let d = dtype_index(dt)?;
        let ty = gemm_type(dt)?;
        let total = u32_of("rows * n", rows.saturating_mul(n))?;
        // (A lane without a usable cuBLASLt, e.g. no libcublasLt, takes GemmEx;
        // with `blaslt` off the lane's cuBLASLt is never created.)
        let lt = match (blaslt, ty) {
            (true, GemmType::F16 | GemmType::BF16) if bias_dt == dt => lane.blas_lt().ok(),
            _ => None,
        };
        if let Some(lt) = lt {
            let epilogue = if gelu {
                Epilogue::GeluBias
            } else {
                Epilogue::Bias
            };
            // Row-major out[rows, n] = x · wᵀ + b is column-major D (n × rows) =
            // wᵀ · x with b (n entries) added down each column: one per row of D.
            // SAFETY: per this function's contract x holds rows*k, w n*k and out
            // rows*n elements of `dt` and b n of `dt` (checked above), on this lane's device, alive
            // until the matmul has run (stream order); out overlaps no input.
            let done = unsafe {
                lt.matmul_bias(
                    (Op::T, Op::N),
                    (n, rows, k),
                    ty,
                    (w, k),
                    (x, k),
                    ty,
                    (out, n),
                    (b, ty),
                    epilogue,
                    gemm_sms(lane, rows),
                )
            }?;
            if done {
                return Ok(());
            }
        }
        // Row-major out[rows, n] = x · wᵀ is column-major C (n × rows) = wᵀ · x.
        // SAFETY: per this function's contract x holds rows*k, w n*k and out rows*n
        // elements of `dt`, on this lane's device, alive until the GEMM has run
        // (stream order); out overlaps neither input.
        unsafe {
            lane.blas()?.gemm_ex(
                Op::T,
                Op::N,
                (n, rows, k),
                1.0,
                ty,
                (w, k),
                (x, k),
                0.0,
                ty,
                (out, n),
            )
        }?;
        let vec = 16 / dt.size();
        let vectorized = n % vec == 0 && out.0 % 16 == 0;
        // Bias in `dt` (16-bit only): the `_t` kernels; else the f32-bias ones.
        let f = match (vectorized, bias_dt == dt && d > 0) {
            (true, false) => &self.bias_act_vec[d],
            (false, false) => &self.bias_act[d],
            (true, true) => &self.bias_act_vec_t[d - 1],
            (false, true) => &self.bias_act_t[d - 1],
        };
        let (out_p, b_p, n_u, gelu_i) = (out.0, b.0, n as u32, i32::from(gelu));
        let mut args = [
            kernel_arg(&out_p),
            kernel_arg(&b_p),
            kernel_arg(&total),
            kernel_arg(&n_u),
            kernel_arg(&gelu_i),
        ];
        let work = if vectorized {
            total / vec as u32
        } else {
            total
        };
        let grid = work.div_ceil(EPI_THREADS).clamp(1, 8192);
        // SAFETY: the arguments match `bias_act[_vec]_{T}[_t](out, bias, total, n,
        // gelu)` (`_t`: bias of `dt`, else f32, as chosen above); out holds total =
        // rows*n elements of `dt`, bias n values; the vectorized kernel
        // moves 16 bytes a thread, so it needs n a multiple of 16 / size (every
        // 16-byte group then lies in one row) and a 16-byte aligned out (checked).
        unsafe { launch(lane, f, (grid, 1, 1), EPI_THREADS, 0, &mut args) }
    }

    /// f32 attention on `row_attn_f32_d{D}` (a thread per query), or with `split`
    /// on `row_attn4_f32_d{D}` (four threads per query: more parallelism for
    /// small batches), where it applies: head_dim 32 or 64, qkv and out 16-byte
    /// aligned, hidden % 4 == 0. `Ok(false)`, having enqueued nothing, where it
    /// does not.
    ///
    /// # Safety
    /// As [`Fused::attention`] with `dt` f32.
    pub(super) unsafe fn row_attention_f32(
        &self,
        lane: &CudaLane,
        (tokens, batch, hidden, heads, max_len): (usize, usize, usize, usize, usize),
        qkv: DevicePtr,
        offsets: DevicePtr,
        out: DevicePtr,
        split: bool,
    ) -> Result<bool> {
        let hd = hidden / heads;
        let kernels = if split { &self.rows4 } else { &self.rows };
        let Some(f) = (match hd {
            32 => Some(&kernels[0]),
            64 => Some(&kernels[1]),
            _ => None,
        }) else {
            return Ok(false);
        };
        if hidden % 4 != 0 || (qkv.0 | out.0) % 16 != 0 {
            return Ok(false);
        }
        let a = AttnArgs::new((tokens, batch, hidden, heads, max_len), qkv, offsets, out)?;
        let mut args = a.common();
        let grid = a.grid(max_len, RA_Q as usize / if split { 4 } else { 1 })?;
        // SAFETY: the arguments match `row_attn[4]_f32_d{D}(qkv, bias = null, offsets,
        // out, tokens, max_len, heads, scale)` with D = head_dim (32 or 64); the
        // extents are this function's contract; qkv and out are 16-byte aligned and
        // hidden % 4 == 0 (checked), so every float4 access is aligned; the kernel
        // clamps every sequence to [0, tokens) and to max_len; its shared memory
        // is static.
        unsafe { launch(lane, f, grid, RA_Q, 0, &mut args) }?;
        Ok(true)
    }

    /// `attention` in `dt`: the tensor-core kernel for f16 / bf16 with head_dim 32
    /// or 64 (`tc2_attn`, or `tc_attn` under [`AttnKernel::V1`] or for pointers
    /// not 16-byte aligned), else the CUDA-core flash kernel (head_dim <= 128).
    ///
    /// # Safety
    /// `check_attention` validated the tensors: qkv `[tokens, 3 * hidden]` and out
    /// `[tokens, hidden]` of `dt`, offsets `batch + 1` u32s, all memory of the lane's
    /// device.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attention(
        &self,
        lane: &CudaLane,
        dt: DType,
        (tokens, batch, hidden, heads, max_len): (usize, usize, usize, usize, usize),
        qkv: DevicePtr,
        offsets: DevicePtr,
        out: DevicePtr,
    ) -> Result<()> {
        let d = dtype_index(dt)?;
        let hd = hidden / heads;
        let a = AttnArgs::new((tokens, batch, hidden, heads, max_len), qkv, offsets, out)?;
        let tc_idx = match hd {
            32 => Some(0),
            64 => Some(1),
            _ => None,
        };
        if let (Some(t), true) = (tc_idx, d > 0) {
            let mut args = a.common();
            if self.attn == AttnKernel::V2 && (qkv.0 | out.0) % 16 == 0 {
                let grid = a.grid(max_len, TC2_QB)?;
                // SAFETY: the arguments match `tc2_attn_{T}_d{D}(qkv, bias = null,
                // offsets, out, tokens, max_len, heads, scale)` with D = head_dim; the
                // extents are this function's contract; qkv and out are 16-byte
                // aligned (checked) and hidden = heads * D is a multiple of 8, so every
                // 16-byte copy of a row's head slice is aligned and inside its row; the
                // kernel clamps every sequence to [0, tokens) and to max_len and uses
                // static shared memory only (36 KiB at most); the grid's z is the
                // batch, so offsets[b + 1] exists.
                return unsafe {
                    launch(lane, &self.tc2[d - 1][t], grid, TC2_THREADS, 0, &mut args)
                };
            }
            let grid = a.grid(max_len, TC_QB)?;
            // SAFETY: the arguments match `tc_attn_{T}_d{D}(qkv, bias = null, offsets,
            // out, tokens, max_len, heads, scale)` with D = head_dim; the extents are
            // this function's contract; the kernel clamps every sequence to [0,
            // tokens) and to max_len and uses static shared memory only; the grid's z
            // is the batch, so offsets[b + 1] exists.
            return unsafe { launch(lane, &self.tc[d - 1][t], grid, ATT_THREADS, 0, &mut args) };
        }
        let c_idx = match hd.div_ceil(32) {
            1 => 0,
            2 => 1,
            3 | 4 => 2,
            _ => {
                return Err(NnError::Unsupported(format!(
                    "attention: head size {hd} (the CUDA kernels take up to 128)"
                )))
            }
        };
        let kt = 128 >> c_idx;
        let smem = 4 * (2 * kt * (hd + 1) + FA_QB * hd + FA_QB * kt);
        if smem > SMEM_LIMIT {
            return Err(NnError::Unsupported(format!(
                "attention: head size {hd} needs {smem} bytes of shared memory"
            )));
        }
        let grid = a.grid(max_len, FA_QB)?;
        let mut args = a.with_head_dim();
        // SAFETY: the arguments match `flash_attn_{T}_c{C}(qkv, bias = null, offsets,
        // out, tokens, max_len, heads, D, scale)`; the extents are this function's
        // contract; head_dim <= 32 * C; the dynamic shared memory is the kernel's
        // layout for KT = 128 / C and D (< 48 KiB for D <= 128); the kernel clamps
        // every sequence to [0, tokens) and to max_len.
        unsafe {
            launch(
                lane,
                &self.flash[d][c_idx],
                grid,
                ATT_THREADS,
                smem as u32,
                &mut args,
            )
        }
    }

    /// `add_layer_norm` in `dt`: x, residual, out of `dt`; gamma / beta f32.
    ///
    /// # Safety
    /// `check_add_layer_norm` validated the tensors: x, residual, out `[rows,
    /// dim]` of `dt`, gamma / beta `dim` f32s, all memory of the lane's device.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn add_layer_norm(
        &self,
        lane: &CudaLane,
        dt: DType,
        v: usize,
        (rows, dim): (usize, usize),
        [x, residual, gamma, beta, out]: [DevicePtr; 5],
        eps: f32,
    ) -> Result<()> {
        let d = dtype_index(dt)?;
        let (rows_u, dim_u) = (u32_of("rows", rows)?, u32_of("dim", dim)?);
        u32_of("rows * dim", rows.saturating_mul(dim))?;
        let p = [x.0, 0u64, residual.0, gamma.0, beta.0, out.0];
        let mut args = [
            kernel_arg(&p[0]),
            kernel_arg(&p[1]),
            kernel_arg(&p[2]),
            kernel_arg(&p[3]),
            kernel_arg(&p[4]),
            kernel_arg(&p[5]),
            kernel_arg(&rows_u),
            kernel_arg(&dim_u),
            kernel_arg(&eps),
        ];
        let grid = rows_u.div_ceil(LN_WARPS);
        // 4 values a lane per access where the rows allow it: dim % 4 == 0, the
        // activations aligned to 4 values, gamma and beta to 16 bytes.
        let row_align = 4 * dt.size() as u64;
        if dim % 4 == 0
            && [x.0, residual.0, out.0].iter().all(|p| p % row_align == 0)
            && [gamma.0, beta.0].iter().all(|p| p % 16 == 0)
        {
            let p4 = [x.0, residual.0, gamma.0, beta.0, out.0];
            let mut args4 = [
                kernel_arg(&p4[0]),
                kernel_arg(&p4[1]),
                kernel_arg(&p4[2]),
                kernel_arg(&p4[3]),
                kernel_arg(&p4[4]),
                kernel_arg(&rows_u),
                kernel_arg(&dim_u),
                kernel_arg(&eps),
            ];
            // SAFETY: the arguments match `add_ln4_{T}_{V}(x, res, gamma, beta, out,
            // rows, dim, eps)`; the extents are this function's contract and the
            // alignment its 8- / 16-byte accesses need was checked just above; each
            // warp reads its row before writing it; dim <= 32 * V.
            return unsafe {
                launch(
                    lane,
                    &self.add_ln4[d][v],
                    (grid, 1, 1),
                    LN_WARPS * 32,
                    0,
                    &mut args4,
                )
            };
        }
        // SAFETY: the arguments match `add_ln_{T}_{V}(x, bias = null, res, gamma,
        // beta, out, rows, dim, eps)`; the extents are this function's contract; each
        // warp reads its row before writing it; dim <= 32 * V.
        unsafe {
            launch(
                lane,
                &self.add_ln[d][v],
                (grid, 1, 1),
                LN_WARPS * 32,
                0,
                &mut args,
            )
        }
    }

    /// `pool_mean` of `hidden` in `dt`; out f32.
    ///
    /// # Safety
    /// `check_pool` validated the tensors: hidden `[tokens, dim]` of `dt`, offsets
    /// `batch + 1` u32s, out `[batch, dim]` f32s, all memory of the lane's device.
    pub(super) unsafe fn pool_mean(
        &self,
        lane: &CudaLane,
        dt: DType,
        (tokens, batch, dim): (usize, usize, usize),
        [hidden, offsets, out]: [DevicePtr; 3],
    ) -> Result<()> {
        let d = dtype_index(dt)?;
        let (tok_u, batch_u, dim_u) = (
            u32_of("tokens", tokens)?,
            u32_of("batch", batch)?,
            u32_of("hidden", dim)?,
        );
        u32_of("tokens * hidden", tokens.saturating_mul(dim))?;
        let (h, o, out_p) = (hidden.0, offsets.0, out.0);
        let mut args = [
            kernel_arg(&h),
            kernel_arg(&o),
            kernel_arg(&out_p),
            kernel_arg(&tok_u),
            kernel_arg(&dim_u),
        ];
        // SAFETY: the arguments match `pool_mean_{T}(hidden, offsets, out, tokens,
        // dim)`; the extents are this function's contract; grid x is the batch (so
        // offsets[b + 1] exists), each range clamped to [0, tokens); grid y covers
        // the columns 32 at a time (columns past `dim` are skipped); the block is
        // POOL_GROUPS warps, matching the kernel's static shared array.
        unsafe {
            launch(
                lane,
                &self.pool[d],
                (batch_u, dim_u.div_ceil(32), 1),
                32 * POOL_GROUPS,
                0,
                &mut args,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_defines_every_kernel_loaded() {
        for s in ["f32", "f16", "bf16"] {
            let (t, short) = match s {
                "f32" => ("float", s),
                "f16" => ("f16", s),
                _ => ("bf16", s),
            };
            for v in LN_VARIANTS {
                assert!(
                    SOURCE.contains(&format!("FLN_KERNELS(T, S, {v})")),
                    "LN {v}"
                );
            }
            assert!(SOURCE.contains(&format!("FLN_ALL({t}, {short})")), "{s}");
            assert!(
                SOURCE.contains(&format!("FBIAS_KERNELS({t}, {short}, float, )")),
                "{s}"
            );
            if s != "f32" {
                assert!(
                    SOURCE.contains(&format!("FBIAS_KERNELS({t}, {short}, {t}, _t)")),
                    "{s} with its bias in {s}"
                );
            }
            assert!(
                SOURCE.contains(&format!("FPOOL_KERNEL({t}, {short})")),
                "{s}"
            );
            for c in [1, 2, 4] {
                assert!(
                    SOURCE.contains(&format!("FA_KERNEL({t}, {short}, {c})")),
                    "{s} c{c}"
                );
            }
        }
        for s in ["f16", "bf16"] {
            for d in [32, 64] {
                assert!(
                    SOURCE.contains(&format!("TC_KERNEL({s}, {s}, {d})")),
                    "{s} d{d}"
                );
                assert!(
                    SOURCE.contains(&format!("TC2_KERNEL({s}, {s}, {d})")),
                    "tc2 {s} d{d}"
                );
            }
        }
        assert!(SOURCE.contains(&format!("#define FLN_WARPS {LN_WARPS}")));
        assert!(SOURCE.contains(&format!("#define FA_WARPS {}", ATT_THREADS / 32)));
        assert!(SOURCE.contains(&format!("#define TC_WARPS {}", ATT_THREADS / 32)));
        assert_eq!(FA_QB, 16);
        assert_eq!(TC_QB, 16 * (ATT_THREADS as usize / 32));
        assert!(SOURCE.contains(&format!("#define TC2_WARPS {}", TC2_THREADS / 32)));
        assert!(SOURCE.contains("#define TC2_BQ (TC2_WARPS * 16)"));
        assert_eq!(TC2_QB, 16 * (TC2_THREADS as usize / 32));
        assert!(SOURCE.contains(&format!("#define RA_Q {RA_Q}")));
        assert!(SOURCE.contains("row_attn<D, 4>"));
        assert!(SOURCE.contains(&format!("#define FPOOL_GROUPS {POOL_GROUPS}")));
    }

    #[test]
    fn attn_kernel_parses() {
        assert_eq!(AttnKernel::parse("v1").unwrap(), AttnKernel::V1);
        assert_eq!(AttnKernel::parse(" V2 ").unwrap(), AttnKernel::V2);
        assert!(AttnKernel::parse("v3").is_err());
    }

    #[test]
    fn dtype_rules() {
        let ok = activation_dtype(
            "linear",
            &[("x", DType::F16), ("w", DType::F16)],
            &[("b", DType::F32)],
        );
        assert_eq!(ok.unwrap(), DType::F16);
        let mixed = activation_dtype("linear", &[("x", DType::F16), ("w", DType::BF16)], &[]);
        assert!(mixed.unwrap_err().to_string().contains("tensor w"));
        let bias = activation_dtype("linear", &[("x", DType::F16)], &[("b", DType::F16)]);
        assert!(bias.unwrap_err().to_string().contains("tensor b"));
        assert!(activation_dtype("pool", &[("h", DType::U32)], &[]).is_err());
    }
}
