//! Out-of-memory, limits, fault injection and many threads: the allocator fails the
//! request that cannot be served with an error naming the sizes, recovers by
//! releasing its cache, leaks nothing, and lets other threads keep going.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use lanes::alloc::{AllocConfig, Allocator, PendingUse};
use lanes::backend::host::HostBackend;
use lanes::{Error, Result};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn capped(capacity: usize, lanes: usize, config: AllocConfig) -> (Arc<HostBackend>, Allocator) {
    let backend = Arc::new(HostBackend::with_capacity(capacity));
    let alloc = Allocator::new(backend.clone(), lanes, config);
    (backend, alloc)
}

#[test]
fn the_backend_refusing_gives_out_of_memory_naming_the_sizes() {
    let (backend, a) = capped(4 * MIB, 1, AllocConfig::default());
    // 3 MiB would take a 20 MiB segment; the backend refuses it, so the request
    // falls back to a segment of its own size (4 MiB).
    let x = a.alloc(0, 3 * MIB).unwrap();
    assert_eq!(backend.bytes_in_use(), 4 * MIB);
    let err = a.alloc(0, 3 * MIB).unwrap_err();
    match &err {
        Error::OutOfMemory {
            device,
            requested,
            allocated,
            reserved,
            limit,
        } => {
            assert_eq!(device, "cpu");
            // The 1 MiB left over in the 4 MiB segment is too small to split off
            // a large block, so the first block occupies all of it.
            assert_eq!(
                (*requested, *allocated, *reserved),
                (3 * MIB, 4 * MIB, 4 * MIB)
            );
            assert_eq!(limit, "none");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    let msg = err.to_string();
    for n in ["3145728", "4194304", "limit none"] {
        assert!(msg.contains(n), "{msg}");
    }
    assert_eq!(a.stats().oom_events, 1);
    // The failed request changed nothing.
    assert_eq!(a.stats().allocated_bytes, 4 * MIB);
    a.free(x, Vec::new()).unwrap();
    a.empty_cache();
    assert_eq!(backend.bytes_in_use(), 0);
}

#[test]
fn out_of_memory_releases_cached_segments_of_every_lane_and_retries() {
    let (backend, a) = capped(5 * MIB, 2, AllocConfig::default());
    // Lane 0 caches a 2 MiB segment it no longer uses.
    let x = a.alloc(0, 512 * KIB).unwrap();
    a.free(x, Vec::new()).unwrap();
    assert_eq!(backend.bytes_in_use(), 2 * MIB);
    // Lane 1 needs 4 MiB: only 3 MiB are left until lane 0's cache goes back.
    let y = a.alloc(1, 4 * MIB).unwrap();
    let s = a.stats();
    assert_eq!(
        (s.oom_events, s.backend_frees, s.segments, s.reserved_bytes),
        (0, 1, 1, 4 * MIB)
    );
    assert_eq!(backend.bytes_in_use(), 4 * MIB);
    a.free(y, Vec::new()).unwrap();
    a.empty_cache();
    assert_eq!(backend.bytes_in_use(), 0);
}

/// A marker whose lane finishes only when someone waits for it.
struct FinishesOnWait(Arc<AtomicBool>);

impl PendingUse for FinishesOnWait {
    fn is_done(&self) -> Result<bool> {
        Ok(self.0.load(Ordering::Acquire))
    }
    fn wait(&self) -> Result<()> {
        self.0.store(true, Ordering::Release);
        Ok(())
    }
}

#[test]
fn out_of_memory_waits_for_parked_blocks_before_giving_up() {
    let (backend, a) = capped(2 * MIB, 2, AllocConfig::default());
    let x = a.alloc(0, MIB).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    a.free(x, vec![Box::new(FinishesOnWait(done.clone()))])
        .unwrap();
    assert_eq!(a.stats().deferred_blocks, 1);
    let y = a.alloc(1, MIB).unwrap();
    assert!(
        done.load(Ordering::Acquire),
        "the marker was waited for first"
    );
    assert_eq!(a.stats().deferred_blocks, 0);
    a.free(y, Vec::new()).unwrap();
    a.empty_cache();
    assert_eq!(backend.bytes_in_use(), 0);
}

#[test]
fn the_byte_limit_bounds_reserved_memory_and_can_change_at_run_time() {
    let backend = Arc::new(HostBackend::new());
    let a = Allocator::new(
        backend.clone(),
        2,
        AllocConfig {
            limit: Some(2 * MIB),
            ..Default::default()
        },
    );
    let x = a.alloc(0, 4 * KIB).unwrap();
    a.free(x, Vec::new()).unwrap();
    // Lane 1 needs a segment of its own: the limit forces lane 0's cache out first.
    let y = a.alloc(1, 4 * KIB).unwrap();
    assert_eq!(a.stats().reserved_bytes, 2 * MIB);
    assert_eq!(a.stats().backend_frees, 1);
    match a.alloc(0, 4 * KIB) {
        Err(Error::OutOfMemory {
            requested, limit, ..
        }) => {
            assert_eq!(requested, 4 * KIB);
            assert_eq!(limit, "2097152 bytes");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    a.set_limit(Some(4 * MIB));
    assert_eq!(a.limit(), Some(4 * MIB));
    let z = a.alloc(0, 4 * KIB).unwrap();
    a.set_limit(None);
    let big = a.alloc(0, 64 * MIB).unwrap();
    assert_eq!(a.stats().limit, None);
    for b in [y, z, big] {
        a.free(b, Vec::new()).unwrap();
    }
    a.empty_cache();
    assert_eq!(backend.bytes_in_use(), 0);
}

#[test]
fn an_impossible_request_fails_cleanly() {
    let (backend, a) = capped(64 * MIB, 1, AllocConfig::default());
    for bytes in [usize::MAX, usize::MAX - 100, 1 << 62] {
        assert!(matches!(a.alloc(0, bytes), Err(Error::OutOfMemory { .. })));
    }
    assert_eq!(backend.bytes_in_use(), 0);
    let s = a.stats();
    assert_eq!((s.reserved_bytes, s.segments, s.oom_events), (0, 0, 3));
}

#[test]
fn injected_failures_are_deterministic_and_leak_nothing() {
    let always = AllocConfig {
        inject_oom: Some(1.0),
        ..Default::default()
    };
    let (backend, a) = capped(usize::MAX, 1, always);
    match a.alloc(0, 1234) {
        Err(Error::Injected(msg)) => {
            assert_eq!(msg, "allocation of 1234 bytes failed (injected oom)")
        }
        other => panic!("expected Injected, got {other:?}"),
    }
    let s = a.stats();
    assert_eq!(
        (
            s.injected_failures,
            s.segments,
            s.backend_allocs,
            s.oom_events
        ),
        (1, 0, 0, 0)
    );
    assert_eq!(backend.bytes_in_use(), 0);

    let pattern = |seed: u64| -> Vec<bool> {
        let config = AllocConfig {
            inject_oom: Some(0.3),
            seed,
            ..Default::default()
        };
        let (backend, a) = capped(usize::MAX, 1, config);
        let out: Vec<bool> = (0..1000)
            .map(|_| match a.alloc(0, 4096) {
                Ok(b) => {
                    a.free(b, Vec::new()).unwrap();
                    true
                }
                Err(Error::Injected(_)) => false,
                Err(e) => panic!("unexpected {e}"),
            })
            .collect();
        assert_eq!(a.stats().allocated_bytes, 0);
        a.empty_cache();
        assert_eq!(backend.bytes_in_use(), 0);
        out
    };
    let (a1, a2, b) = (pattern(7), pattern(7), pattern(8));
    assert_eq!(a1, a2, "same seed, same failures");
    assert_ne!(a1, b, "another seed, other failures");
    let failed = a1.iter().filter(|ok| !**ok).count();
    assert!(
        (220..380).contains(&failed),
        "{failed} of 1000 failed at p=0.3"
    );
}

/// A small xorshift generator so each thread's sizes are reproducible.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn random_size(rng: &mut u64) -> usize {
    match xorshift(rng) % 100 {
        0..=69 => 1 + (xorshift(rng) % (64 * KIB as u64)) as usize,
        70..=94 => 1 + (xorshift(rng) % MIB as u64) as usize,
        95..=98 => MIB + (xorshift(rng) % (4 * MIB as u64)) as usize,
        _ => 10 * MIB + (xorshift(rng) % (8 * MIB as u64)) as usize,
    }
}

/// Each of `threads` threads works on its own lane: first it takes `hold` bytes and
/// keeps them to the end; once every thread holds its share, it allocates random
/// sizes, keeps up to 8 live, writes a pattern into each and checks it before
/// freeing (so two live blocks sharing memory would be seen).
fn hammer(a: &Allocator, threads: usize, ops: usize, hold: usize) -> u64 {
    let ooms = AtomicU64::new(0);
    let all_hold = Barrier::new(threads);
    std::thread::scope(|s| {
        for lane in 0..threads {
            let (ooms, all_hold) = (&ooms, &all_hold);
            s.spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ ((lane as u64 + 1) * 0x1234_5678);
                let mut live = Vec::new();
                if hold > 0 {
                    let b = a.alloc(lane, hold).unwrap();
                    fill(&b, 0xee);
                    live.push((b, 0xee));
                }
                all_hold.wait();
                let held = live.len();
                for i in 0..ops {
                    if live.len() >= held + 8
                        || (live.len() > held && xorshift(&mut rng).is_multiple_of(3))
                    {
                        let k = held + (xorshift(&mut rng) as usize) % (live.len() - held);
                        let (b, tag): (lanes::alloc::Block, u8) = live.swap_remove(k);
                        check(&b, tag);
                        a.free(b, Vec::new()).unwrap();
                    }
                    match a.alloc(lane, random_size(&mut rng)) {
                        Ok(b) => {
                            let tag = (lane * 31 + i) as u8;
                            fill(&b, tag);
                            live.push((b, tag));
                        }
                        Err(Error::OutOfMemory { .. }) => {
                            ooms.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("lane {lane}: unexpected {e}"),
                    }
                }
                for (b, tag) in live {
                    check(&b, tag);
                    a.free(b, Vec::new()).unwrap();
                }
            });
        }
    });
    ooms.into_inner()
}

/// Writes `tag` into the first and last 64 bytes of the block's request.
fn fill(b: &lanes::alloc::Block, tag: u8) {
    let n = b.requested().min(64);
    for off in [0, b.requested() - n] {
        // SAFETY: host backend memory; the block is live and holds `requested` bytes.
        unsafe { std::ptr::write_bytes((b.ptr().0 as usize + off) as *mut u8, tag, n) };
    }
}

fn check(b: &lanes::alloc::Block, tag: u8) {
    let n = b.requested().min(64);
    for off in [0, b.requested() - n] {
        // SAFETY: as in `fill`.
        let s = unsafe { std::slice::from_raw_parts((b.ptr().0 as usize + off) as *const u8, n) };
        assert!(
            s.iter().all(|&x| x == tag),
            "block at {:?} was overwritten",
            b.ptr()
        );
    }
}

#[test]
fn sixteen_threads_on_their_own_lanes_leave_nothing_behind() {
    let backend = Arc::new(HostBackend::new());
    let a = Allocator::new(backend.clone(), 16, AllocConfig::default());
    let ooms = hammer(&a, 16, 3000, 0);
    assert_eq!(ooms, 0);
    let s = a.stats();
    assert_eq!((s.allocated_bytes, s.active_blocks), (0, 0), "{s}");
    assert!(s.cache_hits > s.cache_misses, "{s}");
    assert_eq!(s.reserved_bytes, backend.bytes_in_use());
    a.empty_cache();
    assert_eq!(backend.bytes_in_use(), 0);
    assert_eq!(a.stats().segments, 0);
}

#[test]
fn sixteen_threads_under_memory_pressure_keep_going() {
    // Every lane holds 1 MiB of a 2 MiB segment throughout, which leaves 8 MiB of
    // the cap: the 10-18 MiB requests always fail, the rest compete.
    let backend = Arc::new(HostBackend::with_capacity(40 * MIB));
    let a = Allocator::new(backend.clone(), 16, AllocConfig::default());
    let ooms = hammer(&a, 16, 1500, MIB);
    let s = a.stats();
    assert!(ooms > 0, "the cap should bite: {s}");
    assert_eq!(s.oom_events, ooms);
    assert_eq!((s.allocated_bytes, s.active_blocks), (0, 0), "{s}");
    assert!(backend.bytes_in_use() <= 40 * MIB);
    a.empty_cache();
    assert_eq!(backend.bytes_in_use(), 0);
}

#[test]
fn injection_can_be_switched_on_and_off_at_run_time() {
    let (backend, a) = capped(64 << 20, 2, AllocConfig::default());
    let ok = a.alloc(0, 4096).expect("injection is off by default");
    a.set_inject_oom(Some(1.0));
    match a.alloc(1, 4096) {
        Err(Error::Injected(msg)) => assert!(msg.contains("4096 bytes"), "{msg}"),
        other => panic!("expected an injected failure, got {other:?}"),
    }
    a.set_inject_oom(Some(0.5));
    let mut failed = 0;
    for _ in 0..400 {
        match a.alloc(1, 1024) {
            Ok(b) => a.free(b, Vec::new()).expect("free"),
            Err(Error::Injected(_)) => failed += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        (120..=280).contains(&failed),
        "about half of 400 failed, not {failed}"
    );
    a.set_inject_oom(None);
    let again = a.alloc(1, 4096).expect("off again");
    let s = a.stats();
    assert_eq!(s.injected_failures, 1 + failed as u64);
    a.free(ok, Vec::new()).expect("free");
    a.free(again, Vec::new()).expect("free");
    assert_eq!(a.stats().allocated_bytes, 0);
    a.empty_cache();
    assert_eq!(backend.bytes_in_use(), 0, "nothing leaked");
}
