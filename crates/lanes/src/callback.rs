//! Completion callbacks: run a closure on the host once a lane's prior work is done.
//!
//! A callback owns everything it touches (`Box<dyn FnOnce() + Send>`) plus a strong
//! reference to the device's [`Callbacks`] counter, never to a lane, stream or pool:
//! it cannot outlive what it uses (the seed system's bug 32.291 was a completion
//! handler touching a freed stream). Shutdown waits for pending callbacks with a
//! bound and reports those that did not finish.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::backend::RawLane;
use crate::sync::{lock, spin_wait, Arc, AtomicUsize, Condvar, Mutex, Ordering};
use crate::Result;

/// Counts a device's pending completion callbacks.
#[derive(Default)]
pub(crate) struct Callbacks {
    /// Callbacks enqueued and not yet finished. Incremented by `enqueue` before the
    /// native enqueue; decremented by the callback itself after the user closure ran
    /// (or by `enqueue` if the native enqueue failed).
    pending: AtomicUsize,
    /// Callbacks whose closure panicked (incremented by the callback wrapper).
    panicked: AtomicUsize,
    lock: Mutex<()>,
    idle: Condvar,
}

impl Callbacks {
    /// Enqueues `f` to run after all prior work on `lane`.
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        lane: &dyn RawLane,
        f: Box<dyn FnOnce() + Send + 'static>,
    ) -> Result<()> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let me = self.clone();
        let wrapped = Box::new(move || {
            if catch_unwind(AssertUnwindSafe(f)).is_err() {
                me.panicked.fetch_add(1, Ordering::Relaxed);
            }
            me.finish();
        });
        if let Err(e) = lane.host_fn(wrapped) {
            // The closure was dropped unrun by the failed enqueue.
            self.finish();
            return Err(e);
        }
        Ok(())
    }

    fn finish(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Taking the lock orders this notify after a waiter's check.
            drop(lock(&self.lock));
            self.idle.notify_all();
        }
    }

    /// Callbacks enqueued and not finished.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Callbacks whose closure panicked.
    pub(crate) fn panicked(&self) -> usize {
        self.panicked.load(Ordering::Relaxed)
    }

    /// Waits until no callback is pending or `timeout` passes; returns how many are
    /// still pending (0 on success).
    pub(crate) fn wait_idle(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut guard = lock(&self.lock);
        let mut retries = 0u32;
        loop {
            let pending = self.pending.load(Ordering::Acquire);
            if pending == 0 {
                return 0;
            }
            if crate::sync::MODEL_CHECKING {
                // `wait_timeout` never times out under the model checkers: bound the
                // wait by retries.
                retries += 1;
                if retries > 3 {
                    return pending;
                }
                drop(guard);
                spin_wait();
                guard = lock(&self.lock);
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return pending;
            }
            guard = self
                .idle
                .wait_timeout(guard, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}
