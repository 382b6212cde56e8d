//! The one place that names concrete synchronization primitives.
//!
//! Every pool, event and callback protocol in this crate imports its atomics, locks,
//! `Arc`, threads and thread-locals from here. A normal build uses `std`; with
//! `RUSTFLAGS="--cfg lanes_loom"` the same code runs under [loom]'s exhaustive
//! scheduler, and with `--cfg lanes_shuttle` under shuttle's randomized one. A
//! crate-specific cfg (not `cfg(loom)`) keeps dependencies that have their own loom
//! switch in their normal mode.
//!
//! Two adapters keep the code identical in all modes: [`UnsafeCell`] with loom's
//! closure API, and [`spin_wait`] for retry loops (loom and shuttle need a yield there).
//!
//! [loom]: https://docs.rs/loom

#![allow(unused_imports)]

#[cfg(lanes_loom)]
pub(crate) use loom::{
    sync::{
        atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Condvar, Mutex, MutexGuard,
    },
    thread,
};

#[cfg(all(lanes_shuttle, not(lanes_loom)))]
pub(crate) use shuttle::{
    sync::{
        atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Condvar, Mutex, MutexGuard,
    },
    thread,
};

#[cfg(not(any(lanes_loom, lanes_shuttle)))]
pub(crate) use std::{
    sync::{
        atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Condvar, Mutex, MutexGuard,
    },
    thread,
};

/// Reference counts are always `std`'s, in every mode: trait objects
/// (`Arc<dyn Backend>`, `Arc<dyn BufferOwner>`) need unsized coercion and `Weak`,
/// which loom's `Arc` lacks. The protocols the checkers must explore live in the
/// atomics, locks and condition variables above, which are the checkers' own; a
/// std `Arc` is only a correct reference count to them.
pub(crate) use std::sync::{Arc, Weak};

/// Declares a thread-local through the active implementation (`loom`'s macro
/// rejects `const {}` initializers, so callers use plain expressions).
#[cfg(lanes_loom)]
macro_rules! lanes_thread_local {
    ($($t:tt)*) => { loom::thread_local!($($t)*); };
}
#[cfg(all(lanes_shuttle, not(lanes_loom)))]
macro_rules! lanes_thread_local {
    ($($t:tt)*) => { shuttle::thread_local!($($t)*); };
}
#[cfg(not(any(lanes_loom, lanes_shuttle)))]
macro_rules! lanes_thread_local {
    ($($t:tt)*) => { std::thread_local!($($t)*); };
}
pub(crate) use lanes_thread_local as thread_local;

/// `UnsafeCell` with loom's closure API so loom can check every access.
#[cfg(lanes_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `UnsafeCell` with loom's closure API (std and shuttle builds).
#[cfg(not(lanes_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(lanes_loom))]
#[allow(dead_code)]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(v: T) -> Self {
        Self(std::cell::UnsafeCell::new(v))
    }
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Called on every iteration of a retry loop.
#[inline]
pub(crate) fn spin_wait() {
    #[cfg(any(lanes_loom, lanes_shuttle))]
    thread::yield_now();
    #[cfg(not(any(lanes_loom, lanes_shuttle)))]
    std::hint::spin_loop();
}

/// `true` when running under a model checker, where `Condvar::wait_timeout` never
/// times out: bounded waits are then modelled as a bounded number of retries.
pub(crate) const MODEL_CHECKING: bool = cfg!(any(lanes_loom, lanes_shuttle));

/// Locks `m`, recovering the data if a previous holder panicked.
///
/// Every mutex in this crate guards state that stays consistent across a panic
/// (a panic never happens between two writes that must go together), so poison
/// carries no information here; turning it into an error would let one panicking
/// user callback wedge a whole device.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// [`lock`] for a `std` mutex in every mode: the backends' own state, which the
/// model checkers do not explore. In a normal build it is [`lock`] itself.
#[cfg(not(any(lanes_loom, lanes_shuttle)))]
pub(crate) use self::lock as lock_std;

/// [`lock`] for a `std` mutex in every mode (model-checking builds, where `Mutex`
/// is the checker's).
#[cfg(any(lanes_loom, lanes_shuttle))]
pub(crate) fn lock_std<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Runs a loom model with a default bound of 2 preemptions (override with
/// `LOOM_MAX_PREEMPTIONS`): bound 1 missed a real shutdown race, unbounded runs
/// take hours.
#[cfg(all(test, lanes_loom))]
pub(crate) fn check_model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}
