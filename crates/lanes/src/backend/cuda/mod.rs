//! The CUDA backend: a lane is a non-blocking CUDA stream.
//!
//! Built on `cudarc` (driver API, `dynamic-loading`): the crate builds with no CUDA
//! toolkit and [`CudaBackend::new`] fails with [`crate::Error::NoCudaDriver`] where no
//! `libcuda.so` can be loaded. Nothing here panics across the API: cudarc panics when
//! a library or a symbol is missing, so every entry point runs under
//! `catch_unwind` and turns such a panic into an [`crate::Error::Cuda`].
//!
//! - [`CudaBackend`]: the device (one primary context), raw memory
//!   (`cuMemAlloc`/`cuMemFree`, the caching allocator in front owns reuse).
//! - [`ModuleCache`]: CUDA C modules compiled once per device with NVRTC
//!   ([`CudaBackend::function`]).
//! - [`CudaLane`]: one non-blocking stream, a lazily created cuBLAS handle bound to it
//!   ([`CudaLane::blas`], [`CudaLane::sgemm`]), a lazily created cuBLASLt handle
//!   with a fixed workspace for GEMMs with fused bias / GELU epilogues
//!   ([`CudaLane::blas_lt`], [`LaneBlasLt`]), pinned staging buffers for host↔device
//!   copies, completion callbacks (`cuLaunchHostFunc`), kernel launches
//!   ([`CudaLane::launch`]).
//! - [`CudaEvent`]: a native event (`CU_EVENT_DISABLE_TIMING`).
//! - [`CudaGraph`]: a lane's captured work, instantiated for replay.
//!
//! Cross-lane synchronization belongs to lanes (events + the allocator's
//! `record_use`), so cudarc's own per-slice event tracking is switched off (see
//! [`CudaBackend::new`]).

mod backend;
mod blas;
mod blaslt;
mod driver;
mod event;
mod graph;
mod lane;
mod lt_tune;
mod module_cache;

pub use backend::{CudaBackend, SyncMode};
pub use blas::{GemmType, LaneBlas, Op};
pub use blaslt::{Epilogue, LaneBlasLt, LtStats, Rejection, MAX_PLANS, WORKSPACE_BYTES};
pub use event::CudaEvent;
pub use graph::CudaGraph;
pub use lane::CudaLane;
pub use lt_tune::tuning as lt_tuning;
pub use module_cache::{kernel_arg, CompileStats, ModuleCache, ModuleCompile};

/// The cudarc types the layers above need to launch kernels, re-exported so that
/// they need no direct cudarc dependency.
pub use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};

// The driver helpers under the names `blas.rs` uses.
pub(crate) use driver::{bind, describe};
