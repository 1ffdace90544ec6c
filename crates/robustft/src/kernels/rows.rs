//! Row-blocked helpers shared by the fused kernels: the contiguous f32 view of a candle CPU
//! storage (or the widening of a bf16 one, and the storing of f32 values as either), the
//! tensor a whole-branch node keeps for its backward pass, parallel iteration over blocks of
//! whole rows (rayon; tensors below a size threshold stay on the calling thread so they pay
//! no scheduling overhead), new outputs made by such blocks, each zeroed by the thread that
//! fills it (rather than all at once on the calling thread), column sums accumulated per
//! block and reduced once, and lane-split reductions that the compiler vectorises (and that
//! round better than one serial accumulator).

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, Layout, Result, Shape, Storage, Tensor};
use half::bf16;
use half::vec::HalfBitsVecExt;
use rayon::prelude::*;

use super::matmul_bf16::bf16_bits;
use super::precision::MatmulPrecision;

/// Elements one parallel task covers at least; smaller tensors run on the calling thread.
const MIN_TASK_ELEMENTS: usize = 1 << 15;

/// Independent accumulators of the lane-split reductions.
const LANES: usize = 16;

/// Whether the fused CPU f32 kernels apply: every tensor is a non-empty f32 tensor on the CPU.
pub(super) fn fused_applies(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.elem_count() > 0)
}

/// The elements of an f32 or bf16 activation, read as f32.
#[derive(Clone, Copy)]
pub(super) enum Values<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl<'a> Values<'a> {
    /// The elements of `storage` under the contiguous `layout`.
    pub(super) fn of(storage: &'a CpuStorage, layout: &Layout, op: &'static str) -> Result<Self> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{op}: expects contiguous inputs")
        };
        match storage {
            CpuStorage::F32(data) => Ok(Self::F32(&data[start..end])),
            CpuStorage::BF16(data) => Ok(Self::Bf16(&data[start..end])),
            other => candle_core::bail!("{op}: expects f32 or bf16, got {:?}", other.dtype()),
        }
    }

    pub(super) fn dtype(&self) -> DType {
        match self {
            Self::F32(_) => DType::F32,
            Self::Bf16(_) => DType::BF16,
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Self::F32(data) => data.len(),
            Self::Bf16(data) => data.len(),
        }
    }

    /// The elements in `range` as f32: borrowed from f32, widened (exactly) from bf16.
    pub(super) fn widened(&self, range: Range<usize>) -> Cow<'a, [f32]> {
        match *self {
            Self::F32(data) => Cow::Borrowed(&data[range]),
            Self::Bf16(data) => Cow::Owned(data[range].iter().map(|&v| widened(v)).collect()),
        }
    }

    /// Every element as f32 in a new vector, by parallel blocks of rows (`width` elements
    /// each), each block then passed through `then`.
    pub(super) fn to_f32_then(self, width: usize, then: impl Fn(&mut [f32]) + Sync + Send) -> Vec<f32> {
        zeroed_by_row_blocks(self.len(), width, |first_row, block| {
            let range = first_row * width..first_row * width + block.len();
            match self {
                Self::F32(data) => block.copy_from_slice(&data[range]),
                Self::Bf16(data) => widen_into(block, &data[range]),
            }
            then(block);
        })
    }
}

/// `out[i] = values[i]` widened to f32.
fn widen_into(out: &mut [f32], values: &[bf16]) {
    out.iter_mut().zip(values).for_each(|(o, &v)| *o = widened(v));
}

/// `v` as f32 (exact: a bf16 is the upper half of an f32).
#[inline(always)]
fn widened(v: bf16) -> f32 {
    f32::from_bits(u32::from(v.to_bits()) << 16)
}

/// `t` (contiguous) as an f32 tensor: itself, or a bf16 one widened by parallel blocks.
pub(super) fn to_f32(t: &Tensor) -> Result<Tensor> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu @ CpuStorage::BF16(_)) => {
            let (_, width) = rows_and_width(t)?;
            let values = Values::of(cpu, layout, "to_f32")?.to_f32_then(width, |_| {});
            Tensor::from_vec(values, t.shape(), t.device())
        }
        _ => t.to_dtype(DType::F32),
    }
}

/// `values` as a CPU storage of `dtype` (f32 or bf16): f32 as they are, or bf16 rounded as
/// the bf16 kernel rounds its operands (so a product of the stored values rounds nothing more).
pub(super) fn storage_of(values: Vec<f32>, dtype: DType) -> CpuStorage {
    match dtype {
        DType::BF16 => CpuStorage::BF16(rounded_to_bf16(&values)),
        _ => CpuStorage::F32(values),
    }
}

/// `values` as a CPU tensor of `shape` and `dtype` (f32 or bf16, rounded as [`storage_of`]),
/// outside any graph: what a fused branch keeps inside its node for the backward pass.
pub(super) fn stored_tensor(values: Vec<f32>, dtype: DType, shape: Shape) -> Result<Tensor> {
    match dtype {
        DType::BF16 => Tensor::from_vec(rounded_to_bf16(&values), shape, &Device::Cpu),
        _ => Tensor::from_vec(values, shape, &Device::Cpu),
    }
}

/// `f` of the elements of the contiguous f32 or bf16 CPU tensor `t`.
pub(super) fn with_values<R>(t: &Tensor, op: &'static str, f: impl FnOnce(Values) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(Values::of(cpu, layout, op)?)),
        _ => candle_core::bail!("{op}: expects a CPU tensor"),
    }
}

/// `values` rounded to bfloat16 (by parallel blocks).
fn rounded_to_bf16(values: &[f32]) -> Vec<bf16> {
    let bits = zeroed_by_blocks(values.len(), MIN_TASK_ELEMENTS, |index, bits: &mut [u16]| {
        let values = &values[index * MIN_TASK_ELEMENTS..index * MIN_TASK_ELEMENTS + bits.len()];
        bits.iter_mut().zip(values).for_each(|(b, &v)| *b = bf16_bits(v));
    });
    bits.reinterpret_into()
}

/// The f32 elements of `storage` under the contiguous `layout`.
pub(super) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: expects contiguous inputs"),
    }
}

/// The f32 elements of `storage` under the contiguous `layout`, to be overwritten.
pub(super) fn contiguous_f32_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> Result<&'a mut [f32]> {
    let (start, end) = match layout.contiguous_offsets() {
        Some(offsets) => offsets,
        None => candle_core::bail!("{op}: expects a contiguous output"),
    };
    match storage {
        CpuStorage::F32(data) => Ok(&mut data[start..end]),
        _ => candle_core::bail!("{op}: expects f32"),
    }
}

/// The number of rows of a tensor whose last dimension is `width`, and `width` itself.
pub(super) fn rows_and_width(t: &Tensor) -> Result<(usize, usize)> {
    let width = t.dim(candle_core::D::Minus1)?;
    Ok((t.elem_count().checked_div(width).unwrap_or(0), width))
}

/// Runs `f(first_row, block)` over consecutive blocks of whole rows (`width` elements each)
/// of `out`, in parallel when `out` is large, and returns the results in block order.
pub(super) fn map_row_blocks<T: Send>(
    out: &mut [f32],
    width: usize,
    f: impl Fn(usize, &mut [f32]) -> T + Sync + Send,
) -> Vec<T> {
    let rows_per_block = rows_per_block(width);
    map_blocks(out, rows_per_block * width, |index, block| f(index * rows_per_block, block))
}

/// Runs `f(index, block)` over the consecutive blocks of `block_len` elements of `out` (the
/// last one shorter), in parallel when there are several, and returns the results in order.
fn map_blocks<E: Send, T: Send>(
    out: &mut [E],
    block_len: usize,
    f: impl Fn(usize, &mut [E]) -> T + Sync + Send,
) -> Vec<T> {
    if block_len == 0 || out.len() <= block_len {
        return vec![f(0, out)];
    }
    out.par_chunks_mut(block_len).enumerate().map(|(index, block)| f(index, block)).collect()
}

/// A new vector of `len` elements, made by parallel blocks of `block_len` (the last one
/// shorter): each block is zeroed and then passed to `f(index, block)` on the thread that
/// fills it. The same vector as `f` run over the blocks of `vec![0; len]`, without zeroing
/// all of it on the calling thread first (while the other threads wait) and passing it
/// through the caches once more before the blocks are written.
pub(super) fn zeroed_by_blocks<E: Copy + Default + Send>(
    len: usize,
    block_len: usize,
    f: impl Fn(usize, &mut [E]) + Sync + Send,
) -> Vec<E> {
    let mut out = Vec::with_capacity(len);
    extend_zeroed_by_blocks(&mut out, len, block_len, f);
    out
}

/// Appends `len` elements to the empty `out` as [`zeroed_by_blocks`] makes them, and returns
/// the blocks' results in order.
fn extend_zeroed_by_blocks<E: Copy + Default + Send, T: Send>(
    out: &mut Vec<E>,
    len: usize,
    block_len: usize,
    f: impl Fn(usize, &mut [E]) -> T + Sync + Send,
) -> Vec<T> {
    assert!(out.is_empty(), "extend_zeroed_by_blocks: appends to an empty vector");
    out.reserve(len);
    let results =
        map_blocks(&mut out.spare_capacity_mut()[..len], block_len, |index, block| f(index, zeroed(block)));
    // SAFETY: the blocks cover the first `len` elements of the spare capacity, and `zeroed`
    // has written every element of each.
    unsafe { out.set_len(len) };
    results
}

/// [`zeroed_by_blocks`] by blocks of whole rows (`width` elements each, as
/// [`map_row_blocks`] splits them): `f(first_row, block)`.
pub(super) fn zeroed_by_row_blocks(
    len: usize,
    width: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let rows_per_block = rows_per_block(width);
    zeroed_by_blocks(len, rows_per_block * width, |index, block| f(index * rows_per_block, block))
}

/// `block` with every element set to zero (`E::default()`), as initialised elements.
fn zeroed<E: Copy + Default>(block: &mut [MaybeUninit<E>]) -> &mut [E] {
    block.fill(MaybeUninit::new(E::default()));
    // SAFETY: every element has just been initialised, and `MaybeUninit<E>` has the layout
    // of `E`.
    unsafe { &mut *(block as *mut [MaybeUninit<E>] as *mut [E]) }
}

/// `f(y, x)` for every row `x` of `x` (`width` elements) and its output row `y`, by parallel
/// blocks of rows.
pub(super) fn map_rows(x: &[f32], width: usize, f: impl Fn(&mut [f32], &[f32]) + Sync + Send) -> Vec<f32> {
    zeroed_by_row_blocks(x.len(), width, |first_row, block| {
        let x_block = &x[first_row * width..first_row * width + block.len()];
        block.chunks_exact_mut(width).zip(x_block.chunks_exact(width)).for_each(|(y, x)| f(y, x));
    })
}

/// Rows per parallel block: enough for `MIN_TASK_ELEMENTS` elements, at least one.
pub(super) fn rows_per_block(width: usize) -> usize {
    (MIN_TASK_ELEMENTS / width.max(1)).max(1)
}

/// The sums over the rows (`width` elements each) of `x`, by parallel blocks of rows.
pub(super) fn column_sums(x: &[f32], width: usize) -> Vec<f32> {
    let block_sums = |block: &[f32]| {
        let mut sums = vec![0f32; width];
        for row in block.chunks_exact(width) {
            sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
        }
        sums
    };
    let block_len = rows_per_block(width) * width;
    let partials: Vec<Vec<f32>> = if width == 0 || x.len() <= block_len {
        vec![block_sums(x)]
    } else {
        x.par_chunks(block_len).map(block_sums).collect()
    };
    let mut sums = vec![0f32; width];
    add_partials(&mut sums, partials);
    sums
}

/// Adds each partial sum vector into `sums`.
fn add_partials(sums: &mut [f32], partials: Vec<Vec<f32>>) {
    for partial in partials {
        sums.iter_mut().zip(&partial).for_each(|(s, p)| *s += p);
    }
}

/// A new vector of `rows_len` row outputs (rows of `width`) followed by `sums_len` column
/// sums: `f(first_row, block, partial_sums)` fills a zeroed block of rows (as
/// [`zeroed_by_row_blocks`]) and adds its share to zeroed partial sums, which are then reduced
/// into the tail.
pub(super) fn rows_with_column_sums(
    rows_len: usize,
    width: usize,
    sums_len: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows_len + sums_len);
    let rows_per_block = rows_per_block(width);
    let partials = extend_zeroed_by_blocks(&mut out, rows_len, rows_per_block * width, |index, block| {
        let mut partial = vec![0f32; sums_len];
        f(index * rows_per_block, block, &mut partial);
        partial
    });
    out.resize(rows_len + sums_len, 0.0);
    add_partials(&mut out[rows_len..], partials);
    out
}

/// `Σ term(x)` over `xs`, with `LANES` independent accumulators.
#[inline(always)]
pub(super) fn lane_sum(xs: &[f32], term: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&x| term(x)).sum();
    for chunk in chunks {
        acc.iter_mut().zip(chunk).for_each(|(a, &x)| *a += term(x));
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ term(a, b)` over the pairs of `a` and `b` (equal lengths), with `LANES` accumulators.
#[inline(always)]
pub(super) fn lane_sum2(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = chunks_a.remainder().iter().zip(chunks_b.remainder()).map(|(&x, &y)| term(x, y)).sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        acc.iter_mut().zip(ca.iter().zip(cb)).for_each(|(s, (&x, &y))| *s += term(x, y));
    }
    acc.iter().sum::<f32>() + tail
}

/// A tensor a node keeps inside itself from its forward pass for its backward pass.
#[derive(Default)]
pub(super) struct Kept(OnceLock<Tensor>);

impl Kept {
    /// Keeps `t` (a node runs its forward pass once).
    pub(super) fn keep(&self, t: Tensor, op: &str) -> Result<()> {
        if self.0.set(t).is_err() {
            candle_core::bail!("{op}: a node runs its forward pass once");
        }
        Ok(())
    }

    /// The kept tensor.
    pub(super) fn get(&self, op: &str) -> Result<&Tensor> {
        match self.0.get() {
            Some(t) => Ok(t),
            None => candle_core::bail!("{op}: backward before forward"),
        }
    }
}

/// The dtype a whole-branch node keeps its first layer's output in: bfloat16 under bf16
/// precision (as autocast stores a linear layer's output), else f32.
pub(super) fn kept_dtype(precision: MatmulPrecision) -> DType {
    match precision {
        MatmulPrecision::Fp32 => DType::F32,
        MatmulPrecision::Bf16 => DType::BF16,
    }
}

#[cfg(test)]
mod tests {
    use super::{rows_per_block, rows_with_column_sums, zeroed_by_blocks};

    /// Runs `check` on a pool of two threads, so that blocks really run in parallel.
    fn on_two_threads(check: impl FnOnce() + Send) {
        rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(check);
    }

    #[test]
    fn zeroed_blocks_equal_the_blocks_of_a_zeroed_vector() {
        // Writes only the even elements, so the odd ones show whether each block was zeroed.
        let write_evens = |index: usize, block: &mut [u16]| {
            block.iter_mut().step_by(2).enumerate().for_each(|(i, v)| *v = (100 * index + i + 1) as u16)
        };
        on_two_threads(|| {
            for (len, block_len) in [(0, 7), (1, 7), (6, 7), (7, 7), (8, 7), (26, 7), (9, 0)] {
                let made = zeroed_by_blocks(len, block_len, write_evens);
                let mut expected = vec![0u16; len];
                match block_len {
                    0 => write_evens(0, &mut expected),
                    _ => expected.chunks_mut(block_len).enumerate().for_each(|(i, b)| write_evens(i, b)),
                }
                assert_eq!(made, expected, "len {len}, blocks of {block_len}");
            }
        });
    }

    #[test]
    fn rows_with_column_sums_appends_the_sums_of_every_block() {
        let (width, rows) = (4096, 2 * rows_per_block(4096) + 3);
        let value = |row: usize, col: usize| ((row * 31 + col * 7) % 13) as f32;
        on_two_threads(|| {
            let out = rows_with_column_sums(rows * width, width, width, |first_row, block, sums| {
                for (r, row) in block.chunks_exact_mut(width).enumerate() {
                    for (c, (v, s)) in row.iter_mut().zip(sums.iter_mut()).enumerate() {
                        *v = value(first_row + r, c);
                        *s += *v;
                    }
                }
            });
            assert_eq!(out.len(), (rows + 1) * width);
            for (i, &v) in out[..rows * width].iter().enumerate() {
                assert_eq!(v, value(i / width, i % width), "element {i}");
            }
            for (c, &sum) in out[rows * width..].iter().enumerate() {
                // Small integers: every order of summation is exact.
                assert_eq!(sum, (0..rows).map(|r| value(r, c)).sum::<f32>(), "column {c}");
            }
        });
    }
}
