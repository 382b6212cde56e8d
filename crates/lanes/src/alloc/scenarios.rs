//! Model-checked scenarios of the allocator's deferred free.
//!
//! Property: a block freed with a pending marker is never handed out (by its own
//! lane's cache, or after its segment went back to the backend and came out again
//! for another lane) before that marker is done; and everything adds up afterwards.
//!
//! - loom (`--cfg lanes_loom`): tiny scenarios, every interleaving up to
//!   `LOOM_MAX_PREEMPTIONS` (tests `loom_*`).
//! - shuttle (`--cfg lanes_shuttle`): a bigger one, random and PCT schedules
//!   (tests `shuttle_*`).
//!
//! ```text
//! RUSTFLAGS="--cfg lanes_loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 \
//!   cargo test --release -p lanes --no-default-features --lib loom_
//! RUSTFLAGS="--cfg lanes_shuttle" CARGO_TARGET_DIR=target/shuttle \
//!   cargo test --release -p lanes --no-default-features --lib shuttle_
//! ```

use std::any::Any;

use super::{AllocConfig, Allocator, PendingUse};
use crate::backend::{Backend, DeviceKind, DevicePtr, MemInfo, RawEvent, RawLane};
use crate::sync::{lock, spin_wait, thread, Arc, AtomicBool, Mutex, Ordering};
use crate::{Error, Result};

const MIB: usize = 1 << 20;

/// A marker completed by a model thread.
#[derive(Clone)]
struct Flag(Arc<AtomicBool>);

impl Flag {
    fn new() -> Self {
        Flag(Arc::new(AtomicBool::new(false)))
    }
    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl PendingUse for Flag {
    fn is_done(&self) -> Result<bool> {
        Ok(self.is_set())
    }
    fn wait(&self) -> Result<()> {
        while !self.is_set() {
            spin_wait();
        }
        Ok(())
    }
}

/// A backend that only hands out address ranges, reusing freed ones (so a released
/// segment's memory can come back to another lane) and counting bytes in use.
struct ModelMemory {
    state: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    next: u64,
    free: Vec<(u64, usize)>,
    in_use: usize,
}

/// Builds the façade's `Arc` from a std one, whichever `Arc` the façade uses under
/// the model checker (loom's cannot coerce to a trait object by itself).
trait FromStd<T: ?Sized> {
    fn from_std(a: std::sync::Arc<T>) -> Self;
}

impl<T: ?Sized> FromStd<T> for std::sync::Arc<T> {
    fn from_std(a: std::sync::Arc<T>) -> Self {
        a
    }
}

#[cfg(lanes_loom)]
impl<T: ?Sized> FromStd<T> for loom::sync::Arc<T> {
    fn from_std(a: std::sync::Arc<T>) -> Self {
        loom::sync::Arc::from_std(a)
    }
}

impl ModelMemory {
    fn new() -> (Arc<ModelMemory>, Arc<dyn Backend>) {
        let mem = std::sync::Arc::new(ModelMemory {
            state: Mutex::new(MemState::default()),
        });
        let backend: std::sync::Arc<dyn Backend> = mem.clone();
        (FromStd::from_std(mem), FromStd::from_std(backend))
    }

    fn in_use(&self) -> usize {
        lock(&self.state).in_use
    }
}

impl Backend for ModelMemory {
    fn kind(&self) -> DeviceKind {
        DeviceKind::Cpu
    }
    fn create_lane(&self, _index: usize) -> Result<Box<dyn RawLane>> {
        Err(Error::InvalidArgument("model memory has no lanes".into()))
    }
    fn create_event(&self) -> Result<Box<dyn RawEvent>> {
        Err(Error::InvalidArgument("model memory has no events".into()))
    }
    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        let mut st = lock(&self.state);
        st.in_use += bytes;
        if let Some(i) = st.free.iter().position(|&(_, n)| n == bytes) {
            return Ok(DevicePtr(st.free.swap_remove(i).0));
        }
        let at = 0x1000_0000 + st.next;
        st.next += bytes as u64;
        Ok(DevicePtr(at))
    }
    unsafe fn free(&self, ptr: DevicePtr, bytes: usize) {
        let mut st = lock(&self.state);
        st.in_use -= bytes;
        st.free.push((ptr.0, bytes));
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

fn overlaps(a: (u64, usize), b: (u64, usize)) -> bool {
    a.0 < b.0 + b.1 as u64 && b.0 < a.0 + a.1 as u64
}

fn limited(backend: Arc<dyn Backend>, lanes: usize, limit: usize) -> Arc<Allocator> {
    Arc::new(Allocator::new(
        backend,
        lanes,
        AllocConfig {
            limit: Some(limit),
            ..Default::default()
        },
    ))
}

/// Thread 1 frees block B (1 MiB of the lane's only 2 MiB segment; the other half is
/// live) with a pending marker; thread 2 allocates 1 MiB on the same lane, which can
/// only be B: from the cache once the marker is done, or through the out-of-memory
/// path (the 2 MiB limit refuses a second segment), which waits for the marker.
/// Main completes the marker.
fn parked_block_vs_same_lane_alloc() {
    let (mem, backend) = ModelMemory::new();
    let alloc = limited(backend, 2, 2 * MIB);
    let b = alloc.alloc(0, MIB).unwrap();
    let c = alloc.alloc(0, MIB).unwrap();
    let b_addr = b.ptr();
    let flag = Flag::new();

    let (a1, f1) = (alloc.clone(), flag.clone());
    let t1 = thread::spawn(move || a1.free(b, vec![Box::new(f1)]).unwrap());
    let (a2, f2) = (alloc.clone(), flag.clone());
    let t2 = thread::spawn(move || match a2.alloc(0, MIB) {
        Ok(blk) => {
            assert_eq!(blk.ptr(), b_addr, "only B fits");
            assert!(f2.is_set(), "B handed out while its marker was pending");
            a2.free(blk, Vec::new()).unwrap();
        }
        Err(Error::OutOfMemory { .. }) => {}
        Err(e) => panic!("unexpected error: {e}"),
    });
    flag.set();
    t1.join().unwrap();
    t2.join().unwrap();
    alloc.free(c, Vec::new()).unwrap();
    assert_eq!(alloc.stats().allocated_bytes, 0);
    alloc.empty_cache();
    assert_eq!(mem.in_use(), 0);
}

/// Thread 1 frees B (the only live block of lane 0's segment) with a pending marker;
/// thread 2 allocates on lane 1, which needs a segment that the 2 MiB limit refuses:
/// the out-of-memory path waits for the marker, releases lane 0's segment and
/// retries. The model backend hands the freed range out again, so thread 2 may get
/// B's memory, but only after the marker is done.
fn parked_block_vs_other_lane_oom_reclaim() {
    let (mem, backend) = ModelMemory::new();
    let alloc = limited(backend, 2, 2 * MIB);
    let b = alloc.alloc(0, MIB).unwrap();
    let b_range = (b.ptr().0, b.size());
    let flag = Flag::new();

    let (a1, f1) = (alloc.clone(), flag.clone());
    let t1 = thread::spawn(move || a1.free(b, vec![Box::new(f1)]).unwrap());
    let (a2, f2) = (alloc.clone(), flag.clone());
    let t2 = thread::spawn(move || match a2.alloc(1, MIB) {
        Ok(blk) => {
            if overlaps((blk.ptr().0, blk.size()), b_range) {
                assert!(
                    f2.is_set(),
                    "B's memory reused while its marker was pending"
                );
            }
            a2.free(blk, Vec::new()).unwrap();
        }
        Err(Error::OutOfMemory { .. }) => {}
        Err(e) => panic!("unexpected error: {e}"),
    });
    flag.set();
    t1.join().unwrap();
    t2.join().unwrap();
    let s = alloc.stats();
    assert_eq!((s.allocated_bytes, s.active_blocks), (0, 0));
    alloc.empty_cache();
    let s = alloc.stats();
    assert_eq!((s.reserved_bytes, s.segments, s.deferred_blocks), (0, 0, 0));
    assert_eq!(mem.in_use(), 0);
}

#[cfg(lanes_loom)]
mod loom_models {
    use crate::sync::check_model as model;

    #[test]
    fn loom_alloc_parked_block_vs_same_lane_alloc() {
        model(super::parked_block_vs_same_lane_alloc);
    }

    #[test]
    fn loom_alloc_parked_block_vs_other_lane_oom_reclaim() {
        model(super::parked_block_vs_other_lane_oom_reclaim);
    }
}

#[cfg(all(lanes_shuttle, not(lanes_loom)))]
mod shuttle_models {
    use super::*;
    use crate::alloc::{Buffer, BufferOwner};

    /// A device stand-in: markers go to a queue that a "device" thread completes.
    /// Worker `w` only ever marks lane `w + 1`, so the marker for lane `l` belongs to
    /// the block worker `l - 1` is dropping: it is entered in the ledger as parked
    /// before the allocator sees the free.
    struct Owner {
        alloc: Allocator,
        queue: Mutex<Vec<Flag>>,
        ledger: Mutex<Ledger>,
    }

    impl BufferOwner for Owner {
        fn allocator(&self) -> &Allocator {
            &self.alloc
        }
        fn pending_on(&self, lane: usize) -> Result<Box<dyn PendingUse>> {
            let f = Flag::new();
            let worker = (lane + WORKERS - 1) % WORKERS;
            let mut l = lock(&self.ledger);
            let r = l.dropping[worker].expect("the worker announced its drop");
            l.parked.push((r, f.clone()));
            drop(l);
            lock(&self.queue).push(f.clone());
            Ok(Box::new(f))
        }
    }

    /// What the workers hold or parked, to check every hand-out against.
    #[derive(Default)]
    struct Ledger {
        live: Vec<(u64, usize)>,
        parked: Vec<((u64, usize), Flag)>,
        dropping: [Option<(u64, usize)>; WORKERS],
    }

    const WORKERS: usize = 3;

    /// Three workers on lanes 0..3 allocate buffers of mixed sizes under a limit of
    /// three small segments, let a neighbour lane "use" some of them, and drop them;
    /// a device thread completes the markers. Every hand-out is checked against the
    /// live blocks and the parked ones whose markers are pending.
    fn three_lanes_with_device() {
        let (mem, backend) = ModelMemory::new();
        let owner = Arc::new(Owner {
            alloc: Allocator::new(
                backend,
                WORKERS,
                AllocConfig {
                    limit: Some(6 * MIB),
                    ..Default::default()
                },
            ),
            queue: Mutex::new(Vec::new()),
            ledger: Mutex::new(Ledger::default()),
        });
        let done = Arc::new(AtomicBool::new(false));

        let device = {
            let (owner, done) = (owner.clone(), done.clone());
            thread::spawn(move || loop {
                // Read `done` before draining: every marker was queued before it was
                // set, so a drain after seeing it set is the last one needed.
                let finished = done.load(Ordering::Acquire);
                let batch = std::mem::take(&mut *lock(&owner.queue));
                batch.iter().for_each(Flag::set);
                if finished && batch.is_empty() {
                    return;
                }
                thread::yield_now();
            })
        };
        let workers: Vec<_> = (0..WORKERS)
            .map(|lane| {
                let owner = owner.clone();
                thread::spawn(move || {
                    let dyn_owner: Arc<dyn BufferOwner> = owner.clone();
                    let mut held: Vec<Buffer> = Vec::new();
                    for i in 0..4 {
                        let bytes = [MIB, 300 << 10, 700 << 10, 4096][(lane + i) % 4];
                        match Buffer::alloc(dyn_owner.clone(), lane, bytes) {
                            Ok(buf) => {
                                let r = (buf.ptr().0, buf.capacity());
                                let mut l = lock(&owner.ledger);
                                assert!(
                                    !l.live.iter().any(|&x| overlaps(x, r)),
                                    "overlaps a live block"
                                );
                                for (p, flag) in &l.parked {
                                    assert!(
                                        !overlaps(*p, r) || flag.is_set(),
                                        "parked block reused early"
                                    );
                                }
                                l.parked.retain(|(p, _)| !overlaps(*p, r));
                                l.live.push(r);
                                drop(l);
                                if i % 2 == 0 {
                                    buf.record_use((lane + 1) % WORKERS);
                                }
                                held.push(buf);
                            }
                            Err(Error::OutOfMemory { .. }) => {}
                            Err(e) => panic!("unexpected error: {e}"),
                        }
                        if held.len() >= 2 || i == 3 {
                            for buf in held.drain(..) {
                                let r = (buf.ptr().0, buf.capacity());
                                let mut l = lock(&owner.ledger);
                                l.live.retain(|&x| x != r);
                                l.dropping[lane] = Some(r);
                                drop(l);
                                drop(buf);
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Release);
        device.join().unwrap();
        let s = owner.alloc.stats();
        assert_eq!(
            (s.allocated_bytes, s.active_blocks, s.free_errors),
            (0, 0, 0),
            "{s}"
        );
        owner.alloc.empty_cache();
        let s = owner.alloc.stats();
        assert_eq!(
            (s.reserved_bytes, s.segments, s.deferred_blocks),
            (0, 0, 0),
            "{s}"
        );
        assert_eq!(mem.in_use(), 0);
    }

    const ITER: usize = 2000;

    fn both(f: fn()) {
        shuttle::check_random(f, ITER);
        shuttle::check_pct(f, ITER, 3);
    }

    #[test]
    fn shuttle_alloc_parked_block_vs_same_lane_alloc() {
        both(parked_block_vs_same_lane_alloc);
    }

    #[test]
    fn shuttle_alloc_parked_block_vs_other_lane_oom_reclaim() {
        both(parked_block_vs_other_lane_oom_reclaim);
    }

    #[test]
    fn shuttle_alloc_three_lanes_with_device() {
        both(three_lanes_with_device);
    }
}
