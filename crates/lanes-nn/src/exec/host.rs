//! [`Exec`] on the host backend: each op is one job on the lane's worker thread,
//! built from the kernels in [`crate::cpu`].

use lanes::backend::host::HostLane;
use lanes::{DevicePtr, Lease};

use super::{Dims, EmbedTables, Exec};
use crate::{cpu, NnError, Result};

/// The host executor (stateless: the lane carries the ordering).
pub struct HostExec;

/// A device pointer sent into a job.
#[derive(Clone, Copy)]
struct P(u64);

impl P {
    /// # Safety
    /// The memory is allocated for `len` elements and no other job writes it while
    /// the slice lives (jobs on one lane run in order; other lanes wait on events).
    unsafe fn f32s<'a>(self, len: usize) -> &'a [f32] {
        // SAFETY: per the function's contract.
        unsafe { std::slice::from_raw_parts(self.0 as *const f32, len) }
    }
    /// # Safety
    /// As for [`P::f32s`], and nothing else reads or writes the range meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn f32s_mut<'a>(self, len: usize) -> &'a mut [f32] {
        // SAFETY: per the function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0 as *mut f32, len) }
    }
    /// # Safety
    /// As for [`P::f32s`].
    unsafe fn u32s<'a>(self, len: usize) -> &'a [u32] {
        // SAFETY: per the function's contract.
        unsafe { std::slice::from_raw_parts(self.0 as *const u32, len) }
    }
}

fn p(d: DevicePtr) -> P {
    P(d.0)
}

fn host_lane(lane: &Lease) -> Result<&HostLane> {
    lane.raw()
        .as_any()
        .downcast_ref::<HostLane>()
        .ok_or_else(|| NnError::Unsupported("the host executor needs a CPU lane".into()))
}

fn submit(lane: &Lease, job: impl FnOnce() + Send + 'static) -> Result<()> {
    host_lane(lane)?.submit(job)?;
    Ok(())
}

impl Exec for HostExec {
    fn embed_ln(
        &self,
        lane: &Lease,
        d: Dims,
        ids: DevicePtr,
        types: DevicePtr,
        t: &EmbedTables,
        eps: f32,
        out: DevicePtr,
    ) -> Result<()> {
        let (ids, types, out) = (p(ids), p(types), p(out));
        let (word, pos, ty, g, b) = (
            p(t.word),
            p(t.position),
            p(t.token_type),
            p(t.gamma),
            p(t.beta),
        );
        submit(lane, move || {
            let (rows, h) = (d.rows(), d.hidden);
            // SAFETY: the forward allocated ids/types for `rows` u32s and out for
            // rows*hidden f32s; token ids were range-checked on the host before
            // upload, so every table row read below is inside its table.
            unsafe {
                let (ids, types, out) = (ids.u32s(rows), types.u32s(rows), out.f32s_mut(rows * h));
                for (r, dst) in out.chunks_exact_mut(h).enumerate() {
                    let w = P(word.0 + (ids[r] as u64) * (h as u64) * 4).f32s(h);
                    let ps = P(pos.0 + ((r % d.seq) as u64) * (h as u64) * 4).f32s(h);
                    let tt = P(ty.0 + (types[r] as u64) * (h as u64) * 4).f32s(h);
                    for i in 0..h {
                        dst[i] = (w[i] + tt[i]) + ps[i];
                    }
                }
                cpu::layer_norm_inplace(out, rows, h, g.f32s(h), b.f32s(h), eps);
            }
        })
    }

    fn linear(
        &self,
        lane: &Lease,
        rows: usize,
        k: usize,
        n: usize,
        x: DevicePtr,
        w: DevicePtr,
        b: DevicePtr,
        gelu: bool,
        out: DevicePtr,
    ) -> Result<()> {
        let (x, w, b, out) = (p(x), p(w), p(b), p(out));
        submit(lane, move || {
            // SAFETY: sizes per the `Exec::linear` contract.
            unsafe {
                let out = out.f32s_mut(rows * n);
                cpu::linear(x.f32s(rows * k), rows, k, w.f32s(n * k), b.f32s(n), out);
                if gelu {
                    cpu::gelu_inplace(out);
                }
            }
        })
    }

    fn attention(
        &self,
        lane: &Lease,
        d: Dims,
        qkv: DevicePtr,
        mask: DevicePtr,
        out: DevicePtr,
    ) -> Result<()> {
        let (qkv, mask, out) = (p(qkv), p(mask), p(out));
        submit(lane, move || {
            let (rows, h) = (d.rows(), d.hidden);
            // SAFETY: sizes per the `Exec::attention` contract.
            unsafe {
                let qkv = qkv.f32s(rows * 3 * h);
                // Split the fused rows into contiguous q, k, v for the kernel.
                let mut q = vec![0f32; rows * h];
                let mut k = vec![0f32; rows * h];
                let mut v = vec![0f32; rows * h];
                for r in 0..rows {
                    let src = &qkv[r * 3 * h..(r + 1) * 3 * h];
                    q[r * h..(r + 1) * h].copy_from_slice(&src[..h]);
                    k[r * h..(r + 1) * h].copy_from_slice(&src[h..2 * h]);
                    v[r * h..(r + 1) * h].copy_from_slice(&src[2 * h..]);
                }
                let out = out.f32s_mut(rows * h);
                cpu::attention(
                    &q,
                    &k,
                    &v,
                    mask.f32s(rows),
                    d.batch,
                    d.seq,
                    d.heads,
                    d.head_dim(),
                    out,
                );
            }
        })
    }

    fn add_layer_norm(
        &self,
        lane: &Lease,
        rows: usize,
        dim: usize,
        x: DevicePtr,
        residual: DevicePtr,
        gamma: DevicePtr,
        beta: DevicePtr,
        eps: f32,
        out: DevicePtr,
    ) -> Result<()> {
        let (x, res, g, b, out) = (p(x), p(residual), p(gamma), p(beta), p(out));
        submit(lane, move || {
            // SAFETY: sizes per the `Exec::add_layer_norm` contract; the forward
            // never passes an `out` that overlaps `x` or `residual`.
            unsafe {
                let n = rows * dim;
                let o = out.f32s_mut(n);
                let (xs, rs) = (x.f32s(n), res.f32s(n));
                for i in 0..n {
                    o[i] = xs[i] + rs[i];
                }
                cpu::layer_norm_inplace(o, rows, dim, g.f32s(dim), b.f32s(dim), eps);
            }
        })
    }

    fn pool_normalize(
        &self,
        lane: &Lease,
        d: Dims,
        hidden: DevicePtr,
        mask: DevicePtr,
        out: DevicePtr,
    ) -> Result<()> {
        let (hidden, mask, out) = (p(hidden), p(mask), p(out));
        submit(lane, move || {
            let (rows, h) = (d.rows(), d.hidden);
            // SAFETY: sizes per the `Exec::pool_normalize` contract.
            unsafe {
                let o = out.f32s_mut(d.batch * h);
                cpu::mean_pool(hidden.f32s(rows * h), mask.f32s(rows), d.batch, d.seq, h, o);
                cpu::l2_normalize(o, d.batch, h);
            }
        })
    }
}
