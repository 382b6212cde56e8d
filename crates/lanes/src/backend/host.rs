//! The host backend: a lane is a worker thread draining an ordered queue.
//!
//! It is a real CPU execution backend (the model runs on it) and it lets every
//! protocol of the runtime run where there is no GPU. Events are completion
//! markers; memory comes from the system allocator, optionally under a byte cap so
//! that out-of-memory paths can be tested.
//!
//! The backend uses `std` primitives directly rather than the `sync` façade: it
//! spawns real OS threads, so the model checkers drive the protocols above it with
//! an inline test backend instead.

use std::alloc::Layout;
use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle, ThreadId};

use super::{Backend, DeviceKind, DevicePtr, HostFn, MemInfo, RawEvent, RawLane};
use crate::{Error, Result};

/// Locks a std mutex, recovering from poison (a panicking job never leaves the
/// queue or the marks half-updated).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Alignment of every host allocation (matches CUDA's 256-byte guarantee).
pub const HOST_ALIGN: usize = 256;

/// The host backend.
pub struct HostBackend {
    /// Bytes currently allocated from the system. Written by `alloc`/`free` (any thread).
    in_use: AtomicUsize,
    /// The byte cap: `alloc` fails beyond it.
    capacity: usize,
    /// The queues of this backend's lanes, for a device-wide `synchronize`.
    lanes: Mutex<Vec<std::sync::Weak<Queue>>>,
}

impl HostBackend {
    /// A host backend whose memory is limited only by the system.
    pub fn new() -> Self {
        Self::with_capacity(usize::MAX)
    }

    /// A host backend that refuses allocations beyond `capacity` bytes in total.
    pub fn with_capacity(capacity: usize) -> Self {
        HostBackend {
            in_use: AtomicUsize::new(0),
            capacity,
            lanes: Mutex::new(Vec::new()),
        }
    }

    /// Bytes currently allocated from the system.
    pub fn bytes_in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }
}

impl Default for HostBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for HostBackend {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Cpu
    }

    fn create_lane(&self, index: usize) -> Result<Box<dyn RawLane>> {
        let lane = HostLane::spawn(index)?;
        let mut lanes = lock(&self.lanes);
        lanes.retain(|q| q.strong_count() > 0);
        lanes.push(Arc::downgrade(&lane.queue));
        Ok(Box::new(lane))
    }

    fn create_event(&self) -> Result<Box<dyn RawEvent>> {
        Ok(Box::new(HostEvent::default()))
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        let oom = || Error::BackendOutOfMemory {
            device: "cpu".into(),
            bytes,
        };
        let bytes = bytes.max(1);
        let mut cur = self.in_use.load(Ordering::Relaxed);
        loop {
            let next = cur
                .checked_add(bytes)
                .filter(|n| *n <= self.capacity)
                .ok_or_else(oom)?;
            match self
                .in_use
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        let layout = Layout::from_size_align(bytes, HOST_ALIGN).map_err(|_| oom())?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            self.in_use.fetch_sub(bytes, Ordering::Relaxed);
            return Err(oom());
        }
        Ok(DevicePtr(p as u64))
    }

    unsafe fn free(&self, ptr: DevicePtr, bytes: usize) {
        let bytes = bytes.max(1);
        // SAFETY: the caller guarantees `ptr` came from `alloc(bytes)`, whose layout
        // this rebuilds exactly.
        unsafe {
            std::alloc::dealloc(
                ptr.0 as *mut u8,
                Layout::from_size_align_unchecked(bytes, HOST_ALIGN),
            )
        };
        self.in_use.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn mem_info(&self) -> Result<MemInfo> {
        let used = self.bytes_in_use();
        let total = if self.capacity == usize::MAX {
            1 << 40
        } else {
            self.capacity
        };
        Ok(MemInfo {
            free: total.saturating_sub(used),
            total,
        })
    }

    fn synchronize(&self) -> Result<()> {
        let queues: Vec<_> = lock(&self.lanes)
            .iter()
            .filter_map(|q| q.upgrade())
            .collect();
        // A job waiting for its own lane would deadlock; refusing also keeps the
        // allocator from releasing segments that later jobs on that lane may use.
        if queues
            .iter()
            .any(|q| q.worker == Some(thread::current().id()))
        {
            return Err(Error::InvalidArgument(
                "the CPU device cannot be synchronized from one of its own lane threads".into(),
            ));
        }
        for q in queues {
            // Errors stay with the lanes' holders; this only waits.
            let n = lock(&q.state).submitted;
            q.wait_for(n);
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One job of a host lane.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// The state a lane's worker and its submitters share.
#[derive(Default)]
struct Queue {
    /// The worker thread (set once at spawn).
    worker: Option<ThreadId>,
    state: Mutex<QueueState>,
    /// Signalled when a job is pushed or the lane closes.
    work: Condvar,
    /// Signalled when a job completes.
    progress: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// Jobs ever submitted.
    submitted: u64,
    /// Jobs ever finished (in order, so job `n` is done once `completed >= n`).
    completed: u64,
    /// The first failure since the holder last synchronized.
    error: Option<String>,
    closed: bool,
}

/// A host lane: one worker thread running submitted jobs in order.
pub struct HostLane {
    index: usize,
    queue: Arc<Queue>,
    worker: Option<JoinHandle<()>>,
    worker_id: ThreadId,
}

impl HostLane {
    fn spawn(index: usize) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Queue>>();
        let worker = thread::Builder::new()
            .name(format!("lanes-cpu-{index}"))
            .spawn(move || {
                if let Ok(q) = rx.recv() {
                    run_worker(&q)
                }
            })
            .map_err(|e| Error::LaneFailed {
                device: "cpu".into(),
                lane: index,
                message: format!("could not spawn the lane's worker thread: {e}"),
            })?;
        let worker_id = worker.thread().id();
        let queue = Arc::new(Queue {
            worker: Some(worker_id),
            ..Queue::default()
        });
        // The worker waits for its queue; if it already died, joining reports it.
        if tx.send(queue.clone()).is_err() {
            let _ = worker.join();
            return Err(Error::LaneFailed {
                device: "cpu".into(),
                lane: index,
                message: "the lane's worker thread exited at start".into(),
            });
        }
        Ok(HostLane {
            index,
            queue,
            worker: Some(worker),
            worker_id,
        })
    }

    /// The lane's index in its pool.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Enqueues `job` to run after all earlier work on this lane. A panic inside
    /// `job` is caught: the lane keeps working and the holder gets
    /// [`Error::LaneFailed`] at its next synchronization.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<u64> {
        self.push(Box::new(job))
    }

    /// Enqueues a job that reports failure as an error rather than a panic.
    pub fn submit_fallible(
        &self,
        job: impl FnOnce() -> std::result::Result<(), String> + Send + 'static,
    ) -> Result<u64> {
        let q = Arc::downgrade(&self.queue);
        self.push(Box::new(move || {
            if let Err(msg) = job() {
                if let Some(q) = q.upgrade() {
                    let mut st = lock(&q.state);
                    st.error.get_or_insert(msg);
                }
            }
        }))
    }

    fn push(&self, job: Job) -> Result<u64> {
        let mut st = lock(&self.queue.state);
        if st.closed {
            return Err(self.failed("the lane is shutting down".into()));
        }
        st.jobs.push_back(job);
        st.submitted += 1;
        let n = st.submitted;
        drop(st);
        self.queue.work.notify_one();
        Ok(n)
    }

    /// Blocks until job number `n` (as returned by `submit`) has finished.
    fn wait_for(&self, n: u64) {
        self.queue.wait_for(n)
    }

    fn take_error(&self) -> Result<()> {
        match lock(&self.queue.state).error.take() {
            Some(message) => Err(self.failed(message)),
            None => Ok(()),
        }
    }

    fn failed(&self, message: String) -> Error {
        Error::LaneFailed {
            device: "cpu".into(),
            lane: self.index,
            message,
        }
    }
}

impl Queue {
    /// Blocks until job number `n` has finished.
    fn wait_for(&self, n: u64) {
        let mut st = lock(&self.state);
        while st.completed < n {
            st = match self.progress.wait(st) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }
}

fn run_worker(q: &Queue) {
    loop {
        let job = {
            let mut st = lock(&q.state);
            loop {
                if let Some(job) = st.jobs.pop_front() {
                    break job;
                }
                if st.closed {
                    return;
                }
                st = match q.work.wait(st) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
            }
        };
        let outcome = catch_unwind(AssertUnwindSafe(job));
        let mut st = lock(&q.state);
        if let Err(panic) = outcome {
            let msg = panic_message(&*panic);
            st.error.get_or_insert(format!("a job panicked: {msg}"));
        }
        st.completed += 1;
        drop(st);
        q.progress.notify_all();
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl RawLane for HostLane {
    fn record(&self, event: &dyn RawEvent) -> Result<()> {
        let ev = host_event(event)?;
        let target = {
            let mut st = lock(&ev.state.marks);
            st.recorded += 1;
            st.recorded
        };
        let state = ev.state.clone();
        self.push(Box::new(move || state.complete(target)))?;
        Ok(())
    }

    fn wait(&self, event: &dyn RawEvent) -> Result<()> {
        let ev = host_event(event)?;
        let target = lock(&ev.state.marks).recorded;
        let state = ev.state.clone();
        self.push(Box::new(move || state.wait_for(target)))?;
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        if thread::current().id() == self.worker_id {
            return Err(Error::InvalidArgument(
                "a host lane cannot synchronize from its own worker thread".into(),
            ));
        }
        let n = lock(&self.queue.state).submitted;
        self.wait_for(n);
        self.take_error()
    }

    fn host_fn(&self, f: HostFn) -> Result<()> {
        self.push(f)?;
        Ok(())
    }

    unsafe fn copy_htod(&self, src: &[u8], dst: DevicePtr) -> Result<()> {
        let data = src.to_vec();
        self.push(Box::new(move || {
            // SAFETY: the caller guarantees `dst` is allocated for `data.len()` bytes
            // until this ordered copy has run.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst.0 as *mut u8, data.len()) }
        }))?;
        Ok(())
    }

    unsafe fn copy_dtoh(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        let (p, len) = (dst.as_mut_ptr() as usize, dst.len());
        self.push(Box::new(move || {
            // SAFETY: `dst` outlives the job because `copy_dtoh` waits for it below;
            // the caller guarantees `src` is allocated for `len` bytes.
            unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, p as *mut u8, len) }
        }))?;
        self.synchronize()
    }

    unsafe fn copy_dtod(&self, src: DevicePtr, dst: DevicePtr, bytes: usize) -> Result<()> {
        self.push(Box::new(move || {
            // SAFETY: the caller guarantees both ranges are allocated and disjoint.
            unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.0 as *mut u8, bytes) }
        }))?;
        Ok(())
    }

    fn begin_capture(&self) -> Result<()> {
        Err(Error::Unsupported {
            device: "cpu".into(),
            what: "graph capture (CPU lanes run their jobs eagerly)".into(),
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for HostLane {
    fn drop(&mut self) {
        lock(&self.queue.state).closed = true;
        self.queue.work.notify_all();
        if let Some(worker) = self.worker.take() {
            // The last owner may be a job on this very lane (a callback dropping the
            // device): joining itself would deadlock, so the worker then detaches and
            // exits once its queue is drained.
            if thread::current().id() != self.worker_id {
                let _ = worker.join();
            }
        }
    }
}

/// Completion marks of a host event.
#[derive(Default)]
struct EventState {
    marks: Mutex<Marks>,
    done: Condvar,
}

#[derive(Default)]
struct Marks {
    /// Records ever made; record `n` completes when its job runs.
    recorded: u64,
    /// The highest record that has completed.
    completed: u64,
}

impl EventState {
    fn complete(&self, target: u64) {
        let mut m = lock(&self.marks);
        m.completed = m.completed.max(target);
        drop(m);
        self.done.notify_all();
    }

    fn wait_for(&self, target: u64) {
        let mut m = lock(&self.marks);
        while m.completed < target {
            m = match self.done.wait(m) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }
}

/// A host event: a completion marker.
#[derive(Default)]
pub struct HostEvent {
    state: Arc<EventState>,
}

fn host_event(e: &dyn RawEvent) -> Result<&HostEvent> {
    e.as_any()
        .downcast_ref::<HostEvent>()
        .ok_or_else(|| Error::InvalidArgument("a non-host event was used on a host lane".into()))
}

impl RawEvent for HostEvent {
    fn query(&self) -> Result<bool> {
        let m = lock(&self.state.marks);
        Ok(m.completed >= m.recorded)
    }

    fn synchronize(&self) -> Result<()> {
        let target = lock(&self.state.marks).recorded;
        self.state.wait_for(target);
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
