//! Typed views of device memory: what the executors' (`exec::Exec`) ops take.
//!
//! A [`Tensor`] borrows a [`lanes::Buffer`] and says what it holds: a [`DType`] and
//! a shape (rank 1 to 4). Construction checks that `elements × dtype size` fits in
//! the buffer, so an op that trusts a tensor's shape never reaches past its buffer.
//! Outputs are [`TensorMut`]s, which borrow their buffer mutably: safe code cannot
//! pass one buffer as both an input and an output of an op.
//!
//! Every tensor carries a name (`"qkv"`, `"layer.3.ffn_in_w"`, ...) that errors
//! quote, so a mismatch reads "linear: tensor w has shape [384, 1536], expected
//! [_, 384]".

use lanes::{Buffer, DevicePtr, Lease};

use crate::error::{NnError, Result};

/// Element type of a [`Tensor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of an f32).
    BF16,
    /// 32-bit unsigned integer (token ids, type ids, offsets).
    U32,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The name used in messages (`f32`, `f16`, `bf16`, `u32`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
        }
    }

    /// `true` for the floating-point types.
    pub const fn is_float(self) -> bool {
        !matches!(self, DType::U32)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The most dimensions a [`Shape`] holds.
pub const MAX_RANK: usize = 4;

/// A tensor shape of rank 1 to [`MAX_RANK`], stored inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: u8,
}

impl Shape {
    /// The shape with these dimensions; fails on rank 0 or above [`MAX_RANK`].
    pub fn new(name: &str, dims: &[usize]) -> Result<Shape> {
        if dims.is_empty() || dims.len() > MAX_RANK {
            return Err(NnError::BadTensor {
                tensor: name.to_string(),
                reason: format!("rank {} (1 to {MAX_RANK} supported)", dims.len()),
            });
        }
        let mut s = Shape {
            dims: [0; MAX_RANK],
            rank: dims.len() as u8,
        };
        s.dims[..dims.len()].copy_from_slice(dims);
        Ok(s)
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }

    /// The product of the dimensions, or `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        self.dims()
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
    }
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

/// Checks `shape × dtype` against `buf`; returns the element count.
fn checked_numel(name: &str, buf: &Buffer, dtype: DType, shape: &Shape) -> Result<usize> {
    checked_part(name, buf, 0, dtype, shape)
}

/// Checks `shape × dtype` against the bytes of `buf` from `offset` on; returns
/// the element count.
fn checked_part(
    name: &str,
    buf: &Buffer,
    offset: usize,
    dtype: DType,
    shape: &Shape,
) -> Result<usize> {
    let bad = |reason: String| NnError::BadTensor {
        tensor: name.to_string(),
        reason,
    };
    let numel = shape
        .numel()
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    let bytes = numel
        .checked_mul(dtype.size())
        .ok_or_else(|| bad(format!("shape {shape:?} of {dtype} overflows")))?;
    if offset % dtype.size() != 0 {
        return Err(bad(format!(
            "offset {offset} is not a multiple of the {} bytes of {dtype}",
            dtype.size()
        )));
    }
    let room = buf.len().saturating_sub(offset);
    if bytes > room {
        return Err(bad(if offset == 0 {
            format!(
                "shape {shape:?} of {dtype} needs {bytes} bytes, its buffer holds {}",
                buf.len()
            )
        } else {
            format!(
                "shape {shape:?} of {dtype} needs {bytes} bytes from offset {offset}, \
                 its buffer holds {}",
                buf.len()
            )
        }));
    }
    Ok(numel)
}

/// A read-only typed view of a device buffer (an op's input).
#[derive(Clone, Copy)]
pub struct Tensor<'a> {
    name: &'static str,
    buf: &'a Buffer,
    /// Bytes from the start of `buf` to the first element.
    offset: usize,
    dtype: DType,
    shape: Shape,
    numel: usize,
}

impl<'a> Tensor<'a> {
    /// Views `buf` as `dtype` values of `shape`; fails (naming the tensor) if the
    /// buffer is too small or the shape is empty of dimensions or overflows.
    pub fn new(name: &'static str, buf: &'a Buffer, dtype: DType, shape: &[usize]) -> Result<Self> {
        let shape = Shape::new(name, shape)?;
        let numel = checked_numel(name, buf, dtype, &shape)?;
        Ok(Tensor {
            name,
            buf,
            offset: 0,
            dtype,
            shape,
            numel,
        })
    }

    /// Views the bytes of `buf` from `offset` on as `dtype` values of `shape`
    /// (several small tensors in one buffer, filled by one copy); `offset` must be
    /// a multiple of the element size. Fails as [`Tensor::new`] does, and when
    /// the part does not fit after `offset`.
    ///
    /// ```
    /// use lanes::Device;
    /// use lanes_nn::{DType, Tensor};
    /// let device = Device::cpu(lanes::DeviceConfig::default()).unwrap();
    /// let lane = device.lease().unwrap();
    /// let buf = lane.alloc(24).unwrap();
    /// let second = Tensor::part("second", &buf, 12, DType::U32, &[3]).unwrap();
    /// assert_eq!(second.ptr().0, buf.ptr().0 + 12);
    /// assert!(Tensor::part("late", &buf, 16, DType::U32, &[3]).is_err());
    /// ```
    pub fn part(
        name: &'static str,
        buf: &'a Buffer,
        offset: usize,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Self> {
        let shape = Shape::new(name, shape)?;
        let numel = checked_part(name, buf, offset, dtype, &shape)?;
        Ok(Tensor {
            name,
            buf,
            offset,
            dtype,
            shape,
            numel,
        })
    }

    /// The name errors quote.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        self.shape.dims()
    }
    /// The element count.
    pub fn numel(&self) -> usize {
        self.numel
    }
    /// The buffer viewed.
    pub fn buffer(&self) -> &'a Buffer {
        self.buf
    }
    /// The device address of the first element.
    pub fn ptr(&self) -> DevicePtr {
        DevicePtr(self.buf.ptr().0 + self.offset as u64)
    }
}

impl std::fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}{:?}", self.name, self.dtype, self.shape)
    }
}

/// A writable typed view of a device buffer (an op's output); borrows the buffer
/// mutably, so no input of the same op can view it.
pub struct TensorMut<'a> {
    name: &'static str,
    buf: &'a mut Buffer,
    dtype: DType,
    shape: Shape,
    numel: usize,
}

impl<'a> TensorMut<'a> {
    /// As [`Tensor::new`], for an output.
    pub fn new(
        name: &'static str,
        buf: &'a mut Buffer,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Self> {
        let shape = Shape::new(name, shape)?;
        let numel = checked_numel(name, buf, dtype, &shape)?;
        Ok(TensorMut {
            name,
            buf,
            dtype,
            shape,
            numel,
        })
    }

    /// The name errors quote.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        self.shape.dims()
    }
    /// The element count.
    pub fn numel(&self) -> usize {
        self.numel
    }
    /// The device address of the first element.
    pub fn ptr(&self) -> DevicePtr {
        self.buf.ptr()
    }
    /// A read-only view of the same memory (while this one is borrowed).
    pub fn as_tensor(&self) -> Tensor<'_> {
        Tensor {
            name: self.name,
            buf: self.buf,
            offset: 0,
            dtype: self.dtype,
            shape: self.shape,
            numel: self.numel,
        }
    }
}

impl std::fmt::Debug for TensorMut<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (out): {}{:?}", self.name, self.dtype, self.shape)
    }
}

/// What an op checks about one tensor; errors name the op and the tensor.
pub(crate) struct Check {
    pub(crate) op: &'static str,
}

impl Check {
    fn err(&self, tensor: &str, expected: String, actual: String) -> NnError {
        NnError::OpMismatch {
            op: self.op,
            tensor: tensor.to_string(),
            expected,
            actual,
        }
    }

    /// `shape` must have `want.len()` dimensions, each equal to its `Some` entry;
    /// returns the dimensions.
    pub(crate) fn shape<const R: usize>(
        &self,
        name: &str,
        shape: &[usize],
        want: [Option<usize>; R],
    ) -> Result<[usize; R]> {
        let show = || {
            let parts: Vec<String> = want
                .iter()
                .map(|w| w.map_or("_".to_string(), |v| v.to_string()))
                .collect();
            format!("shape [{}]", parts.join(", "))
        };
        if shape.len() != R {
            return Err(self.err(name, show(), format!("shape {shape:?}")));
        }
        let mut out = [0; R];
        for i in 0..R {
            if want[i].is_some_and(|w| w != shape[i]) {
                return Err(self.err(name, show(), format!("shape {shape:?}")));
            }
            out[i] = shape[i];
        }
        Ok(out)
    }

    /// `dtype` must be one of `allowed`.
    pub(crate) fn dtype(&self, name: &str, dtype: DType, allowed: &[DType]) -> Result<()> {
        if allowed.contains(&dtype) {
            return Ok(());
        }
        let names: Vec<&str> = allowed.iter().map(|d| d.name()).collect();
        Err(self.err(
            name,
            format!("dtype {}", names.join(" or ")),
            format!("dtype {dtype}"),
        ))
    }

    /// Every buffer must belong to the device of `lane`.
    pub(crate) fn on_lane(&self, lane: &Lease, tensors: &[&Tensor<'_>]) -> Result<()> {
        let device = lane.device();
        let alloc = device.allocator();
        for t in tensors {
            let buf = t.buffer();
            if !std::ptr::eq(buf.owner().allocator(), alloc) {
                return Err(self.err(
                    t.name(),
                    format!("memory of {}", device.name()),
                    format!("memory of {}", buf.owner().allocator().device()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu() -> lanes::Device {
        lanes::Device::cpu(lanes::DeviceConfig::default()).expect("cpu device")
    }

    #[test]
    fn sizes_and_names() {
        assert_eq!(DType::F32.size(), 4);
        assert_eq!(DType::BF16.size(), 2);
        assert_eq!(DType::F16.to_string(), "f16");
        assert!(!DType::U32.is_float());
    }

    #[test]
    fn construction_checks_the_buffer_size() {
        let dev = cpu();
        let lane = dev.lease().expect("lane");
        let mut buf = lane.alloc(64).expect("alloc");
        Tensor::new("x", &buf, DType::F32, &[4, 4]).expect("exactly fits");
        Tensor::new("x", &buf, DType::F16, &[8, 4]).expect("f16 fits");
        let err = Tensor::new("x", &buf, DType::F32, &[4, 5]).expect_err("too big");
        let msg = err.to_string();
        assert!(
            msg.contains("tensor x") && msg.contains("80 bytes"),
            "{msg}"
        );
        let err = TensorMut::new("out", &mut buf, DType::U32, &[17]).expect_err("too big");
        assert!(err.to_string().contains("tensor out"), "{err}");
        let err = Tensor::new("y", &buf, DType::F32, &[usize::MAX, 2]).expect_err("overflow");
        assert!(err.to_string().contains("overflows"), "{err}");
        assert!(Tensor::new("z", &buf, DType::F32, &[]).is_err());
        assert!(Tensor::new("z", &buf, DType::F32, &[1, 1, 1, 1, 1]).is_err());
        let t = TensorMut::new("out", &mut buf, DType::F32, &[2, 8]).expect("fits");
        assert_eq!(t.as_tensor().shape(), &[2, 8]);
        assert_eq!(t.numel(), 16);
    }

    #[test]
    fn checks_name_op_and_tensor() {
        let c = Check { op: "linear" };
        assert_eq!(c.shape("w", &[3, 4], [None, Some(4)]).unwrap(), [3, 4]);
        let e = c
            .shape("w", &[3, 5], [None, Some(4)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("linear") && e.contains("tensor w") && e.contains("[_, 4]"),
            "{e}"
        );
        assert!(c.shape("w", &[12], [None, Some(4)]).is_err());
        let e = c
            .dtype("ids", DType::F32, &[DType::U32])
            .unwrap_err()
            .to_string();
        assert!(e.contains("dtype u32") && e.contains("dtype f32"), "{e}");
    }
}
