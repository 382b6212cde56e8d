//! [`CudaBackend`]: one GPU (its primary context, raw memory, the module cache) and
//! [`SyncMode`], how host threads wait for it.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaFunction, DriverError};

use super::driver::{bind, describe, driver_err, guarded, Shared};
use super::event::{CudaEvent, EventHandle};
use super::graph::capturing_here;
use super::lane::CudaLane;
use super::module_cache::{CompileStats, ModuleCache};
use crate::backend::host::panic_message;
use crate::backend::{Backend, DeviceKind, DevicePtr, MemInfo, RawEvent, RawLane};
use crate::{Error, Result};

/// How a host thread waits for the GPU (stream, event and context synchronization).
///
/// Set on the device's primary context (`cuCtxSetFlags`) and, for `Blocking`, on
/// every event lanes creates (`CU_EVENT_BLOCKING_SYNC`). Override the default with
/// `LANES_CUDA_SYNC=spin|yield|blocking`.
///
/// Measured on the H100 test machine (16 cores; `sync_mode_report` in
/// `tests/cuda_backend.rs`, two runs, spin / yield / blocking):
/// - launch + lane synchronize round trip: 9.9–10.8 / 10.1–10.9 / 26.6–28.5 µs;
/// - 512 B upload + 1.5 KiB download: 14.1–23.6 / 13.4–16.1 / 30.8–35.1 µs;
/// - 32 threads, each (60 launches + a 300 µs kernel + synchronize), the
///   forward-pass-like shape: 9.7k / 10.2k / 6.6k iterations/s (one run);
/// - 32 threads × (10 launches + synchronize): 57–66k / 46–66k / 56–61k
///   iterations/s (noisy between runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncMode {
    /// Busy-wait (`CU_CTX_SCHED_SPIN`): one core burnt per waiting thread, even when
    /// other threads need it to enqueue work.
    Spin,
    /// Poll, yielding the core between polls (`CU_CTX_SCHED_YIELD`). The default:
    /// the wake-up latency of spinning, while threads that have kernels to launch
    /// (a small model is launch-bound) get the core when they need it.
    Yield,
    /// Sleep on an OS primitive (`CU_CTX_SCHED_BLOCKING_SYNC`): no CPU used while
    /// waiting, but about 17 µs more per synchronization, and a third fewer
    /// forward-like iterations from 32 threads.
    Blocking,
}

impl SyncMode {
    /// The mode named by `LANES_CUDA_SYNC` (`spin`, `yield`, `blocking`), else
    /// [`SyncMode::Yield`]. An unknown value is an error.
    pub fn from_env() -> Result<SyncMode> {
        match std::env::var("LANES_CUDA_SYNC") {
            Err(_) => Ok(SyncMode::Yield),
            Ok(v) => SyncMode::parse(&v),
        }
    }

    /// Parses `spin`, `yield` or `blocking`.
    pub fn parse(s: &str) -> Result<SyncMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "spin" => Ok(SyncMode::Spin),
            "yield" => Ok(SyncMode::Yield),
            "blocking" | "block" => Ok(SyncMode::Blocking),
            other => Err(Error::InvalidArgument(format!(
                "unknown CUDA sync mode `{other}` (LANES_CUDA_SYNC): expected spin, yield or blocking"
            ))),
        }
    }

    fn ctx_flags(self) -> sys::CUctx_flags {
        match self {
            SyncMode::Spin => sys::CUctx_flags::CU_CTX_SCHED_SPIN,
            SyncMode::Yield => sys::CUctx_flags::CU_CTX_SCHED_YIELD,
            SyncMode::Blocking => sys::CUctx_flags::CU_CTX_SCHED_BLOCKING_SYNC,
        }
    }

    fn event_flags(self) -> u32 {
        let base = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        match self {
            SyncMode::Blocking => base | sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC as u32,
            SyncMode::Spin | SyncMode::Yield => base,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            SyncMode::Spin => 0,
            SyncMode::Yield => 1,
            SyncMode::Blocking => 2,
        }
    }

    fn from_u8(v: u8) -> SyncMode {
        match v {
            0 => SyncMode::Spin,
            1 => SyncMode::Yield,
            _ => SyncMode::Blocking,
        }
    }
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncMode::Spin => "spin",
            SyncMode::Yield => "yield",
            SyncMode::Blocking => "blocking",
        })
    }
}

/// A CUDA GPU driven through the driver API.
///
/// Cheap to share behind an `Arc<dyn Backend>` (what [`crate::Device`] does); reach
/// it again with `device.backend().as_any().downcast_ref::<CudaBackend>()`.
pub struct CudaBackend {
    shared: Arc<Shared>,
    /// NVRTC-compiled modules, for the device's architecture.
    modules: ModuleCache,
    /// `cuMemFree` failures (`free` cannot return them).
    free_errors: AtomicUsize,
}

impl CudaBackend {
    /// Opens CUDA device `ordinal` with the [`SyncMode`] named by `LANES_CUDA_SYNC`
    /// (default [`SyncMode::Yield`]).
    ///
    /// Fails — never panics — with [`Error::NoCudaDriver`] where `libcuda.so` cannot
    /// be loaded, and with [`Error::Cuda`] naming the ordinal and the device count where
    /// there is no such GPU.
    ///
    /// cudarc's per-slice event tracking is disabled on the context
    /// (`disable_event_tracking`): lanes owns cross-lane synchronization (events,
    /// and the allocator's `record_use` that parks a block until every lane that used
    /// it is done). cudarc's tracking would add two `cuEventCreate` per allocation
    /// plus a record and a wait per use, and it is lossy with more than one reader
    /// stream (a single "last read" event only remembers the last reader; research
    /// notes §1.7, cudarc PR #341). lanes never creates a `CudaSlice`, and disabling it
    /// before the first stream also skips the device-wide synchronize cudarc does when
    /// the first stream is created.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        CudaBackend::with_sync_mode(ordinal, SyncMode::from_env()?)
    }

    /// Opens CUDA device `ordinal` with an explicit [`SyncMode`] (see [`CudaBackend::new`]).
    pub fn with_sync_mode(ordinal: usize, mode: SyncMode) -> Result<CudaBackend> {
        // SAFETY: `is_culib_present` only tries to dlopen the driver library by its
        // candidate names and closes it again; it touches no CUDA state.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoCudaDriver(crate::error::NO_LIBCUDA.into()));
        }
        let device = format!("cuda:{ordinal}");
        match catch_unwind(|| CudaBackend::init(ordinal, mode)) {
            Ok(r) => r,
            Err(p) => Err(Error::Cuda {
                device,
                op: "driver initialization".into(),
                message: format!(
                    "cudarc panicked: {} (is the driver older than the CUDA 13.0 API this build \
                     targets?)",
                    panic_message(&*p)
                ),
            }),
        }
    }

    fn init(ordinal: usize, mode: SyncMode) -> Result<CudaBackend> {
        let name: Arc<str> = Arc::from(format!("cuda:{ordinal}"));
        if let Err(e) = result::init() {
            return Err(match e.0 {
                sys::CUresult::CUDA_ERROR_STUB_LIBRARY => Error::NoCudaDriver(
                    "the libcuda.so found is the CUDA toolkit's stub library, not a driver \
                     (remove the stubs directory from LD_LIBRARY_PATH)"
                        .into(),
                ),
                sys::CUresult::CUDA_ERROR_NO_DEVICE => Error::Cuda {
                    device: name.to_string(),
                    op: "cuInit".into(),
                    message: format!(
                        "no CUDA device with ordinal {ordinal}: the driver sees no CUDA-capable \
                         device ({}; check CUDA_VISIBLE_DEVICES)",
                        describe(e)
                    ),
                },
                _ => driver_err(&name, "cuInit")(e),
            });
        }
        let count = result::device::get_count().map_err(driver_err(&name, "cuDeviceGetCount"))?;
        let count = usize::try_from(count).unwrap_or(0);
        if ordinal >= count {
            return Err(Error::Cuda {
                device: name.to_string(),
                op: "cuDeviceGet".into(),
                message: if count == 0 {
                    format!(
                        "no CUDA device with ordinal {ordinal}: this machine has no CUDA device"
                    )
                } else {
                    format!(
                        "no CUDA device with ordinal {ordinal}: this machine has {count} CUDA \
                         device(s) (ordinals 0..={})",
                        count - 1
                    )
                },
            });
        }
        let ctx =
            CudaContext::new(ordinal).map_err(driver_err(&name, "cuDevicePrimaryCtxRetain"))?;
        // SAFETY: lanes never creates a cudarc `CudaSlice`; it synchronizes lanes itself
        // with events and the allocator's record_use (see `new`'s documentation).
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver_err(&name, "cuDeviceGetAttribute"))?;
        let shared = Arc::new(Shared {
            ordinal,
            name,
            ctx,
            // The driver's default for one context on a many-core host (AUTO)
            // spins, until `set_sync_mode` below succeeds.
            event_flags: AtomicU32::new(SyncMode::Spin.event_flags()),
            sync_mode: AtomicU8::new(SyncMode::Spin.to_u8()),
            lt_memo: Arc::new(super::lt_tune::Memo::new()),
        });
        let backend = CudaBackend {
            shared: shared.clone(),
            modules: ModuleCache::new(shared, format!("sm_{major}{minor}")),
            free_errors: AtomicUsize::new(0),
        };
        if let Err(e) = backend.set_sync_mode(mode) {
            // Not fatal: host waits then spin instead of sleeping.
            eprintln!(
                "lanes: {}: could not set sync mode {mode}, keeping the driver's default: {e}",
                backend.shared.name
            );
        }
        Ok(backend)
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.shared.ordinal
    }

    /// The device's primary context (shared with every lane, event and module).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.shared.ctx
    }

    /// The NVRTC target, `sm_XY` from the device's compute capability.
    pub fn arch(&self) -> &str {
        self.modules.arch()
    }

    /// The device's name as the driver reports it (e.g. `NVIDIA H100 80GB HBM3`).
    pub fn device_name(&self) -> Result<String> {
        guarded(&self.shared.name, "cuDeviceGetName", || {
            result::device::get_name(self.shared.ctx.cu_device())
                .map_err(driver_err(&self.shared.name, "cuDeviceGetName"))
        })
    }

    /// How host threads wait for the GPU.
    pub fn sync_mode(&self) -> SyncMode {
        SyncMode::from_u8(self.shared.sync_mode.load(Ordering::Relaxed))
    }

    /// Changes how host threads wait for the GPU. Applies to the whole primary
    /// context at once, and to events created from now on (pooled events keep the
    /// flags they were created with).
    pub fn set_sync_mode(&self, mode: SyncMode) -> Result<()> {
        let name = &self.shared.name;
        guarded(name, "cuCtxSetFlags", || {
            bind(&self.shared.ctx).map_err(driver_err(name, "cuCtxSetCurrent"))?;
            let flags = mode.ctx_flags() as u32;
            // SAFETY: the context is current on this thread; the flag value is one of
            // the CU_CTX_SCHED_* constants.
            let set = unsafe { sys::cuCtxSetFlags(flags) }.result();
            if set.is_err() {
                // Older drivers: the primary context's flags, settable while active.
                // SAFETY: a valid device handle and CU_CTX_SCHED_* flags.
                unsafe { sys::cuDevicePrimaryCtxSetFlags_v2(self.shared.ctx.cu_device(), flags) }
                    .result()
                    .map_err(driver_err(name, "cuCtxSetFlags"))?;
            }
            self.shared
                .event_flags
                .store(mode.event_flags(), Ordering::Relaxed);
            self.shared.sync_mode.store(mode.to_u8(), Ordering::Relaxed);
            Ok(())
        })
    }

    /// The device's compiled CUDA C modules.
    pub fn modules(&self) -> &ModuleCache {
        &self.modules
    }

    /// The kernel `name` of the CUDA C module `module` (whose source is `source`),
    /// compiled with NVRTC for this device and loaded at most once per backend: see
    /// [`ModuleCache::function`].
    pub fn function(
        &self,
        module: &'static str,
        source: &'static str,
        name: &str,
    ) -> Result<CudaFunction> {
        self.modules.function(module, source, name)
    }

    /// Kernel compilation figures: how many modules were compiled and how long each took.
    pub fn compile_stats(&self) -> CompileStats {
        self.modules.stats()
    }

    /// `cuMemAlloc` on the calling thread.
    fn alloc_now(&self, bytes: usize) -> Result<DevicePtr> {
        let name = &self.shared.name;
        guarded(name, "cuMemAlloc", || {
            bind(&self.shared.ctx).map_err(driver_err(name, "cuCtxSetCurrent"))?;
            // SAFETY: the context is current; the returned memory is uninitialized,
            // which raw device bytes may be.
            match unsafe { result::malloc_sync(bytes.max(1)) } {
                Ok(p) => Ok(DevicePtr(p)),
                Err(DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => {
                    Err(Error::BackendOutOfMemory {
                        device: name.to_string(),
                        bytes,
                    })
                }
                Err(e) => Err(driver_err(name, "cuMemAlloc")(e)),
            }
        })
    }

    /// `cuMemFree` calls that failed (`free` cannot report them otherwise).
    pub fn free_errors(&self) -> usize {
        self.free_errors.load(Ordering::Relaxed)
    }
}

impl Backend for CudaBackend {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Cuda(self.shared.ordinal)
    }

    fn create_lane(&self, index: usize) -> Result<Box<dyn RawLane>> {
        guarded(&self.shared.name, "cuStreamCreate", || {
            Ok(Box::new(CudaLane::new(&self.shared, index)?) as Box<dyn RawLane>)
        })
    }

    fn create_event(&self) -> Result<Box<dyn RawEvent>> {
        guarded(&self.shared.name, "cuEventCreate", || {
            let handle = EventHandle::new(
                &self.shared.ctx,
                &self.shared.name,
                self.shared.event_flags(),
            )?;
            Ok(Box::new(CudaEvent { handle }) as Box<dyn RawEvent>)
        })
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        if capturing_here() {
            // cuMemAlloc is barred on a thread capturing a graph (thread-local mode):
            // a cache miss during a capture takes its segment on a helper thread.
            return std::thread::scope(|s| match s.spawn(|| self.alloc_now(bytes)).join() {
                Ok(r) => r,
                Err(p) => Err(Error::Cuda {
                    device: self.shared.name.to_string(),
                    op: "cuMemAlloc".into(),
                    message: format!("the allocating thread panicked: {}", panic_message(&*p)),
                }),
            });
        }
        self.alloc_now(bytes)
    }

    unsafe fn free(&self, ptr: DevicePtr, _bytes: usize) {
        let ok = catch_unwind(AssertUnwindSafe(|| {
            let _ = bind(&self.shared.ctx);
            // SAFETY: the caller guarantees `ptr` came from `alloc` on this backend,
            // is freed once, and no pending work uses it.
            unsafe { result::free_sync(ptr.0) }.is_ok()
        }));
        if !matches!(ok, Ok(true)) {
            self.free_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn mem_info(&self) -> Result<MemInfo> {
        let name = &self.shared.name;
        guarded(name, "cuMemGetInfo", || {
            bind(&self.shared.ctx).map_err(driver_err(name, "cuCtxSetCurrent"))?;
            let (free, total) = result::mem_get_info().map_err(driver_err(name, "cuMemGetInfo"))?;
            Ok(MemInfo { free, total })
        })
    }

    fn synchronize(&self) -> Result<()> {
        let name = &self.shared.name;
        guarded(name, "cuCtxSynchronize", || {
            bind(&self.shared.ctx).map_err(driver_err(name, "cuCtxSetCurrent"))?;
            result::ctx::synchronize().map_err(driver_err(name, "cuCtxSynchronize"))
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.shared.name)
            .field("arch", &self.modules.arch())
            .field("sync_mode", &self.sync_mode())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_never_panics() {
        // Runs everywhere: on a machine without a driver it must be NoCudaDriver; with
        // one, either a backend or a proper error.
        let r = catch_unwind(|| CudaBackend::with_sync_mode(0, SyncMode::Blocking));
        let r = r.expect("CudaBackend::new panicked");
        match r {
            Ok(b) => assert_eq!(b.kind(), DeviceKind::Cuda(0)),
            Err(Error::NoCudaDriver(m)) => assert!(m.contains("libcuda")),
            Err(Error::Cuda {
                device, message, ..
            }) => {
                assert_eq!(device, "cuda:0");
                assert!(!message.is_empty());
            }
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }

    #[test]
    fn sync_mode_parses() {
        assert_eq!(SyncMode::parse("Spin").unwrap(), SyncMode::Spin);
        assert_eq!(SyncMode::parse(" yield ").unwrap(), SyncMode::Yield);
        assert_eq!(SyncMode::parse("blocking").unwrap(), SyncMode::Blocking);
        assert!(SyncMode::parse("busy").is_err());
        for m in [SyncMode::Spin, SyncMode::Yield, SyncMode::Blocking] {
            assert_eq!(SyncMode::from_u8(m.to_u8()), m);
            assert_eq!(SyncMode::parse(&m.to_string()).unwrap(), m);
        }
    }
}
