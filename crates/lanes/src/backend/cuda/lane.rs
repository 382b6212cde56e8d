//! A CUDA lane: one non-blocking stream, its cuBLAS and cuBLASLt handles, pinned
//! staging buffers, and completion callbacks.

use std::any::Any;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, ThreadId};

use cudarc::driver::{result, sys, CudaFunction, CudaStream, DriverError};

use super::blas::{LaneBlas, Op};
use super::blaslt::LaneBlasLt;
use super::driver::{bind, describe, driver_err, guarded, Shared};
use super::event::{CudaEvent, EventHandle};
use super::graph::{CaptureMark, CudaGraph};
use crate::backend::host::panic_message;
use crate::backend::{DevicePtr, HostFn, RawEvent, RawGraph, RawLane};
use crate::sync::lock_std as lock;
use crate::{Error, Result};

/// Smallest pinned staging chunk (a typical request's inputs and outputs fit).
const STAGING_MIN: usize = 64 << 10;
/// Largest pinned staging chunk: bigger copies go through several chunks in turn,
/// so a one-off large upload (the weights) does not pin its whole size per lane.
const STAGING_MAX: usize = 4 << 20;
/// Chunks a lane keeps before it reuses the oldest (waiting for its copy).
const STAGING_CHUNKS: usize = 4;

/// One CUDA stream of a device, created by [`crate::Backend::create_lane`].
///
/// Reach it from a lease with `lease.raw().as_any().downcast_ref::<CudaLane>()` to
/// launch kernels ([`CudaLane::launch`]) or call cuBLAS ([`CudaLane::sgemm`]) on it.
pub struct CudaLane {
    index: usize,
    shared: Arc<Shared>,
    stream: Arc<CudaStream>,
    /// Created on first use; bound to `stream` for its whole life.
    blas: OnceLock<LaneBlas>,
    /// Created on first use outside a capture (with its workspace); the error
    /// message when that failed (not retried).
    blas_lt: OnceLock<std::result::Result<LaneBlasLt, String>>,
    /// Pinned chunks not in use by a copy being set up (their last copy may still
    /// be in flight: each carries the event recorded after it).
    staging: Mutex<Vec<Pinned>>,
    host: Arc<HostFnState>,
    /// The thread that runs this lane's completion callbacks (spawned on the first
    /// `host_fn`).
    runner: OnceLock<Runner>,
    /// `true` from `begin_capture` to `end_capture`: calls that cannot be captured
    /// fail with [`Error::Capture`] instead of breaking the capture.
    capturing: AtomicBool,
    /// The capturing thread's mark, held between `begin_capture` and `end_capture`.
    mark: Mutex<Option<CaptureMark>>,
    /// How many SMs the lane's library calls should plan for (0: the whole
    /// device). Written by [`CudaLane::set_sm_budget`] (the lane's holder, before
    /// it enqueues work), read when a library call is planned; `Relaxed`: a hint,
    /// never a safety property.
    sm_budget: AtomicU32,
    /// Whether the lane's current work runs in a crowd of other lanes' work.
    /// Written by [`CudaLane::set_crowded`] (the lane's holder, before enqueuing),
    /// read by kernel choosers on the same thread; a hint, no ordering.
    crowded: AtomicBool,
}

impl CudaLane {
    pub(crate) fn new(shared: &Arc<Shared>, index: usize) -> Result<CudaLane> {
        // `new_stream` = cuStreamCreate(CU_STREAM_NON_BLOCKING): never the legacy
        // default stream (which would serialize with every other stream) nor the
        // per-thread pseudo-handle (which means a different stream on every thread).
        let stream = shared
            .ctx
            .new_stream()
            .map_err(driver_err(&shared.name, "cuStreamCreate"))?;
        Ok(CudaLane {
            index,
            shared: shared.clone(),
            stream,
            blas: OnceLock::new(),
            blas_lt: OnceLock::new(),
            staging: Mutex::new(Vec::new()),
            host: Arc::new(HostFnState::default()),
            runner: OnceLock::new(),
            capturing: AtomicBool::new(false),
            mark: Mutex::new(None),
            sm_budget: AtomicU32::new(0),
            crowded: AtomicBool::new(false),
        })
    }

    /// Asks the lane's library calls (cuBLASLt's heuristic) to plan for `sms`
    /// SMs instead of the whole device (0): narrow kernels that leave the rest of
    /// the GPU to the concurrent work of other lanes. Many small forwards from
    /// many lanes run faster that way; a lone one runs faster wide.
    pub fn set_sm_budget(&self, sms: u32) {
        self.sm_budget.store(sms, Ordering::Relaxed);
    }

    /// The SM budget set by [`CudaLane::set_sm_budget`] (0: the whole device).
    pub fn sm_budget(&self) -> u32 {
        self.sm_budget.load(Ordering::Relaxed)
    }

    /// Tells the lane's kernel choosers whether its next work runs among many
    /// other lanes' (then kernels that fill the GPU for one forward's latency
    /// should give way to narrow ones); `false` by default.
    pub fn set_crowded(&self, crowded: bool) {
        self.crowded.store(crowded, Ordering::Relaxed);
    }

    /// The hint set by [`CudaLane::set_crowded`].
    pub fn crowded(&self) -> bool {
        self.crowded.load(Ordering::Relaxed)
    }

    /// Fails with [`Error::Capture`] naming `call` while the lane is capturing.
    fn not_capturing(&self, call: &str, why: &str) -> Result<()> {
        if self.capturing.load(Ordering::Acquire) {
            return Err(Error::Capture {
                device: self.shared.name.to_string(),
                lane: self.index,
                message: format!("`{call}` cannot be captured into a graph: {why}"),
            });
        }
        Ok(())
    }

    /// The lane's index in its pool.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The lane's stream. Work enqueued on it (kernels through cudarc's launch
    /// builder, for instance) is ordered with everything else on the lane.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The raw `CUstream` (do not destroy it).
    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Makes the device's context current on the calling thread (needed before raw
    /// driver or cuBLAS calls; every method here does it already).
    pub fn bind_to_thread(&self) -> Result<()> {
        bind(&self.shared.ctx).map_err(self.err("cuCtxSetCurrent"))
    }

    /// The lane's cuBLAS handle, created on first use and bound to this lane's
    /// stream (one handle per stream: a handle shared by streams shares its
    /// workspace, which makes results nondeterministic).
    pub fn blas(&self) -> Result<&LaneBlas> {
        if let Some(b) = self.blas.get() {
            return Ok(b);
        }
        let made = guarded(&self.shared.name, "cublasCreate", || {
            LaneBlas::new(&self.shared.ctx, &self.shared.name, &self.stream)
        })?;
        // Two threads may race here; the loser's handle is destroyed.
        Ok(self.blas.get_or_init(move || made))
    }

    /// The lane's cuBLASLt handle and workspace ([`LaneBlasLt`]), created on first
    /// use and kept for the lane's life. Fails where cuBLASLt cannot be used
    /// (libcublasLt missing, the workspace cannot be allocated: the first failure
    /// is remembered, not retried) and, without caching that, while the lane is
    /// capturing and the handle does not exist yet (creating it allocates device
    /// memory, which a capture forbids).
    pub fn blas_lt(&self) -> Result<&LaneBlasLt> {
        if let Some(r) = self.blas_lt.get() {
            return self.lt_created(r);
        }
        self.not_capturing(
            "cuBLASLt set-up",
            "it allocates the handle's workspace; use it once before the capture",
        )?;
        let made = guarded(&self.shared.name, "cublasLtCreate", || {
            LaneBlasLt::new(
                &self.shared.ctx,
                &self.shared.name,
                &self.stream,
                &self.shared.lt_memo,
            )
        })
        .map_err(|e| e.to_string());
        // Two threads may race here; the loser's handle and workspace are freed.
        self.lt_created(self.blas_lt.get_or_init(move || made))
    }

    fn lt_created<'a>(
        &self,
        r: &'a std::result::Result<LaneBlasLt, String>,
    ) -> Result<&'a LaneBlasLt> {
        r.as_ref().map_err(|m| Error::Cuda {
            device: self.shared.name.to_string(),
            op: "cublasLtCreate".into(),
            message: m.clone(),
        })
    }

    /// Single-precision GEMM on this lane's stream, cuBLAS (column-major) semantics:
    /// `C = alpha * op(A) * op(B) + beta * C`, `op(A)` is `m×k`, `op(B)` is `k×n`,
    /// `C` is `m×n`. Pure fp32 (no TF32). See [`LaneBlas::sgemm`].
    ///
    /// # Safety
    /// `a`, `b`, `c` are device memory of this backend holding the matrices the
    /// dimensions and leading dimensions describe, allocated until the GEMM has run;
    /// `c` does not overlap `a` or `b`, and no other lane uses them concurrently.
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
        let blas = self.blas()?;
        // SAFETY: forwarded from this function's contract.
        unsafe { blas.sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) }
    }

    /// Strided batched single-precision GEMM on this lane's stream: `batch`
    /// independent GEMMs, matrix `i` of A at `a + i * stride_a` elements (likewise B,
    /// C). See [`LaneBlas::sgemm_strided_batched`].
    ///
    /// # Safety
    /// As [`CudaLane::sgemm`], for every matrix of the batch.
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
        let blas = self.blas()?;
        // SAFETY: forwarded from this function's contract.
        unsafe {
            blas.sgemm_strided_batched(
                transa, transb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc,
                stride_c, batch,
            )
        }
    }

    /// Launches kernel `f` on this lane's stream (`cuLaunchKernel`).
    ///
    /// `args` holds one pointer per kernel parameter, each pointing at the
    /// parameter's value; build them with [`super::kernel_arg`]. A buffer is passed
    /// as its address, a `u64`:
    ///
    /// ```ignore
    /// let f = backend.function("scale", SCALE_SRC, "scale")?;
    /// let (x, y, alpha, n) = (src.ptr().0, dst.ptr().0, 2.0f32, len as u32);
    /// let mut args = [kernel_arg(&y), kernel_arg(&x), kernel_arg(&alpha), kernel_arg(&n)];
    /// unsafe { lane.launch(&f, (len.div_ceil(256) as u32, 1, 1), (256, 1, 1), 0, &mut args) }?;
    /// ```
    ///
    /// # Safety
    /// `args` matches the kernel's parameter list in number, order and types; every
    /// device address passed is memory of this backend that stays allocated until
    /// the kernel has run and is not written concurrently by another lane; the
    /// launch configuration is within the device's limits (an invalid one is
    /// reported as an error, but a kernel indexing out of bounds is undefined
    /// behaviour on the device).
    pub unsafe fn launch(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_mem_bytes: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        guarded(&self.shared.name, "cuLaunchKernel", || {
            bind(&self.shared.ctx).map_err(self.err("cuCtxSetCurrent"))?;
            // SAFETY: `f` is a loaded function kept alive by its module (held by
            // `f`); the stream is this lane's live stream; the arguments and the
            // memory they name are the caller's contract.
            unsafe {
                result::launch_kernel(
                    f.cu_function(),
                    grid,
                    block,
                    shared_mem_bytes,
                    self.stream.cu_stream(),
                    args,
                )
            }
            .map_err(self.err("cuLaunchKernel"))
        })
    }

    fn err<'a>(&'a self, op: &'a str) -> impl FnOnce(DriverError) -> Error + 'a {
        driver_err(&self.shared.name, op)
    }

    fn failed(&self, op: &str, e: DriverError) -> Error {
        Error::LaneFailed {
            device: self.shared.name.to_string(),
            lane: self.index,
            message: format!("{op}: {}", describe(e)),
        }
    }

    fn native_event<'e>(&self, event: &'e dyn RawEvent) -> Result<&'e CudaEvent> {
        event.as_any().downcast_ref::<CudaEvent>().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "a non-CUDA event was used on lane {} of {}",
                self.index, self.shared.name
            ))
        })
    }

    /// A staging chunk of at least `len` bytes whose previous copy has finished,
    /// taken out of the pool (put it back with [`CudaLane::put_chunk`]).
    fn take_chunk(&self, len: usize) -> Result<Pinned> {
        let mut pool = lock(&self.staging);
        let ready = pool
            .iter()
            .position(|c| c.cap >= len && c.event.query().unwrap_or(false));
        if let Some(i) = ready {
            return Ok(pool.remove(i));
        }
        if pool.len() >= STAGING_CHUNKS {
            // Reuse the oldest chunk (the front: chunks go back at the end), once
            // its copy is done; swap it for a bigger one if it is too small.
            let oldest = pool.remove(0);
            drop(pool);
            oldest.event.synchronize()?;
            if oldest.cap >= len {
                return Ok(oldest);
            }
            drop(oldest);
        } else {
            drop(pool);
        }
        Pinned::new(&self.shared, len.max(STAGING_MIN).next_power_of_two())
    }

    fn put_chunk(&self, chunk: Pinned) {
        lock(&self.staging).push(chunk);
    }

    fn htod_piece(&self, src: &[u8], dst: DevicePtr) -> Result<()> {
        let chunk = self.take_chunk(src.len())?;
        // SAFETY: the chunk holds `cap >= src.len()` bytes of pinned host memory that
        // no copy reads any more (its last copy's event has completed) and that this
        // thread owns (it is out of the pool).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), chunk.ptr, src.len()) };
        let r = (|| {
            bind(&self.shared.ctx).map_err(self.err("cuCtxSetCurrent"))?;
            // SAFETY: the caller guarantees `dst` is device memory of this backend for
            // `src.len()` bytes; the source is the pinned chunk, which is not touched
            // again until the event recorded below has completed.
            unsafe {
                sys::cuMemcpyHtoDAsync_v2(
                    dst.0,
                    chunk.ptr as *const c_void,
                    src.len(),
                    self.stream.cu_stream(),
                )
            }
            .result()
            .map_err(self.err("cuMemcpyHtoDAsync"))?;
            chunk.event.record(self.stream.cu_stream())
        })();
        self.put_chunk(chunk);
        r
    }

    fn dtoh_piece(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        let chunk = self.take_chunk(dst.len())?;
        let r = (|| {
            bind(&self.shared.ctx).map_err(self.err("cuCtxSetCurrent"))?;
            // SAFETY: the caller guarantees `src` is device memory of this backend for
            // `dst.len()` bytes; the destination is the pinned chunk, owned by this
            // thread and at least that large.
            unsafe {
                sys::cuMemcpyDtoHAsync_v2(
                    chunk.ptr as *mut c_void,
                    src.0,
                    dst.len(),
                    self.stream.cu_stream(),
                )
            }
            .result()
            .map_err(self.err("cuMemcpyDtoHAsync"))?;
            chunk.event.record(self.stream.cu_stream())?;
            chunk.event.synchronize().map_err(|e| match e {
                Error::Cuda { message, .. } => Error::LaneFailed {
                    device: self.shared.name.to_string(),
                    lane: self.index,
                    message: format!("waiting for a device-to-host copy: {message}"),
                },
                e => e,
            })?;
            // SAFETY: the copy into the chunk has completed (event synchronized);
            // `dst` is a distinct host buffer of `dst.len()` bytes.
            unsafe { std::ptr::copy_nonoverlapping(chunk.ptr, dst.as_mut_ptr(), dst.len()) };
            Ok(())
        })();
        self.put_chunk(chunk);
        r
    }
}

impl RawLane for CudaLane {
    fn record(&self, event: &dyn RawEvent) -> Result<()> {
        self.not_capturing(
            "record",
            "a captured event can only be waited for inside the same capture",
        )?;
        let ev = self.native_event(event)?;
        if ev.context().cu_ctx() != self.shared.ctx.cu_ctx() {
            return Err(Error::InvalidArgument(format!(
                "an event of another CUDA device was recorded on lane {} of {}",
                self.index, self.shared.name
            )));
        }
        guarded(&self.shared.name, "cuEventRecord", || {
            ev.handle.record(self.stream.cu_stream())
        })
    }

    fn wait(&self, event: &dyn RawEvent) -> Result<()> {
        self.not_capturing(
            "wait",
            "make the lane wait before the capture (or before the graph's launch)",
        )?;
        let ev = self.native_event(event)?;
        guarded(&self.shared.name, "cuStreamWaitEvent", || {
            bind(&self.shared.ctx).map_err(self.err("cuCtxSetCurrent"))?;
            // SAFETY: both handles are live (the event is borrowed, the stream is
            // ours); waiting on an event of another device is legal.
            unsafe { sys::cuStreamWaitEvent(self.stream.cu_stream(), ev.cu_event(), 0) }
                .result()
                .map_err(self.err("cuStreamWaitEvent"))
        })
    }

    fn synchronize(&self) -> Result<()> {
        self.not_capturing(
            "synchronize",
            "nothing runs during a capture; synchronize after the graph's launch",
        )?;
        guarded(&self.shared.name, "cuStreamSynchronize", || {
            let target = self.host.enqueued.load(Ordering::Acquire);
            bind(&self.shared.ctx).map_err(self.err("cuCtxSetCurrent"))?;
            // SAFETY: the stream is this lane's live stream.
            let synced = unsafe { result::stream::synchronize(self.stream.cu_stream()) };
            // Completion callbacks run on the runner thread once the stream has
            // reached them: wait for those enqueued before this call too (the host
            // backend's contract), unless this *is* the runner thread.
            let on_runner = self
                .runner
                .get()
                .is_some_and(|r| r.thread == thread::current().id());
            if synced.is_ok() && !on_runner {
                self.host.wait_done(target);
            }
            synced.map_err(|e| self.failed("cuStreamSynchronize", e))?;
            match lock(&self.host.error).take() {
                Some(message) => Err(Error::LaneFailed {
                    device: self.shared.name.to_string(),
                    lane: self.index,
                    message,
                }),
                None => Ok(()),
            }
        })
    }

    fn host_fn(&self, f: HostFn) -> Result<()> {
        self.not_capturing(
            "on_complete",
            "a captured host function would run its (one-shot) closure on every replay",
        )?;
        guarded(&self.shared.name, "cuLaunchHostFunc", || {
            let runner = Runner::get(&self.runner, &self.shared.name, self.index)?;
            let call = Box::new(HostCall {
                f,
                state: self.host.clone(),
                tx: runner.tx.clone(),
            });
            bind(&self.shared.ctx).map_err(self.err("cuCtxSetCurrent"))?;
            let user = Box::into_raw(call) as *mut c_void;
            // SAFETY: `user` is a leaked `Box<HostCall>`; on success the driver calls
            // `host_trampoline(user)` exactly once, which reclaims it. The stream is
            // this lane's live stream.
            let r = unsafe {
                sys::cuLaunchHostFunc(self.stream.cu_stream(), Some(host_trampoline), user)
            }
            .result();
            if let Err(e) = r {
                // SAFETY: the launch failed, so the driver will never call the
                // trampoline: this is the only owner of the box (the closure is
                // dropped unrun, as the caller expects of a failed enqueue).
                drop(unsafe { Box::from_raw(user as *mut HostCall) });
                return Err(self.err("cuLaunchHostFunc")(e));
            }
            self.host.enqueued.fetch_add(1, Ordering::AcqRel);
            Ok(())
        })
    }

    unsafe fn copy_htod(&self, src: &[u8], dst: DevicePtr) -> Result<()> {
        self.not_capturing(
            "upload",
            "a captured copy would replay from a reused staging buffer; upload into the \
             graph's input buffers before each launch",
        )?;
        guarded(&self.shared.name, "copy host to device", || {
            for (i, piece) in src.chunks(STAGING_MAX).enumerate() {
                self.htod_piece(piece, dst.offset(i * STAGING_MAX))?;
            }
            Ok(())
        })
    }

    unsafe fn copy_dtoh(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.not_capturing(
            "download",
            "it waits for the copy, and nothing runs during a capture; download the \
             graph's output buffers after each launch",
        )?;
        guarded(&self.shared.name, "copy device to host", || {
            for (i, piece) in dst.chunks_mut(STAGING_MAX).enumerate() {
                self.dtoh_piece(src.offset(i * STAGING_MAX), piece)?;
            }
            Ok(())
        })
    }

    unsafe fn copy_dtod(&self, src: DevicePtr, dst: DevicePtr, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        guarded(&self.shared.name, "cuMemcpyDtoDAsync", || {
            bind(&self.shared.ctx).map_err(self.err("cuCtxSetCurrent"))?;
            // SAFETY: the caller guarantees both ranges are device memory of this
            // backend, `bytes` long, disjoint and allocated until the copy has run.
            unsafe { result::memcpy_dtod_async(dst.0, src.0, bytes, self.stream.cu_stream()) }
                .map_err(self.err("cuMemcpyDtoDAsync"))
        })
    }

    fn begin_capture(&self) -> Result<()> {
        // cuBLAS allocates when its handle is created, which a capture forbids:
        // create the lane's handle first (a lane without cuBLAS captures kernels
        // and copies only, so a failure here is left for a GEMM to report).
        let _ = self.blas();
        if self.capturing.swap(true, Ordering::AcqRel) {
            return Err(Error::Capture {
                device: self.shared.name.to_string(),
                lane: self.index,
                message: "the lane is already capturing a graph".into(),
            });
        }
        let r = guarded(&self.shared.name, "cuStreamBeginCapture", || {
            bind(&self.shared.ctx).map_err(self.err("cuCtxSetCurrent"))?;
            // SAFETY: the stream is this lane's live stream; thread-local mode bars
            // only this thread from capture-unsafe calls, so other lanes' threads
            // keep allocating and synchronizing.
            unsafe {
                sys::cuStreamBeginCapture_v2(
                    self.stream.cu_stream(),
                    sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                )
            }
            .result()
            .map_err(self.err("cuStreamBeginCapture"))
        });
        match r {
            Ok(()) => {
                *lock(&self.mark) = Some(CaptureMark::new());
                Ok(())
            }
            Err(e) => {
                self.capturing.store(false, Ordering::Release);
                Err(e)
            }
        }
    }

    fn end_capture(&self, keep: bool) -> Result<Option<Box<dyn RawGraph>>> {
        if !self.capturing.load(Ordering::Acquire) {
            return Err(Error::Capture {
                device: self.shared.name.to_string(),
                lane: self.index,
                message: "end_capture without begin_capture".into(),
            });
        }
        let r = guarded(&self.shared.name, "cuStreamEndCapture", || {
            CudaGraph::end_capture(&self.shared, self.index, self.stream.cu_stream(), keep)
        });
        drop(lock(&self.mark).take());
        self.capturing.store(false, Ordering::Release);
        Ok(r?.map(|g| Box::new(g) as Box<dyn RawGraph>))
    }

    fn is_capturing(&self) -> bool {
        self.capturing.load(Ordering::Acquire)
    }

    fn launch_graph(&self, graph: &dyn RawGraph) -> Result<()> {
        self.not_capturing("launch", "launch the graph after the capture has ended")?;
        let g = graph.as_any().downcast_ref::<CudaGraph>().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "a non-CUDA graph was launched on lane {} of {}",
                self.index, self.shared.name
            ))
        })?;
        if g.context() != self.shared.ctx.cu_ctx() {
            return Err(Error::InvalidArgument(format!(
                "a graph of another CUDA device was launched on lane {} of {}",
                self.index, self.shared.name
            )));
        }
        guarded(&self.shared.name, "cuGraphLaunch", || {
            g.launch_on(self.index, self.stream.cu_stream())
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for CudaLane {
    fn drop(&mut self) {
        // Let enqueued work finish before the staging memory, the cuBLAS handle and
        // the stream go: pending callbacks then still run (and are dispatched to the
        // runner), and no copy reads freed pinned memory. Errors are ignored.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let _ = bind(&self.shared.ctx);
            // SAFETY: the stream is live until the field drops after this.
            let _ = unsafe { result::stream::synchronize(self.stream.cu_stream()) };
        }));
        // Fields drop next: the cuBLAS and cuBLASLt handles (and the latter's
        // workspace), the staging chunks (each waits for its
        // event, then frees), then the stream.
    }
}

impl std::fmt::Debug for CudaLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaLane")
            .field("device", &self.shared.name)
            .field("index", &self.index)
            .finish()
    }
}

/// A pinned host buffer used to stage copies, with the event recorded after the
/// last copy that used it.
struct Pinned {
    ptr: *mut u8,
    cap: usize,
    event: EventHandle,
    shared: Arc<Shared>,
}

// SAFETY: pinned host memory is ordinary process memory usable from any thread; the
// chunk is owned by one thread at a time (taken out of the lane's pool under its lock).
unsafe impl Send for Pinned {}

impl Pinned {
    fn new(shared: &Arc<Shared>, cap: usize) -> Result<Pinned> {
        let event = EventHandle::new(&shared.ctx, &shared.name, shared.event_flags())?;
        bind(&shared.ctx).map_err(driver_err(&shared.name, "cuCtxSetCurrent"))?;
        // SAFETY: the context is current; flags 0 = page-locked, cached (not
        // write-combined: the host reads device-to-host copies out of it).
        let ptr = unsafe { result::malloc_host(cap, 0) }
            .map_err(driver_err(&shared.name, "cuMemHostAlloc"))?;
        Ok(Pinned {
            ptr: ptr as *mut u8,
            cap,
            event,
            shared: shared.clone(),
        })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // The last copy through this chunk must be done before it is freed.
            let _ = self.event.synchronize();
            let _ = bind(&self.shared.ctx);
            // SAFETY: `ptr` came from cuMemHostAlloc and is freed once, here, after
            // its last copy completed.
            let _ = unsafe { result::free_host(self.ptr as *mut c_void) };
        }));
    }
}

/// Completion-callback bookkeeping of one lane. Holds no CUDA object: it is owned
/// by callbacks in flight, and dropping a CUDA object inside a CUDA host function is
/// forbidden.
#[derive(Default)]
struct HostFnState {
    /// Host functions successfully enqueued on the stream.
    enqueued: AtomicU64,
    /// Host functions whose closure has run (on the runner thread).
    done: Mutex<u64>,
    done_cv: Condvar,
    /// The first panic of a callback since the holder last synchronized.
    error: Mutex<Option<String>>,
}

impl HostFnState {
    fn wait_done(&self, target: u64) {
        let mut done = lock(&self.done);
        while *done < target {
            done = self.done_cv.wait(done).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn run(&self, f: HostFn) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
            lock(&self.error).get_or_insert_with(|| {
                format!("a completion callback panicked: {}", panic_message(&*p))
            });
        }
        *lock(&self.done) += 1;
        self.done_cv.notify_all();
    }
}

type Job = (HostFn, Arc<HostFnState>);

/// The thread that runs one lane's completion callbacks.
///
/// CUDA runs a host function on a driver thread and forbids CUDA calls inside it,
/// yet a callback may well drop a buffer, a lease or the last device handle (all
/// CUDA calls). So the driver thread only hands the closure to this thread, which
/// runs the lane's callbacks in stream order. One thread per lane (as the host
/// backend's worker): a callback that blocks on another lane cannot hold up that
/// lane's own callbacks. The thread exits by itself once every sender is gone (the
/// lane and its callbacks in flight).
struct Runner {
    tx: Sender<Job>,
    thread: ThreadId,
}

impl Runner {
    fn get<'a>(slot: &'a OnceLock<Runner>, device: &str, lane: usize) -> Result<&'a Runner> {
        if let Some(r) = slot.get() {
            return Ok(r);
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let handle = thread::Builder::new()
            .name(format!("lanes-{device}-lane{lane}-callbacks"))
            .spawn(move || {
                for (f, state) in rx {
                    state.run(f);
                }
            })
            .map_err(|e| Error::LaneFailed {
                device: device.to_string(),
                lane,
                message: format!("could not spawn the lane's callback thread: {e}"),
            })?;
        let made = Runner {
            tx,
            thread: handle.thread().id(),
        };
        // A racing thread may have installed its runner first: ours is dropped, its
        // channel disconnects and its thread exits.
        Ok(slot.get_or_init(move || made))
    }
}

/// What a `cuLaunchHostFunc` carries: the closure and where to send it.
struct HostCall {
    f: HostFn,
    state: Arc<HostFnState>,
    tx: Sender<Job>,
}

/// The host function given to the driver. Runs on a CUDA driver thread: it makes no
/// CUDA call and drops no CUDA object, and never unwinds into the driver.
unsafe extern "C" fn host_trampoline(user: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `user` is the `Box<HostCall>` leaked by `host_fn`, passed to exactly
        // one successful cuLaunchHostFunc; the driver calls this once, so this is the
        // only owner.
        let call = unsafe { Box::from_raw(user as *mut HostCall) };
        let HostCall { f, state, tx } = *call;
        if let Err(mpsc::SendError((f, state))) = tx.send((f, state)) {
            // The runner is gone (cannot happen while `tx` exists); run it here
            // rather than lose it.
            state.run(f);
        }
    }));
}
