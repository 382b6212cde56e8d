//! The CUDA backend on a real GPU.
//!
//! Every test first opens `cuda:0`; where that fails (no driver, no GPU) it prints
//! `SKIPPED (no CUDA): <error>` straight to stderr (not through the test harness's
//! capture, so the line is always visible) and returns, or, with
//! `LANES_REQUIRE_CUDA=1` (set by the GPU suite), fails. `backend_new_never_panics`
//! runs everywhere.
#![cfg(feature = "cuda")]

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use lanes::backend::cuda::{kernel_arg, CudaBackend, CudaLane, Op, SyncMode};
use lanes::backend::host::HostBackend;
use lanes::{Backend, DevicePtr, Error, RawLane};

/// Writes to the process's stderr, bypassing the harness's output capture.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// A CUDA case that cannot run: fails under `LANES_REQUIRE_CUDA=1`, else says why.
fn skip(test: &str, why: &dyn std::fmt::Display) {
    if std::env::var("LANES_REQUIRE_CUDA").is_ok_and(|v| v.trim() == "1") {
        panic!("LANES_REQUIRE_CUDA=1 but {test} could not use cuda:0: {why}");
    }
    say(&format!("SKIPPED (no CUDA): {test}: {why}"));
}

fn backend(test: &str) -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => {
            skip(test, &e);
            None
        }
    }
}

macro_rules! gpu {
    ($test:expr) => {
        match backend($test) {
            Some(b) => b,
            None => return,
        }
    };
}

/// The test kernels (shared with `tests/cuda_graphs.rs`).
const SRC: &str = include_str!("kernels/lanes_test.cu");

fn lane(b: &CudaBackend, index: usize) -> Box<dyn RawLane> {
    b.create_lane(index).expect("create_lane")
}

fn cuda(l: &dyn RawLane) -> &CudaLane {
    l.as_any().downcast_ref::<CudaLane>().expect("a CUDA lane")
}

fn upload_f32(l: &dyn RawLane, dst: DevicePtr, v: &[f32]) {
    // SAFETY: every caller allocated `dst` for at least `v.len()` floats.
    unsafe { l.copy_htod(bytemuck::cast_slice(v), dst) }.expect("copy_htod");
}

fn download_f32(l: &dyn RawLane, src: DevicePtr, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    // SAFETY: every caller allocated `src` for at least `n` floats.
    unsafe { l.copy_dtoh(src, bytemuck::cast_slice_mut(&mut out)) }.expect("copy_dtoh");
    out
}

/// Clock cycles for roughly `ms` milliseconds of spinning on this GPU (at least
/// 2 GHz worth: a driver that reports no clock rate, or a low base clock, must not
/// shorten the spin that the ordering tests rely on).
fn cycles_for(b: &CudaBackend, ms: u64) -> i64 {
    use cudarc::driver::sys::CUdevice_attribute;
    let khz = b
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)
        .unwrap_or(0)
        .max(2_000_000) as i64;
    khz * ms as i64
}

/// Enqueues `spin_fill(x, n, v)` that first spins for about `ms` milliseconds.
fn spin_fill(b: &CudaBackend, l: &CudaLane, x: DevicePtr, n: usize, v: f32, ms: u64) {
    let f = b
        .function("lanes_test", SRC, "spin_fill")
        .expect("spin_fill");
    let (xp, nn, cycles) = (x.0, n as u32, cycles_for(b, ms));
    let mut args = [
        kernel_arg(&xp),
        kernel_arg(&nn),
        kernel_arg(&v),
        kernel_arg(&cycles),
    ];
    // SAFETY: the arguments match `spin_fill(float*, unsigned, float, long long)`;
    // `x` holds `n` floats and outlives the kernel (tests synchronize before freeing).
    unsafe { l.launch(&f, (1, 1, 1), (256, 1, 1), 0, &mut args) }.expect("launch spin_fill");
}

#[test]
fn backend_new_never_panics() {
    let r = std::panic::catch_unwind(|| CudaBackend::new(0)).expect("CudaBackend::new panicked");
    match r {
        Ok(b) => {
            say(&format!("cuda:0 opened: {b:?}"));
            // A missing ordinal is an error that names it and the device count.
            let e = CudaBackend::new(4096).expect_err("ordinal 4096 should not exist");
            let msg = e.to_string();
            assert!(msg.contains("4096") && msg.contains("device"), "{msg}");
        }
        Err(e @ (Error::NoCudaDriver(_) | Error::Cuda { .. })) => {
            skip("backend_new_never_panics", &e)
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

#[test]
fn record_wait_orders_work_across_lanes() {
    let b = gpu!("record_wait_orders_work_across_lanes");
    let (a, c) = (lane(&b, 0), lane(&b, 1));
    let n = 4096;
    let x = b.alloc(n * 4).unwrap();
    let y = b.alloc(n * 4).unwrap();
    upload_f32(&*a, x, &vec![0.0; n]);
    a.synchronize().unwrap();

    // Control: without a wait, lane c copies x before lane a's slow kernel wrote it.
    spin_fill(&b, cuda(&*a), x, n, 42.0, 100);
    // SAFETY: x and y hold n floats each and stay allocated until the end.
    unsafe { c.copy_dtod(x, y, n * 4) }.unwrap();
    let early = download_f32(&*c, y, n);
    assert!(
        early.iter().all(|v| *v == 0.0),
        "the control copy should not see the kernel's writes"
    );
    a.synchronize().unwrap();

    // With record/wait, lane c's copy runs after the kernel.
    upload_f32(&*a, x, &vec![0.0; n]);
    spin_fill(&b, cuda(&*a), x, n, 42.0, 100);
    let ev = b.create_event().unwrap();
    a.record(&*ev).unwrap();
    assert!(
        !ev.query().unwrap(),
        "the event completed while its kernel should still spin"
    );
    c.wait(&*ev).unwrap();
    // SAFETY: as above.
    unsafe { c.copy_dtod(x, y, n * 4) }.unwrap();
    let got = download_f32(&*c, y, n);
    assert!(
        got.iter().all(|v| *v == 42.0),
        "lane c did not wait for lane a's event"
    );
    assert!(ev.query().unwrap());
    ev.synchronize().unwrap();

    // A host event is not a CUDA event.
    let foreign = HostBackend::new().create_event().unwrap();
    assert!(matches!(
        a.record(&*foreign),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(a.wait(&*foreign), Err(Error::InvalidArgument(_))));

    // SAFETY: both lanes are synchronized; nothing pending uses x or y.
    unsafe {
        b.free(x, n * 4);
        b.free(y, n * 4);
    }
    assert_eq!(b.free_errors(), 0);
}

#[test]
fn host_fn_runs_in_order_after_prior_work() {
    let b = gpu!("host_fn_runs_in_order_after_prior_work");
    let l = lane(&b, 0);
    let n = 256;
    let x = b.alloc(n * 4).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    spin_fill(&b, cuda(&*l), x, n, 1.0, 60);
    for i in 0..3 {
        let order = order.clone();
        l.host_fn(Box::new(move || {
            order.lock().unwrap().push((i, t0.elapsed()))
        }))
        .unwrap();
    }
    // A callback may drop CUDA objects (they are dropped off the driver's thread).
    let ev = b.create_event().unwrap();
    l.host_fn(Box::new(move || drop(ev))).unwrap();
    // The lane's synchronize also waits for callbacks enqueued before it.
    l.synchronize().unwrap();
    let got = order.lock().unwrap().clone();
    assert_eq!(
        got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(
        got[0].1 >= Duration::from_millis(40),
        "callback ran before the kernel: {:?}",
        got[0].1
    );

    // A panicking callback is reported once, at the next synchronize.
    l.host_fn(Box::new(|| panic!("boom in a callback")))
        .unwrap();
    match l.synchronize() {
        Err(Error::LaneFailed {
            lane: 0, message, ..
        }) => assert!(message.contains("boom"), "{message}"),
        other => panic!("expected LaneFailed, got {other:?}"),
    }
    l.synchronize().unwrap();

    // Completion latency on an idle lane (callback hop through the runner thread).
    let (tx, rx) = mpsc::channel();
    let iters = 200;
    let start = Instant::now();
    for _ in 0..iters {
        let tx = tx.clone();
        l.host_fn(Box::new(move || tx.send(()).unwrap())).unwrap();
        rx.recv_timeout(Duration::from_secs(5))
            .expect("callback never ran");
    }
    say(&format!(
        "host_fn round trip on an idle lane: {:.1} us",
        start.elapsed().as_secs_f64() * 1e6 / iters as f64
    ));
    // SAFETY: synchronized above; nothing pending uses x.
    unsafe { b.free(x, n * 4) };
}

#[test]
fn copies_round_trip() {
    let b = gpu!("copies_round_trip");
    let l = lane(&b, 0);
    let pattern = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    };
    for len in [1usize, 3, 4096, 65_536 + 7, (4 << 20) + 1, (9 << 20) + 123] {
        let x = b.alloc(len).unwrap();
        let y = b.alloc(len).unwrap();
        let src = pattern(len, len as u8);
        let mut back = vec![0u8; len];
        // SAFETY: x and y hold `len` bytes each, freed only after the lane synchronized.
        unsafe {
            l.copy_htod(&src, x).unwrap();
            l.copy_dtod(x, y, len).unwrap();
            l.copy_dtoh(y, &mut back).unwrap();
        }
        assert!(back == src, "round trip of {len} bytes differs");
        l.synchronize().unwrap();
        // SAFETY: synchronized; nothing pending uses them.
        unsafe {
            b.free(x, len);
            b.free(y, len);
        }
    }

    // The source of an upload may be reused as soon as copy_htod returns, and many
    // uploads may be in flight at once (more than the lane keeps staging chunks).
    let len = 300_000;
    let count = 12;
    let base = b.alloc(len * count).unwrap();
    let mut src = vec![0u8; len];
    spin_fill(&b, cuda(&*l), base, 16, 0.0, 30); // keep the stream busy meanwhile
    for i in 0..count {
        src.copy_from_slice(&pattern(len, i as u8));
        // SAFETY: `base` holds `count * len` bytes.
        unsafe { l.copy_htod(&src, base.offset(i * len)).unwrap() };
        src.fill(0xEE);
    }
    let mut all = vec![0u8; len * count];
    // SAFETY: as above.
    unsafe { l.copy_dtoh(base, &mut all).unwrap() };
    for i in 0..count {
        assert!(
            all[i * len..(i + 1) * len] == pattern(len, i as u8),
            "upload {i} was corrupted"
        );
    }
    // Zero-length copies are no-ops.
    // SAFETY: nothing is read or written.
    unsafe {
        l.copy_htod(&[], base).unwrap();
        l.copy_dtoh(base, &mut []).unwrap();
        l.copy_dtod(base, base, 0).unwrap();
    }
    l.synchronize().unwrap();
    // SAFETY: synchronized.
    unsafe { b.free(base, len * count) };
}

#[test]
fn copies_from_many_threads() {
    let b = Arc::new(gpu!("copies_from_many_threads"));
    let threads = 16;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let b = b.clone();
            std::thread::spawn(move || {
                let l = b.create_lane(t).unwrap();
                let len = 10_000 + t * 777;
                let x = b.alloc(len).unwrap();
                for round in 0..50u32 {
                    let src: Vec<u8> = (0..len)
                        .map(|i| (i as u32 ^ round ^ t as u32) as u8)
                        .collect();
                    let mut back = vec![0u8; len];
                    // SAFETY: x holds `len` bytes, used by this lane only.
                    unsafe {
                        l.copy_htod(&src, x).unwrap();
                        l.copy_dtoh(x, &mut back).unwrap();
                    }
                    assert!(back == src, "thread {t} round {round} differs");
                }
                l.synchronize().unwrap();
                // SAFETY: synchronized.
                unsafe { b.free(x, len) };
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a copy thread failed");
    }
}

#[test]
fn kernel_compiles_once_under_32_threads() {
    let b = Arc::new(gpu!("kernel_compiles_once_under_32_threads"));
    let threads = 32;
    let barrier = Arc::new(Barrier::new(threads));
    let ok = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (b, barrier, ok) = (b.clone(), barrier.clone(), ok.clone());
            std::thread::spawn(move || {
                barrier.wait();
                b.function("lanes_test", SRC, "scale").expect("function");
                ok.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), threads);
    let stats = b.compile_stats();
    assert_eq!(stats.compiles, 1, "compiled more than once: {stats:?}");
    say(&format!(
        "NVRTC compile + load of the test module ({}): {:?}",
        b.arch(),
        stats.total
    ));

    // Other functions of the same module need no compile.
    b.function("lanes_test", SRC, "empty").unwrap();
    assert_eq!(b.compile_stats().compiles, 1);

    // The kernel computes what it should (fp32, exact for a*x with a = 2).
    let l = lane(&b, 0);
    let n = 10_000usize;
    let x = b.alloc(n * 4).unwrap();
    let y = b.alloc(n * 4).unwrap();
    let xs: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
    upload_f32(&*l, x, &xs);
    let f = b.function("lanes_test", SRC, "scale").unwrap();
    let (yp, xp, a, nn) = (y.0, x.0, 2.0f32, n as u32);
    let mut args = [
        kernel_arg(&yp),
        kernel_arg(&xp),
        kernel_arg(&a),
        kernel_arg(&nn),
    ];
    // SAFETY: arguments match `scale(float*, const float*, float, unsigned)`; x and y
    // hold n floats.
    unsafe {
        cuda(&*l).launch(
            &f,
            ((n as u32).div_ceil(256), 1, 1),
            (256, 1, 1),
            0,
            &mut args,
        )
    }
    .unwrap();
    let ys = download_f32(&*l, y, n);
    assert!(ys.iter().zip(&xs).all(|(y, x)| *y == 2.0 * x));
    l.synchronize().unwrap();
    // SAFETY: synchronized.
    unsafe {
        b.free(x, n * 4);
        b.free(y, n * 4);
    }
}

#[test]
fn kernel_errors_are_reported_and_cached() {
    let b = gpu!("kernel_errors_are_reported_and_cached");
    const BAD: &str = "extern \"C\" __global__ void f() { this is not C; }";
    let e = b.function("lanes_bad", BAD, "f").unwrap_err();
    match &e {
        Error::Cuda { op, message, .. } => {
            assert!(op.contains("NVRTC") && op.contains("lanes_bad"), "{op}");
            assert!(!message.is_empty());
        }
        other => panic!("expected Error::Cuda, got {other:?}"),
    }
    let compiles = b.compile_stats().compiles;
    assert!(b.function("lanes_bad", BAD, "f").is_err());
    assert_eq!(
        b.compile_stats().compiles,
        compiles,
        "a failed compile was retried"
    );
    // One module name, one source.
    assert!(matches!(
        b.function("lanes_bad", SRC, "scale"),
        Err(Error::InvalidArgument(_))
    ));
    // A missing function in a good module.
    assert!(matches!(
        b.function("lanes_test", SRC, "no_such_kernel"),
        Err(Error::Cuda { .. })
    ));
}

/// Column-major reference: C = alpha op(A) op(B) + beta C, in f64.
#[allow(clippy::too_many_arguments)]
fn gemm_ref(
    ta: Op,
    tb: Op,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    for j in 0..n {
        for i in 0..m {
            let mut s = 0f64;
            for l in 0..k {
                let av = match ta {
                    Op::N => a[i + l * lda],
                    Op::T => a[l + i * lda],
                };
                let bv = match tb {
                    Op::N => b[l + j * ldb],
                    Op::T => b[j + l * ldb],
                };
                s += av as f64 * bv as f64;
            }
            c[i + j * ldc] = (alpha as f64 * s + beta as f64 * c[i + j * ldc] as f64) as f32;
        }
    }
}

fn rand_vec(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0f32, f32::max);
    assert!(worst <= 1e-5, "{what}: worst relative error {worst}");
}

#[test]
fn sgemm_matches_cpu() {
    let b = gpu!("sgemm_matches_cpu");
    let l = lane(&b, 0);
    let cl = cuda(&*l);
    let mut seed = 7u64;
    let (m, n, k) = (33usize, 17usize, 29usize);
    for (ta, tb) in [
        (Op::N, Op::N),
        (Op::T, Op::N),
        (Op::N, Op::T),
        (Op::T, Op::T),
    ] {
        let (lda, ldb, ldc) = (
            if ta == Op::N { m } else { k },
            if tb == Op::N { k } else { n },
            m,
        );
        let a = rand_vec(lda * if ta == Op::N { k } else { m }, &mut seed);
        let bm = rand_vec(ldb * if tb == Op::N { n } else { k }, &mut seed);
        let c0 = rand_vec(ldc * n, &mut seed);
        let (da, db, dc) = (
            b.alloc(a.len() * 4).unwrap(),
            b.alloc(bm.len() * 4).unwrap(),
            b.alloc(c0.len() * 4).unwrap(),
        );
        upload_f32(&*l, da, &a);
        upload_f32(&*l, db, &bm);
        upload_f32(&*l, dc, &c0);
        // SAFETY: the buffers hold the matrices the dimensions describe.
        unsafe { cl.sgemm(ta, tb, m, n, k, 0.75, da, lda, db, ldb, 0.5, dc, ldc) }.unwrap();
        let got = download_f32(&*l, dc, c0.len());
        let mut want = c0.clone();
        gemm_ref(
            ta, tb, m, n, k, 0.75, &a, lda, &bm, ldb, 0.5, &mut want, ldc,
        );
        assert_close(&got, &want, &format!("sgemm {ta:?}{tb:?}"));
        l.synchronize().unwrap();
        // SAFETY: synchronized.
        unsafe {
            b.free(da, a.len() * 4);
            b.free(db, bm.len() * 4);
            b.free(dc, c0.len() * 4);
        }
    }

    // Strided batched (the attention scores shape: batch of A·Bᵀ).
    let (m, n, k, batch) = (12usize, 12usize, 32usize, 6usize);
    let (sa, sb, sc) = (m * k, n * k, m * n);
    let a = rand_vec(sa * batch, &mut seed);
    let bm = rand_vec(sb * batch, &mut seed);
    let (da, db, dc) = (
        b.alloc(a.len() * 4).unwrap(),
        b.alloc(bm.len() * 4).unwrap(),
        b.alloc(sc * batch * 4).unwrap(),
    );
    upload_f32(&*l, da, &a);
    upload_f32(&*l, db, &bm);
    // SAFETY: the buffers hold `batch` matrices at the given strides.
    unsafe {
        cl.sgemm_strided_batched(
            Op::N,
            Op::T,
            m,
            n,
            k,
            1.0,
            da,
            m,
            sa,
            db,
            n,
            sb,
            0.0,
            dc,
            m,
            sc,
            batch,
        )
    }
    .unwrap();
    let got = download_f32(&*l, dc, sc * batch);
    let mut want = vec![0f32; sc * batch];
    for i in 0..batch {
        gemm_ref(
            Op::N,
            Op::T,
            m,
            n,
            k,
            1.0,
            &a[i * sa..],
            m,
            &bm[i * sb..],
            n,
            0.0,
            &mut want[i * sc..(i + 1) * sc],
            m,
        );
    }
    assert_close(&got, &want, "sgemm_strided_batched");
    // Dimensions beyond cuBLAS's int are rejected, not truncated.
    // SAFETY: rejected before any device access.
    let e = unsafe { cl.sgemm(Op::N, Op::N, 1 << 40, 1, 1, 1.0, da, 1, db, 1, 0.0, dc, 1) };
    assert!(matches!(e, Err(Error::InvalidArgument(_))));
    l.synchronize().unwrap();
    // SAFETY: synchronized.
    unsafe {
        b.free(da, a.len() * 4);
        b.free(db, bm.len() * 4);
        b.free(dc, sc * batch * 4);
    }
}

#[test]
fn alloc_free_and_out_of_memory() {
    let b = gpu!("alloc_free_and_out_of_memory");
    let info = b.mem_info().unwrap();
    assert!(info.total > 0 && info.free <= info.total);
    let mut ptrs = Vec::new();
    for bytes in [1usize, 255, 256, 4096, 1 << 20, 33 << 20] {
        let p = b.alloc(bytes).unwrap();
        assert_eq!(
            p.0 % 256,
            0,
            "allocation of {bytes} bytes is not 256-byte aligned"
        );
        ptrs.push((p, bytes));
    }
    let after = b.mem_info().unwrap();
    assert!(
        after.free < info.free,
        "free memory did not drop: {info:?} -> {after:?}"
    );
    for (p, bytes) in ptrs {
        // SAFETY: allocated above, unused, freed once.
        unsafe { b.free(p, bytes) };
    }
    match b.alloc(info.total * 2) {
        Err(Error::BackendOutOfMemory { device, bytes }) => {
            assert_eq!(device, "cuda:0");
            assert_eq!(bytes, info.total * 2);
        }
        other => panic!("expected BackendOutOfMemory, got {other:?}"),
    }
    // The device still works after an OOM.
    let p = b.alloc(1 << 20).unwrap();
    // SAFETY: allocated just above, unused.
    unsafe { b.free(p, 1 << 20) };
    b.synchronize().unwrap();
    assert_eq!(b.free_errors(), 0);
}

#[test]
fn device_end_to_end() {
    use lanes::{Device, DeviceConfig};
    let dev = match Device::cuda(
        0,
        DeviceConfig {
            lanes: 4,
            ..Default::default()
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            skip("device_end_to_end", &e);
            return;
        }
    };
    let lease = dev.lease().unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let buf = lease.alloc(data.len()).unwrap();
    lease.upload(&buf, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    lease.download(&buf, &mut back).unwrap();
    assert!(back == data);
    let (tx, rx) = mpsc::channel();
    lease.on_complete(move || tx.send(()).unwrap()).unwrap();
    rx.recv_timeout(Duration::from_secs(10))
        .expect("on_complete never ran");
    drop(buf);
    drop(lease);
    let report = dev.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(report.callbacks_pending, 0);
}

#[test]
fn callback_may_drop_the_last_device_handle() {
    use lanes::{Device, DeviceConfig};
    let dev = match Device::cuda(
        0,
        DeviceConfig {
            lanes: 2,
            ..Default::default()
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            skip("callback_may_drop_the_last_device_handle", &e);
            return;
        }
    };
    let lease = dev.lease().unwrap();
    let buf = lease.alloc(1 << 20).unwrap();
    lease.upload(&buf, &vec![3u8; 1 << 20]).unwrap();
    let (tx, rx) = mpsc::channel();
    let keep = dev.clone();
    // The callback owns the last buffer and the last device handle: dropping them
    // frees memory, streams and the context from the callback's thread.
    lease
        .on_complete(move || {
            drop(buf);
            drop(keep);
            tx.send(()).unwrap();
        })
        .unwrap();
    drop(lease);
    drop(dev);
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the callback that dropped the device never finished");
}

/// Process CPU time (user + system) from /proc/self/stat, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Not a pass/fail test: measures what each SyncMode costs, for the choice of the
/// default (printed).
#[test]
fn sync_mode_report() {
    let b = Arc::new(gpu!("sync_mode_report"));
    let empty = b.function("lanes_test", SRC, "empty").unwrap();
    for mode in [SyncMode::Spin, SyncMode::Yield, SyncMode::Blocking] {
        b.set_sync_mode(mode).unwrap();
        // One thread: launch + lane synchronize round trip.
        let l = lane(&b, 0);
        let cl = cuda(&*l);
        let iters = 2000;
        for _ in 0..50 {
            // SAFETY: `empty` takes no parameters.
            unsafe { cl.launch(&empty, (1, 1, 1), (32, 1, 1), 0, &mut []) }.unwrap();
            l.synchronize().unwrap();
        }
        let t = Instant::now();
        for _ in 0..iters {
            // SAFETY: as above.
            unsafe { cl.launch(&empty, (1, 1, 1), (32, 1, 1), 0, &mut []) }.unwrap();
            l.synchronize().unwrap();
        }
        let single = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
        // Small copy round trip (a request's inputs up, its outputs down).
        let x = b.alloc(8192).unwrap();
        let up = vec![1u8; 512];
        let mut down = vec![0u8; 1536];
        let t = Instant::now();
        for _ in 0..iters {
            // SAFETY: x holds 8192 bytes.
            unsafe {
                l.copy_htod(&up, x).unwrap();
                l.copy_dtoh(x, &mut down).unwrap();
            }
        }
        let copies = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
        // SAFETY: copy_dtoh waited for the last copy.
        unsafe { b.free(x, 8192) };
        drop(l);

        // Many threads, one lane each. Per iteration: `launches` empty kernels, then
        // (if `spin_us` > 0) one kernel busy for `spin_us` on the GPU, then the lane's
        // synchronize. The last shape is forward-pass-like: launch-bound host work
        // plus a wait, from more threads than cores.
        let spin = b.function("lanes_test", SRC, "spin_fill").unwrap();
        let mut lines = Vec::new();
        for (threads, launches, spin_us, per) in [
            (8usize, 10usize, 0i64, 400usize),
            (32, 10, 0, 400),
            (32, 60, 300, 60),
        ] {
            let cycles = cycles_for(&b, 1) * spin_us / 1000;
            let barrier = Arc::new(Barrier::new(threads + 1));
            let handles: Vec<_> = (0..threads)
                .map(|i| {
                    let (b, barrier) = (b.clone(), barrier.clone());
                    let (f, spin) = (empty.clone(), spin.clone());
                    std::thread::spawn(move || {
                        let l = b.create_lane(1 + i).unwrap();
                        let cl = cuda(&*l);
                        let (x, n, v) = (0u64, 0u32, 0f32);
                        barrier.wait();
                        for _ in 0..per {
                            for _ in 0..launches {
                                // SAFETY: `empty` takes no parameters.
                                unsafe { cl.launch(&f, (1, 1, 1), (32, 1, 1), 0, &mut []) }
                                    .unwrap();
                            }
                            if cycles > 0 {
                                let mut args = [
                                    kernel_arg(&x),
                                    kernel_arg(&n),
                                    kernel_arg(&v),
                                    kernel_arg(&cycles),
                                ];
                                // SAFETY: matches `spin_fill`'s parameters; n = 0 so
                                // the null pointer is never written.
                                unsafe { cl.launch(&spin, (1, 1, 1), (32, 1, 1), 0, &mut args) }
                                    .unwrap();
                            }
                            l.synchronize().unwrap();
                        }
                        barrier.wait();
                    })
                })
                .collect();
            barrier.wait();
            let (t, c) = (Instant::now(), cpu_seconds());
            barrier.wait();
            let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
            for h in handles {
                h.join().unwrap();
            }
            lines.push(format!(
                "{threads} thr x ({launches} launches + {spin_us} us kernel + sync): {:.0} iters/s, \
                 CPU {:.1} cores",
                (threads * per) as f64 / wall,
                cpu / wall
            ));
        }
        say(&format!(
            "sync mode {mode}: launch+sync {single:.1} us; 512 B up + 1.5 KiB down {copies:.1} us; {}",
            lines.join("; ")
        ));
    }
    b.set_sync_mode(SyncMode::Yield).unwrap();
}
