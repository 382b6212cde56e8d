//! Native CUDA events, owned by lanes rather than by cudarc.
//!
//! cudarc's `CudaEvent` takes its flags as a single enum value, so it cannot create an
//! event that is both `CU_EVENT_DISABLE_TIMING` and `CU_EVENT_BLOCKING_SYNC`. This
//! module wraps the raw `CUevent` itself: creation with any flag set, and a `Drop`
//! that never panics and never surfaces (or swallows) cudarc's stored errors.

use std::any::Any;
use std::sync::Arc;

use cudarc::driver::sys;
use cudarc::driver::CudaContext;

use super::driver::{bind, driver_err, guarded};
use crate::backend::RawEvent;
use crate::Result;

/// A raw `CUevent` with the context it belongs to. Destroyed on drop (errors ignored).
pub(crate) struct EventHandle {
    event: sys::CUevent,
    ctx: Arc<CudaContext>,
    device: Arc<str>,
}

// SAFETY: a CUevent is a driver handle usable from any thread of the process (the
// driver API is thread-safe); the context it needs is kept alive by `ctx`.
unsafe impl Send for EventHandle {}
// SAFETY: every operation on the handle is a thread-safe driver call.
unsafe impl Sync for EventHandle {}

impl EventHandle {
    /// Creates an event with the given `CUevent_flags` bits.
    pub(crate) fn new(ctx: &Arc<CudaContext>, device: &Arc<str>, flags: u32) -> Result<Self> {
        bind(ctx).map_err(driver_err(device, "cuCtxSetCurrent"))?;
        let mut event: sys::CUevent = std::ptr::null_mut();
        // SAFETY: `event` is a valid out-pointer; the context is current on this thread.
        unsafe { sys::cuEventCreate(&mut event, flags) }
            .result()
            .map_err(driver_err(device, "cuEventCreate"))?;
        Ok(EventHandle {
            event,
            ctx: ctx.clone(),
            device: device.clone(),
        })
    }

    /// The raw handle (do not destroy it).
    pub(crate) fn raw(&self) -> sys::CUevent {
        self.event
    }

    /// The context the event belongs to.
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Records the event after all work enqueued so far on `stream`.
    pub(crate) fn record(&self, stream: sys::CUstream) -> Result<()> {
        bind(&self.ctx).map_err(driver_err(&self.device, "cuCtxSetCurrent"))?;
        // SAFETY: `self.event` is a live event of this context and `stream` is a live
        // stream handle supplied by the caller (a lane's own stream).
        unsafe { sys::cuEventRecord(self.event, stream) }
            .result()
            .map_err(driver_err(&self.device, "cuEventRecord"))
    }

    /// `Ok(true)` once the recorded work is done (or if never recorded).
    pub(crate) fn query(&self) -> Result<bool> {
        bind(&self.ctx).map_err(driver_err(&self.device, "cuCtxSetCurrent"))?;
        // SAFETY: `self.event` is a live event of this context.
        match unsafe { sys::cuEventQuery(self.event) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            e => Err(driver_err(&self.device, "cuEventQuery")(
                cudarc::driver::DriverError(e),
            )),
        }
    }

    /// Blocks until the recorded work is done.
    pub(crate) fn synchronize(&self) -> Result<()> {
        bind(&self.ctx).map_err(driver_err(&self.device, "cuCtxSetCurrent"))?;
        // SAFETY: `self.event` is a live event of this context.
        unsafe { sys::cuEventSynchronize(self.event) }
            .result()
            .map_err(driver_err(&self.device, "cuEventSynchronize"))
    }
}

impl Drop for EventHandle {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = bind(&self.ctx);
            // SAFETY: the event is live and destroyed exactly once, here. Destroying an
            // event whose recorded work is pending is legal: the driver releases it
            // once that work completes.
            let _ = unsafe { sys::cuEventDestroy_v2(self.event) };
        }));
    }
}

/// A CUDA event of a lanes device (`CU_EVENT_DISABLE_TIMING`, plus
/// `CU_EVENT_BLOCKING_SYNC` when the backend's [`super::SyncMode`] is `Blocking`).
///
/// Created by [`crate::Backend::create_event`] (the device's event pool recycles
/// them); recorded and waited on through [`crate::RawLane::record`] /
/// [`crate::RawLane::wait`] of a [`super::CudaLane`].
pub struct CudaEvent {
    pub(crate) handle: EventHandle,
}

impl CudaEvent {
    /// The raw `CUevent` (for interop; do not destroy it).
    pub fn cu_event(&self) -> sys::CUevent {
        self.handle.raw()
    }

    /// The context this event belongs to.
    pub fn context(&self) -> &Arc<CudaContext> {
        self.handle.context()
    }
}

impl RawEvent for CudaEvent {
    fn query(&self) -> Result<bool> {
        guarded(&self.handle.device, "cuEventQuery", || self.handle.query())
    }

    fn synchronize(&self) -> Result<()> {
        guarded(&self.handle.device, "cuEventSynchronize", || {
            self.handle.synchronize()
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
