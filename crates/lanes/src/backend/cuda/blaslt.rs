//! One cuBLASLt handle per lane: 16-bit tensor-core GEMMs with the bias (and
//! optionally GELU) fused into the GEMM's epilogue ([`LaneBlasLt::matmul_bias`]),
//! so no separate kernel re-reads and rewrites the output.
//!
//! - The handle and a fixed workspace of [`WORKSPACE_BYTES`] are created once per
//!   lane (lazily, [`super::CudaLane::blas_lt`]) and live as long as the lane: a
//!   CUDA graph that captured a matmul keeps using the same workspace on replay.
//! - Each problem (types, transposes, dimensions, leading dimensions, epilogue)
//!   gets a plan on first use: the matmul descriptor, the three matrix layouts and
//!   the algorithm `cublasLtMatmulAlgoGetHeuristic` picks for the workspace. That
//!   is host-only work, done eagerly before any capture in the encoder's flow
//!   (see `lanes_nn::graph`). Plans are cached per lane (at most [`MAX_PLANS`];
//!   the cache is emptied when full) behind an uncontended per-lane mutex, which
//!   is also held across each matmul because the bias pointer is an attribute of
//!   the (shared) descriptor.
//! - Problems cuBLASLt does not take (no algorithm, an unsupported attribute,
//!   operands not 256-byte aligned) are not errors: [`LaneBlasLt::matmul_bias`]
//!   answers `Ok(false)` having enqueued nothing, and the caller takes another path.
//!
//! Numerics: f32 accumulation (`CUBLAS_COMPUTE_32F`, f32 alpha / beta), the bias
//! (`CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE`, the caller's type) added in f32 before
//! the rounding to the output type. For f16 / bf16 outputs the bias must be of
//! the output's type: on the H200 with CUDA 13.0, an f32 bias with a 16-bit D made
//! the heuristic answer `CUBLAS_STATUS_INVALID_VALUE` (run of 2026-12-04), so
//! `lanes_nn` keeps its 16-bit models' biases in the activation dtype. cuBLASLt's GELU ([`Epilogue::GeluBias`]) is the
//! tanh approximation, `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`, not the exact
//! erf GELU: they differ by at most 4.7e-4 in absolute value (at x ≈ ±2.70; the
//! difference is odd-symmetric since GELU(x) − GELU(−x) = x). At x ≈ 2.7 that is
//! a quarter of the f16 rounding step of the output (2e-3); at x ≈ −2.7, where
//! GELU ≈ −0.009, it is an absolute error about f16's resolution near 1 (4.9e-4),
//! small against activations of order 1 but not against that value. Use it for
//! 16-bit outputs only; f32 keeps the exact GELU.
//!
//! Handles, descriptors and the workspace are wrapped here rather than in cudarc's
//! `CudaBlasLT`, whose `Drop` unwraps and can panic at shutdown.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys;
use cudarc::driver::{result as drv, CudaContext, CudaStream};

use super::blas::{GemmType, Op};
use super::lt_tune::{self, Memo};
use super::{bind, describe};
use crate::backend::DevicePtr;
use crate::sync::lock_std as lock;
use crate::{Error, Result};

/// The workspace each lane's cuBLASLt handle gets (allocated once per lane).
pub const WORKSPACE_BYTES: usize = 32 << 20;
/// Plans a lane caches before it drops them all (problem shapes vary with the
/// batch's token count when forwards run eagerly).
pub const MAX_PLANS: usize = 256;
/// The operand alignment the heuristic assumes by default (bytes): operands that
/// are less aligned go to the caller's other path.
const ALIGN: u64 = 256;

/// What the epilogue does to `acc = op(A) · op(B)` (column-major `m × n`) before
/// the rounding to D's type; `bias` has `m` entries, one per row of D.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// `D = acc + bias` (`CUBLASLT_EPILOGUE_BIAS`).
    Bias,
    /// `D = gelu_tanh(acc + bias)` (`CUBLASLT_EPILOGUE_GELU_BIAS`; the tanh
    /// approximation of GELU, see the module docs).
    GeluBias,
}

impl Epilogue {
    fn raw(self) -> sys::cublasLtEpilogue_t {
        match self {
            Epilogue::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::GeluBias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
        }
    }
}

/// cuBLASLt's `cudaDataType` of a [`GemmType`].
fn data_type(t: GemmType) -> sys::cudaDataType {
    match t {
        GemmType::F32 => sys::cudaDataType::CUDA_R_32F,
        GemmType::F16 => sys::cudaDataType::CUDA_R_16F,
        GemmType::BF16 => sys::cudaDataType::CUDA_R_16BF,
    }
}

/// `cublasOperation_t` as the `int32_t` the descriptor's TRANSA / TRANSB take.
fn op_raw(op: Op) -> i32 {
    match op {
        Op::N => 0,
        Op::T => 1,
    }
}

/// Everything a plan depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    ops: (Op, Op),
    mnk: (u64, u64, u64),
    lds: (i64, i64, i64),
    ab: GemmType,
    d: GemmType,
    bias: GemmType,
    epilogue: Epilogue,
    /// `CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET` (0: the whole device).
    sms: u32,
}

/// A matmul descriptor, its layouts and algorithm. Null handles are never
/// destroyed, so a half-built plan drops cleanly.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
    /// The heuristic's algorithms, best first (`algo` is one of them); emptied
    /// once the choice is final (timed, taken from the memo, or not to be timed).
    candidates: Vec<sys::cublasLtMatmulAlgo_t>,
}

impl Drop for Plan {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for l in [self.a, self.b, self.d] {
                if !l.is_null() {
                    // SAFETY: a layout this plan created, destroyed once, here;
                    // enqueued matmuls do not reference it (cuBLASLt reads
                    // descriptors while enqueuing only).
                    let _ = unsafe { lt::destroy_matrix_layout(l) };
                }
            }
            if !self.desc.is_null() {
                // SAFETY: as for the layouts.
                let _ = unsafe { lt::destroy_matmul_desc(self.desc) };
            }
        }));
    }
}

/// A problem cuBLASLt did not take: the step that refused it and its status.
#[derive(Clone, Copy, Debug)]
pub struct Rejection {
    /// The cuBLASLt call (or check) that refused the problem.
    pub step: &'static str,
    /// Its status (`CUBLAS_STATUS_NOT_SUPPORTED` for a check of ours).
    pub status: sys::cublasStatus_t,
}

enum Entry {
    Ready(Plan),
    Unsupported(Rejection),
}

/// A lane's plan cache and counters (behind one mutex).
#[derive(Default)]
struct State {
    plans: HashMap<Key, Entry>,
    stats: LtStats,
    last_rejection: Option<Rejection>,
}

/// What a lane's cuBLASLt handle has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LtStats {
    /// Matmuls enqueued.
    pub matmuls: u64,
    /// Calls answered `Ok(false)` (the caller took another path).
    pub declined: u64,
    /// Plans built (heuristic queries), including refused ones.
    pub plans_built: u64,
    /// Plans whose algorithm this lane chose by timing the heuristic's candidates
    /// (see `lt_tune`); plans that took another lane's choice are not counted.
    pub timed: u64,
}

/// A cuBLASLt handle bound to one lane's stream, with its fixed workspace and its
/// plan cache.
pub struct LaneBlasLt {
    handle: sys::cublasLtHandle_t,
    /// `WORKSPACE_BYTES` of device memory (`cuMemAlloc`), 0 until allocated.
    workspace: u64,
    state: Mutex<State>,
    /// The device's algorithm choices made by timing (shared by its lanes).
    memo: Arc<Memo<Key>>,
    ctx: Arc<CudaContext>,
    device: Arc<str>,
    /// The stream every matmul is enqueued on; kept alive with the handle.
    stream: Arc<CudaStream>,
}

// SAFETY: a cuBLASLt handle may be used from any thread; every use here holds
// `state`'s mutex, so the handle, the descriptors and the workspace are used by one
// thread at a time. The context and stream are kept alive by the Arcs.
unsafe impl Send for LaneBlasLt {}
// SAFETY: see `Send`.
unsafe impl Sync for LaneBlasLt {}

impl LaneBlasLt {
    pub(crate) fn new(
        ctx: &Arc<CudaContext>,
        device: &Arc<str>,
        stream: &Arc<CudaStream>,
        memo: &Arc<Memo<Key>>,
    ) -> Result<LaneBlasLt> {
        let fail = |op: &str, message: String| Error::Cuda {
            device: device.to_string(),
            op: op.to_string(),
            message,
        };
        // SAFETY: only tries to dlopen libcublasLt by its candidate names.
        if !unsafe { sys::is_culib_present() } {
            return Err(fail(
                "cublasLtCreate",
                "libcublasLt.so could not be loaded (add the CUDA toolkit's lib64 directory \
                 to LD_LIBRARY_PATH)"
                    .into(),
            ));
        }
        bind(ctx).map_err(|e| fail("cuCtxSetCurrent", describe(e)))?;
        let handle = lt::create_handle().map_err(|e| fail("cublasLtCreate", format!("{e:?}")))?;
        // From here the handle is owned: an early return destroys it.
        let mut me = LaneBlasLt {
            handle,
            workspace: 0,
            state: Mutex::new(State::default()),
            memo: memo.clone(),
            ctx: ctx.clone(),
            device: device.clone(),
            stream: stream.clone(),
        };
        // SAFETY: the context is current; the memory is freed once, by `Drop`.
        me.workspace = unsafe { drv::malloc_sync(WORKSPACE_BYTES) }
            .map_err(|e| fail("cuMemAlloc (cuBLASLt workspace)", describe(e)))?;
        Ok(me)
    }

    /// The counters so far.
    pub fn stats(&self) -> LtStats {
        lock(&self.state).stats
    }

    /// Why the last refused problem was refused, if one was.
    pub fn last_rejection(&self) -> Option<Rejection> {
        lock(&self.state).last_rejection
    }

    /// `D = epilogue(op(A) · op(B), bias)`, column-major as
    /// [`super::LaneBlas::gemm_ex`]: `op(A)` is `m×k`, `op(B)` is `k×n`, D is
    /// `m×n` (leading dimension `ldd`, type `d_type`), A and B of type `ab`; f32
    /// accumulation; `bias` holds `m` values of `bias_type`, one per row of D. Enqueued on the lane's
    /// stream.
    ///
    /// `sm_target` > 0 asks the heuristic for an algorithm suited to that many SMs
    /// (`CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET`): narrower kernels that leave the
    /// rest of the GPU to other lanes' concurrent work; 0 plans for the whole
    /// device.
    ///
    /// Returns `Ok(false)`, having enqueued nothing, when cuBLASLt does not take the
    /// problem (see the module docs); the caller then computes it another way.
    ///
    /// For row-major `out[rows, n] = x[rows, k] · w[n, k]ᵀ + b`: `(Op::T, Op::N)`,
    /// `(m, n, k) = (n, rows, k)`, `A = (w, k)`, `B = (x, k)`, `D = (out, n)`.
    ///
    /// # Safety
    /// `a`, `b`, `d`, `bias` are device memory of this backend holding the matrices
    /// and vector the arguments describe, allocated until the matmul has run; `d`
    /// overlaps none of the others; no other lane uses them concurrently.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul_bias(
        &self,
        (transa, transb): (Op, Op),
        (m, n, k): (usize, usize, usize),
        ab: GemmType,
        (a, lda): (DevicePtr, usize),
        (b, ldb): (DevicePtr, usize),
        d_type: GemmType,
        (d, ldd): (DevicePtr, usize),
        (bias, bias_type): (DevicePtr, GemmType),
        epilogue: Epilogue,
        sm_target: u32,
    ) -> Result<bool> {
        let mut guard = lock(&self.state);
        let State {
            plans,
            stats,
            last_rejection,
        } = &mut *guard;
        if [a.0, b.0, d.0, bias.0].iter().any(|p| p % ALIGN != 0) {
            stats.declined += 1;
            return Ok(false);
        }
        let key = Key {
            ops: (transa, transb),
            mnk: (dim(m)?, dim(n)?, dim(k)?),
            lds: (ld(lda)?, ld(ldb)?, ld(ldd)?),
            ab,
            d: d_type,
            bias: bias_type,
            epilogue,
            sms: sm_target,
        };
        bind(&self.ctx).map_err(|e| self.err("cuCtxSetCurrent", describe(e)))?;
        if plans.len() >= MAX_PLANS && !plans.contains_key(&key) {
            plans.clear();
        }
        let entry = plans.entry(key).or_insert_with(|| {
            stats.plans_built += 1;
            match self.plan(&key, bias) {
                Ok(p) => Entry::Ready(p),
                Err(r) => Entry::Unsupported(r),
            }
        });
        let plan = match entry {
            Entry::Ready(p) => p,
            Entry::Unsupported(r) => {
                *last_rejection = Some(*r);
                stats.declined += 1;
                return Ok(false);
            }
        };
        let bias_ptr = bias.0 as *const c_void;
        // SAFETY: the descriptor is live (owned by the plan, used under the lock);
        // the attribute is a `const void *`, read from the local during the call.
        unsafe {
            lt::set_matmul_desc_attribute(
                plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                (&bias_ptr as *const *const c_void).cast(),
                std::mem::size_of::<*const c_void>(),
            )
        }
        .map_err(|e| {
            self.err(
                "cublasLtMatmulDescSetAttribute(BIAS_POINTER)",
                format!("{e:?}"),
            )
        })?;
        let ops = Operands {
            a: a.0 as *const c_void,
            b: b.0 as *const c_void,
            d: d.0 as *mut c_void,
        };
        if !plan.candidates.is_empty() {
            // SAFETY: the operands are the caller's contract, valid to compute
            // repeatedly (D overlaps no input).
            if unsafe { self.choose(&key, plan, ops) }? {
                stats.timed += 1;
            }
        }
        // SAFETY: the plan is live and the operands are the caller's contract.
        let r = unsafe { self.enqueue(plan, &plan.algo, ops) };
        match r {
            Ok(()) => {
                stats.matmuls += 1;
                Ok(true)
            }
            Err(CublasError(status))
                if status == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED =>
            {
                let r = Rejection {
                    step: "cublasLtMatmul",
                    status,
                };
                *entry = Entry::Unsupported(r);
                *last_rejection = Some(r);
                stats.declined += 1;
                Ok(false)
            }
            Err(e) => Err(self.err("cublasLtMatmul", format!("{e:?}"))),
        }
    }

    /// Enqueues `D = epilogue(op(A) · op(B))` with `plan`'s descriptors and `algo`.
    ///
    /// # Safety
    /// Called under the state lock with a live plan; the operands are those the
    /// plan describes (the contract of [`LaneBlasLt::matmul_bias`]), aligned.
    unsafe fn enqueue(
        &self,
        plan: &Plan,
        algo: &sys::cublasLtMatmulAlgo_t,
        ops: Operands,
    ) -> std::result::Result<(), CublasError> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the handle, descriptor, layouts and algorithm are live (under the
        // lock); alpha / beta are f32 host values (host pointer mode; 32F scale type)
        // living across the call; C is D with beta = 0 (so C is not read); the
        // workspace is this lane's WORKSPACE_BYTES, used only by work on this lane's
        // stream, which runs in order; the operands, their types and extents are the
        // caller's contract, their alignment was checked by `matmul_bias`.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                ops.a,
                plan.a,
                ops.b,
                plan.b,
                ops.d as *const c_void,
                plan.d,
                ops.d,
                plan.d,
                algo,
                self.workspace as *mut c_void,
                WORKSPACE_BYTES,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
    }

    /// Settles the algorithm of a plan that still has candidates (see
    /// `lt_tune`): the device memo's choice if there is one, else, outside a
    /// capture, the fastest candidate timed with `ops` (then recorded in the
    /// memo). Inside a capture with no memo entry the heuristic's pick stays and
    /// the candidates are kept for a later matmul. Answers whether this call
    /// timed.
    ///
    /// # Safety
    /// As [`LaneBlasLt::enqueue`]; the operands may be computed repeatedly.
    unsafe fn choose(&self, key: &Key, plan: &mut Plan, ops: Operands) -> Result<bool> {
        if let Some(algo) = self.memo.get(key) {
            plan.algo = algo;
            plan.candidates = Vec::new();
            return Ok(false);
        }
        let stream = self.stream.cu_stream();
        if lt_tune::capturing(stream).map_err(|e| self.err("cuStreamIsCapturing", describe(e)))? {
            return Ok(false);
        }
        let candidates = std::mem::take(&mut plan.candidates);
        let run = |i: usize| {
            // SAFETY: as this function's contract, with one candidate algorithm.
            unsafe { self.enqueue(plan, &candidates[i], ops) }.is_ok()
        };
        // SAFETY: the stream is this lane's, live and not capturing; each run
        // enqueues the caller's matmul, which may be computed repeatedly.
        let (pick, times) = unsafe { lt_tune::fastest(stream, candidates.len(), run) }
            .map_err(|e| self.err("timing cuBLASLt algorithms", describe(e)))?;
        if lt_tune::logging() {
            eprintln!("{}", lt_tune::report(&self.device, key.mnk, &times, pick));
        }
        let chosen = pick.map_or(plan.algo, |i| candidates[i]);
        plan.algo = self.memo.settle(*key, chosen);
        Ok(true)
    }

    /// Builds the plan of `key` (host-only cuBLASLt calls); `bias` is the pointer
    /// the heuristic sees (its alignment matters, not its contents).
    fn plan(&self, key: &Key, bias: DevicePtr) -> std::result::Result<Plan, Rejection> {
        let no = |step: &'static str| move |e: CublasError| Rejection { step, status: e.0 };
        let mut p = Plan {
            desc: std::ptr::null_mut(),
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
            candidates: Vec::new(),
        };
        p.desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(no("cublasLtMatmulDescCreate"))?;
        type A = sys::cublasLtMatmulDescAttributes_t;
        let (ta, tb) = (op_raw(key.ops.0), op_raw(key.ops.1));
        let epi = key.epilogue.raw() as u32;
        let bias_type = data_type(key.bias) as i32;
        let bias_ptr = bias.0 as *const c_void;
        let attrs: [(A, *const c_void, usize, &'static str); 5] = [
            (
                A::CUBLASLT_MATMUL_DESC_TRANSA,
                (&ta as *const i32).cast(),
                4,
                "TRANSA",
            ),
            (
                A::CUBLASLT_MATMUL_DESC_TRANSB,
                (&tb as *const i32).cast(),
                4,
                "TRANSB",
            ),
            (
                A::CUBLASLT_MATMUL_DESC_EPILOGUE,
                (&epi as *const u32).cast(),
                4,
                "EPILOGUE",
            ),
            (
                A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                (&bias_type as *const i32).cast(),
                4,
                "BIAS_DATA_TYPE",
            ),
            (
                A::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                (&bias_ptr as *const *const c_void).cast(),
                std::mem::size_of::<*const c_void>(),
                "BIAS_POINTER",
            ),
        ];
        for (attr, buf, size, _name) in attrs {
            // SAFETY: the descriptor was just created; `buf` points at a local of
            // the attribute's type (int32 / uint32 / pointer) and `size` bytes.
            unsafe { lt::set_matmul_desc_attribute(p.desc, attr, buf, size) }
                .map_err(no("cublasLtMatmulDescSetAttribute"))?;
        }
        if key.sms > 0 {
            let sms = i32::try_from(key.sms).unwrap_or(i32::MAX);
            // SAFETY: the descriptor is live; the attribute is an int32 read from
            // the local during the call.
            unsafe {
                lt::set_matmul_desc_attribute(
                    p.desc,
                    A::CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET,
                    (&sms as *const i32).cast(),
                    4,
                )
            }
            .map_err(no("cublasLtMatmulDescSetAttribute"))?;
        }
        let (m, n, k) = key.mnk;
        let (lda, ldb, ldd) = key.lds;
        // Stored shapes: A is m×k, or k×m when transposed; B is k×n, or n×k.
        let (ar, ac) = if key.ops.0 == Op::N { (m, k) } else { (k, m) };
        let (br, bc) = if key.ops.1 == Op::N { (k, n) } else { (n, k) };
        p.a = lt::create_matrix_layout(data_type(key.ab), ar, ac, lda)
            .map_err(no("cublasLtMatrixLayoutCreate"))?;
        p.b = lt::create_matrix_layout(data_type(key.ab), br, bc, ldb)
            .map_err(no("cublasLtMatrixLayoutCreate"))?;
        p.d = lt::create_matrix_layout(data_type(key.d), m, n, ldd)
            .map_err(no("cublasLtMatrixLayoutCreate"))?;
        let pref = Pref(lt::create_matmul_pref().map_err(no("cublasLtMatmulPreferenceCreate"))?);
        let ws = WORKSPACE_BYTES as u64;
        // SAFETY: the preference was just created; the attribute is a uint64.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws as *const u64).cast(),
                8,
            )
        }
        .map_err(no("cublasLtMatmulPreferenceSetAttribute"))?;
        // A whole-device plan asks for candidates to time (see `lt_tune`).
        let tune = key.sms == 0 && lt_tune::tuning();
        let wanted = if tune { lt_tune::CANDIDATES } else { 1 };
        let mut found = vec![
            // SAFETY: an all-zero heuristic result is a valid value of this plain
            // C struct (it is only written by the call below).
            unsafe { std::mem::zeroed::<sys::cublasLtMatmulHeuristicResult_t>() };
            wanted
        ];
        let mut count = 0i32;
        // SAFETY: every descriptor is live; `found` has room for `wanted` results;
        // the heuristic is host-only (it reads the bias pointer's value for its
        // alignment, never the memory).
        unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                p.desc,
                p.a,
                p.b,
                p.d,
                p.d,
                pref.0,
                wanted as i32,
                found.as_mut_ptr(),
                &mut count,
            )
        }
        .result()
        .map_err(no("cublasLtMatmulAlgoGetHeuristic"))?;
        let usable: Vec<sys::cublasLtMatmulAlgo_t> = found
            .iter()
            .take(count.max(0) as usize)
            .filter(|r| {
                r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                    && r.workspaceSize <= WORKSPACE_BYTES
            })
            .map(|r| r.algo)
            .collect();
        let Some(first) = usable.first() else {
            return Err(Rejection {
                step: if count > 0 {
                    "workspace size"
                } else {
                    "cublasLtMatmulAlgoGetHeuristic"
                },
                status: sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
            });
        };
        p.algo = *first;
        if usable.len() > 1 {
            p.candidates = usable;
        }
        Ok(p)
    }

    fn err(&self, op: &str, message: String) -> Error {
        Error::Cuda {
            device: self.device.to_string(),
            op: op.to_string(),
            message,
        }
    }
}

/// The device pointers of one matmul.
#[derive(Clone, Copy)]
struct Operands {
    a: *const c_void,
    b: *const c_void,
    d: *mut c_void,
}

/// A heuristic preference, destroyed when dropped.
struct Pref(sys::cublasLtMatmulPreference_t);

impl Drop for Pref {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: created by `create_matmul_pref`, destroyed once, here.
            let _ = unsafe { lt::destroy_matmul_pref(self.0) };
        }));
    }
}

/// A dimension as cuBLASLt's `uint64_t`, within the `int` range cuBLAS kernels take.
fn dim(v: usize) -> Result<u64> {
    i32::try_from(v)
        .map(|x| x as u64)
        .map_err(|_| Error::InvalidArgument(format!("matmul: dimension {v} exceeds int range")))
}

/// A leading dimension as cuBLASLt's `int64_t`.
fn ld(v: usize) -> Result<i64> {
    dim(v).map(|x| x as i64)
}

impl Drop for LaneBlasLt {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = bind(&self.ctx);
            // Plans first (their descriptors belong to no handle, but go before it).
            match self.state.get_mut() {
                Ok(st) => st.plans.clear(),
                Err(p) => p.into_inner().plans.clear(),
            }
            // SAFETY: the handle is live and destroyed once, here; errors (a driver
            // shutting down) are ignored rather than panicking.
            let _ = unsafe { lt::destroy_handle(self.handle) };
            if self.workspace != 0 {
                // SAFETY: allocated by `new`, freed once, here. The lane synchronizes
                // its stream before its fields drop, so no matmul still uses it.
                let _ = unsafe { drv::free_sync(self.workspace) };
            }
        }));
    }
}

impl std::fmt::Debug for LaneBlasLt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneBlasLt")
            .field("device", &self.device)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_match_cublas() {
        assert_eq!(op_raw(Op::N), 0);
        assert_eq!(op_raw(Op::T), 1);
        assert_eq!(Epilogue::Bias.raw() as u32, 4);
        assert_eq!(Epilogue::GeluBias.raw() as u32, 36);
        assert_eq!(data_type(GemmType::F16) as i32, 2);
        assert_eq!(data_type(GemmType::BF16) as i32, 14);
        assert_eq!(data_type(GemmType::F32) as i32, 0);
    }

    #[test]
    fn dims_fit_int() {
        assert_eq!(dim(384).unwrap(), 384);
        assert!(dim(1 << 31).is_err());
        assert_eq!(ld(1536).unwrap(), 1536);
    }
}
