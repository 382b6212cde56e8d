//! Model-checked scenarios of the real pool, event and callback code.
//!
//! Each scenario is one function run by loom (`--cfg lanes_loom`, every interleaving
//! up to `LOOM_MAX_PREEMPTIONS`) and by shuttle (`--cfg lanes_shuttle`, random and
//! PCT schedules). A model backend stands in for the GPU: its lanes queue work that a
//! model thread ("the device") completes, so completion races with everything else.

use std::any::Any;
use std::collections::VecDeque;
use std::time::Duration;

use crate::backend::{
    Backend, DeviceKind, DevicePtr, HostFn, MemInfo, RawEvent, RawGraph, RawLane,
};
use crate::sync::{lock, thread, Arc, AtomicBool, AtomicUsize, Mutex, Ordering};
use crate::{Device, DeviceConfig, Error, Policy, Result, Wait};

/// Counts native objects so a scenario can check each is destroyed exactly once.
#[derive(Default)]
struct Census {
    lanes_created: AtomicUsize,
    lanes_dropped: AtomicUsize,
    events_created: AtomicUsize,
    events_dropped: AtomicUsize,
    graphs_created: AtomicUsize,
    graphs_dropped: AtomicUsize,
    /// Bytes the backend handed out and has not had back.
    bytes_out: AtomicUsize,
}

/// A captured graph of the model lane.
struct ModelGraph {
    census: Arc<Census>,
}

impl RawGraph for ModelGraph {
    fn nodes(&self) -> usize {
        1
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for ModelGraph {
    fn drop(&mut self) {
        self.census.graphs_dropped.fetch_add(1, Ordering::AcqRel);
    }
}

struct ModelBackend {
    census: Arc<Census>,
    next: AtomicUsize,
}

struct ModelLane {
    census: Arc<Census>,
    queue: Mutex<VecDeque<HostFn>>,
}

struct ModelEvent {
    census: Arc<Census>,
    done: Arc<AtomicBool>,
}

impl ModelLane {
    /// Runs every queued item (the model "device" completing work).
    fn drain(&self) {
        loop {
            let f = lock(&self.queue).pop_front();
            match f {
                Some(f) => f(),
                None => return,
            }
        }
    }
}

impl Drop for ModelLane {
    fn drop(&mut self) {
        self.census.lanes_dropped.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for ModelEvent {
    fn drop(&mut self) {
        self.census.events_dropped.fetch_add(1, Ordering::AcqRel);
    }
}

impl Backend for ModelBackend {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Cpu
    }
    fn create_lane(&self, _index: usize) -> Result<Box<dyn RawLane>> {
        self.census.lanes_created.fetch_add(1, Ordering::AcqRel);
        Ok(Box::new(ModelLane {
            census: self.census.clone(),
            queue: Mutex::new(VecDeque::new()),
        }))
    }
    fn create_event(&self) -> Result<Box<dyn RawEvent>> {
        self.census.events_created.fetch_add(1, Ordering::AcqRel);
        Ok(Box::new(ModelEvent {
            census: self.census.clone(),
            done: Arc::new(AtomicBool::new(true)),
        }))
    }
    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        self.census.bytes_out.fetch_add(bytes, Ordering::AcqRel);
        let at = self
            .next
            .fetch_add(bytes.max(1).next_multiple_of(256), Ordering::AcqRel);
        Ok(DevicePtr(0x1000_0000 + at as u64))
    }
    unsafe fn free(&self, _ptr: DevicePtr, bytes: usize) {
        self.census.bytes_out.fetch_sub(bytes, Ordering::AcqRel);
    }
    fn mem_info(&self) -> Result<MemInfo> {
        Ok(MemInfo {
            free: 1 << 30,
            total: 1 << 30,
        })
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn model_event(e: &dyn RawEvent) -> &ModelEvent {
    e.as_any()
        .downcast_ref::<ModelEvent>()
        .expect("model event")
}

impl RawLane for ModelLane {
    fn record(&self, event: &dyn RawEvent) -> Result<()> {
        let done = model_event(event).done.clone();
        done.store(false, Ordering::Release);
        lock(&self.queue).push_back(Box::new(move || done.store(true, Ordering::Release)));
        Ok(())
    }
    fn wait(&self, _event: &dyn RawEvent) -> Result<()> {
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        self.drain();
        Ok(())
    }
    fn host_fn(&self, f: HostFn) -> Result<()> {
        lock(&self.queue).push_back(f);
        Ok(())
    }
    unsafe fn copy_htod(&self, _src: &[u8], _dst: DevicePtr) -> Result<()> {
        Ok(())
    }
    unsafe fn copy_dtoh(&self, _src: DevicePtr, _dst: &mut [u8]) -> Result<()> {
        Ok(())
    }
    unsafe fn copy_dtod(&self, _s: DevicePtr, _d: DevicePtr, _n: usize) -> Result<()> {
        Ok(())
    }
    fn begin_capture(&self) -> Result<()> {
        Ok(())
    }
    fn end_capture(&self, keep: bool) -> Result<Option<Box<dyn RawGraph>>> {
        if !keep {
            return Ok(None);
        }
        self.census.graphs_created.fetch_add(1, Ordering::AcqRel);
        Ok(Some(Box::new(ModelGraph {
            census: self.census.clone(),
        })))
    }
    fn launch_graph(&self, graph: &dyn RawGraph) -> Result<()> {
        assert!(graph.as_any().is::<ModelGraph>(), "a model graph");
        Ok(())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl RawEvent for ModelEvent {
    fn query(&self) -> Result<bool> {
        Ok(self.done.load(Ordering::Acquire))
    }
    fn synchronize(&self) -> Result<()> {
        while !self.done.load(Ordering::Acquire) {
            crate::sync::spin_wait();
        }
        Ok(())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn model_device(lanes: usize, policy: Policy) -> (Device, Arc<Census>) {
    let census = Arc::new(Census::default());
    let backend = ModelBackend {
        census: census.clone(),
        next: AtomicUsize::new(0),
    };
    let dev = Device::new(
        std::sync::Arc::new(backend),
        DeviceConfig {
            lanes,
            policy,
            alloc: Default::default(),
        },
    )
    .expect("model device");
    (dev, census)
}

fn lane_of(lease: &crate::Lease) -> &ModelLane {
    lease
        .raw()
        .as_any()
        .downcast_ref::<ModelLane>()
        .expect("model lane")
}

/// (a) Threads lease from an exhaustible pool of one lane, waiting for it: no double
/// lease (checked through a per-lane holder count) and no lost wakeup (a lost one
/// deadlocks, which the checkers report).
pub(crate) fn lease_exhaustion(threads: usize) {
    let (dev, _census) = model_device(
        1,
        Policy::Exclusive {
            wait: Wait::Forever,
        },
    );
    let holders = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let dev = dev.clone();
            let holders = holders.clone();
            thread::spawn(move || {
                let lease = dev.lease().expect("a waiting lease succeeds");
                assert_eq!(
                    holders.fetch_add(1, Ordering::AcqRel),
                    0,
                    "lane leased twice"
                );
                holders.fetch_sub(1, Ordering::AcqRel);
                drop(lease);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("leaser");
    }
    assert_eq!(dev.stats().leases_outstanding, 0);
    // Bounded waits give a clean PoolExhausted when the lane stays taken.
    let held = dev.lease().expect("free lane");
    match dev.lease_with(Wait::For(Duration::from_millis(1))) {
        Err(Error::PoolExhausted { lanes: 1, .. }) => {}
        other => panic!("expected PoolExhausted, got {other:?}"),
    }
    drop(held);
}

/// (b) A thread exits holding its thread-bound lease while the device handle is
/// dropped concurrently: the lane is destroyed exactly once, after both.
pub(crate) fn thread_exit_vs_drop() {
    let (dev, census) = model_device(2, Policy::Exclusive { wait: Wait::NoWait });
    let d2 = dev.clone();
    let t = thread::spawn(move || {
        let lease = d2.current_lane().expect("bind");
        assert!(lease.is_exclusive());
        drop(lease);
        drop(d2);
        // The TLS binding still holds the lease; it is released at thread exit.
    });
    drop(dev);
    t.join().expect("binder");
    // Under loom, TLS destructors may run after join returns; the census is checked
    // by the Drop of the last reference, which loom's leak check also covers.
    let created = census.lanes_created.load(Ordering::Acquire);
    let dropped = census.lanes_dropped.load(Ordering::Acquire);
    assert!(dropped <= created && created <= 1);
}

/// (c) An event returns to its pool while the pool (the device) is dropped: the
/// native event is destroyed exactly once, whichever wins.
pub(crate) fn event_return_vs_pool_drop() {
    let (dev, census) = model_device(1, Policy::Shared);
    let lease = dev.lease().expect("lease");
    let ev = lease.record().expect("record");
    lane_of(&lease).drain();
    drop(lease);
    let t = thread::spawn(move || {
        assert!(ev.query().expect("query"));
        drop(ev);
    });
    drop(dev);
    t.join().expect("event holder");
    assert_eq!(census.events_created.load(Ordering::Acquire), 1);
    assert_eq!(
        census.events_dropped.load(Ordering::Acquire),
        1,
        "event destroyed once"
    );
}

/// (d) A completion callback runs (on the model device's thread) while the device
/// shuts down: it runs exactly once, touches only what it owns, and shutdown either
/// sees it finish or reports it pending.
pub(crate) fn callback_vs_shutdown() {
    let (dev, census) = model_device(1, Policy::Shared);
    let lease = dev.lease().expect("lease");
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let payload = vec![1u8, 2, 3];
    lease
        .on_complete(move || {
            assert_eq!(payload.len(), 3);
            r.fetch_add(1, Ordering::AcqRel);
        })
        .expect("enqueue");
    let gpu = thread::spawn(move || {
        lane_of(&lease).drain();
        drop(lease);
    });
    match dev.shutdown(Duration::from_millis(50)) {
        Ok(report) => assert_eq!(report.callbacks_pending, 0),
        Err(Error::ShutdownTimedOut { pending: 1, .. }) => {}
        Err(e) => panic!("unexpected shutdown error: {e}"),
    }
    gpu.join().expect("gpu");
    assert_eq!(ran.load(Ordering::Acquire), 1, "callback ran exactly once");
    assert_eq!(
        census.lanes_dropped.load(Ordering::Acquire),
        census.lanes_created.load(Ordering::Acquire)
    );
}

/// One lane's graph work: capture key 1, launch it, capture key 2 (evicting key 1
/// from a one-graph cache while this thread still holds it), look key 2 up again,
/// release the lane, then drop the graphs.
fn graph_worker(dev: Device) {
    let lease = dev.lease().expect("lease");
    let capture = |l: &crate::Lease| Ok(vec![l.alloc(512)?]);
    let g1 = lease
        .graph(1, capture)
        .expect("graph 1")
        .expect("graphs on");
    g1.launch(&lease).expect("launch 1");
    let g2 = lease
        .graph(2, capture)
        .expect("graph 2")
        .expect("graphs on");
    let again = lease.graph(2, capture).expect("lookup").expect("graphs on");
    again.launch(&lease).expect("launch 2");
    assert_eq!(g2.buffers().len(), 1);
    drop(lease);
    drop((g1, g2, again));
}

/// Checks that every graph was destroyed exactly once and every byte went back.
fn check_graphs_freed(census: &Census) {
    assert_eq!(
        census.graphs_dropped.load(Ordering::Acquire),
        census.graphs_created.load(Ordering::Acquire),
        "every captured graph destroyed exactly once"
    );
    assert_eq!(
        census.bytes_out.load(Ordering::Acquire),
        0,
        "no block leaked"
    );
    assert_eq!(
        census.lanes_dropped.load(Ordering::Acquire),
        census.lanes_created.load(Ordering::Acquire)
    );
}

/// (e) The graph cache's insert/evict/lookup on one lane races a `clear_graphs`
/// (what dropping a lane's graphs does) on another thread: no graph is freed twice
/// or used after free, no block is lost or double freed (the allocator would count
/// a free error), and once the cache is cleared the allocator is at its baseline.
pub(crate) fn graph_cache_vs_clear() {
    let (dev, census) = model_device(
        1,
        Policy::Exclusive {
            wait: Wait::Forever,
        },
    );
    dev.set_graph_cache_capacity(1);
    let (d1, d2) = (dev.clone(), dev.clone());
    let worker = thread::spawn(move || graph_worker(d1));
    let clearer = thread::spawn(move || {
        d2.clear_graphs();
        drop(d2);
    });
    worker.join().expect("worker");
    clearer.join().expect("clearer");
    assert!(dev.stats().graphs_cached <= 1);
    dev.clear_graphs();
    let s = dev.stats();
    assert_eq!((s.alloc.allocated_bytes, s.alloc.free_errors), (0, 0));
    drop(dev);
    check_graphs_freed(&census);
}

/// (f) The device handle is dropped while a thread works with the lane's graph
/// cache and then releases its lane: whichever lets go last frees the device, and
/// with it the cached graphs and their blocks, exactly once.
pub(crate) fn graph_cache_vs_device_drop() {
    let (dev, census) = model_device(
        1,
        Policy::Exclusive {
            wait: Wait::Forever,
        },
    );
    dev.set_graph_cache_capacity(1);
    let d1 = dev.clone();
    let worker = thread::spawn(move || graph_worker(d1));
    drop(dev);
    worker.join().expect("worker");
    check_graphs_freed(&census);
}

#[cfg(lanes_loom)]
mod loom_models {
    use crate::sync::check_model as model;

    #[test]
    fn loom_lease_exhaustion_two_threads() {
        model(|| super::lease_exhaustion(2));
    }

    #[test]
    fn loom_lease_exhaustion_three_threads() {
        model(|| super::lease_exhaustion(3));
    }

    #[test]
    fn loom_thread_exit_vs_device_drop() {
        model(super::thread_exit_vs_drop);
    }

    #[test]
    fn loom_event_return_vs_pool_drop() {
        model(super::event_return_vs_pool_drop);
    }

    #[test]
    fn loom_callback_vs_shutdown() {
        model(super::callback_vs_shutdown);
    }

    #[test]
    fn loom_graph_cache_vs_clear() {
        model(super::graph_cache_vs_clear);
    }

    #[test]
    fn loom_graph_cache_vs_device_drop() {
        model(super::graph_cache_vs_device_drop);
    }
}

#[cfg(all(lanes_shuttle, not(lanes_loom)))]
mod shuttle_models {
    const ITER: usize = 2000;

    fn both(f: fn()) {
        shuttle::check_random(f, ITER);
        shuttle::check_pct(f, ITER, 3);
    }

    #[test]
    fn shuttle_lease_exhaustion_six_threads() {
        both(|| super::lease_exhaustion(6));
    }

    #[test]
    fn shuttle_thread_exit_vs_device_drop() {
        // PCT's scheduler rejects this scenario's first execution as having no
        // concurrency (shuttle-schedulers 0.1.1, pct.rs:79); random schedules run it.
        shuttle::check_random(super::thread_exit_vs_drop, ITER);
    }

    #[test]
    fn shuttle_event_return_vs_pool_drop() {
        both(super::event_return_vs_pool_drop);
    }

    #[test]
    fn shuttle_callback_vs_shutdown() {
        both(super::callback_vs_shutdown);
    }

    #[test]
    fn shuttle_graph_cache_vs_clear() {
        both(super::graph_cache_vs_clear);
    }

    #[test]
    fn shuttle_graph_cache_vs_device_drop() {
        // As `shuttle_thread_exit_vs_device_drop`: PCT rejects the first execution
        // as having no concurrency; random schedules run it.
        shuttle::check_random(super::graph_cache_vs_device_drop, ITER);
    }
}
