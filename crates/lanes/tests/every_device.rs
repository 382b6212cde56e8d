//! One test body, every device: the runtime and allocator protocols run on the CPU
//! backend everywhere and on CUDA device 0 where a driver and a GPU exist. Without
//! one, each CUDA case prints `SKIPPED cuda:0: <why>` (it never passes silently);
//! with `LANES_REQUIRE_CUDA=1` (the GPU suite) it fails instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanes::{AllocConfig, Device, DeviceConfig, Error, Policy, Wait};

/// The devices to run on: the CPU, and CUDA 0 when present.
fn devices(test: &str, config: DeviceConfig) -> Vec<Device> {
    let mut out = vec![Device::cpu(config.clone()).expect("cpu device")];
    match Device::cuda(0, config) {
        Ok(dev) => out.push(dev),
        Err(e) if cuda_required() => {
            panic!("LANES_REQUIRE_CUDA=1 but cuda:0 failed for {test}: {e}")
        }
        Err(e) => eprintln!("SKIPPED cuda:0 for {test}: {e}"),
    }
    out
}

/// `LANES_REQUIRE_CUDA=1`: a CUDA case that cannot open its device fails.
fn cuda_required() -> bool {
    std::env::var("LANES_REQUIRE_CUDA").is_ok_and(|v| v.trim() == "1")
}

fn config(lanes: usize, wait: Wait) -> DeviceConfig {
    DeviceConfig {
        lanes,
        policy: Policy::Exclusive { wait },
        ..Default::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn exclusive_leases_exhaust_cleanly_and_come_back() {
    for dev in devices("exhaustion", config(4, Wait::For(Duration::from_millis(5)))) {
        let held: Vec<_> = (0..4).map(|_| dev.lease().expect("lease")).collect();
        match dev.lease() {
            Err(Error::PoolExhausted {
                lanes: 4, device, ..
            }) => assert_eq!(device, dev.name()),
            other => panic!("{}: expected PoolExhausted, got {other:?}", dev.name()),
        }
        drop(held);
        assert_eq!(dev.stats().leases_outstanding, 0, "{}", dev.name());
        let again: Vec<_> = (0..4)
            .map(|_| dev.lease_with(Wait::NoWait).expect("free again"))
            .collect();
        assert_eq!(again.len(), 4);
    }
}

#[test]
fn copies_round_trip_and_an_event_orders_a_second_lane_after_the_first() {
    for dev in devices("cross-lane event", config(2, Wait::NoWait)) {
        let (a, b) = (dev.lease().expect("a"), dev.lease().expect("b"));
        let len = 8 << 20;
        let data = pattern(len, 7);
        let x = a.alloc(len).expect("alloc x");
        a.upload(&x, &data).expect("upload on a");
        let ready = a.record().expect("record on a");
        b.wait(&ready).expect("b waits");
        let y = b.alloc(len).expect("alloc y");
        // SAFETY: both buffers hold `len` bytes of this device and outlive the copy
        // (stream-ordered frees); x was marked as used by lane b by `wait` + below.
        x.record_use(b.index());
        unsafe { b.raw().copy_dtod(x.ptr(), y.ptr(), len) }.expect("copy on b");
        let mut back = vec![0u8; len];
        b.download(&y, &mut back).expect("download on b");
        assert!(back == data, "{}: lane b saw lane a's upload", dev.name());
        drop((x, y));
        a.synchronize().expect("a");
        b.synchronize().expect("b");
    }
}

#[test]
fn completion_callbacks_run_once_after_prior_work_and_shutdown_waits() {
    for dev in devices("callbacks", config(2, Wait::NoWait)) {
        let name = dev.name().to_string();
        let lane = dev.lease().expect("lease");
        let big = lane.alloc(16 << 20).expect("alloc");
        let data = pattern(16 << 20, 3);
        lane.upload(&big, &data).expect("upload");
        let count = Arc::new(AtomicUsize::new(0));
        for _ in 0..10 {
            let c = count.clone();
            lane.on_complete(move || {
                c.fetch_add(1, Ordering::SeqCst);
            })
            .expect("on_complete");
        }
        drop(big);
        drop(lane);
        let report = dev.shutdown(Duration::from_secs(10)).expect("shutdown");
        assert_eq!(report.callbacks_pending, 0, "{name}");
        assert_eq!(
            count.load(Ordering::SeqCst),
            10,
            "{name}: each callback ran once"
        );
    }
}

#[test]
fn thirty_two_threads_hammer_the_allocator_on_their_own_lanes_and_nothing_leaks() {
    for dev in devices("allocator hammer", config(32, Wait::Forever)) {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..32)
            .map(|t| {
                let (dev, errors) = (dev.clone(), errors.clone());
                std::thread::spawn(move || {
                    let lane = dev.current_lane().expect("lane");
                    let mut rng = 0x9e37_79b9_u64.wrapping_mul(t as u64 + 1);
                    let mut live = Vec::new();
                    for i in 0..200 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let size = match rng % 10 {
                            0 => 2 << 20,
                            1..=3 => (rng % 65_536) as usize + 1,
                            _ => (rng % 4096) as usize + 1,
                        };
                        let buf = lane.alloc(size).expect("alloc");
                        let data = pattern(size.min(4096), (t * 7 + i) as u8);
                        lane.upload(&buf, &data).expect("upload");
                        let mut back = vec![0u8; data.len()];
                        lane.download(&buf, &mut back).expect("download");
                        if back != data {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("thread {t} iteration {i}: data corrupted"));
                        }
                        live.push(buf);
                        if live.len() > 8 {
                            live.remove((rng % 8) as usize);
                        }
                    }
                    drop(live);
                    dev.unbind_current();
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert!(
            errors.lock().unwrap().is_empty(),
            "{}: {:?}",
            dev.name(),
            errors.lock().unwrap()
        );
        dev.synchronize().expect("sync");
        let s = dev.stats();
        assert_eq!(
            s.alloc.allocated_bytes,
            0,
            "{}: allocated bytes back to 0",
            dev.name()
        );
        assert_eq!(s.alloc.active_blocks, 0, "{}", dev.name());
        assert_eq!(s.leases_outstanding, 0, "{}", dev.name());
        assert!(s.alloc.cache_hits > 0, "{}: the cache was used", dev.name());
        dev.allocator().empty_cache();
        assert_eq!(
            dev.stats().alloc.reserved_bytes,
            0,
            "{}: empty_cache released every segment",
            dev.name()
        );
    }
}

#[test]
fn a_block_used_by_another_lane_is_parked_until_that_lane_is_done() {
    for dev in devices("deferred free", config(2, Wait::NoWait)) {
        let (a, b) = (dev.lease().expect("a"), dev.lease().expect("b"));
        let buf = a.alloc(1 << 20).expect("alloc");
        let addr = buf.ptr();
        buf.record_use(b.index());
        drop(buf);
        let s = dev.stats();
        assert_eq!(s.alloc.allocated_bytes, 0, "{}", dev.name());
        b.synchronize().expect("b done");
        // Once b's marker completed, the block is reusable on a.
        let again = a.alloc(1 << 20).expect("alloc again");
        assert_eq!(
            again.ptr(),
            addr,
            "{}: the parked block came back after b finished",
            dev.name()
        );
        assert_eq!(dev.stats().alloc.deferred_blocks, 0, "{}", dev.name());
    }
}

#[test]
fn out_of_memory_names_the_sizes_and_other_lanes_keep_going() {
    let cfg = DeviceConfig {
        lanes: 2,
        policy: Policy::Exclusive { wait: Wait::NoWait },
        alloc: AllocConfig {
            limit: Some(64 << 20),
            ..Default::default()
        },
    };
    for dev in devices("out of memory", cfg) {
        let (a, b) = (dev.lease().expect("a"), dev.lease().expect("b"));
        let keep = a.alloc(40 << 20).expect("40 MiB fits");
        match b.alloc(40 << 20) {
            Err(Error::OutOfMemory {
                requested,
                allocated,
                reserved,
                limit,
                ..
            }) => {
                assert_eq!(requested, 40 << 20);
                assert_eq!(allocated, 40 << 20);
                assert!(reserved >= 40 << 20);
                assert!(limit.contains(&(64usize << 20).to_string()), "{limit}");
            }
            other => panic!("{}: expected OutOfMemory, got {other:?}", dev.name()),
        }
        let small = b.alloc(1 << 20).expect("the other lane keeps going");
        drop((keep, small));
        let big = b
            .alloc(40 << 20)
            .expect("after release + retry the request fits");
        drop(big);
        dev.synchronize().expect("sync");
        assert_eq!(dev.stats().alloc.allocated_bytes, 0, "{}", dev.name());
    }
}

#[test]
fn a_captured_graph_replays_with_fresh_inputs_and_keeps_its_blocks_until_dropped() {
    for dev in devices("graph capture", config(2, Wait::NoWait)) {
        let name = dev.name().to_string();
        let lane = dev.lease().expect("lease");
        let len = 64 << 10;
        let base = dev.stats().alloc;
        let mut scratch_addr = None;
        let captured = lane.capture(|l| {
            let input = l.alloc(len)?;
            let output = l.alloc(len)?;
            let scratch = l.alloc(len)?;
            scratch_addr = Some(scratch.ptr());
            // SAFETY: the three buffers hold `len` bytes of this device and are
            // disjoint; the graph keeps their blocks for its whole life.
            unsafe {
                l.raw().copy_dtod(input.ptr(), scratch.ptr(), len)?;
                l.raw().copy_dtod(scratch.ptr(), output.ptr(), len)?;
            }
            // Dropped inside the capture: its block stays the graph's.
            drop(scratch);
            // Calls that cannot be captured fail with a clear error.
            let err = l
                .upload(&input, &[0u8; 16])
                .expect_err("upload in a capture");
            assert!(err.to_string().contains("upload"), "{err}");
            Ok(vec![input, output])
        });
        let graph = match captured {
            Ok(g) => g,
            Err(Error::Unsupported { device, what }) => {
                // The CPU backend runs jobs eagerly: no graphs, and the cache says so.
                assert_eq!(device, name);
                assert!(what.contains("graph capture"), "{what}");
                assert!(lane.graph(1, |_| Ok(Vec::new())).expect("graph").is_none());
                assert_eq!(dev.stats().alloc.allocated_bytes, base.allocated_bytes);
                continue;
            }
            Err(e) => panic!("{name}: capture failed: {e}"),
        };
        assert_eq!(graph.lane(), lane.index());
        assert!(graph.nodes() >= 2, "{name}: {graph:?}");
        assert!(graph.reserved_bytes() >= 3 * len, "{name}: {graph:?}");
        // The scratch block is not handed to other work while the graph lives.
        let other = lane.alloc(len).expect("alloc");
        assert_ne!(Some(other.ptr()), scratch_addr, "{name}");
        drop(other);
        for round in 0..20u8 {
            let data = pattern(len, round);
            lane.upload(&graph.buffers()[0], &data).expect("upload");
            graph.launch(&lane).expect("launch");
            let mut back = vec![0u8; len];
            lane.download(&graph.buffers()[1], &mut back)
                .expect("download");
            assert!(back == data, "{name}: round {round} replayed the copies");
        }
        // Another lane may not launch it.
        let b = dev.lease().expect("b");
        assert!(graph.launch(&b).is_err(), "{name}");
        drop(graph);
        lane.synchronize().expect("sync");
        assert_eq!(
            dev.stats().alloc.allocated_bytes,
            base.allocated_bytes,
            "{name}: the graph's blocks went back when it dropped"
        );
        // The cache: one capture per key, replays after.
        let captures = AtomicUsize::new(0);
        for _ in 0..3 {
            let g = lane
                .graph(7, |l| {
                    captures.fetch_add(1, Ordering::SeqCst);
                    Ok(vec![l.alloc(len)?])
                })
                .expect("graph")
                .expect("CUDA has graphs");
            assert_eq!(g.buffers().len(), 1);
        }
        assert_eq!(captures.load(Ordering::SeqCst), 1, "{name}");
        assert_eq!(dev.stats().graphs_cached, 1, "{name}");
        dev.set_graphs(false);
        assert!(lane.graph(7, |_| Ok(Vec::new())).expect("off").is_none());
        assert_eq!(dev.stats().graphs_cached, 0, "{name}");
        assert_eq!(
            dev.stats().alloc.allocated_bytes,
            base.allocated_bytes,
            "{name}"
        );
    }
}
