//! The small f32 products of one attention head (`q kᵀ` and `P v` forward, four more
//! backward: a few dozen to a few hundred rows over `k` = the head's width or the tokens), on
//! the calling thread, for x86_64 CPUs with AVX-512F.
//!
//! The rank-1-update form of a product, as the micro-kernels of BLIS take it (F. Van Zee and
//! R. van de Geijn, "BLIS: a framework for rapidly instantiating BLAS functionality", ACM TOMS
//! 41(3), 2015), without their packing: a register tile of up to [`MR`] rows × [`MAX_VECTORS`]
//! vectors of 16 f32 accumulators takes one k per step, loading the rhs row's vectors once and
//! broadcasting each lhs element of that k to one FMA per vector. The rhs is read as rows of
//! contiguous columns (copied so first where it is stored otherwise: `kᵀ` and `vᵀ`, through
//! 16 × 16 register transposes), the lhs element by element at its own strides. At these
//! sizes gemm's packing of both operands costs more than the multiply-adds (BENCHMARKS.md,
//! "Attention's f32 head products in registers"). Each output element is summed in order of k.

use std::arch::x86_64::*;

use super::linear::Operand;
use super::matmul_bf16::{lane_mask, load_masked, store_masked, transpose_16x16};

/// f32 lanes of a vector.
const LANES: usize = 16;

/// Rows of the register tile: `MR` × [`MAX_VECTORS`] accumulators leave registers for the rhs
/// row's vectors and the broadcast lhs element.
const MR: usize = 6;

/// Vectors of the register tile's columns (64 columns).
const MAX_VECTORS: usize = 4;

/// Whether the CPU runs this module's code: AVX-512F (std caches the detection).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// `out[i · out_stride + j] = scale · Σ_p lhs(i, p) · rhs(p, j)` for every row `i` of `lhs`
/// and column `j` of `rhs`, overwriting those elements of `out` (and no others).
///
/// # Panics
/// If the inner dimensions differ, an operand's slice lacks an element its strides address,
/// or `out` lacks one of the elements written, or the CPU lacks AVX-512F.
pub(super) fn multiply_into(out: &mut [f32], out_stride: usize, lhs: Operand, rhs: Operand, scale: f32) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "head product: inner dimensions differ");
    assert!(lhs.holds_all_elements() && rhs.holds_all_elements(), "head product: operand out of its slice");
    assert!(m == 0 || n == 0 || (m - 1) * out_stride + n <= out.len(), "head product: output too short");
    assert!(available(), "head product: the CPU lacks AVX-512F");
    if m == 0 || n == 0 {
        return;
    }
    let copy;
    let rhs = if rhs.col_stride == 1 {
        rhs
    } else {
        // SAFETY: the CPU has AVX-512F (asserted).
        copy = unsafe { row_major_copy(rhs) };
        Operand { data: &copy, rows: k, cols: n, row_stride: n, col_stride: 1 }
    };
    // SAFETY: the CPU has AVX-512F (asserted); the operands hold every element their strides
    // address (asserted, or a dense copy of its size); `out` holds every element written
    // (asserted); the rhs's columns are contiguous (`col_stride` 1, or a row-major copy).
    unsafe { multiply_by_tiles(out, out_stride, lhs, rhs, scale) };
}

/// `op`'s elements in row-major order.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn row_major_copy(op: Operand) -> Vec<f32> {
    let mut copy = vec![0.0; op.rows * op.cols];
    if op.row_stride == 1 {
        copy_columns_to_rows(op, &mut copy);
    } else {
        for (i, out) in copy.chunks_exact_mut(op.cols).enumerate() {
            out.iter_mut().enumerate().for_each(|(j, o)| *o = op.data[i * op.row_stride + j * op.col_stride]);
        }
    }
    copy
}

/// Writes `op`'s elements to `out` in row-major order, for `op` whose columns are contiguous
/// (`row_stride` 1, a transposed matrix): 16 columns of 16 rows loaded, transposed in
/// registers and stored as 16 rows at a time.
#[target_feature(enable = "avx512f")]
fn copy_columns_to_rows(op: Operand, out: &mut [f32]) {
    assert_eq!(op.row_stride, 1, "copy_columns_to_rows: columns not contiguous");
    for first_col in (0..op.cols).step_by(LANES) {
        let cols = (op.cols - first_col).min(LANES);
        for first_row in (0..op.rows).step_by(LANES) {
            let rows = (op.rows - first_row).min(LANES);
            let columns = std::array::from_fn(|c| {
                let count = if c < cols { rows } else { 0 };
                let start = (first_col + c) * op.col_stride + first_row;
                _mm512_castps_si512(load_masked(op.data, start, count))
            });
            for (r, row) in transpose_16x16(columns).into_iter().take(rows).enumerate() {
                store_masked(out, (first_row + r) * op.cols + first_col, cols, row);
            }
        }
    }
}

/// Where a register tile reads and writes: the operands (the rhs's columns contiguous), the
/// output, and the tile's first row and column.
#[derive(Clone, Copy)]
struct Tile<'a> {
    lhs: Operand<'a>,
    rhs: Operand<'a>,
    out: *mut f32,
    out_stride: usize,
    scale: f32,
    first_row: usize,
    first_col: usize,
}

/// [`multiply_into`]'s product, tile by tile: column blocks of up to [`MAX_VECTORS`] vectors,
/// in each the rows by [`MR`].
///
/// # Safety
/// The CPU must support AVX-512F; `lhs` and `rhs` must hold every element their strides
/// address, `rhs.col_stride` must be 1, and `out` must hold `(m − 1) · out_stride + n`
/// elements.
#[target_feature(enable = "avx512f")]
unsafe fn multiply_by_tiles(out: &mut [f32], out_stride: usize, lhs: Operand, rhs: Operand, scale: f32) {
    let out = out.as_mut_ptr();
    for first_col in (0..rhs.cols).step_by(MAX_VECTORS * LANES) {
        for first_row in (0..lhs.rows).step_by(MR) {
            let tile = Tile { lhs, rhs, out, out_stride, scale, first_row, first_col };
            let vectors = (rhs.cols - first_col).min(MAX_VECTORS * LANES).div_ceil(LANES);
            // SAFETY: the caller's conditions hold for every tile inside the product.
            unsafe {
                match vectors {
                    1 => tile_of_rows::<1>(tile),
                    2 => tile_of_rows::<2>(tile),
                    3 => tile_of_rows::<3>(tile),
                    _ => tile_of_rows::<4>(tile),
                }
            }
        }
    }
}

/// [`multiply_tile`] for the tile's rows, up to [`MR`].
///
/// # Safety
/// As [`multiply_by_tiles`], for this tile.
#[target_feature(enable = "avx512f")]
unsafe fn tile_of_rows<const V: usize>(tile: Tile) {
    // SAFETY: the caller's conditions hold.
    unsafe {
        match tile.lhs.rows - tile.first_row {
            1 => multiply_tile::<1, V>(tile),
            2 => multiply_tile::<2, V>(tile),
            3 => multiply_tile::<3, V>(tile),
            4 => multiply_tile::<4, V>(tile),
            5 => multiply_tile::<5, V>(tile),
            _ => multiply_tile::<MR, V>(tile),
        }
    }
}

/// The `R` rows from `tile.first_row` times the `V` vectors of columns from `tile.first_col`
/// (the last vector masked at the rhs's last column), summed over k in `R × V` registers, then
/// scaled and stored.
///
/// # Safety
/// As [`multiply_by_tiles`]; the tile's rows and first column lie inside the product.
#[target_feature(enable = "avx512f")]
unsafe fn multiply_tile<const R: usize, const V: usize>(tile: Tile) {
    let Tile { lhs, rhs, first_row, first_col, .. } = tile;
    let masks: [__mmask16; V] =
        std::array::from_fn(|v| lane_mask((rhs.cols - first_col).saturating_sub(v * LANES).min(LANES)));
    let (lhs_data, rhs_data) = (lhs.data.as_ptr(), rhs.data.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for p in 0..lhs.cols {
        // SAFETY: row p's columns from `first_col` lie in the rhs where the mask is set;
        // masked-off lanes are not read.
        let row = unsafe { rhs_data.add(p * rhs.row_stride + first_col) };
        let b: [__m512; V] =
            std::array::from_fn(|v| unsafe { _mm512_maskz_loadu_ps(masks[v], row.wrapping_add(v * LANES)) });
        for (r, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: (first_row + r, p) is an element of the lhs.
            let a = _mm512_set1_ps(unsafe {
                *lhs_data.add((first_row + r) * lhs.row_stride + p * lhs.col_stride)
            });
            for (acc, &b) in acc_row.iter_mut().zip(&b) {
                *acc = _mm512_fmadd_ps(a, b, *acc);
            }
        }
    }
    let scale = _mm512_set1_ps(tile.scale);
    for (r, acc_row) in acc.iter().enumerate() {
        for (v, &acc) in acc_row.iter().enumerate() {
            let offset = (first_row + r) * tile.out_stride + first_col + v * LANES;
            // SAFETY: the mask's lanes are columns of the product in row `first_row + r`, whose
            // elements `out` holds; masked-off lanes are not written.
            unsafe { _mm512_mask_storeu_ps(tile.out.add(offset), masks[v], _mm512_mul_ps(acc, scale)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{available, multiply_into};
    use crate::kernels::matmul_bf16::tests::{assert_matches_reference_of, for_all_cases, SIZES};

    /// Every layout of both operands, written into the middle of a larger output (rows 3
    /// elements apart beyond the product's width, a sentinel all around), which must keep its
    /// sentinel outside the product. Skipped, saying so on the terminal (past the test
    /// harness's capture), where the CPU lacks AVX-512F.
    #[test]
    fn head_product_matches_the_reference_on_every_layout() {
        if !available() {
            use std::io::Write;
            let note = "note: head_product_matches_the_reference_on_every_layout: skipped, this CPU \
                        lacks AVX-512F (attention's products run on gemm here)\n";
            let _ = std::io::stderr().write_all(note.as_bytes());
            return;
        }
        let (offset, sentinel, scale) = (5, -7.25, 0.125);
        for_all_cases(&SIZES, |lhs, rhs, context| {
            let (m, n) = (lhs.operand().rows, rhs.operand().cols);
            let stride = n + 3;
            let mut out = vec![sentinel; offset + m * stride + 2];
            multiply_into(&mut out[offset..], stride, lhs.operand(), rhs.operand(), scale);
            let mut product = Vec::with_capacity(m * n);
            for (index, &value) in out.iter().enumerate() {
                let (row, col) =
                    ((index.wrapping_sub(offset)) / stride, (index.wrapping_sub(offset)) % stride);
                if index >= offset && row < m && col < n {
                    // Scaling by a power of two is exact, so dividing it out leaves the sums.
                    product.push(value / scale);
                } else {
                    assert_eq!(value, sentinel, "{context}: element {index}, outside the product, written");
                }
            }
            // Reference: Σ_k a_ik · b_kj in f64, within k · 2⁻²³ · Σ_k |a_ik b_kj|.
            assert_matches_reference_of(&product, lhs, rhs, context, |x| x);
        });
    }
}
