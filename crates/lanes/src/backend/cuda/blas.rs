//! One cuBLAS handle per lane, called with raw device pointers: fp32 SGEMM (exact
//! fp32, no TF32) and [`LaneBlas::gemm_ex`], tensor-core GEMMs on f16 / bf16 inputs
//! and outputs with f32 accumulation (`CUBLAS_COMPUTE_32F`).
//!
//! Tensors are raw [`DevicePtr`]s from the caching allocator, not cudarc
//! `CudaSlice`s, so this goes through `cudarc::cublas::result` directly. The handle
//! is wrapped here rather than in cudarc's `CudaBlas`, whose `Drop` unwraps
//! `cublasDestroy` and can panic at shutdown.

use std::sync::Arc;

use cudarc::cublas::result::{self as blas, CublasError};
use cudarc::cublas::sys;
use cudarc::driver::{CudaContext, CudaStream};

use super::bind;
use crate::backend::DevicePtr;
use crate::{Error, Result};

/// Whether cuBLAS uses a matrix as stored or transposed (`op(X)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `op(X) = X` (`CUBLAS_OP_N`).
    N,
    /// `op(X) = Xᵀ` (`CUBLAS_OP_T`).
    T,
}

impl Op {
    fn raw(self) -> sys::cublasOperation_t {
        match self {
            Op::N => sys::cublasOperation_t::CUBLAS_OP_N,
            Op::T => sys::cublasOperation_t::CUBLAS_OP_T,
        }
    }
}

/// Element type of a [`LaneBlas::gemm_ex`] matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmType {
    /// IEEE fp32 (`CUDA_R_32F`).
    F32,
    /// IEEE fp16 (`CUDA_R_16F`).
    F16,
    /// bfloat16 (`CUDA_R_16BF`).
    BF16,
}

impl GemmType {
    fn raw(self) -> sys::cudaDataType {
        match self {
            GemmType::F32 => sys::cudaDataType::CUDA_R_32F,
            GemmType::F16 => sys::cudaDataType::CUDA_R_16F,
            GemmType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            GemmType::F32 => 4,
            GemmType::F16 | GemmType::BF16 => 2,
        }
    }
}

/// A cuBLAS handle bound to one lane's stream for its whole life, in the default
/// fp32 math mode (no TF32 tensor-core downconversion) and host pointer mode.
pub struct LaneBlas {
    handle: sys::cublasHandle_t,
    ctx: Arc<CudaContext>,
    device: Arc<str>,
    /// Keeps the stream the handle is bound to alive as long as the handle.
    _stream: Arc<CudaStream>,
}

// SAFETY: a cuBLAS handle may be used from any thread (cuBLAS is thread-safe when a
// handle's stream and workspace are not changed concurrently; this handle's stream is
// set once, at creation); the context and stream it needs are kept alive by the Arcs.
unsafe impl Send for LaneBlas {}
// SAFETY: see `Send`; every method only issues cuBLAS calls on the handle.
unsafe impl Sync for LaneBlas {}

impl LaneBlas {
    pub(crate) fn new(
        ctx: &Arc<CudaContext>,
        device: &Arc<str>,
        stream: &Arc<CudaStream>,
    ) -> Result<LaneBlas> {
        let fail = |op: &str, message: String| Error::Cuda {
            device: device.to_string(),
            op: op.to_string(),
            message,
        };
        // SAFETY: only tries to dlopen libcublas by its candidate names.
        if !unsafe { sys::is_culib_present() } {
            return Err(fail(
                "cublasCreate",
                "libcublas.so could not be loaded (add the CUDA toolkit's lib64 directory, \
                 e.g. /usr/local/cuda/lib64, to LD_LIBRARY_PATH)"
                    .into(),
            ));
        }
        bind(ctx).map_err(|e| fail("cuCtxSetCurrent", super::describe(e)))?;
        let handle = blas::create_handle().map_err(|e| fail("cublasCreate", format!("{e:?}")))?;
        // From here the handle is owned: an early return destroys it.
        let me = LaneBlas {
            handle,
            ctx: ctx.clone(),
            device: device.clone(),
            _stream: stream.clone(),
        };
        // SAFETY: the handle was just created; the stream is live (held by `me`).
        unsafe { blas::set_stream(me.handle, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(|e| fail("cublasSetStream", format!("{e:?}")))?;
        // SAFETY: valid handle; DEFAULT_MATH keeps sgemm in full fp32 (TF32 would need
        // CUBLAS_TF32_TENSOR_OP_MATH), so results match the CPU reference.
        unsafe { sys::cublasSetMathMode(me.handle, sys::cublasMath_t::CUBLAS_DEFAULT_MATH) }
            .result()
            .map_err(|e| fail("cublasSetMathMode", format!("{e:?}")))?;
        Ok(me)
    }

    /// The raw handle (for cuBLAS calls not wrapped here; do not destroy it or change
    /// its stream). Bind the context first ([`super::CudaLane::bind_to_thread`]).
    pub fn handle(&self) -> sys::cublasHandle_t {
        self.handle
    }

    fn err(&self, op: &str) -> impl FnOnce(CublasError) -> Error + '_ {
        let op = op.to_string();
        move |e| Error::Cuda {
            device: self.device.to_string(),
            op,
            message: format!("{e:?}"),
        }
    }

    fn bind(&self) -> Result<()> {
        bind(&self.ctx).map_err(|e| Error::Cuda {
            device: self.device.to_string(),
            op: "cuCtxSetCurrent".into(),
            message: super::describe(e),
        })
    }

    /// `C = alpha * op(A) * op(B) + beta * C` in fp32, column-major (cuBLAS
    /// convention): `op(A)` is `m×k`, `op(B)` is `k×n`, `C` is `m×n`, each stored with
    /// leading dimension `ld*`. Enqueued on the lane's stream.
    ///
    /// For row-major `C[m×n] = A[m×k] · B[k×n]`, compute `Cᵀ = Bᵀ Aᵀ` instead:
    /// `sgemm(N, N, n, m, k, 1.0, B, n, A, k, 0.0, C, n)`.
    ///
    /// # Safety
    /// `a`, `b`, `c` are device memory of this backend holding the matrices the
    /// dimensions describe, allocated until the GEMM has run; `c` does not overlap
    /// `a` or `b`; no other lane uses them concurrently.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        &self,
        transa: Op,
        transb: Op,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: DevicePtr,
        lda: usize,
        b: DevicePtr,
        ldb: usize,
        beta: f32,
        c: DevicePtr,
        ldc: usize,
    ) -> Result<()> {
        let [m, n, k, lda, ldb, ldc] = dims("sgemm", [m, n, k, lda, ldb, ldc])?;
        self.bind()?;
        // SAFETY: valid handle bound to the lane's stream; alpha/beta are host values
        // (host pointer mode) that live across the call; the device pointers and
        // their extents are the caller's contract.
        unsafe {
            blas::sgemm(
                self.handle,
                transa.raw(),
                transb.raw(),
                m,
                n,
                k,
                &alpha,
                a.0 as *const f32,
                lda,
                b.0 as *const f32,
                ldb,
                &beta,
                c.0 as *mut f32,
                ldc,
            )
        }
        .map_err(self.err("cublasSgemm"))
    }

    /// `batch` independent fp32 GEMMs (see [`LaneBlas::sgemm`]); matrix `i` of A
    /// starts `i * stride_a` elements after `a` (likewise B and C).
    ///
    /// # Safety
    /// As [`LaneBlas::sgemm`], for every matrix of the batch.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm_strided_batched(
        &self,
        transa: Op,
        transb: Op,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: DevicePtr,
        lda: usize,
        stride_a: usize,
        b: DevicePtr,
        ldb: usize,
        stride_b: usize,
        beta: f32,
        c: DevicePtr,
        ldc: usize,
        stride_c: usize,
        batch: usize,
    ) -> Result<()> {
        let [m, n, k, lda, ldb, ldc, batch] =
            dims("sgemm_strided_batched", [m, n, k, lda, ldb, ldc, batch])?;
        let stride = |s: usize| {
            i64::try_from(s).map_err(|_| {
                Error::InvalidArgument(format!("sgemm_strided_batched: stride {s} exceeds i64"))
            })
        };
        let (sa, sb, sc) = (stride(stride_a)?, stride(stride_b)?, stride(stride_c)?);
        self.bind()?;
        // SAFETY: as in `sgemm`, for each matrix of the batch.
        unsafe {
            blas::sgemm_strided_batched(
                self.handle,
                transa.raw(),
                transb.raw(),
                m,
                n,
                k,
                &alpha,
                a.0 as *const f32,
                lda,
                sa,
                b.0 as *const f32,
                ldb,
                sb,
                &beta,
                c.0 as *mut f32,
                ldc,
                sc,
                batch,
            )
        }
        .map_err(self.err("cublasSgemmStridedBatched"))
    }
}

impl LaneBlas {
    /// `C = alpha * op(A) * op(B) + beta * C`, column-major as [`LaneBlas::sgemm`],
    /// with A and B of type `ab`, C of type `c_type`, accumulated in f32
    /// (`CUBLAS_COMPUTE_32F`; alpha and beta are f32). f16 / bf16 inputs run on
    /// tensor cores; all-f32 operands are computed in full fp32 (this handle's
    /// default math mode: no TF32), the same as [`LaneBlas::sgemm`].
    ///
    /// # Safety
    /// As [`LaneBlas::sgemm`], with every matrix holding elements of the type given.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_ex(
        &self,
        transa: Op,
        transb: Op,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        ab: GemmType,
        (a, lda): (DevicePtr, usize),
        (b, ldb): (DevicePtr, usize),
        beta: f32,
        c_type: GemmType,
        (c, ldc): (DevicePtr, usize),
    ) -> Result<()> {
        let [m, n, k, lda, ldb, ldc] = dims("gemm_ex", [m, n, k, lda, ldb, ldc])?;
        self.bind()?;
        // SAFETY: valid handle bound to the lane's stream; alpha/beta are f32 host
        // values (host pointer mode, CUBLAS_COMPUTE_32F takes f32 scalars) that live
        // across the call; the device pointers, their element types and extents are
        // the caller's contract.
        unsafe {
            blas::gemm_ex(
                self.handle,
                transa.raw(),
                transb.raw(),
                m,
                n,
                k,
                (&alpha as *const f32).cast(),
                a.0 as *const std::ffi::c_void,
                ab.raw(),
                lda,
                b.0 as *const std::ffi::c_void,
                ab.raw(),
                ldb,
                (&beta as *const f32).cast(),
                c.0 as *mut std::ffi::c_void,
                c_type.raw(),
                ldc,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(self.err("cublasGemmEx"))
    }
}

/// Converts dimensions to cuBLAS's `int`, rejecting values that do not fit.
fn dims<const N: usize>(op: &str, v: [usize; N]) -> Result<[i32; N]> {
    let mut out = [0i32; N];
    for (o, x) in out.iter_mut().zip(v) {
        *o = i32::try_from(x).map_err(|_| {
            Error::InvalidArgument(format!("{op}: dimension {x} exceeds cuBLAS's int range"))
        })?;
    }
    Ok(out)
}

impl Drop for LaneBlas {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = bind(&self.ctx);
            // SAFETY: the handle is live and destroyed once, here; errors (e.g. a
            // driver already shutting down) are ignored rather than panicking.
            let _ = unsafe { blas::destroy_handle(self.handle) };
        }));
    }
}

impl std::fmt::Debug for LaneBlas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneBlas")
            .field("device", &self.device)
            .finish()
    }
}
