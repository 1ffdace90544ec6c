//! The bf16 matrix product of the linear kernel ([`super::MatmulPrecision::Bf16`]): both
//! operands rounded to bfloat16 (round to nearest even), the products summed in fp32.
//!
//! On x86_64 CPUs with AVX512_BF16 the sums run on `VDPBF16PS` (Intel SDM; each 32-bit lane
//! `j` adds `a.lo·b.lo + a.hi·b.hi` of two bf16 pairs to an fp32 accumulator, twice the
//! multiply-adds of an fp32 FMA): the left operand is packed as bf16 pairs along `k` per row,
//! the right one as panels of 32 columns holding each `k`-pair's 32 columns side by side, and a
//! micro-kernel keeps a 12 × 32 tile of fp32 accumulators in registers, broadcasting one pair
//! of the left row per `k`-pair. The depth is blocked (`K_BLOCK` pairs, one panel block in L1)
//! and each tile's partial sums are added to the output block by block, so an element's
//! summation order is fixed and independent of the thread count. Rows are split across the
//! rayon pool. Elsewhere the operands are rounded to bf16 values held in f32 and multiplied by
//! the fp32 gemm: the products of two bf16 values are exact in fp32, so the two paths differ
//! only in the order of the fp32 sums.

use super::linear::{matmul, Operand};

/// `lhs · rhs` (row-major `m × n`) with both operands rounded to bf16 and fp32 sums.
pub(super) fn matmul_bf16(lhs: Operand, rhs: Operand) -> Vec<f32> {
    assert_eq!(lhs.cols, rhs.rows, "matmul_bf16: inner dimensions differ");
    #[cfg(target_arch = "x86_64")]
    if dot_products::available() {
        return dot_products::matmul(lhs, rhs);
    }
    matmul_of_rounded(lhs, rhs)
}

/// The portable path: operands rounded to bf16 values, multiplied by the fp32 gemm.
pub(super) fn matmul_of_rounded(lhs: Operand, rhs: Operand) -> Vec<f32> {
    let (lhs_data, rhs_data) = (rounded(lhs.data), rounded(rhs.data));
    matmul(Operand { data: &lhs_data, ..lhs }, Operand { data: &rhs_data, ..rhs })
}

fn rounded(data: &[f32]) -> Vec<f32> {
    data.iter().map(|&x| round_to_bf16(x)).collect()
}

/// `x` rounded to the nearest bfloat16 (ties to even), as an f32; NaN stays NaN.
pub(super) fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(bf16_bits(x)) << 16)
}

/// The bfloat16 nearest to `x` (ties to even): the upper half of its f32 bits, rounded; a NaN
/// keeps its sign and becomes quiet.
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let quiet_nan = (bits >> 16) | 0x40;
    let round_half_to_even = 0x7fff + ((bits >> 16) & 1);
    let rounded = bits.wrapping_add(round_half_to_even) >> 16;
    (if x.is_nan() { quiet_nan } else { rounded }) as u16
}

#[cfg(target_arch = "x86_64")]
mod dot_products {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use rayon::prelude::*;

    use super::Operand;

    /// Rows of a micro-tile.
    const TILE_ROWS: usize = 12;
    /// f32 lanes of a register (`PANEL` is two).
    const LANES: usize = 16;
    /// Columns of a panel and of a micro-tile: two 16-lane registers.
    const PANEL: usize = 32;
    /// `k`-pairs of a depth block: one panel's block is 32 KiB, in L1.
    const K_BLOCK: usize = 256;
    /// Panels visited per sweep over a thread's rows (their depth blocks stay in L2).
    const PANEL_GROUP: usize = 8;
    /// Rows of the output one parallel task covers at least.
    const MIN_TASK_ROWS: usize = 4 * TILE_ROWS;

    pub(super) fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE
            .get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16"))
    }

    pub(super) fn matmul(lhs: Operand, rhs: Operand) -> Vec<f32> {
        let (m, n) = (lhs.rows, rhs.cols);
        let pairs = lhs.cols.div_ceil(2);
        let packed_lhs = pack_rows(lhs, pairs);
        let packed_rhs = pack_panels(rhs, pairs);
        let mut out = vec![0f32; m * n];
        let rows_per_task = m.div_ceil(rayon::current_num_threads()).next_multiple_of(TILE_ROWS);
        let rows_per_task = rows_per_task.max(MIN_TASK_ROWS);
        out.par_chunks_mut((rows_per_task * n).max(1)).enumerate().for_each(|(task, block)| {
            let first_row = task * rows_per_task;
            let lhs_rows = &packed_lhs[first_row * pairs..];
            // SAFETY: `available` checked AVX-512F and AVX512_BF16 before any call here.
            unsafe { multiply_rows(lhs_rows, &packed_rhs, pairs, n, block) };
        });
        out
    }

    /// The left operand as bf16 pairs along `k`: row `i` holds `pairs` words
    /// `A[i, 2p] | A[i, 2p + 1] << 16`, the last pair zero-padded; rows padded with zeros to a
    /// whole tile. A row-major operand is read along its rows, a transposed one two of its
    /// stored rows (one `k`-pair) at a time.
    fn pack_rows(lhs: Operand, pairs: usize) -> Vec<u32> {
        let mut packed = vec![0u32; lhs.rows.next_multiple_of(TILE_ROWS) * pairs];
        if lhs.col_stride != 1 {
            pack_across(lhs.transposed_view(), pairs, Destination::Rows, &mut packed);
            return packed;
        }
        packed.par_chunks_mut(pairs).take(lhs.rows).enumerate().for_each(|(i, words)| {
            // SAFETY: `available` checked the CPU; the reads stay inside the row (masked at its
            // end), the writes inside `words`.
            unsafe { pack_along(lhs.row(i), words.as_mut_ptr(), 1) };
        });
        packed
    }

    /// The right operand as panels of `PANEL` columns: panel `c` holds, for each `k`-pair `p`,
    /// the words `B[2p, j] | B[2p + 1, j] << 16` of its columns `j`, zero-padded past `n`. A
    /// row-major operand is read two rows (one `k`-pair) at a time, a transposed one along its
    /// stored rows.
    fn pack_panels(rhs: Operand, pairs: usize) -> Vec<u32> {
        let panels = rhs.cols.div_ceil(PANEL);
        let mut packed = vec![0u32; panels * pairs * PANEL];
        if rhs.col_stride == 1 {
            pack_across(rhs, pairs, Destination::Panels, &mut packed);
            return packed;
        }
        let columns = rhs.transposed_view();
        packed.par_chunks_mut(pairs * PANEL).enumerate().for_each(|(c, panel)| {
            for jj in 0..PANEL.min(rhs.cols - c * PANEL) {
                // SAFETY: as in `pack_rows`; word `p` of column `jj` is `panel[p · PANEL + jj]`.
                unsafe { pack_along(columns.row(c * PANEL + jj), panel[jj..].as_mut_ptr(), PANEL) };
            }
        });
        packed
    }

    /// The pair words of one contiguous run `x` along `k` (`x[2p] | x[2p + 1] << 16`, zero
    /// past its end), written `stride` words apart from `out`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pack_along(x: &[f32], out: *mut u32, stride: usize) {
        for first in (0..x.len()).step_by(2 * LANES) {
            let words = words_along(load(&x[first..], 0), load(&x[first..], LANES));
            let count = (x.len() - first).div_ceil(2).min(LANES);
            store_words(words, count, out.add(first / 2 * stride), stride);
        }
    }

    /// Where `pack_across` puts the word of pair `p` and column `j`.
    #[derive(Clone, Copy)]
    enum Destination {
        /// Packed left rows: `j · pairs + p`.
        Rows,
        /// Right panels: `(j / PANEL) · pairs · PANEL + p · PANEL + j % PANEL`.
        Panels,
    }

    /// The output words, written by several tasks at disjoint places.
    #[derive(Clone, Copy)]
    struct Words(*mut u32);
    // SAFETY: `pack_across` hands each pair to one task and pairs' words never overlap.
    unsafe impl Send for Words {}
    unsafe impl Sync for Words {}

    /// For every pair `p` (in parallel) and column `j` of the row-major `m` (`k` rows), the word
    /// `m[2p, j] | m[2p + 1, j] << 16` (zero past the last row) at its `destination`: two
    /// whole rows read per pair.
    fn pack_across(m: Operand, pairs: usize, destination: Destination, out: &mut [u32]) {
        let words = Words(out.as_mut_ptr());
        (0..pairs).into_par_iter().with_min_len(8).for_each(|p| {
            // SAFETY: `available` checked the CPU; `out` holds every destination of `m`'s
            // columns (`pack_rows`, `pack_panels` size it), and pair `p`'s are its own.
            unsafe { pack_pair_across(m, p, pairs, destination, words) };
        });
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pack_pair_across(m: Operand, p: usize, pairs: usize, destination: Destination, out: Words) {
        let row_offsets = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(pairs as i32),
        );
        let (low_row, high_row) = (m.row(2 * p), (2 * p + 1 < m.rows).then(|| m.row(2 * p + 1)));
        for first in (0..m.cols).step_by(LANES) {
            let low = load(low_row, first);
            let high = high_row.map_or(_mm512_setzero_ps(), |row| load(row, first));
            let words = _mm512_or_si512(bf16_lanes(low), _mm512_slli_epi32::<16>(bf16_lanes(high)));
            let mask = lane_mask(m.cols - first);
            match destination {
                Destination::Rows => {
                    let at = out.0.add(first * pairs + p) as *mut i32;
                    _mm512_mask_i32scatter_epi32::<4>(at, mask, row_offsets, words);
                }
                Destination::Panels => {
                    let at = out.0.add((first / PANEL * pairs + p) * PANEL + first % PANEL);
                    _mm512_mask_storeu_epi32(at as *mut i32, mask, words);
                }
            }
        }
    }

    /// Up to 16 floats of `x` from `offset`, zero past its end.
    #[inline(always)]
    unsafe fn load(x: &[f32], offset: usize) -> __m512 {
        let lanes = x.len().saturating_sub(offset);
        _mm512_maskz_loadu_ps(lane_mask(lanes), x.as_ptr().add(offset.min(x.len())))
    }

    /// The first `count` of 16 words, `stride` words apart from `out`.
    #[inline(always)]
    unsafe fn store_words(words: __m512i, count: usize, out: *mut u32, stride: usize) {
        if stride == 1 {
            _mm512_mask_storeu_epi32(out as *mut i32, lane_mask(count), words);
        } else {
            let mut lanes = [0u32; LANES];
            _mm512_storeu_si512(lanes.as_mut_ptr() as *mut _, words);
            for (q, &word) in lanes.iter().take(count).enumerate() {
                *out.add(q * stride) = word;
            }
        }
    }

    /// The bf16 bits of 16 floats in the low halves of 16 words, as `bf16_bits` computes them.
    #[inline(always)]
    unsafe fn bf16_lanes(x: __m512) -> __m512i {
        let bits = _mm512_castps_si512(x);
        let upper = _mm512_srli_epi32::<16>(bits);
        let half_to_even =
            _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(upper, _mm512_set1_epi32(1)));
        let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(bits, half_to_even));
        let quiet_nan = _mm512_or_si512(upper, _mm512_set1_epi32(0x40));
        _mm512_mask_blend_epi32(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), rounded, quiet_nan)
    }

    /// The 16 pair words of 32 consecutive floats, `first` then `second`.
    #[inline(always)]
    unsafe fn words_along(first: __m512, second: __m512) -> __m512i {
        let low = _mm512_cvtepi32_epi16(bf16_lanes(first));
        let high = _mm512_cvtepi32_epi16(bf16_lanes(second));
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high)
    }

    /// The rows of `out` (`n` wide) from their packed left rows and all right panels: depth
    /// blocks outermost, then groups of panels, then tiles of rows.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn multiply_rows(lhs_rows: &[u32], panels: &[u32], pairs: usize, n: usize, out: &mut [f32]) {
        let rows = out.len() / n;
        let panel_count = n.div_ceil(PANEL);
        for depth in (0..pairs).step_by(K_BLOCK) {
            let depth_len = K_BLOCK.min(pairs - depth);
            for group in (0..panel_count).step_by(PANEL_GROUP) {
                for first_row in (0..rows).step_by(TILE_ROWS) {
                    for c in group..panel_count.min(group + PANEL_GROUP) {
                        let tile = Tile {
                            lhs: &lhs_rows[first_row * pairs + depth..],
                            lhs_stride: pairs,
                            panel: &panels[(c * pairs + depth) * PANEL..],
                            depth: depth_len,
                            rows: TILE_ROWS.min(rows - first_row),
                            cols: PANEL.min(n - c * PANEL),
                            accumulate: depth > 0,
                        };
                        tile.compute(&mut out[first_row * n + c * PANEL..], n);
                    }
                }
            }
        }
    }

    /// One micro-tile: up to `TILE_ROWS` × `PANEL` outputs over `depth` pairs.
    struct Tile<'a> {
        lhs: &'a [u32],
        lhs_stride: usize,
        panel: &'a [u32],
        depth: usize,
        rows: usize,
        cols: usize,
        /// Add to the outputs (a later depth block) instead of storing.
        accumulate: bool,
    }

    impl Tile<'_> {
        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn compute(&self, out: &mut [f32], out_stride: usize) {
            let mut acc = [[_mm512_setzero_ps(); 2]; TILE_ROWS];
            let lhs = self.lhs.as_ptr();
            let panel = self.panel.as_ptr();
            for p in 0..self.depth {
                let right = [
                    _mm512_loadu_si512(panel.add(p * PANEL) as *const _),
                    _mm512_loadu_si512(panel.add(p * PANEL + 16) as *const _),
                ];
                for (r, row_acc) in acc.iter_mut().enumerate() {
                    let left = _mm512_set1_epi32(*lhs.add(r * self.lhs_stride + p) as i32);
                    for (half, a) in row_acc.iter_mut().enumerate() {
                        *a = _mm512_dpbf16_ps(*a, as_bf16(left), as_bf16(right[half]));
                    }
                }
            }
            for (r, row_acc) in acc.iter().enumerate().take(self.rows) {
                let row = out.as_mut_ptr().add(r * out_stride);
                for (half, &a) in row_acc.iter().enumerate() {
                    let mask = lane_mask(self.cols.saturating_sub(16 * half));
                    let at = row.add(16 * half);
                    let value =
                        if self.accumulate { _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), a) } else { a };
                    _mm512_mask_storeu_ps(at, mask, value);
                }
            }
        }
    }

    /// The first `lanes` of 16 lanes (all of them from 16 on).
    fn lane_mask(lanes: usize) -> __mmask16 {
        if lanes >= 16 {
            0xffff
        } else {
            (1u16 << lanes) - 1
        }
    }

    #[inline(always)]
    fn as_bf16(v: __m512i) -> __m512bh {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn normal_values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..len).map(|_| rng.normal()).collect()
    }

    /// The `rows × cols` matrix over `data`, stored row-major or (`transposed`) column-major.
    fn operand(data: &[f32], rows: usize, cols: usize, transposed: bool) -> Operand<'_> {
        let (row_stride, col_stride) = if transposed { (1, rows) } else { (cols, 1) };
        Operand { data, rows, cols, row_stride, col_stride }
    }

    fn element(op: &Operand, i: usize, j: usize) -> f64 {
        f64::from(round_to_bf16(op.data[i * op.row_stride + j * op.col_stride]))
    }

    /// Each output against the f64 product of the bf16-rounded operands: a sum of `k` exact
    /// fp32 products, rounded `k` times, is off by at most `k · 2⁻²⁴ · Σ|a b|` (2⁻²³ allowed).
    fn assert_matches_rounded_reference(got: &[f32], lhs: &Operand, rhs: &Operand, what: &str) {
        let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
        assert_eq!(got.len(), m * n, "{what}: length");
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|t| element(lhs, i, t) * element(rhs, t, j));
                let (exact, magnitude) = terms.fold((0f64, 0f64), |(s, a), x| (s + x, a + x.abs()));
                let bound = k as f64 * 2f64.powi(-23) * magnitude + 1e-30;
                let error = (f64::from(got[i * n + j]) - exact).abs();
                assert!(
                    error <= bound,
                    "{what}: ({i}, {j}) is {}, reference {exact}, bound {bound}",
                    got[i * n + j]
                );
            }
        }
    }

    /// Shapes with single rows and columns, `n` past one panel and not a multiple of it, `m`
    /// not a multiple of the tile and split across threads, and `k` odd and past one depth
    /// block (600 = 300 pairs).
    const SHAPES: [(usize, usize, usize); 6] =
        [(1, 1, 1), (3, 17, 33), (17, 3, 100), (33, 100, 17), (100, 33, 3), (19, 45, 600)];

    #[test]
    fn both_paths_match_the_f64_product_of_the_rounded_operands_in_every_layout() {
        type Path = fn(Operand, Operand) -> Vec<f32>;
        let paths: [(&str, Path); 2] = [("dispatched", matmul_bf16), ("portable", matmul_of_rounded)];
        for (seed, &(m, n, k)) in SHAPES.iter().enumerate() {
            let (a, b) = (normal_values(m * k, seed as u64), normal_values(k * n, 100 + seed as u64));
            for (lhs_t, rhs_t) in [(false, false), (false, true), (true, false)] {
                let (lhs, rhs) = (operand(&a, m, k, lhs_t), operand(&b, k, n, rhs_t));
                for (name, path) in paths {
                    let what = format!("{name} {m}×{k} · {k}×{n}, transposed {lhs_t}/{rhs_t}");
                    assert_matches_rounded_reference(&path(lhs, rhs), &lhs, &rhs, &what);
                }
            }
        }
    }

    #[test]
    fn operands_are_rounded_to_bf16_before_they_are_multiplied() {
        // 1 + 2⁻¹² lies below bf16's 8 significant bits: it rounds to 1.
        let (a, b) = ([1.0 + 2f32.powi(-12), 3.0], [1.0, 1.0]);
        let (lhs, rhs) = (operand(&a, 1, 2, false), operand(&b, 2, 1, false));
        assert_eq!(matmul_bf16(lhs, rhs), vec![4.0]);
        assert_eq!(matmul(lhs, rhs), vec![4.0 + 2f32.powi(-12)]);
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_with_ties_to_even() {
        let ulp = 2f32.powi(-7); // bf16's spacing in [1, 2)
        assert_eq!(round_to_bf16(1.0 + 0.49 * ulp), 1.0);
        assert_eq!(round_to_bf16(1.0 + 0.51 * ulp), 1.0 + ulp);
        assert_eq!(round_to_bf16(1.0 + 0.5 * ulp), 1.0, "a tie rounds to the even neighbour");
        assert_eq!(round_to_bf16(1.0 + 1.5 * ulp), 1.0 + 2.0 * ulp, "a tie rounds to the even neighbour");
        assert_eq!(round_to_bf16(-3.0), -3.0);
        assert_eq!(round_to_bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_to_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert_eq!(round_to_bf16(f32::MAX), f32::INFINITY, "above bf16's largest finite value");
        assert!(round_to_bf16(f32::NAN).is_nan());
        assert!(round_to_bf16(f32::from_bits(0x7f80_0001)).is_nan(), "a NaN with only low bits set");
    }
}
