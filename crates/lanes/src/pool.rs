//! The lane pool: lazy lanes, the `Shared` and `Exclusive` policies.
//!
//! A lease (see `lease.rs`) is the right to enqueue work on one lane. Under
//! [`Policy::Exclusive`] a lane has at most one lease at a time, taken from a
//! lock-free bitmask freelist; under [`Policy::Shared`] lanes are handed out
//! round-robin and never block. A lease owns a strong reference to the device's
//! shared state, so neither the pool nor a lane can be torn down under it: there is
//! no alive flag and nothing to check before use.

use std::sync::OnceLock;
use std::time::Instant;

use crate::backend::{Backend, RawLane};
use crate::error::Wait;
use crate::sync::{fence, lock, spin_wait, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering};
use crate::{Error, Result};

/// The most lanes one pool can have (the freelist is one 64-bit word).
pub const MAX_LANES: usize = 64;

/// How a pool hands out lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Round-robin; never blocks; several holders may share a lane (PyTorch's style).
    Shared,
    /// At most one holder per lane; when all are taken, wait within the bound,
    /// then fail with [`Error::PoolExhausted`].
    Exclusive {
        /// How long to wait for a free lane.
        wait: Wait,
    },
}

/// The lanes of one device.
pub(crate) struct LanePool {
    /// The native lanes, created on first lease of each index.
    slots: Box<[OnceLock<Box<dyn RawLane>>]>,
    policy: Policy,
    /// Exclusive policy: bit `i` is set while lane `i` is free. Cleared by the
    /// acquiring thread's CAS, set again by the releasing lease's `fetch_or`
    /// (Release), so the next holder happens-after everything the previous one did.
    free: AtomicU64,
    /// Shared policy: the round-robin cursor (any thread, `fetch_add`).
    cursor: AtomicUsize,
    /// Leases alive now, both policies (incremented on acquire, decremented on drop).
    pub(crate) outstanding: AtomicUsize,
    /// Threads blocked in a bounded or unbounded wait for a lane. A waiter
    /// increments it before its last check and decrements it when done; a releaser
    /// reads it after freeing its bit to decide whether to notify.
    waiters: AtomicUsize,
    wait_lock: Mutex<()>,
    wait_cv: Condvar,
}

impl LanePool {
    pub(crate) fn new(lanes: usize, policy: Policy) -> Result<Self> {
        if lanes == 0 || lanes > MAX_LANES {
            return Err(Error::InvalidArgument(format!(
                "a lane pool needs 1..={MAX_LANES} lanes, not {lanes}"
            )));
        }
        let mask = if lanes == 64 {
            u64::MAX
        } else {
            (1u64 << lanes) - 1
        };
        Ok(LanePool {
            slots: (0..lanes).map(|_| OnceLock::new()).collect(),
            policy,
            free: AtomicU64::new(mask),
            cursor: AtomicUsize::new(0),
            outstanding: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            wait_lock: Mutex::new(()),
            wait_cv: Condvar::new(),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn policy(&self) -> Policy {
        self.policy
    }

    /// Leases now alive.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Lanes whose native queue has been created.
    pub(crate) fn created(&self) -> usize {
        self.slots.iter().filter(|s| s.get().is_some()).count()
    }

    /// The native lane `index`, if created.
    pub(crate) fn raw(&self, index: usize) -> Option<&dyn RawLane> {
        self.slots.get(index)?.get().map(|b| &**b)
    }

    /// Takes a free lane's bit without waiting.
    fn try_take(&self) -> Option<usize> {
        let mut cur = self.free.load(Ordering::Relaxed);
        loop {
            if cur == 0 {
                return None;
            }
            let i = cur.trailing_zeros() as usize;
            match self.free.compare_exchange_weak(
                cur,
                cur & !(1u64 << i),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(i),
                Err(now) => {
                    cur = now;
                    spin_wait();
                }
            }
        }
    }

    /// Takes a lane index per the pool's policy (`wait` overrides the exclusive wait).
    pub(crate) fn take(&self, wait: Option<Wait>, device: &str) -> Result<(usize, bool)> {
        match self.policy {
            Policy::Shared => {
                let i = self.cursor.fetch_add(1, Ordering::Relaxed) % self.slots.len();
                Ok((i, false))
            }
            Policy::Exclusive { wait: default } => {
                let wait = wait.unwrap_or(default);
                if let Some(i) = self.try_take() {
                    return Ok((i, true));
                }
                self.take_waiting(wait, device).map(|i| (i, true))
            }
        }
    }

    fn take_waiting(&self, wait: Wait, device: &str) -> Result<usize> {
        let exhausted = || Error::PoolExhausted {
            device: device.to_string(),
            lanes: self.slots.len(),
            wait,
        };
        let deadline = match wait {
            Wait::NoWait => return Err(exhausted()),
            Wait::For(d) => Some(Instant::now() + d),
            Wait::Forever => None,
        };
        let mut guard = lock(&self.wait_lock);
        self.waiters.fetch_add(1, Ordering::AcqRel);
        // Pairs with the fence in `release`: either the releaser sees our waiter
        // count and notifies under the lock, or we see its freed bit below.
        fence(Ordering::SeqCst);
        let mut retries = 0u32;
        let got = loop {
            if let Some(i) = self.try_take() {
                break Some(i);
            }
            match deadline {
                None => {
                    guard = self.wait_cv.wait(guard).unwrap_or_else(|p| p.into_inner());
                }
                Some(deadline) => {
                    // Model checkers never time out a `wait_timeout`: model the
                    // bound as a few retries instead.
                    if crate::sync::MODEL_CHECKING {
                        retries += 1;
                        if retries > 2 {
                            break None;
                        }
                        drop(guard);
                        spin_wait();
                        guard = lock(&self.wait_lock);
                        continue;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break None;
                    }
                    guard = self
                        .wait_cv
                        .wait_timeout(guard, deadline - now)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            }
        };
        self.waiters.fetch_sub(1, Ordering::AcqRel);
        drop(guard);
        got.ok_or_else(exhausted)
    }

    /// Returns an exclusive lane to the freelist and wakes a waiter if any.
    pub(crate) fn release(&self, index: usize) {
        self.free.fetch_or(1u64 << index, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Acquire) > 0 {
            // Taking the lock orders this notify after a waiter's failed check.
            drop(lock(&self.wait_lock));
            self.wait_cv.notify_all();
        }
    }

    /// Creates the native lane `index` if it does not exist yet.
    pub(crate) fn ensure(&self, index: usize, backend: &dyn Backend) -> Result<()> {
        let slot = &self.slots[index];
        if slot.get().is_none() {
            let raw = backend.create_lane(index)?;
            // A concurrent creator may win; the loser's lane is dropped unused.
            let _ = slot.set(raw);
        }
        Ok(())
    }
}
