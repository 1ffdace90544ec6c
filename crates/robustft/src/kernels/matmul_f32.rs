//! An f32 matrix product for x86_64 CPUs with AVX2 and FMA but without AVX-512F (AMD Zen 3
//! and earlier, Intel before Skylake-SP), where it runs the products of a training step
//! faster than candle's `gemm` and than MKL (BENCHMARKS.md, "Zen 3: an f32 kernel of our
//! own", "Zen 3: the output tile prefetched"); CPUs with AVX-512F keep gemm's AVX-512 kernels.
//!
//! The blocked algorithm of GotoBLAS and BLIS (K. Goto and R. van de Geijn, "Anatomy of
//! high-performance matrix multiplication", ACM TOMS 34(3), 2008; F. Van Zee and R. van de
//! Geijn, "BLIS: a framework for rapidly instantiating BLAS functionality", ACM TOMS 41(3),
//! 2015): for each block of [`NC`] columns and [`KC`] of k, the rhs block is packed into
//! panels of [`NR`] = 16 columns (for each k, 16 consecutive values); for each block of
//! [`MC`] rows in it, the lhs block is packed into micro-panels of [`MR`] = 6 rows (for each
//! k, 6 consecutive values); a register tile of 6 × 16 f32 accumulators (12 AVX2 registers)
//! then takes one k per step: two rhs vectors, six broadcast lhs values, twelve FMAs (its
//! rows of the output prefetched before the first, as BLIS's kernels do). Both
//! operands are always packed, whatever their layout (transposed ones through 8 × 8 register
//! transposes), and panels past the matrix's edge are padded with zeros.
//!
//! Each output element is the sum, over the blocks of k in order, of its tile's FMA chain
//! over that block in order of k; the output is split over the threads by whole rows or
//! whole columns, so the result does not depend on the number of threads.
//!
//! The packers read each element as stored ([`AsStored`]) or rounded to bfloat16
//! ([`RoundedToBf16`]): the bf16 product of CPUs without bfloat16 instructions
//! (`super::matmul_bf16`), whose products of two bf16 values are exact in f32, so its
//! operands are rounded where they are packed instead of copied first.

use std::arch::x86_64::*;
use std::cell::Cell;

use rayon::prelude::*;

use super::linear::Operand;
use super::matmul_bf16::round_to_bf16;

/// Rows of the register tile.
const MR: usize = 6;
/// Columns of the register tile (two AVX2 vectors).
const NR: usize = 16;
/// k per packed block: a rhs panel's block (16 KiB) stays in L1 while it meets every lhs
/// micro-panel of the row block.
const KC: usize = 256;
/// Rows per packed lhs block (120 KiB at [`KC`], in L2).
const MC: usize = 120;
/// Columns per packed rhs block (3 MiB at [`KC`], in L3).
const NC: usize = 3072;

/// Whether the CPU can run this module's code: AVX2 and FMA (std caches the detection).
pub(super) fn supported() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Whether f32 products should run here rather than on gemm: AVX2 and FMA without AVX-512F.
pub(super) fn preferred() -> bool {
    supported() && !is_x86_feature_detected!("avx512f")
}

/// How the packers read the operands' elements.
pub(super) trait Elements {
    /// One element as the product multiplies it.
    fn scalar(x: f32) -> f32;

    /// Eight elements as the product multiplies them.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    unsafe fn vector(x: __m256) -> __m256;
}

/// The elements as stored: the f32 product.
pub(super) struct AsStored;

impl Elements for AsStored {
    #[inline(always)]
    fn scalar(x: f32) -> f32 {
        x
    }

    #[inline(always)]
    unsafe fn vector(x: __m256) -> __m256 {
        x
    }
}

/// The elements rounded to bfloat16 as [`round_to_bf16`] rounds them.
pub(super) struct RoundedToBf16;

impl Elements for RoundedToBf16 {
    #[inline(always)]
    fn scalar(x: f32) -> f32 {
        round_to_bf16(x)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn vector(x: __m256) -> __m256 {
        rounded_to_bf16(x)
    }
}

/// Each lane of `x` rounded to bfloat16 (held in f32) as [`round_to_bf16`] rounds it: to
/// nearest, ties to even; subnormals to a zero of their sign; a NaN quiet with its sign and
/// upper payload.
#[target_feature(enable = "avx2,fma")]
fn rounded_to_bf16(x: __m256) -> __m256 {
    let bits = _mm256_castps_si256(x);
    let high_half = _mm256_set1_epi32(0xffff_0000_u32 as i32);
    let magnitude = _mm256_and_si256(bits, _mm256_set1_epi32(i32::MAX));
    let lowest_kept_bit = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
    let carry = _mm256_add_epi32(lowest_kept_bit, _mm256_set1_epi32(0x7fff));
    let nearest_even = _mm256_and_si256(_mm256_add_epi32(bits, carry), high_half);
    let signed_zero = _mm256_and_si256(bits, _mm256_set1_epi32(i32::MIN));
    let quiet_nan = _mm256_and_si256(_mm256_or_si256(bits, _mm256_set1_epi32(0x0040_0000)), high_half);
    let below_normal = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x0080_0000), magnitude);
    let nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7f80_0000));
    let finite = _mm256_blendv_epi8(nearest_even, signed_zero, below_normal);
    _mm256_castsi256_ps(_mm256_blendv_epi8(finite, quiet_nan, nan))
}

/// `lhs · rhs` as a new row-major matrix, its elements read as `E` says, its rows (or
/// columns, when there are more of them) split over `threads` tasks of the current rayon
/// pool.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`supported`]).
pub(super) unsafe fn matmul<E: Elements>(lhs: Operand, rhs: Operand, threads: usize) -> Vec<f32> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "matmul: inner dimensions differ");
    assert!(lhs.holds_all_elements() && rhs.holds_all_elements(), "matmul: operand out of its slice");
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    let mut out = Vec::with_capacity(m * n);
    let dst = Destination { data: out.as_mut_ptr(), row_stride: n };
    split(m, n, threads).into_par_iter().for_each(|block| {
        // SAFETY: the caller vouches for the CPU; the blocks are disjoint parts of `out`,
        // whose rows are `n` apart, and the operands hold all their elements (asserted).
        unsafe { product_block::<E>(&lhs, &rhs, dst, block) }
    });
    // SAFETY: the blocks cover the output, and the first block of k (k > 0) writes every
    // element of each block without reading it.
    unsafe { out.set_len(m * n) };
    out
}

/// Rows `rows.0..rows.1` and columns `cols.0..cols.1` of the output.
#[derive(Clone, Copy)]
struct Block {
    rows: (usize, usize),
    cols: (usize, usize),
}

/// The output's blocks, one per thread: bands of whole rows (multiples of [`MR`]) when it has
/// at least as many rows as columns, else of whole columns (multiples of [`NR`]).
fn split(m: usize, n: usize, threads: usize) -> Vec<Block> {
    let parts = threads.max(1);
    let bands = |len: usize, unit: usize| {
        let band = len.div_ceil(parts).div_ceil(unit) * unit;
        (0..len).step_by(band).map(move |start| (start, (start + band).min(len)))
    };
    if m >= n {
        bands(m, MR).map(|rows| Block { rows, cols: (0, n) }).collect()
    } else {
        bands(n, NR).map(|cols| Block { rows: (0, m), cols }).collect()
    }
}

/// The output's storage, shared by the tasks that write its disjoint blocks.
#[derive(Clone, Copy)]
struct Destination {
    data: *mut f32,
    row_stride: usize,
}

// SAFETY: every task writes only the elements of its own block.
unsafe impl Send for Destination {}
unsafe impl Sync for Destination {}

/// One block of the output, on this thread.
#[target_feature(enable = "avx2,fma")]
unsafe fn product_block<E: Elements>(lhs: &Operand, rhs: &Operand, dst: Destination, block: Block) {
    let (m, n) = (block.rows.1 - block.rows.0, block.cols.1 - block.cols.0);
    let k = lhs.cols;
    let rhs_len = KC * NC.min(n.next_multiple_of(NR));
    // Eight more than the panels: the 8-wide stores of `pack_panels` run two past a panel's end.
    let lhs_len = KC * MC.min(m.next_multiple_of(MR)) + 8;
    let mut buffer = PANELS.take();
    if buffer.len() < rhs_len + lhs_len {
        buffer.resize(rhs_len + lhs_len, 0.0);
    }
    let (rhs_panels, lhs_panels) = buffer.split_at_mut(rhs_len);
    for col in (0..n).step_by(NC) {
        let cols = NC.min(n - col);
        for depth in (0..k).step_by(KC) {
            let depth_len = KC.min(k - depth);
            pack_panels::<E, NR>(
                &rhs.transposed(),
                block.cols.0 + col,
                depth,
                cols,
                depth_len,
                rhs_panels.as_mut_ptr(),
            );
            for row in (0..m).step_by(MC) {
                let rows = MC.min(m - row);
                pack_panels::<E, MR>(
                    lhs,
                    block.rows.0 + row,
                    depth,
                    rows,
                    depth_len,
                    lhs_panels.as_mut_ptr(),
                );
                let corner = dst.data.add((block.rows.0 + row) * dst.row_stride + block.cols.0 + col);
                let panels = Panels { lhs: lhs_panels.as_ptr(), rhs: rhs_panels.as_ptr(), depth: depth_len };
                multiply_panels(panels, rows, cols, corner, dst.row_stride, depth > 0);
            }
        }
    }
    PANELS.set(buffer);
}

thread_local! {
    /// This thread's packed panels, kept between products (so as large as the largest
    /// product's so far, at most 3.2 MB): a fresh buffer at every product cost page faults
    /// and the other core's time (ViT-B/32 training ran 3–16% slower that way). Taken rather
    /// than borrowed: a product that runs on this thread meanwhile makes its own.
    static PANELS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Packed blocks of both operands over `depth` values of k.
#[derive(Clone, Copy)]
struct Panels {
    lhs: *const f32,
    rhs: *const f32,
    depth: usize,
}

/// `C ← A B` (or `C ← C + A B` when `accumulate`) for a packed `rows × depth` lhs block and
/// `depth × cols` rhs block, `C` starting at `corner` with rows `row_stride` apart; tiles
/// past the block's edge are computed whole into a scratch tile and only their part inside
/// is written, with the same operations.
#[target_feature(enable = "avx2,fma")]
unsafe fn multiply_panels(
    panels: Panels,
    rows: usize,
    cols: usize,
    corner: *mut f32,
    row_stride: usize,
    accumulate: bool,
) {
    let mut scratch = [0f32; MR * NR];
    for col in (0..cols).step_by(NR) {
        let rhs = panels.rhs.add(col * panels.depth);
        for row in (0..rows).step_by(MR) {
            let lhs = panels.lhs.add(row * panels.depth);
            let c = corner.add(row * row_stride + col);
            let (tile_rows, tile_cols) = (MR.min(rows - row), NR.min(cols - col));
            if tile_rows == MR && tile_cols == NR {
                tile(panels.depth, lhs, rhs, c, row_stride, accumulate);
            } else {
                tile(panels.depth, lhs, rhs, scratch.as_mut_ptr(), NR, false);
                for i in 0..tile_rows {
                    for j in 0..tile_cols {
                        let out = c.add(i * row_stride + j);
                        let value = scratch[i * NR + j];
                        *out = if accumulate { *out + value } else { value };
                    }
                }
            }
        }
    }
}

/// The 6 × 16 register tile: `C ← A B` (or `C ← C + A B`) over `depth` values of k from one
/// lhs micro-panel and one rhs panel, `C`'s rows `row_stride` apart.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile(
    depth: usize,
    lhs: *const f32,
    rhs: *const f32,
    c: *mut f32,
    row_stride: usize,
    accumulate: bool,
) {
    // The tile's rows of `C` are fetched while the FMAs run: read (or written) only after
    // them, they would stall the tile on memory (ViT-B/32's products ran 13-17% slower).
    for i in 0..MR {
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * row_stride) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * row_stride + NR - 1) as *const i8);
    }
    let mut sums = [[_mm256_setzero_ps(); 2]; MR];
    let (mut lhs, mut rhs) = (lhs, rhs);
    for _ in 0..depth {
        let right = [_mm256_loadu_ps(rhs), _mm256_loadu_ps(rhs.add(8))];
        _mm_prefetch::<_MM_HINT_T0>(rhs.add(8 * NR) as *const i8);
        for (i, row_sums) in sums.iter_mut().enumerate() {
            let left = _mm256_broadcast_ss(&*lhs.add(i));
            row_sums[0] = _mm256_fmadd_ps(left, right[0], row_sums[0]);
            row_sums[1] = _mm256_fmadd_ps(left, right[1], row_sums[1]);
        }
        lhs = lhs.add(MR);
        rhs = rhs.add(NR);
    }
    for (i, row_sums) in sums.iter().enumerate() {
        for (half, &sum) in row_sums.iter().enumerate() {
            let out = c.add(i * row_stride + half * 8);
            let value = if accumulate { _mm256_add_ps(_mm256_loadu_ps(out), sum) } else { sum };
            _mm256_storeu_ps(out, value);
        }
    }
}

/// Packs lines `first..first + count` of `lines` (a matrix whose rows are the lines, each
/// along k) over k `depth..depth + depth_len`, read as `E` says, into panels of `W` lines at
/// `out`: for each k, the panel's `W` values (zeros past the last line). The lhs is packed by its rows
/// (`W` = [`MR`]), the rhs by its columns, read as the rows of its transpose (`W` = [`NR`]).
/// `out` must hold the panels and, when `W` is below 8, 8 more elements.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_panels<E: Elements, const W: usize>(
    lines: &Operand,
    first: usize,
    depth: usize,
    count: usize,
    depth_len: usize,
    out: *mut f32,
) {
    const { assert!(W < 8 || W.is_multiple_of(8), "a panel is narrower than a vector or whole vectors wide") };
    let at = |line: usize, p: usize| lines.data.as_ptr().add(line * lines.row_stride + p * lines.col_stride);
    for (index, start) in (0..count).step_by(W).enumerate() {
        let panel = out.add(index * W * depth_len);
        let (line, panel_lines) = (first + start, W.min(count - start));
        if panel_lines == W && lines.col_stride == 1 {
            // Lines contiguous along k: eight k of (up to) eight lines at a time, transposed in
            // registers; a panel narrower than eight stores eight values where fewer belong,
            // the extra overwritten by the next k's store (or past the last panel).
            let mut p = 0;
            while p + 8 <= depth_len {
                for group in (0..W).step_by(8) {
                    let zero = _mm256_setzero_ps();
                    let vectors = std::array::from_fn(|j| {
                        if group + j < W {
                            E::vector(_mm256_loadu_ps(at(line + group + j, depth + p)))
                        } else {
                            zero
                        }
                    });
                    for (q, values) in transpose8(vectors).into_iter().enumerate() {
                        _mm256_storeu_ps(panel.add((p + q) * W + group), values);
                    }
                }
                p += 8;
            }
            for p in p..depth_len {
                for i in 0..W {
                    *panel.add(p * W + i) = E::scalar(*at(line + i, depth + p));
                }
            }
        } else if panel_lines == W && lines.row_stride == 1 {
            // Lines side by side: each k's values are one run.
            for p in 0..depth_len {
                copy_run::<E, W>(at(line, depth + p), panel.add(p * W));
            }
        } else {
            for p in 0..depth_len {
                for i in 0..W {
                    *panel.add(p * W + i) =
                        if i < panel_lines { E::scalar(*at(line + i, depth + p)) } else { 0.0 };
                }
            }
        }
    }
}

/// Copies the `W` consecutive values at `from` to `to`, read as `E` says: by vectors where
/// `W` is whole vectors.
#[target_feature(enable = "avx2,fma")]
unsafe fn copy_run<E: Elements, const W: usize>(from: *const f32, to: *mut f32) {
    if W.is_multiple_of(8) {
        for i in (0..W).step_by(8) {
            _mm256_storeu_ps(to.add(i), E::vector(_mm256_loadu_ps(from.add(i))));
        }
    } else {
        for i in 0..W {
            *to.add(i) = E::scalar(*from.add(i));
        }
    }
}

/// The transpose of eight vectors of eight f32: element `j` of output `i` is element `i` of
/// input `j` (interleaves, then 64-bit shuffles, then 128-bit lane swaps).
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let pairs_low = |a, b| _mm256_unpacklo_ps(a, b);
    let pairs_high = |a, b| _mm256_unpackhi_ps(a, b);
    let (t0, t1) = (pairs_low(r[0], r[1]), pairs_high(r[0], r[1]));
    let (t2, t3) = (pairs_low(r[2], r[3]), pairs_high(r[2], r[3]));
    let (t4, t5) = (pairs_low(r[4], r[5]), pairs_high(r[4], r[5]));
    let (t6, t7) = (pairs_low(r[6], r[7]), pairs_high(r[6], r[7]));
    let u = [
        _mm256_shuffle_ps::<0x44>(t0, t2),
        _mm256_shuffle_ps::<0xEE>(t0, t2),
        _mm256_shuffle_ps::<0x44>(t1, t3),
        _mm256_shuffle_ps::<0xEE>(t1, t3),
        _mm256_shuffle_ps::<0x44>(t4, t6),
        _mm256_shuffle_ps::<0xEE>(t4, t6),
        _mm256_shuffle_ps::<0x44>(t5, t7),
        _mm256_shuffle_ps::<0xEE>(t5, t7),
    ];
    std::array::from_fn(|i| {
        let (low, high) = (u[i % 4], u[4 + i % 4]);
        if i < 4 {
            _mm256_permute2f128_ps::<0x20>(low, high)
        } else {
            _mm256_permute2f128_ps::<0x31>(low, high)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::matmul_bf16::tests::{
        assert_independent_of_the_thread_count, assert_matches_reference_of, for_all_cases, for_large_cases,
        noise_matrix, Layout, Stored, SIZES,
    };
    use super::super::matmul_bf16::{round_to_bf16, tests::rounding_edges};
    use super::{
        matmul, rounded_to_bf16, split, supported, AsStored, Block, Elements, RoundedToBf16, MR, NR,
    };
    use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};
    use std::convert::identity;

    /// The product on `threads` threads of their own pool, the elements read as `E` says.
    fn product_of<E: Elements>(threads: usize, lhs: &Stored, rhs: &Stored) -> Vec<f32> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        // SAFETY: every caller has checked `supported` first.
        pool.install(|| unsafe { matmul::<E>(lhs.operand(), rhs.operand(), threads) })
    }

    /// The f32 product on `threads` threads of their own pool.
    fn product_on(threads: usize, lhs: &Stored, rhs: &Stored) -> Vec<f32> {
        product_of::<AsStored>(threads, lhs, rhs)
    }

    /// Whether the kernel can run here; where the CPU lacks AVX2 or FMA, says on the terminal
    /// (past the test harness's capture) that `test` checked nothing.
    fn runs_here(test: &str) -> bool {
        if !supported() {
            use std::io::Write;
            let note =
                format!("note: {test}: this CPU lacks AVX2 or FMA, so the f32 kernel was not tested\n");
            let _ = std::io::stderr().write_all(note.as_bytes());
        }
        supported()
    }

    #[test]
    fn product_matches_the_reference_on_every_layout() {
        if !runs_here("product_matches_the_reference_on_every_layout") {
            return;
        }
        for_all_cases(&SIZES, |lhs, rhs, context| {
            assert_matches_reference_of(&product_on(2, lhs, rhs), lhs, rhs, context, identity);
        });
    }

    /// k across five blocks of 256 with a remainder that is not a multiple of 8; rows and
    /// columns with partial tiles; and a product wider than one block of columns (3072),
    /// split over the threads by columns.
    #[test]
    fn long_and_wide_products_match_the_reference() {
        if !runs_here("long_and_wide_products_match_the_reference") {
            return;
        }
        for_large_cases(|lhs, rhs, context| {
            assert_matches_reference_of(&product_on(3, lhs, rhs), lhs, rhs, context, identity);
        });
        for layout in [Layout::Plain, Layout::Transposed, Layout::Strided] {
            let (lhs, rhs) = (noise_matrix(7, 300, layout, 7), noise_matrix(300, 3100, layout, 8));
            let context = format!("7×300×3100, {layout:?}");
            assert_matches_reference_of(&product_on(3, &lhs, &rhs), &lhs, &rhs, &context, identity);
        }
    }

    #[test]
    fn product_does_not_depend_on_the_thread_count() {
        if !runs_here("product_does_not_depend_on_the_thread_count") {
            return;
        }
        // SAFETY: `supported` was checked above.
        assert_independent_of_the_thread_count(|lhs, rhs| unsafe {
            matmul::<AsStored>(lhs.operand(), rhs.operand(), rayon::current_num_threads())
        });
        let (lhs, rhs) =
            (noise_matrix(20, 500, Layout::Plain, 9), noise_matrix(500, 700, Layout::Transposed, 10));
        let serial = product_on(1, &lhs, &rhs);
        for threads in [2, 3, 5] {
            let parallel = product_on(threads, &lhs, &rhs);
            assert!(
                serial.iter().zip(&parallel).all(|(s, p)| s.to_bits() == p.to_bits()),
                "{threads} threads"
            );
        }
    }

    /// Every lane rounds as the scalar rounding does: on its edge cases (ties, overflow,
    /// subnormals, NaNs, of both signs) and on every 997th bit pattern of the 2³² there are.
    #[test]
    fn vector_rounding_to_bf16_agrees_with_round_to_bf16() {
        if !runs_here("vector_rounding_to_bf16_agrees_with_round_to_bf16") {
            return;
        }
        let sampled = (0..=u32::MAX).step_by(997).map(f32::from_bits);
        let values: Vec<f32> = rounding_edges().into_iter().chain(sampled).collect();
        for lanes in values.chunks(8) {
            let mut lanes = lanes.to_vec();
            lanes.resize(8, 0.0);
            let mut rounded = [0f32; 8];
            // SAFETY: `supported` was checked above; both arrays hold eight f32.
            unsafe {
                _mm256_storeu_ps(rounded.as_mut_ptr(), rounded_to_bf16(_mm256_loadu_ps(lanes.as_ptr())))
            };
            for (&value, &got) in lanes.iter().zip(&rounded) {
                let expected = round_to_bf16(value);
                assert_eq!(got.to_bits(), expected.to_bits(), "{value:e} ({:#010x})", value.to_bits());
            }
        }
    }

    /// Rounding the elements as they are packed gives, bit for bit, the f32 product of
    /// copies rounded first (the same sums of the same values), within the bf16 reference's
    /// bound, on every layout and through every packing path (k past a block of 256 and not a
    /// multiple of 8, partial tiles).
    #[test]
    fn bf16_product_is_the_f32_product_of_the_rounded_operands() {
        if !runs_here("bf16_product_is_the_f32_product_of_the_rounded_operands") {
            return;
        }
        let check = |lhs: &Stored, rhs: &Stored, context: &str| {
            let product = product_of::<RoundedToBf16>(2, lhs, rhs);
            let of_copies = product_on(2, &lhs.map(round_to_bf16), &rhs.map(round_to_bf16));
            assert!(
                product.iter().zip(&of_copies).all(|(p, c)| p.to_bits() == c.to_bits()),
                "{context}: differs from the product of rounded copies"
            );
            assert_matches_reference_of(&product, lhs, rhs, context, round_to_bf16);
        };
        for_all_cases(&SIZES, check);
        for_large_cases(check);
    }

    #[test]
    fn an_empty_inner_dimension_gives_zeros() {
        if !runs_here("an_empty_inner_dimension_gives_zeros") {
            return;
        }
        let (lhs, rhs) = (noise_matrix(3, 0, Layout::Plain, 11), noise_matrix(0, 4, Layout::Plain, 12));
        assert_eq!(product_on(2, &lhs, &rhs), vec![0.0; 12]);
    }

    /// The blocks cover every element of the output once, start on whole tiles, and number
    /// at most one per thread.
    #[test]
    fn split_covers_the_output_once() {
        for (m, n) in [(1, 1), (5, 3), (100, 7), (7, 100), (1600, 768), (768, 3072), (6, 16)] {
            for threads in 1..=5 {
                let blocks = split(m, n, threads);
                assert!(blocks.len() <= threads, "{m}×{n} on {threads}: {} blocks", blocks.len());
                let mut covered = vec![0u8; m * n];
                for Block { rows, cols } in blocks {
                    assert!(
                        rows.0 % MR == 0 && cols.0 % NR == 0,
                        "{m}×{n} on {threads}: block at {rows:?}, {cols:?}"
                    );
                    for i in rows.0..rows.1 {
                        for j in cols.0..cols.1 {
                            covered[i * n + j] += 1;
                        }
                    }
                }
                assert!(covered.iter().all(|&c| c == 1), "{m}×{n} on {threads}");
            }
        }
    }
}
