//! [`ModuleCache`]: CUDA C modules compiled once per device with NVRTC (straight to
//! a cubin for the device's architecture) and loaded, with their functions.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaFunction, CudaModule, DeviceRepr};
use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys, Ptx};

use super::driver::{bind, describe, guarded, Shared};
use crate::backend::host::panic_message;
use crate::{Error, Result};

/// A pointer to one kernel parameter's value, for `CudaLane::launch`.
///
/// Pass device buffers as their address (`DevicePtr.0`, a `u64`). The pointer is
/// only valid while `value` is borrowed: keep the values in locals that outlive the
/// launch call.
pub fn kernel_arg<T: DeviceRepr>(value: &T) -> *mut c_void {
    value as *const T as *mut c_void
}

/// One module's compilation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleCompile {
    /// The module name given to [`ModuleCache::function`].
    pub module: &'static str,
    /// NVRTC compile plus module load.
    pub took: Duration,
    /// Whether it succeeded.
    pub ok: bool,
}

/// Kernel compilation figures of one backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// NVRTC compilations run (at most one per module).
    pub compiles: usize,
    /// Total time spent compiling and loading.
    pub total: Duration,
    /// Each compilation, in order.
    pub modules: Vec<ModuleCompile>,
}

/// One module: its source, the compiled module (or the error, cached), its functions.
struct ModuleSlot {
    source: &'static str,
    module: OnceLock<std::result::Result<Arc<CudaModule>, (String, String)>>,
    functions: RwLock<HashMap<String, CudaFunction>>,
}

/// The compiled modules of one device, by name: each CUDA C source is compiled by
/// NVRTC to a cubin for the device's architecture and loaded at most once per
/// backend; its functions are looked up once per name.
///
/// Lookups take read locks only; a write lock is taken once per new module and once
/// per new function name. Reach it with [`super::CudaBackend::modules`] (or use
/// [`super::CudaBackend::function`]).
pub struct ModuleCache {
    shared: Arc<Shared>,
    /// `sm_XY`, the NVRTC target.
    arch: String,
    modules: RwLock<HashMap<&'static str, Arc<ModuleSlot>>>,
    stats: std::sync::Mutex<CompileStats>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl ModuleCache {
    pub(crate) fn new(shared: Arc<Shared>, arch: String) -> Self {
        ModuleCache {
            shared,
            arch,
            modules: RwLock::new(HashMap::new()),
            stats: std::sync::Mutex::new(CompileStats::default()),
        }
    }

    /// The NVRTC target, `sm_XY`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// How many modules were compiled and how long each took.
    pub fn stats(&self) -> CompileStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The kernel `name` of the CUDA C module `module` (whose source is `source`),
    /// compiled and loaded on first use.
    ///
    /// Thread-safe: when many threads ask for a module at the same moment, one
    /// compiles and the others wait for it. Compiled without `--use_fast_math`
    /// (precise division and square root: results match fp32 on the CPU), directly to
    /// a cubin, so no PTX JIT runs at load. A failed compile is cached too (with
    /// NVRTC's log) and reported to every caller. `module` names one source: asking
    /// for it with different source is an error.
    pub fn function(
        &self,
        module: &'static str,
        source: &'static str,
        name: &str,
    ) -> Result<CudaFunction> {
        guarded(&self.shared.name, "kernel load", || {
            self.load(module, source, name)
        })
    }

    fn load(&self, module: &'static str, source: &'static str, name: &str) -> Result<CudaFunction> {
        let (shared, arch) = (&*self.shared, self.arch.as_str());
        let slot = self.slot(module, source)?;
        if let Some(f) = read(&slot.functions).get(name) {
            return Ok(f.clone());
        }
        // Every thread asking for a module being compiled waits here for the one
        // compiling it (OnceLock runs one initializer at a time).
        let loaded = slot.module.get_or_init(|| {
            let t0 = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(|| {
                compile_and_load(shared, arch, module, source)
            }))
            .unwrap_or_else(|p| {
                Err((
                    "NVRTC compile".into(),
                    format!("cudarc panicked: {}", panic_message(&*p)),
                ))
            });
            let took = t0.elapsed();
            let mut st = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            st.compiles += 1;
            st.total += took;
            st.modules.push(ModuleCompile {
                module,
                took,
                ok: r.is_ok(),
            });
            r
        });
        let m = match loaded {
            Ok(m) => m,
            Err((op, message)) => {
                return Err(Error::Cuda {
                    device: shared.name.to_string(),
                    op: format!("{op} of module `{module}`"),
                    message: message.clone(),
                })
            }
        };
        let f = m.load_function(name).map_err(|e| Error::Cuda {
            device: shared.name.to_string(),
            op: format!("cuModuleGetFunction `{name}` in module `{module}`"),
            message: describe(e),
        })?;
        write(&slot.functions)
            .entry(name.to_string())
            .or_insert_with(|| f.clone());
        Ok(f)
    }

    fn slot(&self, module: &'static str, source: &'static str) -> Result<Arc<ModuleSlot>> {
        let found = read(&self.modules).get(module).cloned();
        let slot = match found {
            Some(s) => s,
            None => write(&self.modules)
                .entry(module)
                .or_insert_with(|| {
                    Arc::new(ModuleSlot {
                        source,
                        module: OnceLock::new(),
                        functions: RwLock::new(HashMap::new()),
                    })
                })
                .clone(),
        };
        if !std::ptr::eq(slot.source, source) && slot.source != source {
            return Err(Error::InvalidArgument(format!(
                "kernel module `{module}` was already loaded from different source"
            )));
        }
        Ok(slot)
    }
}

/// Compiles `source` to a cubin for `arch` and loads it. Errors are `(op, message)`.
fn compile_and_load(
    shared: &Shared,
    arch: &str,
    module: &str,
    source: &str,
) -> std::result::Result<Arc<CudaModule>, (String, String)> {
    // SAFETY: only tries to dlopen libnvrtc by its candidate names.
    if !unsafe { nvrtc_sys::is_culib_present() } {
        return Err((
            "NVRTC compile".into(),
            "libnvrtc.so could not be loaded (add the CUDA toolkit's lib64 directory, e.g. \
             /usr/local/cuda/lib64, or the nvidia-cuda-nvrtc wheel's lib directory, to \
             LD_LIBRARY_PATH)"
                .into(),
        ));
    }
    let cubin =
        compile_cubin(arch, module, source).map_err(|m| ("NVRTC compile".to_string(), m))?;
    bind(&shared.ctx).map_err(|e| ("cuCtxSetCurrent".to_string(), describe(e)))?;
    shared
        .ctx
        .load_module(Ptx::from_binary(cubin))
        .map_err(|e| ("cuModuleLoadData".to_string(), describe(e)))
}

/// NVRTC: `source` → cubin for `arch` (a real architecture, so the driver loads it
/// without a PTX JIT, whatever PTX ISA version this NVRTC emits).
fn compile_cubin(arch: &str, module: &str, source: &str) -> std::result::Result<Vec<u8>, String> {
    let src = CString::new(source).map_err(|_| "kernel source contains a NUL byte".to_string())?;
    let name =
        CString::new(format!("{module}.cu")).map_err(|_| "module name contains a NUL byte")?;
    let prog = nvrtc::create_program(&src, Some(&name)).map_err(|e| format!("{e:?}"))?;
    // Destroyed on every path (the program references `src` and `name`, which
    // outlive it here).
    struct Program(nvrtc_sys::nvrtcProgram);
    impl Drop for Program {
        fn drop(&mut self) {
            // SAFETY: created above, destroyed once, here.
            let _ = unsafe { nvrtc::destroy_program(self.0) };
        }
    }
    let prog = Program(prog);
    // Default precision: no --use_fast_math, precise division and square root, so
    // results match the fp32 CPU reference.
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
    ];
    // SAFETY: `prog` is a live program.
    if let Err(e) = unsafe { nvrtc::compile_program(prog.0, &options) } {
        // SAFETY: `prog` is a live program.
        let log = unsafe { nvrtc::get_program_log(prog.0) }
            .map(|v| {
                // SAFETY: NVRTC's log is NUL-terminated and lives in `v`.
                unsafe { CStr::from_ptr(v.as_ptr() as *const c_char) }
                    .to_string_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        return Err(format!("{e:?} with options {options:?}:\n{log}"));
    }
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; `size` is a valid out-pointer.
    unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog.0, &mut size) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBINSize: {e:?}"))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has the size NVRTC reported.
    unsafe { nvrtc_sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr() as *mut c_char) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))?;
    if cubin.is_empty() {
        return Err(format!("NVRTC produced no cubin for {arch}"));
    }
    Ok(cubin)
}
