//! The AVX-512 kernels of [`super::matmul_bf16`]: VDPBF16PS on operands packed into bf16
//! pairs of consecutive k (see the parent module's documentation for the scheme).

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::{balanced_row_blocks, bf16_bits, written_by_row_blocks, Operand};

/// f32 lanes of a vector, and bf16 pairs of a packed vector.
pub(super) const LANES: usize = 16;

/// Rows of the register tile and of a packed lhs micro-panel: `MR` × 2 accumulators leave
/// registers for the two rhs vectors and a broadcast lhs pair.
const MR: usize = 12;

/// Columns of the register tile and of a packed rhs panel: two vectors.
const NR: usize = 2 * LANES;

/// k-pairs per block: a rhs panel's block (`KC` × `NR` × 4 bytes, 24 KiB) stays in L1
/// while the row block's lhs micro-panels pass it.
const KC: usize = 192;

/// Multiply-adds below which a product runs on the calling thread.
pub(super) const MIN_PARALLEL_WORK: usize = 1 << 22;

/// Row blocks per thread, for balance between threads (and between threads slowed unevenly).
pub(super) const BLOCKS_PER_THREAD: usize = 8;

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
pub(super) struct Lines<'a> {
    pub(super) data: &'a [f32],
    pub(super) count: usize,
    pub(super) len: usize,
    line_stride: usize,
    pub(super) k_stride: usize,
}

impl<'a> Lines<'a> {
    pub(super) fn rows_of(op: Operand<'a>) -> Self {
        Self {
            data: op.data,
            count: op.rows,
            len: op.cols,
            line_stride: op.row_stride,
            k_stride: op.col_stride,
        }
    }

    pub(super) fn columns_of(op: Operand<'a>) -> Self {
        Self {
            data: op.data,
            count: op.cols,
            len: op.rows,
            line_stride: op.col_stride,
            k_stride: op.row_stride,
        }
    }

    /// The `count` lines from `first`.
    pub(super) fn slice(&self, first: usize, count: usize) -> Self {
        Self { data: &self.data[first * self.line_stride..], count, ..*self }
    }

    /// Pairs of consecutive elements per line, the last one padded with a zero for odd `len`.
    pub(super) fn pairs(&self) -> usize {
        self.len.div_ceil(2)
    }

    pub(super) fn offset(&self, line: usize, k: usize) -> usize {
        line * self.line_stride + k * self.k_stride
    }
}

/// `lhs · rhs` as a new row-major matrix (see [`super::matmul_bf16`]; all dimensions > 0), on
/// the thread pool where `may_parallelise` and the product is large.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX512_BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn matmul_bf16(lhs: Operand, rhs: Operand, may_parallelise: bool) -> Vec<f32> {
    let (m, n) = (lhs.rows, rhs.cols);
    let parallel = may_parallelise && m * n * lhs.cols >= MIN_PARALLEL_WORK;
    let rhs_blocks = pack_rhs(Lines::columns_of(rhs), parallel);
    let lhs = Lines::rows_of(lhs);
    let multiply_rows = |rows: Range<usize>, block: &mut [MaybeUninit<f32>]| {
        multiply_row_block(lhs.slice(rows.start, rows.len()), &rhs_blocks, n, block)
    };
    // SAFETY: `multiply_row_block` writes every element of its block of rows.
    unsafe { written_by_row_blocks(m, n, balanced_row_blocks(m, MR, parallel), multiply_rows) }
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
        let row_panels = micro_panels.len();
        for (panel, rhs_panel) in rhs_block.chunks_exact(block.len() * NR).enumerate() {
            let cols = (n - panel * NR).min(NR);
            for (row_panel, micro_panel) in micro_panels.clone().enumerate() {
                let (next_row_panel, next_panel) =
                    if row_panel + 1 < row_panels { (row_panel + 1, panel) } else { (0, panel + 1) };
                if next_panel * NR < n {
                    prefetch_tile(
                        out,
                        next_row_panel * MR * n + next_panel * NR,
                        rows.count - next_row_panel * MR,
                        n,
                    );
                }
                let tile_rows = (rows.count - row_panel * MR).min(MR);
                let tile_out = &mut out[row_panel * MR * n + panel * NR..];
                let tile = Tile { rows: tile_rows, cols, stride: n, written: index > 0 };
                multiply_tile(micro_panel, rhs_panel, tile, tile_out);
            }
        }
    }
}

/// Asks for the cache lines of the tile whose top-left element is `out[start]` (its first
/// `rows`, at most `MR`, each `stride` after the one before, up to `NR` columns and the end of
/// `out`), so that they arrive while the tile before it runs: loaded (or stored) cold, they
/// stalled each tile (a tenth of the kernel's time in ViT-B/32's bf16 inference on Zen 5).
fn prefetch_tile(out: &[MaybeUninit<f32>], start: usize, rows: usize, stride: usize) {
    for row in 0..rows.min(MR) {
        let row_start = start + row * stride;
        prefetch_stretch(out, row_start, (row_start + NR).min(out.len()));
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
pub(super) fn pack_panels(lines: Lines, width: usize, pairs: Range<usize>, out: &mut [u32]) {
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
                if line + width < lines.count {
                    // The next panel's line, asked for as this one's is converted: each
                    // line's stretch of a k-block (384 elements at most) is too short for
                    // the hardware prefetchers to follow (the packing took 10% of ViT-B/32's
                    // bf16 inference on Zen 5 without this, 6% with it).
                    let next = lines.offset(line + width, first_k);
                    prefetch_stretch(lines.data, next, next + elements);
                }
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
fn prefetch_pair(lines: Lines, pair: usize) {
    for k in (2 * pair..2 * pair + 2).take_while(|&k| k < lines.len) {
        prefetch_stretch(lines.data, k * lines.k_stride, k * lines.k_stride + lines.count);
    }
}

/// Asks for the cache lines of `data[start..end]` (of any addresses: a prefetch reads nothing
/// into the program and cannot fault).
#[allow(unused_unsafe, reason = "`_mm_prefetch` is safe in newer Rust releases than the oldest supported")]
fn prefetch_stretch<T>(data: &[T], start: usize, end: usize) {
    const { assert!(size_of::<T>() == 4) };
    for offset in (start..end).step_by(CACHE_LINE_F32).chain(end.checked_sub(1)) {
        // SAFETY: `_mm_prefetch` is SSE, which every x86_64 CPU runs; it touches no memory
        // the program sees, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(data.as_ptr().wrapping_add(offset).cast()) };
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
pub(super) fn converted(data: &[f32], start: usize, count: usize) -> __m512i {
    let low = load_masked(data, start, count.min(LANES));
    let high = load_masked(data, start + LANES, count.saturating_sub(LANES).min(LANES));
    as_bits(_mm512_cvtne2ps_pbh(high, low))
}

/// Lane `j` holds the bf16 pair `(low[j], high[j])`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn interleaved_pairs(low: __m512, high: __m512) -> __m512i {
    // Halves j and 16 + j (the bf16 of low[j] and high[j]) go to halves 2j and 2j + 1.
    let order = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18,
        2, 17, 1, 16, 0,
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
pub(in crate::kernels) fn transpose(rows: [__m512i; LANES]) -> [__m512i; LANES] {
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
pub(in crate::kernels) fn load_masked(data: &[f32], start: usize, count: usize) -> __m512 {
    if count == 0 {
        return _mm512_setzero_ps();
    }
    let source = &data[start..start + count];
    // SAFETY: the mask's `count` lanes lie in `source`; masked-off lanes are not read.
    unsafe { _mm512_maskz_loadu_ps(lane_mask(count), source.as_ptr()) }
}

/// Writes the low `count` (at most 16) 32-bit lanes of `vector` to `out[start..]`.
#[target_feature(enable = "avx512f")]
pub(in crate::kernels) fn store_masked<T: Copy>(out: &mut [T], start: usize, count: usize, vector: __m512i) {
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
pub(in crate::kernels) fn lane_mask(count: usize) -> __mmask16 {
    debug_assert!(count <= LANES);
    ((1u32 << count) - 1) as __mmask16
}
