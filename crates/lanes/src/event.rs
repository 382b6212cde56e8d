//! Events and the event pool.
//!
//! An [`Event`] marks a point in a lane's work; other lanes can wait for it without
//! blocking the host, and the host can query or wait. Native events are recycled
//! through a pool: a pooled event goes back to its pool on drop, or is destroyed if
//! its pool is gone. Either way it holds its backend (the device context) alive, so
//! destroying it is always valid.

use crate::alloc::PendingUse;
use crate::backend::{Backend, RawEvent};
use crate::sync::{lock, Arc, AtomicUsize, Mutex, Ordering, Weak};
use crate::Result;

/// Free lists per pool; an event is taken from and returned to the shard of the
/// lane that recorded it, so lanes do not contend on one lock.
const SHARDS: usize = 8;

/// Recycles native events of one device.
pub(crate) struct EventPool {
    backend: Arc<dyn Backend>,
    shards: [Mutex<Vec<Box<dyn RawEvent>>>; SHARDS],
    /// Native events ever created by this pool (incremented by `get` on a miss).
    created: AtomicUsize,
    /// Events handed out and not yet returned or destroyed (incremented by `get`,
    /// decremented by `Event::drop`).
    outstanding: Arc<AtomicUsize>,
}

impl EventPool {
    pub(crate) fn new(backend: Arc<dyn Backend>) -> Self {
        EventPool {
            backend,
            shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
            created: AtomicUsize::new(0),
            outstanding: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// An event from shard `hint % SHARDS`, created if the shard is empty.
    pub(crate) fn get(self: &Arc<Self>, hint: usize) -> Result<Event> {
        let shard = hint % SHARDS;
        let raw = lock(&self.shards[shard]).pop();
        let raw = match raw {
            Some(raw) => raw,
            None => {
                let raw = self.backend.create_event()?;
                self.created.fetch_add(1, Ordering::Relaxed);
                raw
            }
        };
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        Ok(Event {
            raw: Some(raw),
            pool: Arc::downgrade(self),
            shard,
            backend: self.backend.clone(),
            outstanding: self.outstanding.clone(),
        })
    }

    /// Native events ever created.
    pub(crate) fn created(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }

    /// Events handed out and not yet dropped.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Native events waiting in the pool.
    pub(crate) fn pooled(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// A marker recorded on a lane (see [`crate::Lease::record`]).
pub struct Event {
    raw: Option<Box<dyn RawEvent>>,
    pool: Weak<EventPool>,
    shard: usize,
    /// Keeps the device context alive for as long as the native event exists.
    backend: Arc<dyn Backend>,
    outstanding: Arc<AtomicUsize>,
}

impl Event {
    /// The native event.
    pub fn raw(&self) -> &dyn RawEvent {
        match &self.raw {
            Some(raw) => &**raw,
            None => unreachable!("an event's native handle is taken only in drop"),
        }
    }

    /// `true` once all work before the record has completed.
    pub fn query(&self) -> Result<bool> {
        self.raw().query()
    }

    /// Blocks the calling thread until all work before the record has completed.
    pub fn synchronize(&self) -> Result<()> {
        self.raw().synchronize()
    }

    /// The backend this event belongs to.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("device", &self.backend.kind())
            .finish()
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            match self.pool.upgrade() {
                Some(pool) => lock(&pool.shards[self.shard]).push(raw),
                // The pool is gone: destroy the native event now, while `backend`
                // still keeps its context alive.
                None => drop(raw),
            }
        }
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PendingUse for Event {
    fn is_done(&self) -> Result<bool> {
        self.query()
    }

    fn wait(&self) -> Result<()> {
        self.synchronize()
    }
}
