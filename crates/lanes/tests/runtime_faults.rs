//! Fault and lifecycle tests of the runtime on the host backend: panics in lane
//! work, threads exiting with leases, exhaustion under contention, callbacks and
//! shutdown, event recycling, thread binding.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use lanes::backend::host::HostLane;
use lanes::{Device, DeviceConfig, Error, Policy, Wait};

fn exclusive(lanes: usize, wait: Wait) -> Device {
    Device::cpu(DeviceConfig {
        lanes,
        policy: Policy::Exclusive { wait },
        ..Default::default()
    })
    .expect("device")
}

fn host(lease: &lanes::Lease) -> &HostLane {
    lease
        .raw()
        .as_any()
        .downcast_ref::<HostLane>()
        .expect("host lane")
}

#[test]
fn a_panic_in_lane_work_is_reported_to_the_holder_and_the_lane_keeps_working() {
    let dev = exclusive(2, Wait::NoWait);
    let a = dev.lease().expect("a");
    let b = dev.lease().expect("b");
    let ran = Arc::new(AtomicUsize::new(0));
    host(&a).submit(|| panic!("boom in a job")).expect("submit");
    let r = ran.clone();
    host(&a)
        .submit(move || {
            r.fetch_add(1, Ordering::SeqCst);
        })
        .expect("submit after panic");
    let r = ran.clone();
    host(&b)
        .submit(move || {
            r.fetch_add(10, Ordering::SeqCst);
        })
        .expect("submit on b");
    match a.synchronize() {
        Err(Error::LaneFailed { lane, message, .. }) => {
            assert_eq!(lane, a.index());
            assert!(message.contains("boom in a job"), "{message}");
        }
        other => panic!("expected LaneFailed, got {other:?}"),
    }
    b.synchronize().expect("the other lane is unaffected");
    assert_eq!(
        ran.load(Ordering::SeqCst),
        11,
        "work after the panic ran, and on the other lane"
    );
    // The error was reported once; the lane is healthy again.
    a.synchronize().expect("error cleared after being reported");
    let buf = a.alloc(64).expect("alloc");
    a.upload(&buf, &[3u8; 64]).expect("upload");
    let mut back = [0u8; 64];
    a.download(&buf, &mut back).expect("download");
    assert_eq!(back, [3u8; 64]);
}

#[test]
fn a_thread_exiting_with_a_bound_lease_releases_it_even_after_the_device_handle_is_gone() {
    let dev = exclusive(1, Wait::NoWait);
    let weak_probe = dev.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let d = dev.clone();
    let t = std::thread::spawn(move || {
        let lease = d.current_lane().expect("bind");
        tx.send(lease.index()).expect("send");
        drop(lease);
        drop(d);
        go_rx.recv().expect("go");
        // Exits holding the thread-bound lease.
    });
    let index = rx.recv().expect("index");
    assert_eq!(index, 0);
    // Lane is taken by the other thread's binding.
    assert!(matches!(
        dev.lease(),
        Err(Error::PoolExhausted { lanes: 1, .. })
    ));
    drop(dev);
    go_tx.send(()).expect("go");
    t.join().expect("thread");
    assert_eq!(weak_probe.stats().leases_outstanding, 0);
    let again = weak_probe
        .lease()
        .expect("the lane came back at thread exit");
    assert_eq!(again.index(), 0);
}

#[test]
fn sixty_four_threads_contend_for_eight_exclusive_lanes_with_short_timeouts() {
    let dev = exclusive(8, Wait::For(Duration::from_micros(200)));
    let holders: Arc<Vec<AtomicUsize>> = Arc::new((0..8).map(|_| AtomicUsize::new(0)).collect());
    let timeouts = Arc::new(AtomicUsize::new(0));
    let wins = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(64));
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let (dev, holders, timeouts, wins, barrier) = (
                dev.clone(),
                holders.clone(),
                timeouts.clone(),
                wins.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..50 {
                    match dev.lease() {
                        Ok(lease) => {
                            let h = &holders[lease.index()];
                            assert_eq!(
                                h.fetch_add(1, Ordering::SeqCst),
                                0,
                                "lane {} double-leased",
                                lease.index()
                            );
                            std::thread::yield_now();
                            h.fetch_sub(1, Ordering::SeqCst);
                            wins.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Error::PoolExhausted { lanes, wait, .. }) => {
                            assert_eq!(lanes, 8);
                            assert_eq!(wait, Wait::For(Duration::from_micros(200)));
                            timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("contender");
    }
    assert_eq!(
        wins.load(Ordering::Relaxed) + timeouts.load(Ordering::Relaxed),
        64 * 50
    );
    assert!(wins.load(Ordering::Relaxed) > 0);
    assert_eq!(dev.stats().leases_outstanding, 0);
    let all: Vec<_> = (0..8)
        .map(|_| dev.lease_with(Wait::NoWait).expect("all 8 lanes are free"))
        .collect();
    let mut idx: Vec<usize> = all.iter().map(|l| l.index()).collect();
    idx.sort();
    assert_eq!(idx, (0..8).collect::<Vec<_>>());
}

#[test]
fn an_unbounded_wait_is_woken_by_a_release() {
    let dev = exclusive(1, Wait::Forever);
    let held = dev.lease().expect("held");
    let d = dev.clone();
    let t = std::thread::spawn(move || d.lease().map(|l| l.index()));
    std::thread::sleep(Duration::from_millis(20));
    drop(held);
    assert_eq!(t.join().expect("waiter").expect("lease after wait"), 0);
}

#[test]
fn callbacks_run_after_prior_work_and_shutdown_waits_for_them() {
    let dev = exclusive(2, Wait::NoWait);
    let lane = dev.lease().expect("lease");
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = order.clone();
    host(&lane)
        .submit(move || {
            std::thread::sleep(Duration::from_millis(30));
            o.lock().unwrap().push("work");
        })
        .expect("submit");
    let o = order.clone();
    let owned = String::from("callback state");
    lane.on_complete(move || {
        o.lock()
            .unwrap()
            .push(if owned.is_empty() { "?" } else { "callback" })
    })
    .expect("on_complete");
    lane.on_complete(|| panic!("a panicking callback is contained"))
        .expect("on_complete");
    drop(lane);
    let stats_dev = dev.clone();
    let report = dev.shutdown(Duration::from_secs(5)).expect("shutdown");
    assert_eq!(report.callbacks_pending, 0);
    assert_eq!(*order.lock().unwrap(), vec!["work", "callback"]);
    assert_eq!(stats_dev.stats().callbacks_panicked, 1);
}

#[test]
fn shutdown_reports_callbacks_that_did_not_finish_in_time() {
    let dev = exclusive(1, Wait::NoWait);
    let lane = dev.lease().expect("lease");
    host(&lane)
        .submit(|| std::thread::sleep(Duration::from_millis(300)))
        .expect("slow work");
    lane.on_complete(|| {}).expect("on_complete");
    let probe = dev.clone();
    match dev.shutdown(Duration::from_millis(20)) {
        Err(Error::ShutdownTimedOut { pending, .. }) => assert_eq!(pending, 1),
        other => panic!("expected ShutdownTimedOut, got {other:?}"),
    }
    lane.synchronize().expect("work finishes");
    // The callback still ran, later, with nothing freed under it.
    let done = probe
        .clone()
        .shutdown(Duration::from_secs(5))
        .expect("now idle");
    assert_eq!(done.callbacks_pending, 0);
}

#[test]
fn events_are_recycled_and_order_work_across_lanes() {
    let dev = exclusive(2, Wait::NoWait);
    let (a, b) = (dev.lease().expect("a"), dev.lease().expect("b"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    host(&a)
        .submit(move || {
            std::thread::sleep(Duration::from_millis(30));
            l.lock().unwrap().push("a");
        })
        .expect("a work");
    let ev = a.record().expect("record");
    b.wait(&ev).expect("b waits for a");
    let l = log.clone();
    host(&b)
        .submit(move || l.lock().unwrap().push("b"))
        .expect("b work");
    b.synchronize().expect("b");
    assert_eq!(
        *log.lock().unwrap(),
        vec!["a", "b"],
        "b ran after the event on a"
    );
    assert!(ev.query().expect("query"));
    drop(ev);
    let created = dev.stats().events_created;
    for _ in 0..100 {
        let e = a.record().expect("record");
        e.synchronize().expect("sync");
    }
    let s = dev.stats();
    assert_eq!(
        s.events_created, created,
        "recorded events came from the pool"
    );
    assert_eq!(s.events_outstanding, 0);
}

#[test]
fn an_event_outliving_its_device_is_destroyed_safely() {
    let dev = exclusive(1, Wait::NoWait);
    let lane = dev.lease().expect("lease");
    let ev = lane.record().expect("record");
    drop(lane);
    drop(dev);
    ev.synchronize()
        .expect("still usable: it keeps its backend alive");
    drop(ev);
}

#[test]
fn shared_policy_round_robins_and_never_blocks() {
    let dev = Device::cpu(DeviceConfig {
        lanes: 3,
        policy: Policy::Shared,
        ..Default::default()
    })
    .expect("dev");
    let leases: Vec<_> = (0..7).map(|_| dev.lease().expect("shared lease")).collect();
    let idx: Vec<usize> = leases.iter().map(|l| l.index()).collect();
    assert_eq!(idx, vec![0, 1, 2, 0, 1, 2, 0]);
    assert!(leases.iter().all(|l| !l.is_exclusive()));
    assert_eq!(dev.stats().leases_outstanding, 7);
    drop(leases);
    assert_eq!(dev.stats().leases_outstanding, 0);
}

#[test]
fn a_lane_guard_switches_the_current_lane_and_restores_it() {
    let dev = exclusive(3, Wait::NoWait);
    let first = dev.current_lane().expect("bind").index();
    let other = dev.lease().expect("other");
    let other_index = other.index();
    {
        let _g = dev.bind(other).expect("bind other");
        assert_eq!(dev.current_lane().expect("current").index(), other_index);
    }
    assert_eq!(dev.current_lane().expect("restored").index(), first);
    assert_eq!(
        dev.stats().leases_outstanding,
        1,
        "the guard's lease was released"
    );
    dev.unbind_current();
    assert_eq!(dev.stats().leases_outstanding, 0);
    let foreign = exclusive(1, Wait::NoWait).lease().expect("foreign");
    assert!(matches!(dev.bind(foreign), Err(Error::InvalidArgument(_))));
}

#[test]
fn lanes_are_created_lazily_and_pool_size_is_validated() {
    let dev = exclusive(32, Wait::NoWait);
    assert_eq!(dev.stats().lanes_created, 0);
    let l = dev.lease().expect("lease");
    assert_eq!(dev.stats().lanes_created, 1);
    drop(l);
    for bad in [0, 65] {
        let err = Device::cpu(DeviceConfig {
            lanes: bad,
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("1..=64 lanes"), "{err}");
    }
    let err = Device::from_spec("tpu:3", DeviceConfig::default()).unwrap_err();
    assert!(err.to_string().contains("unknown device `tpu:3`"), "{err}");
}
