//! The driver-level helpers every CUDA file uses: the state a backend shares with
//! its lanes, making the context current, and turning driver errors and cudarc
//! panics into [`Error`]s. The bottom of the CUDA backend's modules: it uses none of
//! them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use cudarc::driver::{result, CudaContext, DriverError};

use crate::backend::host::panic_message;
use crate::{Error, Result};

/// State shared by the backend and its lanes. Holds no lane, so a lane never keeps
/// its siblings alive.
pub(crate) struct Shared {
    pub(crate) ordinal: usize,
    /// `cuda:N`, for error messages.
    pub(crate) name: Arc<str>,
    pub(crate) ctx: Arc<CudaContext>,
    /// `CUevent_flags` bits for every event created from now on.
    pub(crate) event_flags: AtomicU32,
    /// The [`super::SyncMode`] as a byte.
    pub(crate) sync_mode: AtomicU8,
    /// cuBLASLt algorithms chosen by timing, shared by the device's lanes.
    pub(crate) lt_memo: Arc<super::lt_tune::Memo<super::blaslt::Key>>,
}

impl Shared {
    pub(crate) fn event_flags(&self) -> u32 {
        self.event_flags.load(Ordering::Relaxed)
    }
}

/// Makes `ctx` current on the calling thread if it is not already.
///
/// Unlike cudarc's `bind_to_thread` it does not first return (and clear) an error
/// that some cudarc `Drop` stored in the context: those belong to cudarc's callers,
/// and lanes must not report them as the failure of an unrelated call.
pub(crate) fn bind(ctx: &CudaContext) -> std::result::Result<(), DriverError> {
    let want = ctx.cu_ctx();
    match result::ctx::get_current()? {
        Some(cur) if cur == want => Ok(()),
        // SAFETY: `want` is the live primary context kept alive by `ctx`.
        _ => unsafe { result::ctx::set_current(want) },
    }
}

/// `NAME: description` of a driver error.
pub(crate) fn describe(e: DriverError) -> String {
    let name = e
        .error_name()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name}: {}", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// Maps a driver error of `op` on `device` to [`Error::Cuda`].
pub(crate) fn driver_err<'a>(
    device: &'a str,
    op: &'a str,
) -> impl FnOnce(DriverError) -> Error + 'a {
    move |e| Error::Cuda {
        device: device.to_string(),
        op: op.to_string(),
        message: describe(e),
    }
}

/// Runs `f`, turning a panic (cudarc panics on a missing library or symbol) into
/// [`Error::Cuda`]. Never lets a panic escape into the caller.
pub(crate) fn guarded<T>(device: &str, op: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(Error::Cuda {
            device: device.to_string(),
            op: op.to_string(),
            message: format!("cudarc panicked: {}", panic_message(&*p)),
        }),
    }
}
