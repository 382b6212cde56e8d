//! 16-bit `linear` through cuBLASLt's fused epilogue (bias, tanh GELU) on a GPU.
//!
//! 1. f16 and bf16, rows 1 / 7 / 128 / 1000, MiniLM's projections (k 384 or 1536,
//!    n 384, 1152, 1536) and an odd width (n 30), GELU on and off: the cuBLASLt
//!    path and the forced `cublasGemmEx` + `bias_act` path (two executors in one
//!    process, [`CudaExec::with_blaslt`]) each against the host f32 reference on
//!    the same dtype-rounded inputs (`|diff| <= tol * (1 + |ref|)`, tol 2e-3 for f16,
//!    1.6e-2 for bf16, which covers the tanh GELU's <= 4.7e-4), and against each
//!    other. The lane's cuBLASLt counters prove which path ran: every MiniLM shape
//!    must be a cuBLASLt matmul, the forced executor must never use it, f32 never.
//!    The cuBLASLt path is also run with the lane's SM budget at 16
//!    (`CudaLane::set_sm_budget`): its own plan, the same tolerance.
//!    f32 `linear` takes cuBLASLt (exact f32) unless switched off or forced onto
//!    `linear_tn`, and keeps the erf GELU; up to 256 rows it runs as
//!    `small_linear` (one kernel) unless the lane is marked crowded. Whole-device plans are timed once per
//!    device and shared by its lanes (bit-identical outputs); budgeted ones never.
//! 2. A CUDA graph capturing a cuBLASLt matmul of a shape first seen inside the
//!    capture replays what the host computes, for fresh inputs each replay.
//! 3. The f16 encoder with graphs on and off gives the same embeddings, close to
//!    f32's, with its GEMMs on cuBLASLt (unless `LANES_CUBLASLT=off`).
//!
//! Skips (prints `SKIPPED (no CUDA)`) without a GPU, fails instead under
//! `LANES_REQUIRE_CUDA=1`. Test 3 needs the model (`$LANES_MODEL`).
#![cfg(feature = "cuda")]

mod common;

use common::{cosine, cuda, fixtures, max_abs_diff, model_dir, Dt as Half, Rng, HALVES};
use lanes::backend::cuda::{CudaLane, LtStats};
use lanes::{Buffer, Lease};
use lanes_nn::exec::cuda::{
    blaslt_from_env, small_linear_mode, CudaExec, Gemm, SmallLinear, SMALL_MAX_ROWS,
};
use lanes_nn::exec::Exec;
use lanes_nn::{cpu, DType, Encoder, EncoderOptions, Precision, Tensor, TensorMut};

fn cuda_lane(lease: &Lease) -> &CudaLane {
    lease
        .raw()
        .as_any()
        .downcast_ref::<CudaLane>()
        .expect("a CUDA lane")
}

/// The lane's cuBLASLt counters (zero where it has no cuBLASLt handle yet).
fn lt_stats(lease: &Lease) -> LtStats {
    cuda_lane(lease)
        .blas_lt()
        .map(|l| l.stats())
        .unwrap_or_default()
}

fn up(lane: &Lease, bytes: &[u8]) -> Buffer {
    let buf = lane.alloc(bytes.len().max(16)).expect("alloc");
    lane.upload(&buf, bytes).expect("upload");
    buf
}

fn down(lane: &Lease, h: Half, buf: &Buffer, n: usize) -> Vec<f32> {
    let mut bytes = vec![0u8; n * 2];
    lane.download(buf, &mut bytes).expect("download");
    h.decode(&bytes)
}

/// `ex.linear` on device inputs (the bias in `h`, as the encoder keeps it);
/// returns the output.
#[allow(clippy::too_many_arguments)]
fn run_linear(
    ex: &CudaExec,
    lane: &Lease,
    h: Half,
    (rows, k, n): (usize, usize, usize),
    x: &Buffer,
    w: &Buffer,
    b: &Buffer,
    gelu: bool,
) -> Vec<f32> {
    run_linear_bias(ex, lane, h, (rows, k, n), x, w, (b, h.dtype()), gelu)
}

/// `ex.linear` with the bias of dtype `bias_dt` (f32 or `h`).
#[allow(clippy::too_many_arguments)]
fn run_linear_bias(
    ex: &CudaExec,
    lane: &Lease,
    h: Half,
    (rows, k, n): (usize, usize, usize),
    x: &Buffer,
    w: &Buffer,
    (b, bias_dt): (&Buffer, DType),
    gelu: bool,
) -> Vec<f32> {
    let mut out = lane.alloc(rows * n * 2).expect("alloc");
    let dt = h.dtype();
    ex.linear(
        lane,
        Tensor::new("x", x, dt, &[rows, k]).unwrap(),
        Tensor::new("w", w, dt, &[n, k]).unwrap(),
        Tensor::new("b", b, bias_dt, &[n]).unwrap(),
        gelu,
        TensorMut::new("out", &mut out, dt, &[rows, n]).unwrap(),
    )
    .unwrap_or_else(|e| panic!("linear {rows}x{k}x{n}: {e}"));
    down(lane, h, &out, rows * n)
}

/// The host reference: f32 GEMM of the (rounded) inputs, the exact GELU, rounded
/// to `h`.
#[allow(clippy::too_many_arguments)]
fn reference(
    h: Half,
    (rows, k, _n): (usize, usize, usize),
    x: &[f32],
    w: &[f32],
    b: &[f32],
    gelu: bool,
) -> Vec<f32> {
    let mut want = vec![0f32; rows * b.len()];
    cpu::linear(x, rows, k, w, b, &mut want);
    if gelu {
        cpu::gelu_inplace(&mut want);
    }
    want.into_iter().map(|v| h.round(v)).collect()
}

/// Asserts `got` matches `want` within `h`'s rounding; returns the worst
/// `|diff| / (1 + |want|)`.
fn check(what: &str, h: Half, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (tol, min_cos) = h.tol();
    let mut worst = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let rel = (g - w).abs() / (1.0 + w.abs());
        assert!(
            rel <= tol && g.is_finite(),
            "{what} {h:?}: element {i}: got {g}, want {w} (|diff| / (1 + |want|) = {rel:.3e} > {tol:.1e})"
        );
        worst = worst.max(rel);
    }
    let c = cosine(got, want);
    assert!(c >= min_cos, "{what} {h:?}: cosine {c:.8} < {min_cos}");
    worst
}

/// MiniLM's projections (k, n, gelu): qkv, attention output, up (GELU), down;
/// plus the up projection without GELU and the down one with it.
const MINILM: [(usize, usize, bool); 6] = [
    (384, 1152, false),
    (384, 384, false),
    (384, 1536, true),
    (1536, 384, false),
    (384, 1536, false),
    (1536, 384, true),
];
/// Odd widths: not multiples of 8 (cuBLASLt may decline them; either path must
/// be right).
const ODD: [(usize, usize, bool); 3] = [(384, 30, false), (384, 30, true), (1536, 30, true)];
const ROWS: [usize; 4] = [1, 7, 128, 1000];

#[test]
fn lt_linear_matches_host_and_gemm_ex() {
    let Some(dev) = cuda() else { return };
    let lt = CudaExec::new(&dev)
        .expect("compile the kernels")
        .with_blaslt(true);
    let gemm = CudaExec::new(&dev)
        .expect("compile the kernels")
        .with_blaslt(false);
    assert!(lt.blaslt() && !gemm.blaslt());
    let lane = dev.lease().unwrap();
    if let Err(e) = cuda_lane(&lane).blas_lt() {
        panic!("the lane has no cuBLASLt (the test needs libcublasLt): {e}");
    }
    let mut worst_lt_vs_gemm = [0.0f32; 2];
    for (hi, h) in HALVES.into_iter().enumerate() {
        for (odd, shapes) in [(false, &MINILM[..]), (true, &ODD[..])] {
            for &(k, n, gelu) in shapes {
                for rows in ROWS {
                    let what = format!("{rows}x{k}x{n} gelu={gelu}");
                    let mut rng = Rng((rows * 7919 + k * 31 + n) as u64);
                    let x = rng.vec_in(h, rows * k, -1.0, 1.0);
                    // Weights scaled so outputs reach |x| ~ 2-4, where the
                    // tanh and erf GELUs differ most.
                    let w = rng.vec_in(h, n * k, -0.15, 0.15);
                    // The bias in `h` (as the encoder's 16-bit weights keep it).
                    let b = rng.vec_in(h, n, -0.5, 0.5);
                    let want = reference(h, (rows, k, n), &x, &w, &b, gelu);
                    let (xb, wb) = (up(&lane, &h.encode(&x)), up(&lane, &h.encode(&w)));
                    let bb = up(&lane, &h.encode(&b));

                    let before = lt_stats(&lane);
                    let got_gemm = run_linear(&gemm, &lane, h, (rows, k, n), &xb, &wb, &bb, gelu);
                    let mid = lt_stats(&lane);
                    assert_eq!(
                        mid.matmuls, before.matmuls,
                        "{what} {h:?}: with_blaslt(false) used cuBLASLt"
                    );
                    let got_lt = run_linear(&lt, &lane, h, (rows, k, n), &xb, &wb, &bb, gelu);
                    let after = lt_stats(&lane);
                    let used_lt = after.matmuls == mid.matmuls + 1;
                    if !odd {
                        assert!(
                            used_lt,
                            "{what} {h:?}: cuBLASLt declined a MiniLM shape ({:?}, stats {after:?})",
                            cuda_lane(&lane).blas_lt().ok().and_then(|l| l.last_rejection())
                        );
                    } else {
                        eprintln!(
                            "{what} {h:?}: {}",
                            if used_lt {
                                "cuBLASLt"
                            } else {
                                "declined by cuBLASLt, GemmEx"
                            }
                        );
                    }
                    // The same matmul planned for 16 SMs (a lane among busy
                    // others): a plan of its own, the same results.
                    let wide_plans = lt_stats(&lane).plans_built;
                    cuda_lane(&lane).set_sm_budget(16);
                    let got_narrow = run_linear(&lt, &lane, h, (rows, k, n), &xb, &wb, &bb, gelu);
                    cuda_lane(&lane).set_sm_budget(0);
                    if used_lt && std::env::var_os("LANES_GEMM_SMS").is_none() {
                        assert_eq!(
                            lt_stats(&lane).plans_built,
                            wide_plans + 1,
                            "{what} {h:?}: the narrow matmul reused the wide plan"
                        );
                    }
                    check(&format!("cuBLASLt narrow {what}"), h, &got_narrow, &want);
                    // An f32 bias: cuBLASLt is not asked (it refuses an f32 bias
                    // with a 16-bit output); GemmEx + the f32-bias kernel instead.
                    let bf = up(&lane, bytemuck::cast_slice(&b));
                    let pre = lt_stats(&lane);
                    let got_f32b = run_linear_bias(
                        &lt,
                        &lane,
                        h,
                        (rows, k, n),
                        &xb,
                        &wb,
                        (&bf, DType::F32),
                        gelu,
                    );
                    assert_eq!(
                        lt_stats(&lane).matmuls,
                        pre.matmuls,
                        "{what} {h:?}: an f32 bias went to cuBLASLt"
                    );
                    check(&format!("GemmEx f32 bias {what}"), h, &got_f32b, &want);
                    check(&format!("GemmEx {what}"), h, &got_gemm, &want);
                    check(&format!("cuBLASLt {what}"), h, &got_lt, &want);
                    let d = check(&format!("cuBLASLt vs GemmEx {what}"), h, &got_lt, &got_gemm);
                    worst_lt_vs_gemm[hi] = worst_lt_vs_gemm[hi].max(d);
                }
            }
        }
    }
    eprintln!(
        "worst |lt - gemm| / (1 + |gemm|): f16 {:.3e}, bf16 {:.3e}",
        worst_lt_vs_gemm[0], worst_lt_vs_gemm[1]
    );
}

/// f32 `linear` (+ the exact GELU) on a lane whose SM budget is `sms`: whether
/// cuBLASLt ran it, and its max |diff| from the host's.
fn f32_linear(ex: &CudaExec, lane: &Lease, shape: (usize, usize, usize), sms: u32) -> (bool, f32) {
    let (used_lt, diff, _) = f32_linear_out(ex, lane, shape, sms);
    (used_lt, diff)
}

/// [`f32_linear`], with the output (the inputs depend only on the shape).
fn f32_linear_out(
    ex: &CudaExec,
    lane: &Lease,
    (rows, k, n): (usize, usize, usize),
    sms: u32,
) -> (bool, f32, Vec<f32>) {
    let mut rng = Rng((rows * 31 + n) as u64);
    let (x, w, b) = (
        rng.vec(rows * k, -1.0, 1.0),
        rng.vec(n * k, -0.1, 0.1),
        rng.vec(n, -0.5, 0.5),
    );
    let (xb, wb, bb) = (
        up(lane, bytemuck::cast_slice(&x)),
        up(lane, bytemuck::cast_slice(&w)),
        up(lane, bytemuck::cast_slice(&b)),
    );
    let before = lt_stats(lane);
    let mut out = lane.alloc(rows * n * 4).unwrap();
    cuda_lane(lane).set_sm_budget(sms);
    let r = ex.linear(
        lane,
        Tensor::new("x", &xb, DType::F32, &[rows, k]).unwrap(),
        Tensor::new("w", &wb, DType::F32, &[n, k]).unwrap(),
        Tensor::new("b", &bb, DType::F32, &[n]).unwrap(),
        true,
        TensorMut::new("out", &mut out, DType::F32, &[rows, n]).unwrap(),
    );
    cuda_lane(lane).set_sm_budget(0);
    r.unwrap();
    let mut bytes = vec![0u8; rows * n * 4];
    lane.download(&out, &mut bytes).unwrap();
    let got: Vec<f32> = bytemuck::cast_slice(&bytes).to_vec();
    let mut want = vec![0f32; rows * n];
    cpu::linear(&x, rows, k, &w, &b, &mut want);
    cpu::gelu_inplace(&mut want);
    (
        lt_stats(lane).matmuls > before.matmuls,
        max_abs_diff(&got, &want),
        got,
    )
}

/// Whether `LANES_F32_LT=off` took f32 GEMMs off cuBLASLt.
fn f32_lt_off() -> bool {
    std::env::var("LANES_F32_LT").is_ok_and(|v| v.trim() == "off")
}

/// An executor on the default f32 GEMM path (`Gemm::Auto`, cuBLASLt on), or
/// `None` (having said SKIPPED) where the environment changed that path.
fn default_f32_exec(dev: &lanes::Device) -> Option<CudaExec> {
    let ex = CudaExec::new(dev)
        .expect("compile the kernels")
        .with_blaslt(true);
    if ex.gemm() != Gemm::Auto || f32_lt_off() {
        eprintln!("SKIPPED (f32 GEMMs are not on their default path here)");
        return None;
    }
    Some(ex)
}

/// Whether f32 `linear` of `shape` takes `small_linear` on a lane not marked
/// crowded (under `Gemm::Auto`; inputs from `up` are aligned), at any SM budget.
fn takes_small((rows, k, _): (usize, usize, usize)) -> bool {
    small_linear_mode() != SmallLinear::Off && rows <= SMALL_MAX_ROWS && k % 4 == 0
}

/// f32 `linear` of few rows runs as `small_linear` (one kernel: K split over
/// warps, bias and erf GELU in its epilogue) where `LANES_F32_SMALL` lets it,
/// else on cuBLASLt; both match the host's f32 linear + erf GELU within 1e-4, on
/// MiniLM's batch-1 shapes (32-row tiles for QKV and up, 16-row ones for the
/// others), partial tiles (rows 1, 7, 100, 130; n 30, 50), shallow K, K not a
/// multiple of 4 (cuBLASLt then) and 256 rows.
#[test]
fn small_linear_matches_host() {
    let Some(dev) = cuda() else { return };
    let Some(ex) = default_f32_exec(&dev) else {
        return;
    };
    let lane = dev.lease().unwrap();
    let mut small_ran = 0;
    for shape in [
        (1, 384, 384),
        (7, 384, 30),
        (128, 384, 1152),
        (128, 384, 1536),
        (128, 1536, 384),
        (100, 384, 1536),
        (130, 20, 50),
        (5, 22, 40),
        (256, 384, 384),
    ] {
        for crowded in [false, true] {
            cuda_lane(&lane).set_crowded(crowded);
            let (used_lt, d) = f32_linear(&ex, &lane, shape, 16);
            cuda_lane(&lane).set_crowded(false);
            let small = takes_small(shape) && !(crowded && small_linear_mode() == SmallLinear::Few);
            let what = format!("{shape:?} (crowded {crowded})");
            assert_eq!(used_lt, !small, "{what}: cuBLASLt {used_lt}");
            assert!(d <= 1e-4, "{what}: max |diff| {d:.3e}");
            small_ran += usize::from(small);
        }
    }
    if small_linear_mode() != SmallLinear::Off {
        assert!(small_ran >= 7, "small_linear ran {small_ran} times");
    }
}

/// Whole-device cuBLASLt plans are timed once per device (`LANES_LT_TUNE`, on by
/// default): the first lane to meet a shape times the heuristic's candidates
/// (`LtStats::timed`), a second lane takes its choice without timing and computes
/// the same bits; a plan with an SM budget is never timed. Every result matches
/// the host within 1e-4.
#[test]
fn lt_algorithms_are_timed_once_per_device() {
    let Some(dev) = cuda() else { return };
    let Some(ex) = default_f32_exec(&dev) else {
        return;
    };
    let (a, b) = (dev.lease().unwrap(), dev.lease().unwrap());
    assert_ne!(
        a.index(),
        b.index(),
        "two leases held at once are two lanes"
    );
    let tuning = lanes::backend::cuda::lt_tuning();
    // MiniLM's QKV, up and down projections at 300 tokens (fewer rows go to
    // `small_linear`).
    for shape in [(300, 384, 1152), (300, 384, 1536), (300, 1536, 384)] {
        let (ta, tb) = (lt_stats(&a).timed, lt_stats(&b).timed);
        let (lt_a, da, out_a) = f32_linear_out(&ex, &a, shape, 0);
        let (lt_b, db, out_b) = f32_linear_out(&ex, &b, shape, 0);
        assert!(lt_a && lt_b, "{shape:?}: cuBLASLt ran");
        assert!(da <= 1e-4 && db <= 1e-4, "{shape:?}: {da:.3e} / {db:.3e}");
        let timed_a = lt_stats(&a).timed - ta;
        assert_eq!(
            lt_stats(&b).timed,
            tb,
            "{shape:?}: the second lane re-timed"
        );
        if tuning {
            assert_eq!(timed_a, 1, "{shape:?}: the first lane timed the candidates");
        } else {
            assert_eq!(timed_a, 0, "{shape:?}: LANES_LT_TUNE=off, yet timed");
        }
        assert!(
            out_a
                .iter()
                .zip(&out_b)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{shape:?}: two lanes with one algorithm differ"
        );
        let before = lt_stats(&a).timed;
        let (_, d16, _) = f32_linear_out(&ex, &a, (shape.0 + 8, shape.1, shape.2), 16);
        assert!(d16 <= 1e-4, "{shape:?} at 16 SMs: {d16:.3e}");
        assert_eq!(
            lt_stats(&a).timed,
            before,
            "{shape:?}: a budgeted plan was timed"
        );
    }
}

/// f32 takes cuBLASLt (exact f32, bias epilogue, then the erf GELU) at every
/// size and SM budget, unless `LANES_F32_LT=off` or the GEMM path is forced
/// (`Gemm::Fused`: `linear_tn`, never cuBLASLt). Every path matches the host's
/// f32 linear + erf GELU within 1e-4 (the tanh GELU would be off by up to 4.7e-4).
#[test]
fn f32_linear_takes_lt_unless_off_or_forced() {
    let Some(dev) = cuda() else { return };
    let ex = CudaExec::new(&dev)
        .expect("compile the kernels")
        .with_blaslt(true);
    let tn = CudaExec::with_gemm(&dev, Gemm::Fused).expect("compile the kernels");
    let lane = dev.lease().unwrap();
    let off = f32_lt_off();
    let auto = ex.gemm() == Gemm::Auto;
    for (shape, sms) in [
        ((300, 384, 1536), 0),
        ((128, 384, 384), 0),
        ((128, 384, 384), 16),
    ] {
        let (used_lt, d) = f32_linear(&ex, &lane, shape, sms);
        assert_eq!(
            used_lt,
            !off && auto && !takes_small(shape),
            "{shape:?} with {sms} SMs: cuBLASLt used {used_lt}"
        );
        assert!(
            d <= 1e-4,
            "{shape:?} with {sms} SMs: f32 linear + erf GELU: max |diff| {d:.3e}"
        );
        let (used_lt, d) = f32_linear(&tn, &lane, shape, sms);
        assert!(!used_lt, "{shape:?}: Gemm::Fused used cuBLASLt");
        assert!(d <= 1e-4, "{shape:?} linear_tn: max |diff| {d:.3e}");
    }
}

#[test]
fn captured_lt_matmul_replays() {
    let Some(dev) = cuda() else { return };
    let ex = CudaExec::new(&dev)
        .expect("compile the kernels")
        .with_blaslt(true);
    let lane = dev.lease().unwrap();
    assert!(lane.is_exclusive(), "capture needs an exclusive lease");
    for h in HALVES {
        let (k, n) = (384, 1536);
        let mut rng = Rng(11);
        let w = rng.vec_in(h, n * k, -0.15, 0.15);
        let b = rng.vec_in(h, n, -0.5, 0.5);
        let (wb, bb) = (up(&lane, &h.encode(&w)), up(&lane, &h.encode(&b)));
        // One eager linear first: creates the lane's cuBLASLt handle and workspace
        // (as the encoder's eager forward does before its first capture).
        let x0 = rng.vec_in(h, 64 * k, -1.0, 1.0);
        let xb0 = up(&lane, &h.encode(&x0));
        run_linear(&ex, &lane, h, (64, k, n), &xb0, &wb, &bb, true);
        // A row count never run eagerly: its plan is built during the capture.
        let rows = 77 + h as usize;
        let before = lt_stats(&lane);
        let graph = lane
            .capture(|l| {
                let x = l.alloc(rows * k * 2)?;
                let mut out = l.alloc(rows * n * 2)?;
                let dt = h.dtype();
                ex.linear(
                    l,
                    Tensor::new("x", &x, dt, &[rows, k]).unwrap(),
                    Tensor::new("w", &wb, dt, &[n, k]).unwrap(),
                    Tensor::new("b", &bb, dt, &[n]).unwrap(),
                    true,
                    TensorMut::new("out", &mut out, dt, &[rows, n]).unwrap(),
                )
                .map_err(|e| match e {
                    lanes_nn::NnError::Runtime(r) => r,
                    other => lanes::Error::InvalidArgument(other.to_string()),
                })?;
                Ok(vec![x, out])
            })
            .unwrap_or_else(|e| panic!("{h:?}: capturing a cuBLASLt matmul: {e}"));
        let after = lt_stats(&lane);
        assert_eq!(
            after.matmuls,
            before.matmuls + 1,
            "{h:?}: the captured linear is not a cuBLASLt matmul ({after:?})"
        );
        let [gx, gout] = graph.buffers() else {
            panic!("two graph buffers")
        };
        for replay in 0..3 {
            let x = rng.vec_in(h, rows * k, -1.0, 1.0);
            lane.upload(gx, &h.encode(&x)).unwrap();
            graph.launch(&lane).unwrap();
            let got = down(&lane, h, gout, rows * n);
            let want = reference(h, (rows, k, n), &x, &w, &b, true);
            check(&format!("graph replay {replay}"), h, &got, &want);
            // The same problem run eagerly takes the same plan.
            let xb = up(&lane, &h.encode(&x));
            let eager = run_linear(&ex, &lane, h, (rows, k, n), &xb, &wb, &bb, true);
            let d = max_abs_diff(&got, &eager);
            eprintln!("{h:?} replay {replay}: max |graph - eager| {d:.3e}");
            check(&format!("graph replay {replay} vs eager"), h, &got, &eager);
        }
    }
}

#[test]
fn f16_encoder_graphs_on_and_off_agree() {
    let Some(dev) = cuda() else { return };
    let Some(dir) = model_dir() else { return };
    let texts: Vec<&str> = fixtures().iter().map(|f| f.text.as_str()).collect();
    // One text, a few, all 25: several token buckets.
    let batches: Vec<Vec<&str>> = vec![texts[..1].to_vec(), texts[3..9].to_vec(), texts.clone()];
    let embed = |enc: &Encoder, lane: &Lease| -> Vec<Vec<f32>> {
        batches
            .iter()
            .map(|b| {
                let tokens = enc.tokenizer().encode_batch(b).unwrap();
                enc.forward(lane, &tokens).unwrap()
            })
            .collect()
    };
    let f32_enc = Encoder::load_with(
        &dir,
        &dev,
        EncoderOptions {
            precision: Precision::F32,
        },
    )
    .unwrap();
    let lane = dev.lease().unwrap();
    dev.set_graphs(false);
    let reference = embed(&f32_enc, &lane);
    drop(f32_enc);

    let enc = Encoder::load_with(
        &dir,
        &dev,
        EncoderOptions {
            precision: Precision::F16,
        },
    )
    .unwrap();
    let before = lt_stats(&lane);
    let eager = embed(&enc, &lane);
    let after = lt_stats(&lane);
    if blaslt_from_env() {
        // 6 layers × 4 projections per forward.
        assert!(
            after.matmuls >= before.matmuls + 24 * batches.len() as u64,
            "the f16 encoder's GEMMs did not run on cuBLASLt: {before:?} -> {after:?}"
        );
    } else {
        eprintln!("LANES_CUBLASLT=off: the encoder runs GemmEx");
    }
    dev.set_graphs(true);
    for pass in 0..2 {
        let graphed = embed(&enc, &lane);
        for (i, ((g, e), r)) in graphed.iter().zip(&eager).zip(&reference).enumerate() {
            let (c, d) = (cosine(g, e), max_abs_diff(g, e));
            assert!(
                c >= 0.99999 && d <= 2e-3,
                "pass {pass} batch {i}: graph vs eager cosine {c:.8}, max |diff| {d:.3e}"
            );
            let h = r.len() / batches[i].len();
            for (j, (gs, rs)) in g.chunks(h).zip(r.chunks(h)).enumerate() {
                let c = cosine(gs, rs);
                assert!(c >= 0.9999, "batch {i} text {j}: f16 vs f32 cosine {c:.8}");
            }
        }
    }
    let counts = enc.graph_counts();
    assert!(
        counts.replays >= 2 * batches.len() as u64 && counts.fallbacks == 0,
        "graphs did not replay: {counts:?}"
    );
}
