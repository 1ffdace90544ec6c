//! Row-blocked helpers shared by the fused kernels: the contiguous f32 view of a candle CPU
//! storage, parallel iteration over blocks of whole rows (rayon; tensors below a size
//! threshold stay on the calling thread so they pay no scheduling overhead), column sums
//! accumulated per block and reduced once, and lane-split reductions that the compiler
//! vectorises (and that round better than one serial accumulator).

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};
use rayon::prelude::*;

/// Elements one parallel task covers at least; smaller tensors run on the calling thread.
const MIN_TASK_ELEMENTS: usize = 1 << 15;

/// Independent accumulators of the lane-split reductions.
const LANES: usize = 16;

/// Whether the fused CPU f32 kernels apply: every tensor is a non-empty f32 tensor on the CPU.
pub(super) fn fused_applies(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.elem_count() > 0)
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
    let block_len = rows_per_block * width;
    if width == 0 || out.len() <= block_len {
        return vec![f(0, out)];
    }
    out.par_chunks_mut(block_len).enumerate().map(|(i, block)| f(i * rows_per_block, block)).collect()
}

/// `f(y, x)` for every row `x` of `x` (`width` elements) and its output row `y`, by parallel
/// blocks of rows.
pub(super) fn map_rows(x: &[f32], width: usize, f: impl Fn(&mut [f32], &[f32]) + Sync + Send) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    map_row_blocks(&mut out, width, |first_row, block| {
        let x_block = &x[first_row * width..first_row * width + block.len()];
        block.chunks_exact_mut(width).zip(x_block.chunks_exact(width)).for_each(|(y, x)| f(y, x));
    });
    out
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

/// Splits `out` into row outputs (all but the trailing `sums_len` elements) and column sums
/// (the trailing `sums_len`): `f(first_row, block, partial_sums)` fills a block of rows and
/// adds its share to zeroed partial sums, which are then reduced into the tail.
pub(super) fn rows_with_column_sums(
    out: &mut [f32],
    width: usize,
    sums_len: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
) {
    let (rows_out, sums) = out.split_at_mut(out.len() - sums_len);
    let partials = map_row_blocks(rows_out, width, |first_row, block| {
        let mut partial = vec![0f32; sums_len];
        f(first_row, block, &mut partial);
        partial
    });
    add_partials(sums, partials);
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
