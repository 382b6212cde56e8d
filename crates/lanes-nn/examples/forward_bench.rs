//! Per-op and per-forward timings of the CUDA executor at MiniLM's shapes
//! (6 layers, hidden 384, 12 heads, intermediate 1536), per dtype, on random
//! weights: the [`Exec`] ops alone, no tokenizer, no host copies.
//!
//! usage: forward_bench [--only f32|f16|bf16|float32|float16|bfloat16] [--batch N] [--iters N] [--tokens N]
//!
//! Prints JSON lines: one per (dtype, batch, op) with µs per call, and one per
//! (dtype, batch) with ms per forward and sequences per second. Each figure is the
//! host wall time of `iters` back-to-back enqueues followed by one synchronize,
//! divided by `iters` (after two warm-up rounds). Needs CUDA device 0.
//!
//! Attention: op `attention` is the executor's kernel (`LANES_ATTN=v1|v2`, default
//! v2, also used by the whole forward); for f16 / bf16 the ops `attention_v1` and
//! `attention_v2` time both tensor-core kernels on the same input.

use std::time::Instant;

use lanes::{Buffer, Device, DeviceConfig, Lease};
use lanes_nn::exec::cuda::{AttnKernel, CudaExec};
use lanes_nn::exec::{EmbedTables, Exec};
use lanes_nn::tensor::{DType, Tensor, TensorMut};

const LAYERS: usize = 6;
const HIDDEN: usize = 384;
const HEADS: usize = 12;
const INTER: usize = 1536;
const VOCAB: usize = 30522;
const MAX_POS: usize = 512;

type R<T> = Result<T, Box<dyn std::error::Error>>;

/// Uploads `n` pseudo-random values in [-a, a) as `dt`.
fn random(lane: &Lease, dt: DType, n: usize, a: f32, seed: u64) -> R<Buffer> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    };
    let bytes: Vec<u8> = match dt {
        DType::F32 => (0..n).flat_map(|_| next().to_le_bytes()).collect(),
        DType::F16 => (0..n)
            .flat_map(|_| half::f16::from_f32(next()).to_le_bytes())
            .collect(),
        DType::BF16 => (0..n)
            .flat_map(|_| half::bf16::from_f32(next()).to_le_bytes())
            .collect(),
        DType::U32 => (0..n)
            .flat_map(|_| ((next().abs() * 1000.0) as u32 + 1000).to_le_bytes())
            .collect(),
    };
    let buf = lane.alloc(bytes.len())?;
    lane.upload(&buf, &bytes)?;
    Ok(buf)
}

struct Layer {
    qkv_w: Buffer,
    qkv_b: Buffer,
    o_w: Buffer,
    o_b: Buffer,
    i_w: Buffer,
    i_b: Buffer,
    d_w: Buffer,
    d_b: Buffer,
    g: Buffer,
    b: Buffer,
}

/// Times `iters` calls of `f` (after 2 warm-up calls): µs per call.
fn time(lane: &Lease, iters: usize, mut f: impl FnMut() -> R<()>) -> R<f64> {
    for _ in 0..2 {
        f()?;
    }
    lane.synchronize()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    lane.synchronize()?;
    Ok(t.elapsed().as_secs_f64() * 1e6 / iters as f64)
}

/// `ex` runs everything; `by_kernel` holds an executor per attention kernel.
fn bench(
    dev: &Device,
    ex: &CudaExec,
    by_kernel: &[(&str, &CudaExec)],
    dt: DType,
    batch: usize,
    seq: usize,
    iters: usize,
) -> R<()> {
    let lane = dev.lease()?;
    let tokens = batch * seq;
    let f32t = DType::F32;
    let word = random(&lane, dt, VOCAB * HIDDEN, 0.5, 1)?;
    let pos = random(&lane, dt, MAX_POS * HIDDEN, 0.5, 2)?;
    let ty = random(&lane, dt, 2 * HIDDEN, 0.5, 3)?;
    let eg = random(&lane, f32t, HIDDEN, 1.0, 4)?;
    let eb = random(&lane, f32t, HIDDEN, 0.1, 5)?;
    let layers: Vec<Layer> = (0..LAYERS as u64)
        .map(|l| -> R<Layer> {
            Ok(Layer {
                qkv_w: random(&lane, dt, 3 * HIDDEN * HIDDEN, 0.05, 10 + l)?,
                qkv_b: random(&lane, f32t, 3 * HIDDEN, 0.1, 20 + l)?,
                o_w: random(&lane, dt, HIDDEN * HIDDEN, 0.05, 30 + l)?,
                o_b: random(&lane, f32t, HIDDEN, 0.1, 40 + l)?,
                i_w: random(&lane, dt, INTER * HIDDEN, 0.05, 50 + l)?,
                i_b: random(&lane, f32t, INTER, 0.1, 60 + l)?,
                d_w: random(&lane, dt, HIDDEN * INTER, 0.05, 70 + l)?,
                d_b: random(&lane, f32t, HIDDEN, 0.1, 80 + l)?,
                g: random(&lane, f32t, HIDDEN, 1.0, 90 + l)?,
                b: random(&lane, f32t, HIDDEN, 0.1, 100 + l)?,
            })
        })
        .collect::<R<_>>()?;
    let ids = random(&lane, DType::U32, tokens, 1.0, 7)?;
    let types = lane.alloc(tokens * 4)?;
    lane.upload(&types, &vec![0u8; tokens * 4])?;
    let offs: Vec<u8> = (0..=batch)
        .flat_map(|b| ((b * seq) as u32).to_le_bytes())
        .collect();
    let offsets = lane.alloc(offs.len())?;
    lane.upload(&offsets, &offs)?;
    let sz = dt.size();
    let mut x = lane.alloc(tokens * HIDDEN * sz)?;
    let mut qkv = lane.alloc(tokens * 3 * HIDDEN * sz)?;
    let mut ctx = lane.alloc(tokens * HIDDEN * sz)?;
    let mut attn = lane.alloc(tokens * HIDDEN * sz)?;
    let mut h1 = lane.alloc(tokens * HIDDEN * sz)?;
    let mut up = lane.alloc(tokens * INTER * sz)?;
    let mut pooled = lane.alloc(batch * HIDDEN * 4)?;

    let tables = EmbedTables {
        word: Tensor::new("word", &word, dt, &[VOCAB, HIDDEN])?,
        position: Tensor::new("position", &pos, dt, &[MAX_POS, HIDDEN])?,
        token_type: Tensor::new("token_type", &ty, dt, &[2, HIDDEN])?,
        gamma: Tensor::new("gamma", &eg, f32t, &[HIDDEN])?,
        beta: Tensor::new("beta", &eb, f32t, &[HIDDEN])?,
    };
    let l0 = &layers[0];
    let name = dt.name();
    let report = |op: &str, us: f64| {
        println!(
            "{{\"bench\":\"op\",\"dtype\":\"{name}\",\"batch\":{batch},\"tokens\":{seq},\"op\":\"{op}\",\"us\":{us:.2}}}"
        );
    };
    let eps = 1e-12;
    let us = time(&lane, iters, || {
        let out = TensorMut::new("x", &mut x, dt, &[tokens, HIDDEN])?;
        let (i, ty, o) = (
            Tensor::new("ids", &ids, DType::U32, &[tokens])?,
            Tensor::new("types", &types, DType::U32, &[tokens])?,
            Tensor::new("offsets", &offsets, DType::U32, &[batch + 1])?,
        );
        Ok(ex.embed_ln(&lane, i, ty, o, &tables, eps, out)?)
    })?;
    report("embed_ln", us);
    let linear = |lane: &Lease,
                  x: &Buffer,
                  w: &Buffer,
                  b: &Buffer,
                  (k, n): (usize, usize),
                  gelu: bool,
                  out: &mut Buffer|
     -> R<()> {
        let out = TensorMut::new("out", out, dt, &[tokens, n])?;
        Ok(ex.linear(
            lane,
            Tensor::new("x", x, dt, &[tokens, k])?,
            Tensor::new("w", w, dt, &[n, k])?,
            Tensor::new("b", b, f32t, &[n])?,
            gelu,
            out,
        )?)
    };
    let us = time(&lane, iters, || {
        linear(
            &lane,
            &x,
            &l0.qkv_w,
            &l0.qkv_b,
            (HIDDEN, 3 * HIDDEN),
            false,
            &mut qkv,
        )
    })?;
    report("linear_qkv", us);
    let attention_on = |ex: &CudaExec, lane: &Lease, qkv: &Buffer, out: &mut Buffer| -> R<()> {
        let out = TensorMut::new("ctx", out, dt, &[tokens, HIDDEN])?;
        Ok(ex.attention(
            lane,
            Tensor::new("qkv", qkv, dt, &[tokens, 3 * HIDDEN])?,
            Tensor::new("offsets", &offsets, DType::U32, &[batch + 1])?,
            seq,
            HEADS,
            out,
        )?)
    };
    let attention = |lane: &Lease, qkv: &Buffer, out: &mut Buffer| attention_on(ex, lane, qkv, out);
    let us = time(&lane, iters, || attention(&lane, &qkv, &mut ctx))?;
    report("attention", us);
    if dt != DType::F32 {
        for &(op, kex) in by_kernel {
            let us = time(&lane, iters, || attention_on(kex, &lane, &qkv, &mut ctx))?;
            report(op, us);
        }
    }
    let us = time(&lane, iters, || {
        linear(
            &lane,
            &ctx,
            &l0.o_w,
            &l0.o_b,
            (HIDDEN, HIDDEN),
            false,
            &mut attn,
        )
    })?;
    report("linear_o", us);
    let add_ln = |lane: &Lease, a: &Buffer, r: &Buffer, l: &Layer, out: &mut Buffer| -> R<()> {
        let out = TensorMut::new("h", out, dt, &[tokens, HIDDEN])?;
        Ok(ex.add_layer_norm(
            lane,
            Tensor::new("x", a, dt, &[tokens, HIDDEN])?,
            Tensor::new("residual", r, dt, &[tokens, HIDDEN])?,
            Tensor::new("gamma", &l.g, f32t, &[HIDDEN])?,
            Tensor::new("beta", &l.b, f32t, &[HIDDEN])?,
            eps,
            out,
        )?)
    };
    let us = time(&lane, iters, || add_ln(&lane, &attn, &x, l0, &mut h1))?;
    report("add_layer_norm", us);
    let us = time(&lane, iters, || {
        linear(&lane, &h1, &l0.i_w, &l0.i_b, (HIDDEN, INTER), true, &mut up)
    })?;
    report("linear_up_gelu", us);
    let us = time(&lane, iters, || {
        linear(
            &lane,
            &up,
            &l0.d_w,
            &l0.d_b,
            (INTER, HIDDEN),
            false,
            &mut attn,
        )
    })?;
    report("linear_down", us);
    let pool = |lane: &Lease, h: &Buffer, out: &mut Buffer| -> R<()> {
        let out = TensorMut::new("pooled", out, f32t, &[batch, HIDDEN])?;
        Ok(ex.pool_mean(
            lane,
            Tensor::new("hidden", h, dt, &[tokens, HIDDEN])?,
            Tensor::new("offsets", &offsets, DType::U32, &[batch + 1])?,
            out,
        )?)
    };
    let us = time(&lane, iters, || pool(&lane, &x, &mut pooled))?;
    report("pool_mean", us);

    // The whole forward (x -> x through every layer; buffers reused).
    let us = time(&lane, iters, || {
        {
            let out = TensorMut::new("x", &mut x, dt, &[tokens, HIDDEN])?;
            let (i, ty, o) = (
                Tensor::new("ids", &ids, DType::U32, &[tokens])?,
                Tensor::new("types", &types, DType::U32, &[tokens])?,
                Tensor::new("offsets", &offsets, DType::U32, &[batch + 1])?,
            );
            ex.embed_ln(&lane, i, ty, o, &tables, eps, out)?;
        }
        for l in &layers {
            linear(
                &lane,
                &x,
                &l.qkv_w,
                &l.qkv_b,
                (HIDDEN, 3 * HIDDEN),
                false,
                &mut qkv,
            )?;
            attention(&lane, &qkv, &mut ctx)?;
            linear(
                &lane,
                &ctx,
                &l.o_w,
                &l.o_b,
                (HIDDEN, HIDDEN),
                false,
                &mut attn,
            )?;
            add_ln(&lane, &attn, &x, l, &mut h1)?;
            linear(&lane, &h1, &l.i_w, &l.i_b, (HIDDEN, INTER), true, &mut up)?;
            linear(
                &lane,
                &up,
                &l.d_w,
                &l.d_b,
                (INTER, HIDDEN),
                false,
                &mut attn,
            )?;
            add_ln(&lane, &attn, &h1, l, &mut x)?;
        }
        pool(&lane, &x, &mut pooled)
    })?;
    println!(
        "{{\"bench\":\"forward\",\"dtype\":\"{name}\",\"batch\":{batch},\"tokens\":{seq},\"iters\":{iters},\"ms_per_forward\":{:.4},\"seq_per_s\":{:.1}}}",
        us / 1e3,
        batch as f64 / (us / 1e6)
    );
    Ok(())
}

fn parse_dtype(s: &str) -> R<DType> {
    Ok(match s {
        "f32" | "float32" => DType::F32,
        "f16" | "float16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        other => return Err(format!("--only {other}: expected f32, f16 or bf16").into()),
    })
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dtypes = vec![DType::F32, DType::F16, DType::BF16];
    let mut batches = vec![512usize, 1];
    let (mut iters, mut seq) = (0usize, 128usize);
    let mut i = 0;
    while i < args.len() {
        let val = args
            .get(i + 1)
            .ok_or_else(|| format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--only" => dtypes = vec![parse_dtype(val)?],
            "--batch" => batches = vec![val.parse()?],
            "--iters" => iters = val.parse()?,
            "--tokens" => seq = val.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
        i += 2;
    }
    let dev = Device::cuda(0, DeviceConfig::default())?;
    let ex = CudaExec::new(&dev)?;
    let ex_v1 = CudaExec::new(&dev)?.with_attention(AttnKernel::V1);
    let ex_v2 = CudaExec::new(&dev)?.with_attention(AttnKernel::V2);
    let by_kernel = [("attention_v1", &ex_v1), ("attention_v2", &ex_v2)];
    for &dt in &dtypes {
        for &batch in &batches {
            let n = if iters > 0 {
                iters
            } else if batch >= 64 {
                20
            } else {
                200
            };
            bench(&dev, &ex, &by_kernel, dt, batch, seq, n)?;
        }
    }
    Ok(())
}
