//! [`Exec`] on the host backend: each op is one job on the lane's worker thread,
//! built from the kernels in [`crate::cpu`]. f32 only.
//!
//! A job gets the tensors as raw spans (address + element count, both checked
//! against the buffer when the tensor was built) and turns them into slices when
//! it runs. Values the op cannot trust (ids, offsets) are checked inside the job:
//! a bad one fails the job, which the lane reports at its next synchronization.

use lanes::backend::host::HostLane;
use lanes::Lease;

use super::{EmbedTables, Exec};
use crate::cpu::{self, Table};
use crate::tensor::{DType, Tensor, TensorMut};
use crate::{NnError, Result};

/// The host executor (stateless: the lane carries the ordering).
pub struct HostExec;

/// The only dtype the host executor computes in.
const FLOATS: &[DType] = &[DType::F32];

/// A tensor's memory sent into a job: address and element count.
#[derive(Clone, Copy)]
struct Span {
    addr: u64,
    len: usize,
}

impl Span {
    fn of(t: &Tensor<'_>) -> Span {
        Span {
            addr: t.ptr().0,
            len: t.numel(),
        }
    }

    fn of_mut(t: &TensorMut<'_>) -> Span {
        Span {
            addr: t.ptr().0,
            len: t.numel(),
        }
    }

    /// # Safety
    /// The span came from a tensor of a host lane's buffer holding `len` values of
    /// `T`'s size (checked at construction), still allocated (stream order: the job
    /// runs before any later reuse of the block), and no job writes it meanwhile.
    unsafe fn slice<'a, T>(self) -> &'a [T] {
        // SAFETY: per the function's contract; host buffers are aligned to 512 bytes.
        unsafe { std::slice::from_raw_parts(self.addr as *const T, self.len) }
    }

    /// # Safety
    /// As for [`Span::slice`], and nothing else reads or writes the span
    /// meanwhile (it came from a [`TensorMut`], a unique borrow of its buffer).
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut<'a, T>(self) -> &'a mut [T] {
        // SAFETY: per the function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut T, self.len) }
    }
}

fn host_lane(lane: &Lease) -> Result<&HostLane> {
    lane.raw()
        .as_any()
        .downcast_ref::<HostLane>()
        .ok_or_else(|| NnError::Unsupported("the host executor needs a CPU lane".into()))
}

/// Enqueues `job`; an `Err` it returns fails the lane's next synchronization.
fn submit(lane: &Lease, job: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    host_lane(lane)?.submit_fallible(move || job().map_err(|e| e.to_string()))?;
    Ok(())
}

impl Exec for HostExec {
    fn embed_ln(
        &self,
        lane: &Lease,
        ids: Tensor<'_>,
        types: Tensor<'_>,
        offsets: Tensor<'_>,
        t: &EmbedTables<'_>,
        eps: f32,
        out: TensorMut<'_>,
    ) -> Result<()> {
        let d = super::check_embed_ln(lane, &ids, &types, &offsets, t, &out, FLOATS)?;
        let [ids, types, offsets] = [Span::of(&ids), Span::of(&types), Span::of(&offsets)];
        let [word, pos, ty, g, b] =
            [t.word, t.position, t.token_type, t.gamma, t.beta].map(|x| Span::of(&x));
        let out = Span::of_mut(&out);
        submit(lane, move || {
            // SAFETY: every span comes from a checked tensor of this lane's device
            // (`check_embed_ln`), `out` from the op's only mutable one; the job runs
            // in lane order, before any reuse of the buffers.
            let (ids, types, offsets, word, pos, ty, g, b, out) = unsafe {
                (
                    ids.slice::<u32>(),
                    types.slice::<u32>(),
                    offsets.slice::<u32>(),
                    word.slice::<f32>(),
                    pos.slice::<f32>(),
                    ty.slice::<f32>(),
                    g.slice::<f32>(),
                    b.slice::<f32>(),
                    out.slice_mut::<f32>(),
                )
            };
            let tables = [
                Table {
                    name: "word embeddings",
                    data: word,
                },
                Table {
                    name: "position embeddings",
                    data: pos,
                },
                Table {
                    name: "token type embeddings",
                    data: ty,
                },
            ];
            cpu::embed(ids, types, offsets, tables, out)?;
            cpu::layer_norm_inplace(out, d.tokens, d.hidden, g, b, eps);
            Ok(())
        })
    }

    fn linear(
        &self,
        lane: &Lease,
        x: Tensor<'_>,
        w: Tensor<'_>,
        b: Tensor<'_>,
        gelu: bool,
        out: TensorMut<'_>,
    ) -> Result<()> {
        let (rows, k, _) = super::check_linear(lane, &x, &w, &b, &out, FLOATS)?;
        let (x, w, b, out) = (Span::of(&x), Span::of(&w), Span::of(&b), Span::of_mut(&out));
        submit(lane, move || {
            // SAFETY: as in `embed_ln`; `check_linear` proved the shapes agree, so
            // the slices have the lengths `cpu::linear` checks.
            let (x, w, b, out) = unsafe {
                (
                    x.slice::<f32>(),
                    w.slice::<f32>(),
                    b.slice::<f32>(),
                    out.slice_mut::<f32>(),
                )
            };
            cpu::linear(&x[..rows * k], rows, k, w, b, out);
            if gelu {
                cpu::gelu_inplace(out);
            }
            Ok(())
        })
    }

    fn attention(
        &self,
        lane: &Lease,
        qkv: Tensor<'_>,
        offsets: Tensor<'_>,
        max_len: usize,
        heads: usize,
        out: TensorMut<'_>,
    ) -> Result<()> {
        let d = super::check_attention(lane, &qkv, &offsets, max_len, heads, &out, FLOATS)?;
        if d.hidden == 0 {
            return Ok(());
        }
        let (qkv, offsets, out) = (Span::of(&qkv), Span::of(&offsets), Span::of_mut(&out));
        submit(lane, move || {
            // SAFETY: as in `embed_ln`.
            let (qkv, offsets, out) = unsafe {
                (
                    qkv.slice::<f32>(),
                    offsets.slice::<u32>(),
                    out.slice_mut::<f32>(),
                )
            };
            cpu::check_offsets(offsets, d.tokens)?;
            if let Some(n) = offsets
                .windows(2)
                .map(|w| (w[1] - w[0]) as usize)
                .find(|&n| n > d.max_len)
            {
                return Err(NnError::InvalidInput(format!(
                    "attention: a sequence of {n} tokens exceeds max_len {}",
                    d.max_len
                )));
            }
            let (rows, h) = (d.tokens, d.hidden);
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
            cpu::attention(&q, &k, &v, offsets, d.heads, d.head_dim, out);
            Ok(())
        })
    }

    fn add_layer_norm(
        &self,
        lane: &Lease,
        x: Tensor<'_>,
        residual: Tensor<'_>,
        gamma: Tensor<'_>,
        beta: Tensor<'_>,
        eps: f32,
        out: TensorMut<'_>,
    ) -> Result<()> {
        let (rows, dim) =
            super::check_add_layer_norm(lane, &x, &residual, &gamma, &beta, &out, FLOATS)?;
        let [x, res, g, b] = [x, residual, gamma, beta].map(|t| Span::of(&t));
        let out = Span::of_mut(&out);
        submit(lane, move || {
            // SAFETY: as in `embed_ln`; `out` is a unique borrow, so it overlaps
            // neither `x` nor `residual`.
            let (xs, rs, g, b, o) = unsafe {
                (
                    x.slice::<f32>(),
                    res.slice::<f32>(),
                    g.slice::<f32>(),
                    b.slice::<f32>(),
                    out.slice_mut::<f32>(),
                )
            };
            for ((o, x), r) in o.iter_mut().zip(xs).zip(rs) {
                *o = x + r;
            }
            cpu::layer_norm_inplace(o, rows, dim, g, b, eps);
            Ok(())
        })
    }

    fn pool_mean(
        &self,
        lane: &Lease,
        hidden: Tensor<'_>,
        offsets: Tensor<'_>,
        out: TensorMut<'_>,
    ) -> Result<()> {
        let (tokens, _batch, dim) = super::check_pool(lane, &hidden, &offsets, &out, FLOATS)?;
        if dim == 0 {
            return Ok(());
        }
        let (hidden, offsets, out) = (Span::of(&hidden), Span::of(&offsets), Span::of_mut(&out));
        submit(lane, move || {
            // SAFETY: as in `embed_ln`.
            let (hidden, offsets, o) = unsafe {
                (
                    hidden.slice::<f32>(),
                    offsets.slice::<u32>(),
                    out.slice_mut::<f32>(),
                )
            };
            cpu::check_offsets(offsets, tokens)?;
            cpu::mean_pool(hidden, offsets, dim, o);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanes::{Buffer, Device, DeviceConfig};

    fn cpu() -> Device {
        Device::cpu(DeviceConfig::default()).expect("cpu device")
    }

    fn up(lane: &Lease, data: &[f32]) -> Buffer {
        let buf = lane.alloc(std::mem::size_of_val(data)).expect("alloc");
        lane.upload(&buf, bytemuck::cast_slice(data))
            .expect("upload");
        buf
    }

    fn down(lane: &Lease, buf: &Buffer, n: usize) -> lanes::Result<Vec<f32>> {
        let mut out = vec![0f32; n];
        lane.download(buf, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }

    #[test]
    fn linear_computes_on_checked_tensors() {
        let dev = cpu();
        let lane = dev.lease().expect("lane");
        let (x, w, b) = (
            up(&lane, &[1., 2., 3., 4.]),
            up(&lane, &[1., 0., 0., 1., 1., 1.]),
            up(&lane, &[0.5, 0., -1.]),
        );
        let mut out = lane.alloc(6 * 4).expect("alloc");
        let f = |name, buf, shape: &[usize]| Tensor::new(name, buf, DType::F32, shape).unwrap();
        let o = TensorMut::new("out", &mut out, DType::F32, &[2, 3]).unwrap();
        HostExec
            .linear(
                &lane,
                f("x", &x, &[2, 2]),
                f("w", &w, &[3, 2]),
                f("b", &b, &[3]),
                false,
                o,
            )
            .expect("consistent shapes");
        assert_eq!(
            down(&lane, &out, 6).unwrap(),
            vec![1.5, 2., 2., 3.5, 4., 6.]
        );
    }

    #[test]
    fn mismatched_or_too_small_tensors_are_refused() {
        let dev = cpu();
        let lane = dev.lease().expect("lane");
        let x = up(&lane, &[0.; 4]);
        let w = up(&lane, &[0.; 6]);
        let b = up(&lane, &[0.; 3]);
        let f = |name, buf, shape: &[usize]| Tensor::new(name, buf, DType::F32, shape).unwrap();
        // An output too small for the product can no longer be described: this was
        // an out-of-bounds write from safe code when ops took raw pointers.
        let mut small = lane.alloc(4).expect("alloc");
        let err = TensorMut::new("out", &mut small, DType::F32, &[2, 3]).unwrap_err();
        assert!(err.to_string().contains("tensor out"), "{err}");
        // Shapes that disagree with each other are refused, naming op and tensor.
        let mut out = lane.alloc(6 * 4).expect("alloc");
        // (x, w, b, out) shapes and the tensor the error must name.
        type Case<'a> = (&'a [usize], &'a [usize], &'a [usize], &'a [usize], &'a str);
        let cases: [Case; 4] = [
            (&[2, 2], &[3, 2], &[3], &[3, 2], "tensor out"),
            (&[2, 2], &[2, 3], &[3], &[2, 3], "tensor w"),
            (&[2, 2], &[3, 2], &[2], &[2, 3], "tensor b"),
            (&[4], &[3, 2], &[3], &[2, 3], "tensor x"),
        ];
        for (xs, ws, bs, os, who) in cases {
            let o = TensorMut::new("out", &mut out, DType::F32, os).unwrap();
            let err = HostExec
                .linear(
                    &lane,
                    f("x", &x, xs),
                    f("w", &w, ws),
                    f("b", &b, bs),
                    false,
                    o,
                )
                .expect_err("mismatch");
            let msg = err.to_string();
            assert!(msg.starts_with("linear:") && msg.contains(who), "{msg}");
        }
        // A dtype the host executor does not compute in.
        let o = TensorMut::new("out", &mut out, DType::F16, &[2, 3]).unwrap();
        let err = HostExec
            .linear(
                &lane,
                f("x", &x, &[2, 2]),
                f("w", &w, &[3, 2]),
                f("b", &b, &[3]),
                false,
                o,
            )
            .expect_err("f16 on the host");
        assert!(err.to_string().contains("dtype f32"), "{err}");
        // Memory of another device.
        let other = cpu();
        let other_lane = other.lease().expect("lane");
        let foreign = up(&other_lane, &[0.; 4]);
        let o = TensorMut::new("out", &mut out, DType::F32, &[2, 3]).unwrap();
        let err = HostExec
            .linear(
                &lane,
                f("x", &foreign, &[2, 2]),
                f("w", &w, &[3, 2]),
                f("b", &b, &[3]),
                false,
                o,
            )
            .expect_err("foreign buffer");
        assert!(err.to_string().contains("tensor x"), "{err}");
    }

    #[test]
    fn bad_offsets_fail_the_lane_instead_of_reading_out_of_bounds() {
        let dev = cpu();
        let lane = dev.lease().expect("lane");
        let hidden = up(&lane, &[1.; 8]);
        let offs = lane.alloc(8).expect("alloc");
        // [0, 9]: the sequence reaches past the 4 tokens of `hidden`.
        lane.upload(&offs, bytemuck::cast_slice(&[0u32, 9]))
            .expect("upload");
        let mut out = lane.alloc(8).expect("alloc");
        let h = Tensor::new("hidden", &hidden, DType::F32, &[4, 2]).unwrap();
        let o_t = Tensor::new("offsets", &offs, DType::U32, &[2]).unwrap();
        let o = TensorMut::new("pooled", &mut out, DType::F32, &[1, 2]).unwrap();
        HostExec.pool_mean(&lane, h, o_t, o).expect("shapes agree");
        let err = down(&lane, &out, 2).expect_err("the job refuses the offsets");
        assert!(err.to_string().contains("offsets"), "{err}");
    }
}
