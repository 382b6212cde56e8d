//! The caching allocator's behaviour, one rule per test: rounding and size classes,
//! split/merge and best fit, home lanes, parked frees, generations, stats, snapshot,
//! and the `Buffer` RAII handle.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lanes::alloc::{
    AllocConfig, Allocator, BlockState, Buffer, BufferOwner, PendingUse, SegmentInfo,
};
use lanes::backend::host::HostBackend;
use lanes::{Error, Result};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn host(lanes: usize) -> (Arc<HostBackend>, Allocator) {
    let backend = Arc::new(HostBackend::new());
    let alloc = Allocator::new(backend.clone(), lanes, AllocConfig::default());
    (backend, alloc)
}

/// A marker completed by the test.
#[derive(Clone, Default)]
struct Flag(Arc<AtomicBool>);

impl Flag {
    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl PendingUse for Flag {
    fn is_done(&self) -> Result<bool> {
        Ok(self.0.load(Ordering::Acquire))
    }
    fn wait(&self) -> Result<()> {
        // The "device" finishes as soon as someone waits.
        self.set();
        Ok(())
    }
}

fn states(seg: &SegmentInfo) -> Vec<(usize, usize, BlockState)> {
    seg.blocks
        .iter()
        .map(|b| (b.offset, b.size, b.state))
        .collect()
}

#[test]
fn requests_round_up_to_512_bytes() {
    let (_, a) = host(1);
    for (req, size) in [(0, 512), (1, 512), (512, 512), (513, 1024), (1000, 1024)] {
        let b = a.alloc(0, req).unwrap();
        assert_eq!((b.requested(), b.size()), (req, size));
        a.free(b, Vec::new()).unwrap();
    }
}

#[test]
fn size_classes_pick_the_segment_size() {
    for (req, seg) in [
        (4 * KIB, 2 * MIB),
        (MIB, 2 * MIB),
        (MIB + 1, 20 * MIB),
        (10 * MIB, 20 * MIB),
        (10 * MIB + 1, 12 * MIB),
        (25 * MIB, 26 * MIB),
    ] {
        let (backend, a) = host(1);
        let b = a.alloc(0, req).unwrap();
        let snap = a.snapshot();
        assert_eq!(snap.len(), 1, "one segment for {req}");
        assert_eq!(snap[0].size, seg, "segment for a request of {req}");
        assert_eq!(backend.bytes_in_use(), seg);
        a.free(b, Vec::new()).unwrap();
    }
}

#[test]
fn blocks_split_and_merge_within_a_segment() {
    let (_, a) = host(1);
    let x = a.alloc(0, 4 * KIB).unwrap();
    let y = a.alloc(0, 8 * KIB).unwrap();
    let z = a.alloc(0, 4 * KIB).unwrap();
    assert_eq!(y.ptr(), x.ptr().offset(4 * KIB));
    assert_eq!(z.ptr(), y.ptr().offset(8 * KIB));
    let rest = 2 * MIB - 16 * KIB;
    use BlockState::*;
    a.free(y, Vec::new()).unwrap();
    let snap = a.snapshot();
    assert_eq!(
        states(&snap[0]),
        [
            (0, 4 * KIB, Live),
            (4 * KIB, 8 * KIB, Free),
            (12 * KIB, 4 * KIB, Live),
            (16 * KIB, rest, Free)
        ]
    );
    a.free(x, Vec::new()).unwrap(); // merges with the free block after it
    assert_eq!(
        states(&a.snapshot()[0]),
        [
            (0, 12 * KIB, Free),
            (12 * KIB, 4 * KIB, Live),
            (16 * KIB, rest, Free)
        ]
    );
    a.free(z, Vec::new()).unwrap(); // merges with both neighbours
    assert_eq!(states(&a.snapshot()[0]), [(0, 2 * MIB, Free)]);
}

#[test]
fn best_fit_takes_the_smallest_adequate_block_lowest_address_first() {
    let (_, a) = host(1);
    let blocks: Vec<_> = [8, 1, 4, 1, 4, 1]
        .iter()
        .map(|k| a.alloc(0, k * KIB).unwrap())
        .collect();
    let addr: Vec<_> = blocks.iter().map(|b| b.ptr()).collect();
    let mut it = blocks.into_iter();
    let (b8, k1, b4a, k2, b4b, k3) = (
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
    );
    for b in [b8, b4a, b4b] {
        a.free(b, Vec::new()).unwrap();
    }
    // Holes: 8 KiB at addr[0], 4 KiB at addr[2] and addr[4], and the segment's tail.
    let got = a.alloc(0, 3 * KIB).unwrap();
    assert_eq!(got.ptr(), addr[2], "smallest hole, lowest address");
    let got2 = a.alloc(0, 4 * KIB).unwrap();
    assert_eq!(got2.ptr(), addr[4]);
    let got3 = a.alloc(0, 5 * KIB).unwrap();
    assert_eq!(got3.ptr(), addr[0]);
    for b in [k1, k2, k3, got, got2, got3] {
        a.free(b, Vec::new()).unwrap();
    }
    assert_eq!(a.stats().allocated_bytes, 0);
}

#[test]
fn small_requests_never_come_from_large_segments() {
    let (_, a) = host(1);
    let big = a.alloc(0, 2 * MIB).unwrap(); // 20 MiB segment
    let small = a.alloc(0, 4 * KIB).unwrap(); // needs its own 2 MiB segment
    let snap = a.snapshot();
    assert_eq!(snap.len(), 2);
    assert!(snap.iter().any(|s| s.size == 2 * MIB));
    a.free(big, Vec::new()).unwrap();
    a.free(small, Vec::new()).unwrap();
}

#[test]
fn a_freed_block_is_reused_on_its_home_lane_only() {
    let (_, a) = host(2);
    let x = a.alloc(0, 64 * KIB).unwrap();
    let addr = x.ptr();
    a.free(x, Vec::new()).unwrap();
    let y = a.alloc(1, 64 * KIB).unwrap();
    assert_ne!(y.ptr(), addr, "lane 1 must not take lane 0's cached block");
    assert_eq!(a.snapshot().len(), 2, "lane 1 got a segment of its own");
    let z = a.alloc(0, 64 * KIB).unwrap();
    assert_eq!(z.ptr(), addr);
    assert_eq!((y.lane(), z.lane()), (1, 0));
    let s = a.stats();
    assert_eq!((s.cache_hits, s.cache_misses), (1, 2));
    a.free(y, Vec::new()).unwrap();
    a.free(z, Vec::new()).unwrap();
}

#[test]
fn a_parked_block_waits_for_its_markers() {
    let (_, a) = host(2);
    let x = a.alloc(0, 64 * KIB).unwrap();
    let addr = x.ptr();
    let (m1, m2) = (Flag::default(), Flag::default());
    a.free(x, vec![Box::new(m1.clone()), Box::new(m2.clone())])
        .unwrap();
    let s = a.stats();
    assert_eq!(
        (s.allocated_bytes, s.active_blocks, s.deferred_blocks),
        (0, 0, 1)
    );
    assert_eq!(a.snapshot()[0].blocks[0].state, BlockState::Deferred);

    let y = a.alloc(0, 64 * KIB).unwrap();
    assert_ne!(y.ptr(), addr, "handed out while both markers were pending");
    m1.set();
    let z = a.alloc(0, 64 * KIB).unwrap();
    assert_ne!(z.ptr(), addr, "handed out while one marker was pending");
    m2.set();
    let w = a.alloc(0, 64 * KIB).unwrap();
    assert_eq!(w.ptr(), addr, "reused once every marker is done");
    assert_eq!(a.stats().deferred_blocks, 0);
    for b in [y, z, w] {
        a.free(b, Vec::new()).unwrap();
    }
}

#[test]
fn empty_cache_waits_for_parked_blocks_and_releases_segments() {
    let (backend, a) = host(2);
    let x = a.alloc(0, 64 * KIB).unwrap();
    let y = a.alloc(1, 3 * MIB).unwrap();
    a.free(x, vec![Box::new(Flag::default())]).unwrap();
    assert_eq!(a.empty_cache(), 2 * MIB, "lane 0's segment, after waiting");
    assert_eq!(
        backend.bytes_in_use(),
        20 * MIB,
        "lane 1's live block stays"
    );
    a.free(y, Vec::new()).unwrap();
    assert_eq!(a.empty_cache(), 20 * MIB);
    assert_eq!(backend.bytes_in_use(), 0);
    let s = a.stats();
    assert_eq!(
        (
            s.reserved_bytes,
            s.segments,
            s.backend_allocs,
            s.backend_frees
        ),
        (0, 0, 2, 2)
    );
}

#[test]
fn a_stale_block_id_never_resolves_to_the_new_owner() {
    let (_, a) = host(1);
    let x = a.alloc(0, 4 * KIB).unwrap();
    let old = x.id();
    assert_eq!(a.resolve(old).unwrap(), (x.ptr(), 4 * KIB));
    let addr = x.ptr();
    a.free(x, Vec::new()).unwrap();
    let y = a.alloc(0, 4 * KIB).unwrap();
    assert_eq!(y.ptr(), addr, "same memory, new owner");
    assert_ne!(y.id(), old);
    match a.resolve(old) {
        Err(Error::StaleBuffer(msg)) => assert!(msg.contains("was freed"), "{msg}"),
        other => panic!("expected StaleBuffer, got {other:?}"),
    }
    assert!(a.resolve(y.id()).is_ok());
    a.free(y, Vec::new()).unwrap();
}

#[test]
fn a_block_of_another_allocator_is_refused_untouched() {
    let (_, a) = host(1);
    let (_, b) = host(1);
    let x = a.alloc(0, 4 * KIB).unwrap();
    let y = b.alloc(0, 4 * KIB).unwrap();
    assert!(matches!(b.resolve(x.id()), Err(Error::StaleBuffer(_))));
    assert!(matches!(b.free(x, Vec::new()), Err(Error::StaleBuffer(_))));
    assert_eq!(a.stats().active_blocks, 1, "a's block was not touched");
    assert_eq!(b.stats().active_blocks, 1, "b's own block was not touched");
    b.free(y, Vec::new()).unwrap();
}

#[test]
fn stats_count_hits_misses_and_peak() {
    let (_, a) = host(1);
    let x = a.alloc(0, 100 * KIB).unwrap();
    let y = a.alloc(0, 200 * KIB).unwrap();
    a.free(x, Vec::new()).unwrap();
    let z = a.alloc(0, 50 * KIB).unwrap();
    let s = a.stats();
    assert_eq!(s.allocated_bytes, 250 * KIB);
    assert_eq!(s.peak_allocated, 300 * KIB);
    assert_eq!((s.cache_hits, s.cache_misses), (2, 1));
    assert_eq!(
        (s.active_blocks, s.segments, s.reserved_bytes),
        (2, 1, 2 * MIB)
    );
    assert_eq!(s.limit, None);
    a.free(y, Vec::new()).unwrap();
    a.free(z, Vec::new()).unwrap();
    assert_eq!(a.stats().allocated_bytes, 0);
    assert!(a.stats().to_string().contains("peak 307200 B"));
}

#[test]
fn an_unknown_lane_is_an_error() {
    let (_, a) = host(2);
    match a.alloc(2, 16) {
        Err(Error::NoSuchLane {
            lane: 2, lanes: 2, ..
        }) => {}
        other => panic!("expected NoSuchLane, got {other:?}"),
    }
}

#[test]
#[should_panic(expected = "1 to 64 lanes")]
fn more_than_64_lanes_is_refused() {
    let _ = host(65);
}

/// A device stand-in for `Buffer`: counts the markers it records.
struct Owner {
    alloc: Allocator,
    recorded: Mutex<Vec<(usize, Flag)>>,
    fail_on: Option<usize>,
}

impl Owner {
    fn new(lanes: usize, fail_on: Option<usize>) -> (Arc<HostBackend>, Arc<Owner>) {
        let (backend, alloc) = host(lanes);
        let owner = Owner {
            alloc,
            recorded: Mutex::new(Vec::new()),
            fail_on,
        };
        (backend, Arc::new(owner))
    }
}

impl BufferOwner for Owner {
    fn allocator(&self) -> &Allocator {
        &self.alloc
    }
    fn pending_on(&self, lane: usize) -> Result<Box<dyn PendingUse>> {
        if self.fail_on == Some(lane) {
            return Err(Error::InvalidArgument(format!("lane {lane} is broken")));
        }
        let f = Flag::default();
        self.recorded.lock().unwrap().push((lane, f.clone()));
        Ok(Box::new(f))
    }
}

#[test]
fn a_buffer_frees_into_its_home_lane_on_drop() {
    let (_, owner) = Owner::new(2, None);
    let buf = Buffer::alloc(owner.clone(), 1, 1000).unwrap();
    assert_eq!(
        (buf.len(), buf.capacity(), buf.lane(), buf.uses()),
        (1000, 1024, 1, 0)
    );
    buf.record_use(1); // the home lane needs no marker
    buf.record_use(64); // no such lane: ignored
    assert_eq!(buf.uses(), 0);
    let addr = buf.ptr();
    drop(buf);
    assert!(owner.recorded.lock().unwrap().is_empty());
    assert_eq!(owner.alloc.stats().allocated_bytes, 0);
    let again = Buffer::alloc(owner.clone(), 1, 1000).unwrap();
    assert_eq!(again.ptr(), addr);
}

#[test]
fn a_buffer_used_on_other_lanes_records_a_marker_for_each() {
    let (_, owner) = Owner::new(3, None);
    let buf = Buffer::alloc(owner.clone(), 0, 4096).unwrap();
    let addr = buf.ptr();
    buf.record_use(2);
    buf.record_use(1);
    buf.record_use(2);
    assert_eq!(buf.uses(), 0b110);
    drop(buf);
    let lanes: Vec<usize> = owner
        .recorded
        .lock()
        .unwrap()
        .iter()
        .map(|(l, _)| *l)
        .collect();
    assert_eq!(lanes, [1, 2]);
    assert_eq!(owner.alloc.stats().deferred_blocks, 1);
    let other = Buffer::alloc(owner.clone(), 0, 4096).unwrap();
    assert_ne!(other.ptr(), addr);
    for (_, f) in owner.recorded.lock().unwrap().iter() {
        f.set();
    }
    let reused = Buffer::alloc(owner.clone(), 0, 4096).unwrap();
    assert_eq!(reused.ptr(), addr);
}

#[test]
fn a_marker_that_cannot_be_recorded_parks_the_block_for_good() {
    let (backend, owner) = Owner::new(3, Some(2));
    let buf = Buffer::alloc(owner.clone(), 0, 4096).unwrap();
    buf.record_use(1);
    buf.record_use(2);
    drop(buf); // must not panic
    let s = owner.alloc.stats();
    assert_eq!(
        (s.free_errors, s.deferred_blocks, s.allocated_bytes),
        (1, 1, 0)
    );
    // Even a forced reclaim keeps it: lane 2 may still be using it.
    assert_eq!(owner.alloc.empty_cache(), 0);
    assert_eq!(owner.alloc.stats().deferred_blocks, 1);
    assert_eq!(backend.bytes_in_use(), 2 * MIB);

    let buf = Buffer::alloc(owner.clone(), 1, 4096).unwrap();
    buf.record_use(2);
    match buf.free() {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("lane 2 is broken")),
        other => panic!("explicit free should report the error, got {other:?}"),
    }
}

#[test]
fn buffers_know_their_owner() {
    let (_, a) = Owner::new(1, None);
    let (_, b) = Owner::new(1, None);
    let buf = Buffer::alloc(a.clone(), 0, 10).unwrap();
    assert!(buf.belongs_to(&*a));
    assert!(!buf.belongs_to(&*b));
}

#[test]
fn a_release_fence_runs_before_segments_go_back() {
    let backend = Arc::new(HostBackend::new());
    let fenced = Arc::new(AtomicUsize::new(0));
    let refuse = Arc::new(AtomicBool::new(true));
    let (f, r) = (fenced.clone(), refuse.clone());
    let a = Allocator::with_release_fence(
        backend.clone(),
        2,
        AllocConfig::default(),
        Box::new(move |lane| {
            f.fetch_add(1 << (8 * lane), Ordering::SeqCst);
            if r.load(Ordering::SeqCst) {
                Err(Error::InvalidArgument("lane busy".into()))
            } else {
                Ok(())
            }
        }),
    );
    let x = a.alloc(1, 100).unwrap();
    a.free(x, Vec::new()).unwrap();
    assert_eq!(a.empty_cache(), 0, "a failing fence keeps the segment");
    assert_eq!(fenced.load(Ordering::SeqCst), 1 << 8, "fenced lane 1 only");
    assert_eq!(a.stats().segments, 1);
    let y = a.alloc(1, 100).unwrap(); // the kept segment still serves
    a.free(y, Vec::new()).unwrap();
    refuse.store(false, Ordering::SeqCst);
    assert_eq!(a.empty_cache(), 2 * MIB);
    assert_eq!(backend.bytes_in_use(), 0);
}

#[test]
fn peak_is_the_sum_of_lane_high_water_marks() {
    let (_, a) = host(2);
    let x = a.alloc(0, 100 * KIB).unwrap();
    a.free(x, Vec::new()).unwrap();
    let y = a.alloc(1, 200 * KIB).unwrap();
    let s = a.stats();
    // The lanes peaked at different times: the sum bounds the true peak (200 KiB).
    assert_eq!(
        (s.allocated_bytes, s.peak_allocated),
        (200 * KIB, 300 * KIB)
    );
    a.free(y, Vec::new()).unwrap();
    let s = a.stats();
    assert_eq!((s.allocated_bytes, s.peak_allocated), (0, 300 * KIB));
}

#[test]
fn a_lease_buffer_outlives_its_lease_without_holding_the_lane() {
    use lanes::{Device, DeviceConfig, Policy, Wait};
    let backend = Arc::new(HostBackend::new());
    let config = DeviceConfig {
        lanes: 1,
        policy: Policy::Exclusive { wait: Wait::NoWait },
        ..Default::default()
    };
    let dev = Device::new(backend.clone(), config).unwrap();
    let lane = dev.lease().unwrap();
    let buf = lane.alloc(4 * KIB).unwrap();
    drop(lane);
    // The buffer does not keep the lane leased: it can be leased again, and the
    // new lease accepts the buffer (same device, same allocator).
    assert_eq!(dev.stats().leases_outstanding, 0);
    let lane = dev.lease().unwrap();
    lane.upload(&buf, &[3u8; 16]).unwrap();
    let mut back = [0u8; 16];
    lane.download(&buf, &mut back).unwrap();
    assert_eq!(back, [3u8; 16]);
    drop(lane);
    // ... and it keeps the device (its allocator) alive after every handle is gone:
    // the segment goes back to the backend only when the buffer does.
    drop(dev);
    assert_eq!(backend.bytes_in_use(), 2 * MIB);
    drop(buf);
    assert_eq!(backend.bytes_in_use(), 0);

    // A buffer of another device is refused.
    let other = Device::cpu(DeviceConfig::default()).unwrap();
    let theirs = other.lease().unwrap().alloc(64).unwrap();
    let dev = Device::cpu(DeviceConfig::default()).unwrap();
    let lane = dev.lease().unwrap();
    assert!(matches!(
        lane.upload(&theirs, &[0u8; 8]),
        Err(Error::StaleBuffer(_))
    ));
}
