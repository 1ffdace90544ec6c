//! An f32 matrix product of this crate's for x86_64 CPUs with AVX2 and FMA, on AVX2's 8-lane
//! vectors or AVX-512F's 16-lane ones ([`Width`]). With AVX2 it runs the f32 products of
//! CPUs without AVX-512F (AMD Zen 3), faster than candle's `gemm` and than MKL (BENCHMARKS.md,
//! "Zen 3: an f32 kernel of our own", "Zen 3: the output tile prefetched"); with AVX-512F it
//! is level with gemm on Intel's Ice Lake, so f32 products stay on gemm there, but the bf16
//! product of CPUs without bfloat16 instructions runs on it ("Ice Lake: an f32 kernel on
//! AVX-512"). [`super::precision::F32Kernel`] says which kernel runs f32 products.
//!
//! The blocked algorithm of GotoBLAS and BLIS (K. Goto and R. van de Geijn, "Anatomy of
//! high-performance matrix multiplication", ACM TOMS 34(3), 2008; F. Van Zee and R. van de
//! Geijn, "BLIS: a framework for rapidly instantiating BLAS functionality", ACM TOMS 41(3),
//! 2015): for each block of columns (at most the width's `nc`) and of [`KC`] values of k, the
//! rhs block is packed into panels of `NR` columns (for each k, `NR` consecutive values); for
//! each block of [`MC`] rows in it, the lhs block is packed into micro-panels of `MR` rows
//! (for each k, `MR` consecutive values); a register tile of `MR` × `NR` f32 accumulators
//! then takes one k per step: `NR` / lanes rhs vectors, `MR` broadcast lhs values, one FMA
//! for each pair (its rows of the output prefetched before the first, as BLIS's kernels do).
//! With AVX2 the tile is 6 × 16 (twelve of its sixteen registers) and each rhs panel stays in
//! L1 while the row block's lhs micro-panels pass; with AVX-512F it is 6 × 64 (24 of its 32
//! registers) and each lhs micro-panel stays in L1 while the rhs panels pass from L2. Both
//! operands are always packed, whatever their layout (transposed ones through 8 × 8 register
//! transposes), into panels that start on a cache line and are padded with zeros past the
//! matrix's edge.
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

/// Rows of the AVX2 register tile.
const AVX2_ROWS: usize = 6;
/// Vectors across the AVX2 register tile's columns (6 × 16: twelve accumulators).
const AVX2_VECTORS: usize = 2;
/// Rows of the AVX-512F register tile.
const AVX512_ROWS: usize = 6;
/// Vectors across the AVX-512F register tile's columns (6 × 64: 24 accumulators).
const AVX512_VECTORS: usize = 4;
/// Elements of the scratch tile that partial tiles are computed into: the largest tile's.
const SCRATCH: usize = AVX512_ROWS * AVX512_VECTORS * 16;
/// k per packed block: with AVX2 a rhs panel's block (16 KiB) stays in L1 while it meets
/// every lhs micro-panel of the row block; with AVX-512F an lhs micro-panel's (6 KiB) while it
/// meets every rhs panel of the column block.
const KC: usize = 256;
/// Rows per packed lhs block (120 KiB at [`KC`]); a multiple of both tiles' rows.
const MC: usize = 120;
/// f32 values in a 64-byte cache line.
const CACHE_LINE: usize = 16;

/// The vectors this kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Width {
    /// AVX2 and FMA: 8 f32 lanes.
    Avx2,
    /// AVX-512F (with AVX2 and FMA for the packers): 16 f32 lanes.
    Avx512,
}

impl Width {
    /// Whether the CPU runs this width (std caches the detection).
    pub(super) fn runs_here(self) -> bool {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        match self {
            Width::Avx2 => avx2,
            Width::Avx512 => avx2 && is_x86_feature_detected!("avx512f"),
        }
    }

    /// The widest this CPU runs, if any.
    pub(super) fn widest_here() -> Option<Self> {
        [Width::Avx512, Width::Avx2].into_iter().find(|width| width.runs_here())
    }

    /// The register tile's rows and columns.
    fn tile(self) -> (usize, usize) {
        match self {
            Width::Avx2 => (AVX2_ROWS, AVX2_VECTORS * Avx2::LANES),
            Width::Avx512 => (AVX512_ROWS, AVX512_VECTORS * Avx512::LANES),
        }
    }

    /// How the width blocks a product, as measured fastest: with AVX2 on Zen 3, columns in
    /// blocks of up to 3072 (3 MiB of packed rhs at [`KC`], in L3) and each rhs panel
    /// kept in L1; with AVX-512F on Ice Lake, blocks of up to 768 columns (768 KiB, in L2) and
    /// each lhs micro-panel kept in L1 (the other way, 0.79–0.89× gemm on wide products;
    /// this way 0.95–1.12×).
    fn blocking(self) -> Blocking {
        match self {
            Width::Avx2 => Blocking { max_columns: 3072, kept_in_l1: Kept::RhsPanel },
            Width::Avx512 => Blocking { max_columns: 768, kept_in_l1: Kept::LhsMicroPanel },
        }
    }
}

/// How a product is cut into packed blocks.
#[derive(Clone, Copy)]
struct Blocking {
    /// Columns per packed rhs block at most (blocks as even as whole tiles allow).
    max_columns: usize,
    /// The panel the register tiles of a block run over in their inner loop keep in L1.
    kept_in_l1: Kept,
}

/// Which packed panel stays in L1 while the tiles of a block pass over the other operand's.
#[derive(Clone, Copy)]
enum Kept {
    /// A rhs panel, met by every lhs micro-panel of the row block in turn.
    RhsPanel,
    /// An lhs micro-panel, met by every rhs panel of the column block in turn.
    LhsMicroPanel,
}

/// The vector operations of the register tile, at one width.
trait Vectors {
    /// f32 lanes of a vector.
    const LANES: usize;
    type Vector: Copy;

    /// A vector of zeros.
    ///
    /// # Safety (of every method)
    /// The CPU must support the width's instructions; pointers must be valid for `LANES` f32
    /// (one, for [`Vectors::broadcast`]).
    unsafe fn zero() -> Self::Vector;
    unsafe fn load(from: *const f32) -> Self::Vector;
    unsafe fn store(to: *mut f32, value: Self::Vector);
    /// The f32 at `from` in every lane.
    unsafe fn broadcast(from: *const f32) -> Self::Vector;
    /// `a · b + sum`, rounded once.
    unsafe fn multiply_add(a: Self::Vector, b: Self::Vector, sum: Self::Vector) -> Self::Vector;
    unsafe fn add(a: Self::Vector, b: Self::Vector) -> Self::Vector;
}

/// AVX2's vectors.
struct Avx2;

impl Vectors for Avx2 {
    const LANES: usize = 8;
    type Vector = __m256;

    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }

    #[inline(always)]
    unsafe fn load(from: *const f32) -> __m256 {
        _mm256_loadu_ps(from)
    }

    #[inline(always)]
    unsafe fn store(to: *mut f32, value: __m256) {
        _mm256_storeu_ps(to, value)
    }

    #[inline(always)]
    unsafe fn broadcast(from: *const f32) -> __m256 {
        _mm256_broadcast_ss(&*from)
    }

    #[inline(always)]
    unsafe fn multiply_add(a: __m256, b: __m256, sum: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, sum)
    }

    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
}

/// AVX-512F's vectors.
struct Avx512;

impl Vectors for Avx512 {
    const LANES: usize = 16;
    type Vector = __m512;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }

    #[inline(always)]
    unsafe fn load(from: *const f32) -> __m512 {
        _mm512_loadu_ps(from)
    }

    #[inline(always)]
    unsafe fn store(to: *mut f32, value: __m512) {
        _mm512_storeu_ps(to, value)
    }

    #[inline(always)]
    unsafe fn broadcast(from: *const f32) -> __m512 {
        _mm512_set1_ps(*from)
    }

    #[inline(always)]
    unsafe fn multiply_add(a: __m512, b: __m512, sum: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, sum)
    }

    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
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

/// `lhs · rhs` as a new row-major matrix on `width`'s vectors, its elements read as `E` says,
/// its rows (or columns, when there are more of them) split over `threads` tasks of the
/// current rayon pool.
///
/// # Safety
/// The CPU must run `width` ([`Width::runs_here`]).
pub(super) unsafe fn matmul<E: Elements>(
    width: Width,
    lhs: Operand,
    rhs: Operand,
    threads: usize,
) -> Vec<f32> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "matmul: inner dimensions differ");
    assert!(lhs.holds_all_elements() && rhs.holds_all_elements(), "matmul: operand out of its slice");
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    let mut out = Vec::with_capacity(m * n);
    let dst = Destination { data: out.as_mut_ptr(), row_stride: n };
    split(m, n, threads, width.tile()).into_par_iter().for_each(|block| {
        // SAFETY: the caller vouches for the CPU; the blocks are disjoint parts of `out`,
        // whose rows are `n` apart, and the operands hold all their elements (asserted).
        unsafe {
            match width {
                Width::Avx2 => product_block_avx2::<E>(&lhs, &rhs, dst, block),
                Width::Avx512 => product_block_avx512::<E>(&lhs, &rhs, dst, block),
            }
        }
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

/// The output's blocks, one per thread: bands of whole rows (multiples of the tile's rows)
/// when it has at least as many rows as columns, else of whole columns (multiples of the
/// tile's columns).
fn split(m: usize, n: usize, threads: usize, (tile_rows, tile_cols): (usize, usize)) -> Vec<Block> {
    let parts = threads.max(1);
    let bands = |len: usize, unit: usize| {
        let band = len.div_ceil(parts).div_ceil(unit) * unit;
        (0..len).step_by(band).map(move |start| (start, (start + band).min(len)))
    };
    if m >= n {
        bands(m, tile_rows).map(|rows| Block { rows, cols: (0, n) }).collect()
    } else {
        bands(n, tile_cols).map(|cols| Block { rows: (0, m), cols }).collect()
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

/// [`product_block`] on AVX2's 6 × 16 tile.
#[target_feature(enable = "avx2,fma")]
unsafe fn product_block_avx2<E: Elements>(lhs: &Operand, rhs: &Operand, dst: Destination, block: Block) {
    product_block::<E, Avx2, AVX2_ROWS, AVX2_VECTORS, 16>(lhs, rhs, dst, block, Width::Avx2.blocking())
}

/// [`product_block`] on AVX-512F's 6 × 64 tile.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn product_block_avx512<E: Elements>(lhs: &Operand, rhs: &Operand, dst: Destination, block: Block) {
    product_block::<E, Avx512, AVX512_ROWS, AVX512_VECTORS, 64>(
        lhs,
        rhs,
        dst,
        block,
        Width::Avx512.blocking(),
    )
}

/// One block of the output, on this thread, on a register tile of `MR` rows × `COLS`
/// vectors of `V` (`NR` columns). Inlined into the entry of its width
/// ([`product_block_avx2`], [`product_block_avx512`]), whose target features its vector
/// operations take.
#[inline(always)]
unsafe fn product_block<E: Elements, V: Vectors, const MR: usize, const COLS: usize, const NR: usize>(
    lhs: &Operand,
    rhs: &Operand,
    dst: Destination,
    block: Block,
    blocking: Blocking,
) {
    const { assert!(NR == COLS * V::LANES, "the tile's columns are its vectors' lanes") };
    let (m, n) = (block.rows.1 - block.rows.0, block.cols.1 - block.cols.0);
    let k = lhs.cols;
    let column_blocks = n.div_ceil(blocking.max_columns);
    let nc = n.div_ceil(column_blocks).next_multiple_of(NR);
    let rhs_len = KC * nc;
    // Eight more than the panels: the 8-wide stores of `pack_panels` run two past a panel's end.
    let lhs_len = KC * MC.min(m.next_multiple_of(MR)) + 8;
    let mut buffer = PANELS.take();
    if buffer.len() < rhs_len + lhs_len + CACHE_LINE {
        buffer.resize(rhs_len + lhs_len + CACHE_LINE, 0.0);
    }
    // The panels start on a cache line, so that no vector load of the rhs panels splits one.
    let aligned = buffer.as_ptr().align_offset(CACHE_LINE * size_of::<f32>());
    let (rhs_panels, lhs_panels) = buffer[aligned..].split_at_mut(rhs_len);
    for col in (0..n).step_by(nc) {
        let cols = nc.min(n - col);
        for depth in (0..k).step_by(KC) {
            let depth_len = KC.min(k - depth);
            let rhs_at = block.cols.0 + col;
            pack_panels::<E, NR>(&rhs.transposed(), rhs_at, depth, cols, depth_len, rhs_panels.as_mut_ptr());
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
                let accumulate = depth > 0;
                multiply_panels::<V, MR, COLS>(
                    panels,
                    rows,
                    cols,
                    corner,
                    dst.row_stride,
                    accumulate,
                    blocking.kept_in_l1,
                );
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
/// `depth × cols` rhs block, `C` starting at `corner` with rows `row_stride` apart, tile by
/// tile in the order that keeps `kept` in L1; tiles past the block's edge are computed whole
/// into a scratch tile and only their part inside is written, with the same operations.
#[inline(always)]
unsafe fn multiply_panels<V: Vectors, const MR: usize, const COLS: usize>(
    panels: Panels,
    rows: usize,
    cols: usize,
    corner: *mut f32,
    row_stride: usize,
    accumulate: bool,
    kept: Kept,
) {
    let nr = COLS * V::LANES;
    const { assert!(MR * COLS * V::LANES <= SCRATCH, "the scratch tile holds the largest tile") };
    let mut scratch = [0f32; SCRATCH];
    let (row_tiles, col_tiles) = (rows.div_ceil(MR), cols.div_ceil(nr));
    for index in 0..row_tiles * col_tiles {
        let (row_tile, col_tile) = match kept {
            Kept::RhsPanel => (index % row_tiles, index / row_tiles),
            Kept::LhsMicroPanel => (index / col_tiles, index % col_tiles),
        };
        let (row, col) = (row_tile * MR, col_tile * nr);
        let lhs = panels.lhs.add(row * panels.depth);
        let rhs = panels.rhs.add(col * panels.depth);
        let c = corner.add(row * row_stride + col);
        let (tile_rows, tile_cols) = (MR.min(rows - row), nr.min(cols - col));
        if tile_rows == MR && tile_cols == nr {
            tile::<V, MR, COLS>(panels.depth, lhs, rhs, c, row_stride, accumulate);
        } else {
            tile::<V, MR, COLS>(panels.depth, lhs, rhs, scratch.as_mut_ptr(), nr, false);
            for i in 0..tile_rows {
                for j in 0..tile_cols {
                    let out = c.add(i * row_stride + j);
                    let value = scratch[i * nr + j];
                    *out = if accumulate { *out + value } else { value };
                }
            }
        }
    }
}

/// The `MR` × (`COLS` vectors) register tile: `C ← A B` (or `C ← C + A B`) over `depth`
/// values of k from one lhs micro-panel and one rhs panel, `C`'s rows `row_stride` apart.
#[inline(always)]
unsafe fn tile<V: Vectors, const MR: usize, const COLS: usize>(
    depth: usize,
    lhs: *const f32,
    rhs: *const f32,
    c: *mut f32,
    row_stride: usize,
    accumulate: bool,
) {
    let nr = COLS * V::LANES;
    // The tile's rows of `C` are fetched while the FMAs run: read (or written) only after
    // them, they would stall the tile on memory (ViT-B/32's products ran 13-17% slower).
    for i in 0..MR {
        let row = c.add(i * row_stride);
        for j in (0..nr).step_by(CACHE_LINE) {
            _mm_prefetch::<_MM_HINT_T0>(row.add(j) as *const i8);
        }
        _mm_prefetch::<_MM_HINT_T0>(row.add(nr - 1) as *const i8);
    }
    let mut sums = [[V::zero(); COLS]; MR];
    let (mut lhs, mut rhs) = (lhs, rhs);
    for _ in 0..depth {
        let right: [V::Vector; COLS] = std::array::from_fn(|j| V::load(rhs.add(j * V::LANES)));
        // The panel's values eight k ahead, a cache line of them at a time.
        for j in (0..nr).step_by(CACHE_LINE) {
            _mm_prefetch::<_MM_HINT_T0>(rhs.add(8 * nr + j) as *const i8);
        }
        for (i, row_sums) in sums.iter_mut().enumerate() {
            let left = V::broadcast(lhs.add(i));
            for (sum, &right) in row_sums.iter_mut().zip(&right) {
                *sum = V::multiply_add(left, right, *sum);
            }
        }
        lhs = lhs.add(MR);
        rhs = rhs.add(nr);
    }
    for (i, row_sums) in sums.iter().enumerate() {
        for (j, &sum) in row_sums.iter().enumerate() {
            let out = c.add(i * row_stride + j * V::LANES);
            let value = if accumulate { V::add(V::load(out), sum) } else { sum };
            V::store(out, value);
        }
    }
}

/// Packs lines `first..first + count` of `lines` (a matrix whose rows are the lines, each
/// along k) over k `depth..depth + depth_len`, read as `E` says, into panels of `W` lines at
/// `out`: for each k, the panel's `W` values (zeros past the last line). The lhs is packed by its rows
/// (`W` = the tile's rows), the rhs by its columns, read as the rows of its transpose (`W` =
/// the tile's columns).
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
    use super::{matmul, rounded_to_bf16, split, AsStored, Block, Elements, RoundedToBf16, Width};
    use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};
    use std::convert::identity;

    /// The product on `width`'s vectors on `threads` threads of their own pool, the elements
    /// read as `E` says.
    fn product_of<E: Elements>(width: Width, threads: usize, lhs: &Stored, rhs: &Stored) -> Vec<f32> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        // SAFETY: every caller takes `width` from `widths_here`.
        pool.install(|| unsafe { matmul::<E>(width, lhs.operand(), rhs.operand(), threads) })
    }

    /// The f32 product on `width`'s vectors on `threads` threads of their own pool.
    fn product_on(width: Width, threads: usize, lhs: &Stored, rhs: &Stored) -> Vec<f32> {
        product_of::<AsStored>(width, threads, lhs, rhs)
    }

    /// The widths this CPU runs; for each it lacks, says on the terminal (past the test
    /// harness's capture) that `test` did not check the kernel on it.
    fn widths_here(test: &str) -> Vec<Width> {
        let (here, missing): (Vec<Width>, Vec<Width>) =
            [Width::Avx2, Width::Avx512].into_iter().partition(|width| width.runs_here());
        for width in missing {
            use std::io::Write;
            let note = format!(
                "note: {test}: this CPU does not run {width:?}, so the f32 kernel was not tested on it\n"
            );
            let _ = std::io::stderr().write_all(note.as_bytes());
        }
        here
    }

    #[test]
    fn product_matches_the_reference_on_every_layout() {
        for width in widths_here("product_matches_the_reference_on_every_layout") {
            for_all_cases(&SIZES, |lhs, rhs, context| {
                let context = format!("{width:?}, {context}");
                assert_matches_reference_of(&product_on(width, 2, lhs, rhs), lhs, rhs, &context, identity);
            });
        }
    }

    /// k across five blocks of 256 with a remainder that is not a multiple of 8; rows and
    /// columns with partial tiles; and a product wider than a block of columns (768 with
    /// AVX-512F, 3072 with AVX2), split over the threads by columns.
    #[test]
    fn long_and_wide_products_match_the_reference() {
        for width in widths_here("long_and_wide_products_match_the_reference") {
            for_large_cases(|lhs, rhs, context| {
                let context = format!("{width:?}, {context}");
                assert_matches_reference_of(&product_on(width, 3, lhs, rhs), lhs, rhs, &context, identity);
            });
            for layout in [Layout::Plain, Layout::Transposed, Layout::Strided] {
                let (lhs, rhs) = (noise_matrix(7, 300, layout, 7), noise_matrix(300, 3100, layout, 8));
                let context = format!("{width:?}, 7×300×3100, {layout:?}");
                assert_matches_reference_of(
                    &product_on(width, 3, &lhs, &rhs),
                    &lhs,
                    &rhs,
                    &context,
                    identity,
                );
            }
        }
    }

    #[test]
    fn product_does_not_depend_on_the_thread_count() {
        for width in widths_here("product_does_not_depend_on_the_thread_count") {
            // SAFETY: `widths_here` has checked that the CPU runs `width`.
            assert_independent_of_the_thread_count(|lhs, rhs| unsafe {
                matmul::<AsStored>(width, lhs.operand(), rhs.operand(), rayon::current_num_threads())
            });
            let (lhs, rhs) =
                (noise_matrix(20, 500, Layout::Plain, 9), noise_matrix(500, 700, Layout::Transposed, 10));
            let serial = product_on(width, 1, &lhs, &rhs);
            for threads in [2, 3, 5] {
                let parallel = product_on(width, threads, &lhs, &rhs);
                assert!(
                    serial.iter().zip(&parallel).all(|(s, p)| s.to_bits() == p.to_bits()),
                    "{width:?}, {threads} threads"
                );
            }
        }
    }

    /// Every lane rounds as the scalar rounding does: on its edge cases (ties, overflow,
    /// subnormals, NaNs, of both signs) and on every 997th bit pattern of the 2³² there are.
    #[test]
    fn vector_rounding_to_bf16_agrees_with_round_to_bf16() {
        if !widths_here("vector_rounding_to_bf16_agrees_with_round_to_bf16").contains(&Width::Avx2) {
            return;
        }
        let sampled = (0..=u32::MAX).step_by(997).map(f32::from_bits);
        let values: Vec<f32> = rounding_edges().into_iter().chain(sampled).collect();
        for lanes in values.chunks(8) {
            let mut lanes = lanes.to_vec();
            lanes.resize(8, 0.0);
            let mut rounded = [0f32; 8];
            // SAFETY: the CPU runs AVX2 and FMA (checked above); both arrays hold eight f32.
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
        for width in widths_here("bf16_product_is_the_f32_product_of_the_rounded_operands") {
            let check = |lhs: &Stored, rhs: &Stored, context: &str| {
                let context = format!("{width:?}, {context}");
                let product = product_of::<RoundedToBf16>(width, 2, lhs, rhs);
                let of_copies = product_on(width, 2, &lhs.map(round_to_bf16), &rhs.map(round_to_bf16));
                assert!(
                    product.iter().zip(&of_copies).all(|(p, c)| p.to_bits() == c.to_bits()),
                    "{context}: differs from the product of rounded copies"
                );
                assert_matches_reference_of(&product, lhs, rhs, &context, round_to_bf16);
            };
            for_all_cases(&SIZES, check);
            for_large_cases(check);
        }
    }

    #[test]
    fn an_empty_inner_dimension_gives_zeros() {
        for width in widths_here("an_empty_inner_dimension_gives_zeros") {
            let (lhs, rhs) = (noise_matrix(3, 0, Layout::Plain, 11), noise_matrix(0, 4, Layout::Plain, 12));
            assert_eq!(product_on(width, 2, &lhs, &rhs), vec![0.0; 12], "{width:?}");
        }
    }

    /// The blocks cover every element of the output once, start on whole tiles, and number
    /// at most one per thread.
    #[test]
    fn split_covers_the_output_once() {
        let sizes = [(1, 1), (5, 3), (100, 7), (7, 100), (1600, 768), (768, 3072), (6, 16), (6, 64)];
        for ((m, n), (tile_rows, tile_cols)) in
            sizes.into_iter().flat_map(|size| [(size, (6, 16)), (size, (8, 32))])
        {
            for threads in 1..=5 {
                let blocks = split(m, n, threads, (tile_rows, tile_cols));
                assert!(blocks.len() <= threads, "{m}×{n} on {threads}: {} blocks", blocks.len());
                let mut covered = vec![0u8; m * n];
                for Block { rows, cols } in blocks {
                    assert!(
                        rows.0 % tile_rows == 0 && cols.0 % tile_cols == 0,
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
