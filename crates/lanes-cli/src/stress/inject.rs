//! `--inject oom:P`: allocations that fail on purpose, switched on after the
//! reference pass.
//!
//! The allocator's own injector ([`lanes::AllocConfig::inject_oom`]) is fixed when
//! the device is created, so it would also fail the model's weight upload and the
//! reference pass. Until the allocator can be armed at run time, the stress device
//! is built on a [`FaultyBackend`]: a wrapper that delegates every primitive to the
//! real backend (CPU or CUDA) and, once armed, fails a fraction `P` of the
//! *backend* allocations (the caching allocator's segment requests) with
//! [`lanes::Error::Injected`]. The allocator hands that error to the request that
//! needed the segment; the request must end with a clean error, free every buffer it
//! held and leave its lane usable. Because a warm cache rarely asks the backend,
//! the injected phase empties the allocator's cache before 7 of 8 requests (itself
//! a concurrency test: `empty_cache` runs while other lanes compute) and keeps the
//! lane the weights were uploaded on out of the rotation (its partly used weight
//! segments cannot be released and would serve small requests), so most requests
//! ask the backend for at least one segment. The figures report how many backend
//! allocations were drawn while armed and how many were failed.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lanes::{Backend, DeviceKind, DevicePtr, MemInfo, RawEvent, RawLane};

/// A backend that fails a seeded fraction of allocations while armed.
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    /// A draw below this fails; 0 while disarmed.
    threshold: AtomicU64,
    seed: u64,
    draws: AtomicU64,
    injected: AtomicU64,
}

impl FaultyBackend {
    /// Wraps `inner`, disarmed.
    pub fn new(inner: Arc<dyn Backend>, seed: u64) -> Self {
        FaultyBackend {
            inner,
            threshold: AtomicU64::new(0),
            seed,
            draws: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// From now on each allocation fails with probability `p` (0 disarms).
    pub fn arm(&self, p: f64) {
        let t = if p <= 0.0 {
            0
        } else if p >= 1.0 {
            u64::MAX
        } else {
            (p * u64::MAX as f64) as u64
        };
        self.threshold.store(t, Ordering::Relaxed);
    }

    /// Allocations failed on purpose so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Allocations asked of the backend while armed.
    pub fn draws(&self) -> u64 {
        self.draws.load(Ordering::Relaxed)
    }
}

impl Backend for FaultyBackend {
    fn kind(&self) -> DeviceKind {
        self.inner.kind()
    }
    fn create_lane(&self, index: usize) -> lanes::Result<Box<dyn RawLane>> {
        self.inner.create_lane(index)
    }
    fn create_event(&self) -> lanes::Result<Box<dyn RawEvent>> {
        self.inner.create_event()
    }
    fn alloc(&self, bytes: usize) -> lanes::Result<DevicePtr> {
        let threshold = self.threshold.load(Ordering::Relaxed);
        if threshold > 0 {
            let n = self.draws.fetch_add(1, Ordering::Relaxed);
            if crate::stress::splitmix64(self.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                < threshold
            {
                self.injected.fetch_add(1, Ordering::Relaxed);
                return Err(lanes::Error::Injected(format!(
                    "backend allocation of {bytes} bytes failed (injected oom)"
                )));
            }
        }
        self.inner.alloc(bytes)
    }
    unsafe fn free(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: the caller's contract is the inner backend's: `ptr` came from
        // `alloc(bytes)` (which only the inner backend ever returns), freed once.
        unsafe { self.inner.free(ptr, bytes) }
    }
    fn mem_info(&self) -> lanes::Result<MemInfo> {
        self.inner.mem_info()
    }
    fn synchronize(&self) -> lanes::Result<()> {
        self.inner.synchronize()
    }
    /// The inner backend, so that executors downcast to the real one.
    fn as_any(&self) -> &dyn Any {
        self.inner.as_any()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanes::backend::host::HostBackend;

    #[test]
    fn armed_allocations_fail_cleanly_and_disarmed_ones_pass_through() {
        let f = FaultyBackend::new(Arc::new(HostBackend::new()), 3);
        assert_eq!(f.kind(), DeviceKind::Cpu);
        assert!(
            f.as_any().downcast_ref::<HostBackend>().is_some(),
            "executors see the real backend"
        );
        let p = f.alloc(4096).unwrap();
        // SAFETY: `p` came from `alloc(4096)` on this backend and is freed once.
        unsafe { f.free(p, 4096) };
        f.arm(1.0);
        let e = f.alloc(4096).unwrap_err();
        assert!(matches!(e, lanes::Error::Injected(_)), "{e}");
        assert_eq!((f.injected(), f.draws()), (1, 1));
        f.arm(0.3);
        let failed = (0..1000)
            .filter(|_| match f.alloc(512) {
                Ok(p) => {
                    // SAFETY: as above.
                    unsafe { f.free(p, 512) };
                    false
                }
                Err(_) => true,
            })
            .count();
        assert!(
            (200..400).contains(&failed),
            "{failed} of 1000 failed at p=0.3"
        );
        f.arm(0.0);
        let p = f.alloc(512).unwrap();
        // SAFETY: as above.
        unsafe { f.free(p, 512) };
    }
}
