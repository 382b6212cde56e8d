//! Thread binding: each thread's current lane per device.
//!
//! The first [`crate::Device::current_lane`] call on a thread leases a lane per the
//! pool's policy and keeps the lease in thread-local storage; later calls return it
//! at the cost of a TLS read and a short scan. [`LaneGuard`] switches the current
//! lane for a scope and restores the previous one on drop. The thread's leases are
//! released by the TLS destructor when the thread exits, and each lease keeps its
//! device alive, so the destructor never touches freed state.

use std::cell::RefCell;

use crate::lease::Lease;
use crate::sync::thread_local;

thread_local! {
    /// `(device id, lease)` pairs of this thread; a handful at most.
    static BOUND: RefCell<Vec<(u64, Lease)>> = RefCell::new(Vec::new());
}

/// The lease this thread has bound for device `id`, if any.
pub(crate) fn current(id: u64) -> Option<Lease> {
    BOUND
        .try_with(|b| {
            b.borrow()
                .iter()
                .find(|(d, _)| *d == id)
                .map(|(_, l)| l.clone())
        })
        .ok()
        .flatten()
}

/// Binds `lease` as this thread's lane for device `id`; returns the previous one.
pub(crate) fn replace(id: u64, lease: Option<Lease>) -> Option<Lease> {
    BOUND
        .try_with(|b| {
            let mut b = b.borrow_mut();
            let pos = b.iter().position(|(d, _)| *d == id);
            let old = pos.map(|p| b.swap_remove(p).1);
            if let Some(lease) = lease {
                b.push((id, lease));
            }
            old
        })
        .ok()
        .flatten()
}

/// Restores the previous current lane of a device when dropped.
///
/// Returned by [`crate::Device::bind`].
#[must_use = "the previous lane is restored when the guard is dropped"]
pub struct LaneGuard {
    pub(crate) device: u64,
    pub(crate) previous: Option<Lease>,
    /// Guards are tied to the thread whose TLS they changed.
    pub(crate) _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        // Dropping the displaced lease here (outside the TLS borrow) may release it.
        let displaced = replace(self.device, self.previous.take());
        drop(displaced);
    }
}
