//! A matrix product on bfloat16 inputs with f32 accumulation, the precision of PyTorch's CPU
//! autocast and of `torch.set_float32_matmul_precision("medium")`: every element of both
//! operands is rounded to bfloat16 as Intel's AVX512_BF16 conversion VCVTNE2PS2BF16 rounds
//! (to nearest, ties to even; subnormals to a zero of their sign; NaN stays a quiet NaN), and
//! the products of the rounded elements, exact in f32, are summed in f32.
//!
//! On x86_64 CPUs with AVX-512F, AVX-512BW and AVX512_BF16 (detected at run time) the product
//! runs on VDPBF16PS, which multiplies the two bf16 halves of each 32-bit lane of two vectors
//! and adds both products to an f32 lane. Both operands are converted by VCVTNE2PS2BF16 into
//! bf16 pairs of consecutive k: the rhs once, into panels of 32 columns by blocks of k; the
//! lhs by each parallel block of rows, into micro-panels of [`avx512`]'s `MR` rows, block of k
//! by block of k. A register tile of `MR` × 32 f32 accumulators takes one k-pair per step (two
//! rhs vectors, `MR` broadcast lhs pairs, 2 · `MR` VDPBF16PS) while the rhs panel's block stays
//! in L1; each output element is summed in the order of k, whatever the number of threads.
//! Elsewhere the rounded operands are multiplied by the f32 gemm. The two agree up to the
//! order of the f32 sums (and VDPBF16PS flushes results of magnitude below 2⁻¹²⁶ to zero).

use super::linear::{matmul, Operand};

/// `lhs · rhs` as a new row-major `m × n` matrix, from the bf16 roundings of both operands'
/// elements with f32 sums.
pub(super) fn matmul_bf16(lhs: Operand, rhs: Operand) -> Vec<f32> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "matmul_bf16: inner dimensions differ");
    assert!(holds_all_elements(&lhs) && holds_all_elements(&rhs), "matmul_bf16: operand out of its slice");
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: `available` has checked that the CPU supports AVX-512F, AVX-512BW and AVX512_BF16.
        return unsafe { avx512::matmul_bf16(lhs, rhs) };
    }
    matmul_of_rounded(lhs, rhs)
}

/// `x` rounded to the nearest bfloat16, as a f32.
pub(super) fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(bf16_bits(x)) << 16)
}

/// The bits of `x` rounded to bfloat16 as VCVTNE2PS2BF16 rounds: to nearest, ties to even
/// (overflowing to infinity); subnormals become a zero of their sign; a NaN keeps its sign
/// and upper payload and becomes quiet.
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = if x.is_nan() {
        (bits >> 16) | 0x40
    } else if x.is_subnormal() {
        (bits >> 16) & 0x8000
    } else {
        let lowest_kept_bit = (bits >> 16) & 1;
        (bits + 0x7fff + lowest_kept_bit) >> 16
    };
    rounded as u16
}

/// Whether the operand's slice holds its last element (and so all of them).
fn holds_all_elements(op: &Operand) -> bool {
    op.rows == 0
        || op.cols == 0
        || (op.rows - 1) * op.row_stride + (op.cols - 1) * op.col_stride < op.data.len()
}

/// The product on any CPU: both operands rounded to bf16 values held in f32, multiplied by the
/// f32 gemm (products of two bf16 values are exact in f32).
fn matmul_of_rounded(lhs: Operand, rhs: Operand) -> Vec<f32> {
    let (lhs_rounded, rhs_rounded) = (rounded_row_major(&lhs), rounded_row_major(&rhs));
    matmul(row_major(&lhs_rounded, lhs.rows, lhs.cols), row_major(&rhs_rounded, rhs.rows, rhs.cols))
}

/// The operand's elements rounded to bf16, as a row-major matrix.
fn rounded_row_major(op: &Operand) -> Vec<f32> {
    (0..op.rows)
        .flat_map(|i| {
            (0..op.cols).map(move |j| round_to_bf16(op.data[i * op.row_stride + j * op.col_stride]))
        })
        .collect()
}

fn row_major(data: &[f32], rows: usize, cols: usize) -> Operand<'_> {
    Operand { data, rows, cols, row_stride: cols, col_stride: 1 }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    use std::ops::Range;
    use std::sync::OnceLock;

    use rayon::prelude::*;

    use super::{bf16_bits, Operand};

    /// f32 lanes of a vector, and bf16 pairs of a packed vector.
    const LANES: usize = 16;

    /// Rows of the register tile and of a packed lhs micro-panel: `MR` × 2 accumulators leave
    /// registers for the two rhs vectors and a broadcast lhs pair.
    const MR: usize = 12;

    /// Columns of the register tile and of a packed rhs panel: two vectors.
    const NR: usize = 2 * LANES;

    /// k-pairs per block: a rhs panel's block (`KC` × `NR` × 4 bytes, 24 KiB) stays in L1
    /// while the row block's lhs micro-panels pass it.
    const KC: usize = 192;

    /// Multiply-adds below which a product runs on the calling thread.
    const MIN_PARALLEL_WORK: usize = 1 << 22;

    /// Row blocks per thread, for balance between threads.
    const BLOCKS_PER_THREAD: usize = 8;

    /// How far ahead in k the packing of adjacent lines asks for the lines it will read (each
    /// pair of k a separate stretch of memory, which the hardware prefetchers miss).
    const PREFETCH_PAIRS_AHEAD: usize = 8;

    /// f32 per cache line.
    const CACHE_LINE_F32: usize = 16;

    /// Whether the CPU runs this module's code (checked once).
    pub(super) fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        })
    }

    /// An operand read as `count` lines of `len` elements along the inner dimension k (the
    /// lhs's rows or the rhs's columns): element `k` of line `l` is
    /// `data[l · line_stride + k · k_stride]`.
    #[derive(Clone, Copy)]
    struct Lines<'a> {
        data: &'a [f32],
        count: usize,
        len: usize,
        line_stride: usize,
        k_stride: usize,
    }

    impl<'a> Lines<'a> {
        fn rows_of(op: Operand<'a>) -> Self {
            Self {
                data: op.data,
                count: op.rows,
                len: op.cols,
                line_stride: op.row_stride,
                k_stride: op.col_stride,
            }
        }

        fn columns_of(op: Operand<'a>) -> Self {
            Self {
                data: op.data,
                count: op.cols,
                len: op.rows,
                line_stride: op.col_stride,
                k_stride: op.row_stride,
            }
        }

        /// The `count` lines from `first`.
        fn slice(&self, first: usize, count: usize) -> Self {
            Self { data: &self.data[first * self.line_stride..], count, ..*self }
        }

        /// Pairs of consecutive elements per line, the last one padded with a zero for odd `len`.
        fn pairs(&self) -> usize {
            self.len.div_ceil(2)
        }

        fn offset(&self, line: usize, k: usize) -> usize {
            line * self.line_stride + k * self.k_stride
        }
    }

    /// `lhs · rhs` as a new row-major matrix (see [`super::matmul_bf16`]; all dimensions > 0).
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX-512BW and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn matmul_bf16(lhs: Operand, rhs: Operand) -> Vec<f32> {
        let (m, n) = (lhs.rows, rhs.cols);
        let parallel = m * n * lhs.cols >= MIN_PARALLEL_WORK;
        let rhs_blocks = pack_rhs(Lines::columns_of(rhs), parallel);
        let lhs = Lines::rows_of(lhs);
        let rows_per_block = if parallel { rows_per_parallel_block(m) } else { m };
        let mut out = Vec::with_capacity(m * n);
        let multiply_rows = |(index, block): (usize, &mut [MaybeUninit<f32>])| {
            let rows = block.len() / n;
            multiply_row_block(lhs.slice(index * rows_per_block, rows), &rhs_blocks, n, block)
        };
        let unwritten = &mut out.spare_capacity_mut()[..m * n];
        if parallel {
            unwritten.par_chunks_mut(rows_per_block * n).enumerate().for_each(multiply_rows);
        } else {
            multiply_rows((0, unwritten));
        }
        // SAFETY: `multiply_row_block` has written every element of every block of rows.
        unsafe { out.set_len(m * n) };
        out
    }

    /// Rows per parallel block: `BLOCKS_PER_THREAD` blocks per thread, whole micro-panels.
    fn rows_per_parallel_block(m: usize) -> usize {
        m.div_ceil(rayon::current_num_threads() * BLOCKS_PER_THREAD).next_multiple_of(MR)
    }

    /// The rhs's columns packed by blocks of `KC` k-pairs, each block as panels of `NR`
    /// columns (the last one padded with zero columns) of `[block pairs][NR]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_rhs(columns: Lines, parallel: bool) -> Vec<u32> {
        let panels_width = columns.count.next_multiple_of(NR);
        let mut packed = vec![0u32; columns.pairs() * panels_width];
        let pack_block = |(index, block): (usize, &mut [u32])| {
            let first_pair = index * KC;
            pack_panels(columns, NR, first_pair..(first_pair + KC).min(columns.pairs()), block)
        };
        if parallel {
            packed.par_chunks_mut(KC * panels_width).enumerate().for_each(pack_block);
        } else {
            packed.chunks_mut(KC * panels_width).enumerate().for_each(pack_block);
        }
        packed
    }

    /// Writes `rows · rhs` (`rows` the lhs rows of this block, `rhs_blocks` from [`pack_rhs`])
    /// to every element of `out`, by blocks of `KC` k-pairs: each block's lhs micro-panels are
    /// packed, then every rhs panel meets every micro-panel; the first block stores its
    /// products, the others add theirs.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn multiply_row_block(rows: Lines, rhs_blocks: &[u32], n: usize, out: &mut [MaybeUninit<f32>]) {
        let pairs = rows.pairs();
        let rows_width = rows.count.next_multiple_of(MR);
        let panels_width = n.next_multiple_of(NR);
        let mut packed = vec![0u32; pairs.min(KC) * rows_width];
        for (index, rhs_block) in rhs_blocks.chunks(KC * panels_width).enumerate() {
            let block = index * KC..(index * KC + KC).min(pairs);
            let packed = &mut packed[..block.len() * rows_width];
            pack_panels(rows, MR, block.clone(), packed);
            let micro_panels = packed.chunks_exact(block.len() * MR);
            for (panel, rhs_panel) in rhs_block.chunks_exact(block.len() * NR).enumerate() {
                let cols = (n - panel * NR).min(NR);
                for (row_panel, micro_panel) in micro_panels.clone().enumerate() {
                    let tile_rows = (rows.count - row_panel * MR).min(MR);
                    let tile_out = &mut out[row_panel * MR * n + panel * NR..];
                    let tile = Tile { rows: tile_rows, cols, stride: n, written: index > 0 };
                    multiply_tile(micro_panel, rhs_panel, tile, tile_out);
                }
            }
        }
    }

    /// Where a register tile's result goes: the top-left `rows × cols` of the tile, row `r`
    /// `stride` elements after row `r − 1`, added to what is there when everything there has
    /// been `written` (by an earlier k-block), stored otherwise.
    #[derive(Clone, Copy)]
    struct Tile {
        rows: usize,
        cols: usize,
        stride: usize,
        written: bool,
    }

    /// The `MR × NR` product of a packed lhs micro-panel block (`[pairs][MR]`) and rhs panel
    /// block (`[pairs][NR]`), by one VDPBF16PS per row and rhs vector per k-pair, written to
    /// `out` as `tile` says.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn multiply_tile(lhs: &[u32], rhs: &[u32], tile: Tile, out: &mut [MaybeUninit<f32>]) {
        let (lhs_pairs, _) = lhs.as_chunks::<MR>();
        let (rhs_pairs, _) = rhs.as_chunks::<NR>();
        assert_eq!(lhs_pairs.len(), rhs_pairs.len(), "multiply_tile: k-blocks differ");
        let mut acc = if tile.written { load_tile(out, tile) } else { [[_mm512_setzero_ps(); 2]; MR] };
        for (lhs_pair, rhs_pair) in lhs_pairs.iter().zip(rhs_pairs) {
            // SAFETY: `rhs_pair` holds `NR` = two vectors of u32.
            let (rhs_low, rhs_high) = unsafe {
                (
                    _mm512_loadu_si512(rhs_pair.as_ptr().cast()),
                    _mm512_loadu_si512(rhs_pair[LANES..].as_ptr().cast()),
                )
            };
            let (rhs_low, rhs_high) = (as_bf16(rhs_low), as_bf16(rhs_high));
            for (acc_row, &pair) in acc.iter_mut().zip(lhs_pair) {
                let lhs_broadcast = as_bf16(_mm512_set1_epi32(pair as i32));
                acc_row[0] = _mm512_dpbf16_ps(acc_row[0], rhs_low, lhs_broadcast);
                acc_row[1] = _mm512_dpbf16_ps(acc_row[1], rhs_high, lhs_broadcast);
            }
        }
        store_tile(&acc, out, tile);
    }

    /// The 32 bf16 halves of a vector of bf16 pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn as_bf16(pairs: __m512i) -> __m512bh {
        // SAFETY: both are 512-bit vectors of plain bits, every bit pattern valid in either.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(pairs) }
    }

    /// The tile's part of `out`, written before, as accumulators, zero outside it.
    #[target_feature(enable = "avx512f")]
    fn load_tile(out: &[MaybeUninit<f32>], tile: Tile) -> [[__m512; 2]; MR] {
        assert!(tile.written, "load_tile: the tile has not been written");
        // SAFETY: all of `out` has been written (`tile.written`), so it holds initialised f32.
        let out = unsafe { &*(out as *const [MaybeUninit<f32>] as *const [f32]) };
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for (r, acc_row) in acc.iter_mut().enumerate() {
            if r < tile.rows {
                for (half, acc) in acc_row.iter_mut().enumerate() {
                    *acc = load_masked(out, r * tile.stride + half * LANES, half_width(tile.cols, half));
                }
            }
        }
        acc
    }

    /// Writes the tile's part of the accumulators to `out`.
    #[target_feature(enable = "avx512f")]
    fn store_tile(acc: &[[__m512; 2]; MR], out: &mut [MaybeUninit<f32>], tile: Tile) {
        for (r, acc_row) in acc.iter().enumerate() {
            if r < tile.rows {
                for (half, &acc) in acc_row.iter().enumerate() {
                    let start = r * tile.stride + half * LANES;
                    store_masked(out, start, half_width(tile.cols, half), _mm512_castps_si512(acc));
                }
            }
        }
    }

    /// Columns of the tile in its first (`half` 0) or second vector.
    fn half_width(cols: usize, half: usize) -> usize {
        cols.saturating_sub(half * LANES).min(LANES)
    }

    /// Packs the lines, in panels of `width` (the last one padded with zero lines), over the
    /// k-pairs `pairs` into `out`: panel `q`, `[pairs][width]`, holds at
    /// `(p − pairs.start) · width + c` the bf16 of line `q · width + c`'s element `2p` in the
    /// low half and of element `2p + 1` in the high half (zero past the end of the line).
    /// Vectorised where k or the lines are contiguous.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_panels(lines: Lines, width: usize, pairs: Range<usize>, out: &mut [u32]) {
        let panel_len = pairs.len() * width;
        assert_eq!(out.len(), lines.count.div_ceil(width) * panel_len, "pack_panels: output size");
        if lines.line_stride == 1 && lines.k_stride != 1 {
            // Pair by pair of k, each time across all panels: one sweep of memory.
            for pair in pairs.clone() {
                prefetch_pair(lines, pair + PREFETCH_PAIRS_AHEAD);
                for (first, panel) in (0..).step_by(width).zip(out.chunks_exact_mut(panel_len)) {
                    let out = &mut panel[(pair - pairs.start) * width..][..width];
                    pack_pair_of_adjacent_lines(lines, first, pair, out);
                }
            }
            return;
        }
        for (first, panel) in (0..).step_by(width).zip(out.chunks_exact_mut(panel_len)) {
            let present = first..lines.count.min(first + width);
            if lines.k_stride == 1 {
                pack_contiguous_k(lines, present, width, pairs.clone(), panel);
            } else {
                pack_strided(lines, present, width, pairs.clone(), panel);
            }
        }
    }

    /// [`pack_panels`] for one panel of lines whose k is contiguous: 16 pairs of each of 16
    /// lines converted at a time, then transposed.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_contiguous_k(
        lines: Lines,
        present: Range<usize>,
        width: usize,
        pairs: Range<usize>,
        out: &mut [u32],
    ) {
        for chunk_start in (0..width).step_by(LANES) {
            let chunk_lines = (present.start + chunk_start..present.end).take(LANES);
            for first_pair in pairs.clone().step_by(LANES) {
                let mut by_line = [_mm512_setzero_si512(); LANES];
                for (vector, line) in by_line.iter_mut().zip(chunk_lines.clone()) {
                    let first_k = 2 * first_pair;
                    let elements = (2 * (pairs.end - first_pair)).min(lines.len - first_k);
                    *vector = converted(lines.data, lines.offset(line, first_k), elements);
                }
                let by_pair = transpose(by_line);
                for (q, vector) in by_pair.iter().take(pairs.end - first_pair).enumerate() {
                    let start = (first_pair - pairs.start + q) * width + chunk_start;
                    store_masked(out, start, (width - chunk_start).min(LANES), *vector);
                }
            }
        }
    }

    /// The bf16 pairs of k-pair `pair` of the `out.len()` lines from `first`, lines adjacent in
    /// memory (zero past the last line): 16 lines' two elements converted and interleaved at a
    /// time.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_pair_of_adjacent_lines(lines: Lines, first: usize, pair: usize, out: &mut [u32]) {
        for chunk_start in (0..out.len()).step_by(LANES) {
            let first_line = first + chunk_start;
            let count = lines.count.saturating_sub(first_line).min(LANES);
            let low = load_masked(lines.data, lines.offset(first_line, 2 * pair), count);
            let high_count = if 2 * pair + 1 < lines.len { count } else { 0 };
            let high = load_masked(lines.data, lines.offset(first_line, 2 * pair + 1), high_count);
            let lanes = (out.len() - chunk_start).min(LANES);
            store_masked(out, chunk_start, lanes, interleaved_pairs(low, high));
        }
    }

    /// Asks for the cache lines of k-pair `pair` of all lines, lines adjacent in memory (none
    /// past the end of k).
    #[target_feature(enable = "avx512f")]
    #[allow(
        unused_unsafe,
        reason = "`_mm_prefetch` is safe in newer Rust releases than the oldest supported"
    )]
    fn prefetch_pair(lines: Lines, pair: usize) {
        for k in (2 * pair..2 * pair + 2).take_while(|&k| k < lines.len) {
            let first = lines.data.as_ptr().wrapping_add(k * lines.k_stride);
            let offsets = (0..lines.count).step_by(CACHE_LINE_F32).chain(lines.count.checked_sub(1));
            for offset in offsets {
                // SAFETY: a prefetch reads nothing into the program and cannot fault, whatever
                // the address.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(offset).cast()) };
            }
        }
    }

    /// [`pack_panels`] for one panel of lines of any strides, element by element.
    fn pack_strided(lines: Lines, present: Range<usize>, width: usize, pairs: Range<usize>, out: &mut [u32]) {
        let bits = |line: usize, k: usize| {
            if line < present.end && k < lines.len {
                u32::from(bf16_bits(lines.data[lines.offset(line, k)]))
            } else {
                0
            }
        };
        for (pair, out) in pairs.zip(out.chunks_exact_mut(width)) {
            for (line, out) in (present.start..).zip(out.iter_mut()) {
                *out = bits(line, 2 * pair) | bits(line, 2 * pair + 1) << 16;
            }
        }
    }

    /// The bf16 pairs of `count` (at most 32) consecutive f32 from `data[start]`, zero past them.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn converted(data: &[f32], start: usize, count: usize) -> __m512i {
        let low = load_masked(data, start, count.min(LANES));
        let high = load_masked(data, start + LANES, count.saturating_sub(LANES).min(LANES));
        as_bits(_mm512_cvtne2ps_pbh(high, low))
    }

    /// Lane `j` holds the bf16 pair `(low[j], high[j])`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn interleaved_pairs(low: __m512, high: __m512) -> __m512i {
        // Halves j and 16 + j (the bf16 of low[j] and high[j]) go to halves 2j and 2j + 1.
        let order = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3,
            18, 2, 17, 1, 16, 0,
        );
        _mm512_permutexvar_epi16(order, as_bits(_mm512_cvtne2ps_pbh(high, low)))
    }

    /// The bits of a bf16 vector.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn as_bits(halves: __m512bh) -> __m512i {
        // SAFETY: both are 512-bit vectors of plain bits, every bit pattern valid in either.
        unsafe { std::mem::transmute::<__m512bh, __m512i>(halves) }
    }

    /// The 16 × 16 transpose of 32-bit lanes: lane `j` of vector `i` goes to lane `i` of vector
    /// `j`. Within each 128-bit lane first (4 × 4 blocks of 4 vectors), then across them.
    #[target_feature(enable = "avx512f")]
    fn transpose(rows: [__m512i; LANES]) -> [__m512i; LANES] {
        // by_quad[g][c], 128-bit lane q: column 4q + c of rows 4g..4g + 4.
        let by_quad: [[__m512i; 4]; 4] = std::array::from_fn(|g| {
            let [r0, r1, r2, r3] = [rows[4 * g], rows[4 * g + 1], rows[4 * g + 2], rows[4 * g + 3]];
            let (low01, high01) = (_mm512_unpacklo_epi32(r0, r1), _mm512_unpackhi_epi32(r0, r1));
            let (low23, high23) = (_mm512_unpacklo_epi32(r2, r3), _mm512_unpackhi_epi32(r2, r3));
            [
                _mm512_unpacklo_epi64(low01, low23),
                _mm512_unpackhi_epi64(low01, low23),
                _mm512_unpacklo_epi64(high01, high23),
                _mm512_unpackhi_epi64(high01, high23),
            ]
        });
        let mut out = [_mm512_setzero_si512(); LANES];
        for c in 0..4 {
            let quad = |g: usize| by_quad[g][c];
            // Lanes q0, q1 of the first vector, then of the second (0x44), or q2, q3 (0xee).
            let first_halves01 = _mm512_shuffle_i32x4::<0x44>(quad(0), quad(1));
            let second_halves01 = _mm512_shuffle_i32x4::<0xee>(quad(0), quad(1));
            let first_halves23 = _mm512_shuffle_i32x4::<0x44>(quad(2), quad(3));
            let second_halves23 = _mm512_shuffle_i32x4::<0xee>(quad(2), quad(3));
            // Even lanes of both (0x88), or odd lanes (0xdd): 128-bit lane q of quads 0..4.
            out[c] = _mm512_shuffle_i32x4::<0x88>(first_halves01, first_halves23);
            out[4 + c] = _mm512_shuffle_i32x4::<0xdd>(first_halves01, first_halves23);
            out[8 + c] = _mm512_shuffle_i32x4::<0x88>(second_halves01, second_halves23);
            out[12 + c] = _mm512_shuffle_i32x4::<0xdd>(second_halves01, second_halves23);
        }
        out
    }

    /// The `count` (at most 16) f32 from `data[start]` in the low lanes, zero above.
    #[target_feature(enable = "avx512f")]
    fn load_masked(data: &[f32], start: usize, count: usize) -> __m512 {
        if count == 0 {
            return _mm512_setzero_ps();
        }
        let source = &data[start..start + count];
        // SAFETY: the mask's `count` lanes lie in `source`; masked-off lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(lane_mask(count), source.as_ptr()) }
    }

    /// Writes the low `count` (at most 16) 32-bit lanes of `vector` to `out[start..]`.
    #[target_feature(enable = "avx512f")]
    fn store_masked<T: Copy>(out: &mut [T], start: usize, count: usize, vector: __m512i) {
        const { assert!(size_of::<T>() == 4) };
        if count == 0 {
            return;
        }
        let target = &mut out[start..start + count];
        // SAFETY: the mask's `count` lanes of 4 bytes lie in `target`; masked-off lanes are not
        // written.
        unsafe { _mm512_mask_storeu_epi32(target.as_mut_ptr().cast(), lane_mask(count), vector) }
    }

    /// The mask of the low `count` (at most 16) lanes.
    fn lane_mask(count: usize) -> __mmask16 {
        debug_assert!(count <= LANES);
        ((1u32 << count) - 1) as __mmask16
    }
}

#[cfg(test)]
mod tests {
    use super::{matmul_bf16, matmul_of_rounded, round_to_bf16, Operand};

    /// A matrix stored row-major, transposed (`[cols, rows]`) or row-major with every other
    /// stored column skipped (neither stride 1).
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        Plain,
        Transposed,
        Strided,
    }

    /// A `rows × cols` matrix's storage in a layout, and its view.
    struct Stored {
        data: Vec<f32>,
        rows: usize,
        cols: usize,
        layout: Layout,
    }

    impl Stored {
        /// The matrix whose element `(i, j)` is `value(i, j)`, stored in `layout`; storage
        /// outside the matrix (the skipped columns) holds NaN, which no product may read.
        fn new(rows: usize, cols: usize, layout: Layout, value: impl Fn(usize, usize) -> f32) -> Self {
            let len = rows * cols * if matches!(layout, Layout::Strided) { 2 } else { 1 };
            let mut stored = Self { data: vec![f32::NAN; len], rows, cols, layout };
            for i in 0..rows {
                for j in 0..cols {
                    let index = stored.index(i, j);
                    stored.data[index] = value(i, j);
                }
            }
            stored
        }

        fn strides(&self) -> (usize, usize) {
            match self.layout {
                Layout::Plain => (self.cols, 1),
                Layout::Transposed => (1, self.rows),
                Layout::Strided => (2 * self.cols, 2),
            }
        }

        fn index(&self, i: usize, j: usize) -> usize {
            let (row_stride, col_stride) = self.strides();
            i * row_stride + j * col_stride
        }

        fn operand(&self) -> Operand<'_> {
            let (row_stride, col_stride) = self.strides();
            Operand { data: &self.data, rows: self.rows, cols: self.cols, row_stride, col_stride }
        }
    }

    /// A deterministic f32 in [-1, 1) with all 23 mantissa bits in use, from `seed`.
    fn noise(seed: usize) -> f32 {
        let mixed = (seed as u64 ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let mixed = (mixed ^ (mixed >> 31)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((mixed >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    /// A matrix of noise, different for each `salt`.
    fn noise_matrix(rows: usize, cols: usize, layout: Layout, salt: usize) -> Stored {
        Stored::new(rows, cols, layout, |i, j| noise(salt * 1_000_003 + i * cols + j))
    }

    /// Checks `product` against `Σ_k bf16(a_ik) · bf16(b_kj)` in f64. Each product of two bf16
    /// values is exact in f32, so only the sums round: k f32 additions in any order err by at
    /// most `(k − 1) · 2⁻²⁴ · Σ_k |a_ik b_kj|` (to first order), within the tolerance
    /// `k · 2⁻²³ · Σ_k |a_ik b_kj|` per element.
    fn assert_matches_reference(product: &[f32], lhs: &Stored, rhs: &Stored, context: &str) {
        let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
        assert_eq!(product.len(), m * n, "{context}: length");
        let a = |i: usize, p: usize| f64::from(round_to_bf16(lhs.data[lhs.index(i, p)]));
        let b = |p: usize, j: usize| f64::from(round_to_bf16(rhs.data[rhs.index(p, j)]));
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k).map(|p| a(i, p) * b(p, j)).sum();
                let magnitude: f64 = (0..k).map(|p| (a(i, p) * b(p, j)).abs()).sum();
                let tolerance = k as f64 * 2f64.powi(-23) * magnitude;
                let got = f64::from(product[i * n + j]);
                assert!(
                    (got - exact).abs() <= tolerance,
                    "{context}: ({i}, {j}) is {got}, expected {exact} ± {tolerance}"
                );
            }
        }
    }

    /// Runs `check` for every product shape of `sizes` and every pair of operand layouts.
    fn for_all_cases(sizes: &[usize], mut check: impl FnMut(&Stored, &Stored, &str)) {
        let layouts = [Layout::Plain, Layout::Transposed, Layout::Strided];
        for &m in sizes {
            for &k in sizes {
                for &n in sizes {
                    for lhs_layout in layouts {
                        for rhs_layout in layouts {
                            let lhs = noise_matrix(m, k, lhs_layout, 1);
                            let rhs = noise_matrix(k, n, rhs_layout, 2);
                            check(&lhs, &rhs, &format!("{m}×{k}×{n}, {lhs_layout:?} × {rhs_layout:?}"));
                        }
                    }
                }
            }
        }
    }

    /// Awkward shapes: single rows, columns and k; odd k; n around the 16- and 32-column
    /// vectors and panels; m across several register tiles.
    const SIZES: [usize; 5] = [1, 3, 17, 33, 100];

    /// The bf16 path this CPU runs: the AVX-512 kernels when it has AVX-512F, -BW and
    /// AVX512_BF16; otherwise the portable fallback, saying so on the terminal (written past
    /// the test harness's capture, so the substitution is visible in every run).
    #[derive(Clone, Copy)]
    enum Path {
        #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
        Avx512,
        Fallback,
    }

    impl Path {
        fn on_this_cpu(test: &str) -> Self {
            #[cfg(target_arch = "x86_64")]
            if super::avx512::available() {
                return Self::Avx512;
            }
            use std::io::Write;
            let note = format!(
                "note: {test}: this CPU lacks AVX-512F/BW/BF16, so the portable fallback is tested \
                 instead of the AVX-512 kernels\n"
            );
            let _ = std::io::stderr().write_all(note.as_bytes());
            Self::Fallback
        }

        fn product(self, lhs: Operand, rhs: Operand) -> Vec<f32> {
            match self {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `on_this_cpu` has checked the CPU's features.
                Self::Avx512 => unsafe { super::avx512::matmul_bf16(lhs, rhs) },
                _ => matmul_of_rounded(lhs, rhs),
            }
        }
    }

    #[test]
    fn avx512_product_matches_the_reference_on_every_layout() {
        let path = Path::on_this_cpu("avx512_product_matches_the_reference_on_every_layout");
        for_all_cases(&SIZES, |lhs, rhs, context| {
            assert_matches_reference(&path.product(lhs.operand(), rhs.operand()), lhs, rhs, context);
        });
    }

    #[test]
    fn fallback_product_matches_the_reference_on_every_layout() {
        for_all_cases(&SIZES, |lhs, rhs, context| {
            assert_matches_reference(&matmul_of_rounded(lhs.operand(), rhs.operand()), lhs, rhs, context);
        });
    }

    /// k across three k-blocks (odd, so the last pair is padded), n neither a multiple of 16
    /// nor of 32, m not a multiple of the tile rows and large enough to split into row blocks
    /// on several threads.
    #[test]
    fn large_products_match_the_reference() {
        for (lhs_layout, rhs_layout) in [
            (Layout::Plain, Layout::Plain),
            (Layout::Plain, Layout::Transposed),
            (Layout::Transposed, Layout::Plain),
        ] {
            let (lhs, rhs) = (noise_matrix(101, 1101, lhs_layout, 3), noise_matrix(1101, 71, rhs_layout, 4));
            let context = format!("{lhs_layout:?} × {rhs_layout:?}");
            assert_matches_reference(&matmul_bf16(lhs.operand(), rhs.operand()), &lhs, &rhs, &context);
            let fallback = matmul_of_rounded(lhs.operand(), rhs.operand());
            assert_matches_reference(&fallback, &lhs, &rhs, &format!("{context} (fallback)"));
        }
    }

    /// Row blocks (and their number) follow the thread count; the sums must not.
    #[test]
    fn avx512_product_does_not_depend_on_the_thread_count() {
        let path = Path::on_this_cpu("avx512_product_does_not_depend_on_the_thread_count");
        let (lhs, rhs) =
            (noise_matrix(150, 700, Layout::Plain, 5), noise_matrix(700, 90, Layout::Transposed, 6));
        let on_threads = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| path.product(lhs.operand(), rhs.operand()))
        };
        let serial = on_threads(1);
        for threads in [2, 3, 5] {
            let parallel = on_threads(threads);
            assert!(
                serial.iter().zip(&parallel).all(|(s, p)| s.to_bits() == p.to_bits()),
                "{threads} threads"
            );
        }
    }

    #[test]
    fn inputs_are_rounded_before_the_products() {
        // bf16 has 7 fraction bits: 1 + 2⁻¹⁰ rounds down to 1, 1 + 3 · 2⁻⁹ up to 1 + 2⁻⁷, and
        // 1 + 2⁻⁸ (halfway) to the even 1; the rows of these times a column of ones sum
        // exactly, where the f32 product keeps the excess.
        let k = 40;
        let values = [1.0 + 2f32.powi(-10), 1.0 + 3.0 * 2f32.powi(-9), 1.0 + 2f32.powi(-8)];
        let lhs = Stored::new(3, k, Layout::Plain, |i, _| values[i]);
        let rhs = Stored::new(k, 2, Layout::Plain, |_, _| 1.0);
        let rounded = matmul_bf16(lhs.operand(), rhs.operand());
        let full = super::matmul(lhs.operand(), rhs.operand());
        let expected_row_sums = [k as f32, k as f32 * (1.0 + 2f32.powi(-7)), k as f32];
        for (i, expected) in expected_row_sums.into_iter().enumerate() {
            assert_eq!(rounded[2 * i], expected, "row {i}");
            assert_ne!(rounded[2 * i], full[2 * i], "row {i}");
        }
    }

    #[test]
    fn round_to_bf16_rounds_to_nearest_even() {
        let bf16 = |bits: u32| f32::from_bits(bits);
        // Halfway between 1 and the next bf16 (1 + 2⁻⁷): to the even one, 1.
        assert_eq!(round_to_bf16(bf16(0x3f80_8000)), bf16(0x3f80_0000));
        // Halfway above an odd bf16: up to the even one.
        assert_eq!(round_to_bf16(bf16(0x3f81_8000)), bf16(0x3f82_0000));
        // Just above or below halfway: to the nearer one.
        assert_eq!(round_to_bf16(bf16(0x3f80_8001)), bf16(0x3f81_0000));
        assert_eq!(round_to_bf16(bf16(0xbf81_7fff)), bf16(0xbf81_0000));
        // The largest f32 rounds up to infinity; infinities and zeros stay.
        assert_eq!(round_to_bf16(f32::MAX), f32::INFINITY);
        assert_eq!(round_to_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert_eq!(round_to_bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_to_bf16(-0.0).to_bits(), (-0.0f32).to_bits());
        // Subnormals become zeros of their sign.
        assert_eq!(round_to_bf16(bf16(0x807f_ffff)).to_bits(), (-0.0f32).to_bits());
        // A NaN whose payload lies only in the dropped bits stays a NaN.
        assert!(round_to_bf16(bf16(0x7f80_0001)).is_nan());
        assert!(round_to_bf16(f32::NAN).is_nan());
    }

    /// Bit patterns where the rounding changes behaviour: ties to even and odd, around them,
    /// overflow, infinities, subnormals, zeros and NaNs, of both signs, and some noise.
    fn rounding_edges() -> Vec<f32> {
        let edges = [
            0x3f80_8000,
            0x3f81_8000,
            0x3f80_7fff,
            0x3f80_8001,
            0x7f7f_ffff,
            0x7f7f_7fff,
            0x7f80_0000,
            0x0080_0000,
            0x007f_ffff,
            0x0000_0001,
            0x0000_0000,
            0x7f80_0001,
            0x7fc0_0000,
            0x7fff_ffff,
            0x4049_0fdb,
        ];
        let signed = edges.into_iter().flat_map(|bits: u32| [bits, bits | 0x8000_0000]).map(f32::from_bits);
        signed.chain((0..100).map(|i| noise(i) * 1e3)).collect()
    }

    /// The products of a column of values with the 1 × 1 matrix `[1]` and of `[1]` with a row
    /// of values, through every packing path of either operand, are the values rounded by
    /// `round_to_bf16`: the packers' conversion and the scalar rounding agree.
    #[test]
    fn packed_conversion_agrees_with_round_to_bf16() {
        let values = rounding_edges();
        let one = Stored::new(1, 1, Layout::Plain, |_, _| 1.0);
        for layout in [Layout::Plain, Layout::Transposed, Layout::Strided] {
            let column = Stored::new(values.len(), 1, layout, |i, _| values[i]);
            let row = Stored::new(1, values.len(), layout, |_, j| values[j]);
            let products = [
                ("lhs", matmul_bf16(column.operand(), one.operand())),
                ("rhs", matmul_bf16(one.operand(), row.operand())),
            ];
            for (operand, product) in products {
                for (&value, &got) in values.iter().zip(&product) {
                    let expected = round_to_bf16(value);
                    let agrees = if expected.is_nan() { got.is_nan() } else { got == expected };
                    assert!(
                        agrees,
                        "{operand} {layout:?}: {value:e} ({:#010x}) gave {got:e}",
                        value.to_bits()
                    );
                }
            }
        }
    }
}
