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
//! lhs by each parallel block of rows (eight per thread, or fewer so that each holds four
//! micro-panels, as even as whole micro-panels allow), into micro-panels of [`avx512`]'s `MR`
//! rows, block of k by block of k. A register tile of `MR` × 32 f32 accumulators takes one
//! k-pair per step (two rhs vectors, `MR` broadcast lhs pairs, 2 · `MR` VDPBF16PS) while the
//! rhs panel's block stays in L1, and the output rows of the next tile are fetched meanwhile
//! (as are the next panel's lines, where k is contiguous, while one is packed); each output
//! element is summed in the order of k, whatever the number of threads.
//! On x86_64 Linux CPUs that also have AMX-BF16 tiles, the product runs on TDPBF16PS
//! instead ([`amx`]), from the same packers. Elsewhere the product is an f32 product of the
//! rounded operands: on x86_64 CPUs with AVX2 and FMA, this crate's f32 kernel on the widest
//! vectors the CPU has (AVX-512F or AVX2), which rounds each element as it packs it;
//! otherwise (and on one thread, as attention's products run, by gemm) both operands are
//! copied, rounded, in the order of their storage (row-major or column-major) into a buffer
//! each thread keeps between products. All agree
//! up to the order of the f32 sums (and VDPBF16PS and TDPBF16PS flush results of magnitude
//! below 2⁻¹²⁶ to zero).
//! [`Bf16Kernel::on_this_cpu`] says which runs.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::linear::{matmul, matmul_with, Operand};
#[cfg(target_arch = "x86_64")]
use super::matmul_f32::{self, RoundedToBf16};
use super::precision::KernelChoice;
use super::rows::rows_per_block;

/// `lhs · rhs` as a new row-major `m × n` matrix, from the bf16 roundings of both operands'
/// elements with f32 sums, on the thread pool when the product is large.
pub(super) fn matmul_bf16(lhs: Operand, rhs: Operand) -> Vec<f32> {
    product(lhs, rhs, true)
}

/// [`matmul_bf16`] on the calling thread alone, for callers that run in parallel themselves
/// (attention's products, one head at a time).
pub(super) fn matmul_bf16_on_this_thread(lhs: Operand, rhs: Operand) -> Vec<f32> {
    product(lhs, rhs, false)
}

/// [`matmul_bf16`], on the thread pool only where `may_parallelise` and the product is large.
fn product(lhs: Operand, rhs: Operand, may_parallelise: bool) -> Vec<f32> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "matmul_bf16: inner dimensions differ");
    assert!(lhs.holds_all_elements() && rhs.holds_all_elements(), "matmul_bf16: operand out of its slice");
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    match Bf16Kernel::on_this_cpu() {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        // SAFETY: `on_this_cpu` has checked that the CPU supports AMX-TILE, AMX-BF16 and the
        // AVX-512 features, and that Linux lets this process use tile data.
        Bf16Kernel::Amx => unsafe { amx::matmul_bf16(lhs, rhs, may_parallelise) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `on_this_cpu` has checked that the CPU supports AVX-512F, AVX-512BW and
        // AVX512_BF16.
        Bf16Kernel::Avx512Bf16 => unsafe { avx512::matmul_bf16(lhs, rhs, may_parallelise) },
        _ => matmul_of_rounded(lhs, rhs, may_parallelise),
    }
}

/// The kernel that runs bf16 products on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// AMX tiles (TDPBF16PS).
    Amx,
    /// AVX-512 vectors (VDPBF16PS).
    Avx512Bf16,
    /// The f32 product (the linear kernel's) on operands rounded to bf16.
    Portable,
}

impl Bf16Kernel {
    /// The kernel bf16 products run on (chosen once): the fastest this CPU (and, for AMX,
    /// Linux) runs, or the one named by the environment variable `ROBUSTFT_BF16_KERNEL`
    /// (`amx`, `avx512_bf16` or `portable`) where it runs, to compare kernels on one machine.
    pub fn on_this_cpu() -> Self {
        static KERNEL: OnceLock<Bf16Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| Self::chosen(std::env::var(Self::VARIABLE).ok().as_deref()))
    }
}

impl KernelChoice for Bf16Kernel {
    const VARIABLE: &'static str = "ROBUSTFT_BF16_KERNEL";
    const ALL: &'static [Self] = &[Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16, Bf16Kernel::Portable];

    fn available() -> Vec<Self> {
        let mut kernels = Vec::new();
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        if amx::available() {
            kernels.push(Self::Amx);
        }
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            kernels.push(Self::Avx512Bf16);
        }
        kernels.push(Self::Portable);
        kernels
    }

    fn name(self) -> &'static str {
        match self {
            Self::Amx => "amx",
            Self::Avx512Bf16 => "avx512_bf16",
            Self::Portable => "portable",
        }
    }
}

/// A new row-major `m × n` matrix, each block of rows in `blocks` (consecutive ranges that
/// cover `0..m`) written by `write_block(rows, block)`, each block a task of the thread pool
/// when there are several, on the calling thread when there is one.
///
/// # Safety
/// `write_block` must write every element of the block it is given.
#[cfg(target_arch = "x86_64")]
unsafe fn written_by_row_blocks(
    m: usize,
    n: usize,
    blocks: Vec<Range<usize>>,
    write_block: impl Fn(Range<usize>, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    assert!(blocks.last().is_some_and(|last| last.end == m), "written_by_row_blocks: blocks end at {m}");
    let mut out = Vec::with_capacity(m * n);
    let mut rest = &mut out.spare_capacity_mut()[..m * n];
    let mut parts = Vec::with_capacity(blocks.len());
    for rows in blocks {
        let (block, after) = std::mem::take(&mut rest).split_at_mut(rows.len() * n);
        parts.push((rows, block));
        rest = after;
    }
    if let [(rows, block)] = parts.as_mut_slice() {
        write_block(rows.clone(), block);
    } else {
        parts.into_par_iter().with_max_len(1).for_each(|(rows, block)| write_block(rows, block));
    }
    // SAFETY: the blocks cover all `m` rows (each starts where the one before ended, the last
    // ends at `m`), and the caller's `write_block` has written every element of each.
    unsafe { out.set_len(m * n) };
    out
}

/// Units of rows a parallel block holds at least: every block reads the whole packed rhs
/// again, which costs more than balance gains below this (the bundled model's weight
/// gradients, 128–512 rows over k = 4352, ran 3–4% faster on two threads of Zen 4 than with
/// a block per unit).
#[cfg(target_arch = "x86_64")]
const MIN_UNITS_PER_BLOCK: usize = 4;

/// The rows `0..m` in whole units of `unit` rows (the last unit shorter where `m` is not a
/// multiple): one block where not `parallel`, else `BLOCKS_PER_THREAD` blocks per thread of
/// the current pool (fewer where there are fewer than `MIN_UNITS_PER_BLOCK` units a block)
/// whose units differ by at most one, so that the threads finish together.
#[cfg(target_arch = "x86_64")]
fn balanced_row_blocks(m: usize, unit: usize, parallel: bool) -> Vec<Range<usize>> {
    let units = m.div_ceil(unit);
    let wanted = if parallel { rayon::current_num_threads() * avx512::BLOCKS_PER_THREAD } else { 1 };
    let count = wanted.min(units / MIN_UNITS_PER_BLOCK).max(1);
    let start = |block: usize| (block * units / count * unit).min(m);
    (0..count).map(|block| start(block)..start(block + 1)).collect()
}

/// Runs `write_block(index, block)` over the consecutive blocks of `rows_per_block` rows of
/// `n` elements (the last one shorter) of `out`, on the thread pool when `parallel`.
fn write_by_row_blocks(
    out: &mut [MaybeUninit<f32>],
    n: usize,
    rows_per_block: usize,
    parallel: bool,
    write_block: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) {
    if parallel {
        out.par_chunks_mut(rows_per_block * n)
            .enumerate()
            .for_each(|(index, block)| write_block(index, block));
    } else {
        write_block(0, out);
    }
}

/// `x` rounded to the nearest bfloat16, as a f32.
pub(super) fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(bf16_bits(x)) << 16)
}

/// The bits of `x` rounded to bfloat16 as VCVTNE2PS2BF16 rounds: to nearest, ties to even
/// (overflowing to infinity); subnormals become a zero of their sign; a NaN keeps its sign
/// and upper payload and becomes quiet. Written with selects rather than branches, so that
/// loops over slices vectorise.
#[inline(always)]
pub(super) fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let magnitude = bits & 0x7fff_ffff;
    let lowest_kept_bit = (bits >> 16) & 1;
    let nearest_even = bits.wrapping_add(0x7fff + lowest_kept_bit) >> 16;
    let signed_zero = (bits >> 16) & 0x8000;
    let quiet_nan = (bits >> 16) | 0x40;
    let below_normal = if magnitude < 0x0080_0000 { signed_zero } else { nearest_even };
    (if magnitude > 0x7f80_0000 { quiet_nan } else { below_normal }) as u16
}

thread_local! {
    /// This thread's copy of the rounded operands of its last product on the portable path,
    /// kept for the next one (so as large as the largest product's operands so far): a fresh
    /// copy at every product would leave holes of its size in the heap between the
    /// activations that outlive it (ViT-B/32 training peaked 0.5 GB higher that way).
    static ROUNDED_OPERANDS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// The product on any CPU: both operands rounded to bf16 values held in f32, multiplied by an
/// f32 product (products of two bf16 values are exact in f32), on the pool's threads where
/// `may_parallelise`. There, on x86_64 CPUs with AVX2 and FMA, the product runs on this
/// crate's f32 kernel on the widest vectors the CPU has, which rounds each element as it
/// packs it; elsewhere (and on one thread) the rounded operands are copied first and
/// multiplied by the linear kernel's f32 product.
fn matmul_of_rounded(lhs: Operand, rhs: Operand, may_parallelise: bool) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if let Some(width) = matmul_f32::Width::widest_here().filter(|_| may_parallelise) {
        // SAFETY: `widest_here` names only a width this CPU runs.
        return unsafe { matmul_f32::matmul::<RoundedToBf16>(width, lhs, rhs, rayon::current_num_threads()) };
    }
    // Taken rather than borrowed: a product that runs on this thread meanwhile (work taken up
    // while gemm's threads are joined) finds it empty and makes its own.
    let mut buffer = ROUNDED_OPERANDS.take();
    let product = {
        let (lhs, rhs) = rounded_copies(&mut buffer, &lhs, &rhs, may_parallelise);
        if may_parallelise {
            matmul(lhs, rhs)
        } else {
            matmul_with(lhs, rhs, gemm::Parallelism::None)
        }
    };
    ROUNDED_OPERANDS.set(buffer);
    product
}

/// Both operands with their elements rounded to bf16, copied into `buffer` (replaced by a
/// larger one when too small), by parallel blocks of rows where `parallel`.
fn rounded_copies<'a>(
    buffer: &'a mut Vec<f32>,
    lhs: &Operand,
    rhs: &Operand,
    parallel: bool,
) -> (Operand<'a>, Operand<'a>) {
    let (lhs_len, rhs_len) = (lhs.rows * lhs.cols, rhs.rows * rhs.cols);
    if buffer.capacity() < lhs_len + rhs_len {
        *buffer = Vec::with_capacity(lhs_len + rhs_len);
    }
    buffer.clear();
    let (lhs_out, rhs_out) = buffer.spare_capacity_mut()[..lhs_len + rhs_len].split_at_mut(lhs_len);
    let (lhs_order, rhs_order) =
        (write_rounded(lhs, lhs_out, parallel), write_rounded(rhs, rhs_out, parallel));
    // SAFETY: `write_rounded` has written all `lhs_len` and `rhs_len` elements.
    unsafe { buffer.set_len(lhs_len + rhs_len) };
    let (lhs_data, rhs_data) = buffer.split_at(lhs_len);
    (lhs_order.dense(lhs_data, lhs.rows, lhs.cols), rhs_order.dense(rhs_data, rhs.rows, rhs.cols))
}

/// How a dense copy of an operand is laid out.
#[derive(Clone, Copy)]
enum Order {
    RowMajor,
    ColumnMajor,
}

impl Order {
    /// `data` (`rows × cols` elements in this order) as a matrix operand.
    fn dense(self, data: &[f32], rows: usize, cols: usize) -> Operand<'_> {
        match self {
            Order::RowMajor => row_major(data, rows, cols),
            Order::ColumnMajor => row_major(data, cols, rows).transposed(),
        }
    }
}

/// Writes `op`'s elements rounded to bf16 into `out` (all `rows × cols` of it) in the order of
/// its storage, and returns that order: row-major when its columns are the nearer elements
/// (`col_stride ≤ row_stride`), column-major when its rows are (a transposed matrix: a weight
/// in `x Wᵀ`, the output gradient in `gᵀ x`), so that the copy reads memory in order instead of
/// striding across it at every element.
fn write_rounded(op: &Operand, out: &mut [MaybeUninit<f32>], parallel: bool) -> Order {
    let (order, stored) = if op.col_stride > op.row_stride {
        (Order::ColumnMajor, op.transposed())
    } else {
        (Order::RowMajor, *op)
    };
    let rows_per_block = rows_per_block(stored.cols);
    let write_block = |index: usize, block: &mut [MaybeUninit<f32>]| {
        for (row, out) in block.chunks_exact_mut(stored.cols).enumerate() {
            write_rounded_row(&stored, index * rows_per_block + row, out);
        }
    };
    write_by_row_blocks(out, stored.cols, rows_per_block, parallel, write_block);
    order
}

/// Writes row `i` of `op`, rounded to bf16, into `out` (`op.cols` elements).
fn write_rounded_row(op: &Operand, i: usize, out: &mut [MaybeUninit<f32>]) {
    let start = i * op.row_stride;
    if op.col_stride == 1 {
        for (o, &x) in out.iter_mut().zip(&op.data[start..start + op.cols]) {
            o.write(round_to_bf16(x));
        }
    } else {
        for (j, o) in out.iter_mut().enumerate() {
            o.write(round_to_bf16(op.data[start + j * op.col_stride]));
        }
    }
}

fn row_major(data: &[f32], rows: usize, cols: usize) -> Operand<'_> {
    Operand { data, rows, cols, row_stride: cols, col_stride: 1 }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
pub(super) use avx512::{lane_mask, load_masked, store_masked, transpose as transpose_16x16};

#[cfg(test)]
pub(in crate::kernels) mod tests {
    use super::{matmul_bf16, matmul_of_rounded, round_to_bf16, Bf16Kernel, KernelChoice, Operand};

    /// A matrix stored row-major, transposed (`[cols, rows]`) or row-major with every other
    /// stored column skipped (neither stride 1).
    #[derive(Clone, Copy, Debug)]
    pub(in crate::kernels) enum Layout {
        Plain,
        Transposed,
        Strided,
    }

    /// A `rows × cols` matrix's storage in a layout, and its view.
    pub(in crate::kernels) struct Stored {
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

        /// The same matrix in the same layout with `f` applied to every stored element.
        pub(in crate::kernels) fn map(&self, f: fn(f32) -> f32) -> Self {
            Self { data: self.data.iter().map(|&x| f(x)).collect(), ..*self }
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

        pub(in crate::kernels) fn operand(&self) -> Operand<'_> {
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
    pub(in crate::kernels) fn noise_matrix(rows: usize, cols: usize, layout: Layout, salt: usize) -> Stored {
        Stored::new(rows, cols, layout, |i, j| noise(salt * 1_000_003 + i * cols + j))
    }

    /// Checks `product` against `Σ_k bf16(a_ik) · bf16(b_kj)` in f64. Each product of two bf16
    /// values is exact in f32, so only the sums round: k f32 additions in any order err by at
    /// most `(k − 1) · 2⁻²⁴ · Σ_k |a_ik b_kj|` (to first order), within the tolerance
    /// `k · 2⁻²³ · Σ_k |a_ik b_kj|` per element.
    pub(in crate::kernels) fn assert_matches_reference(
        product: &[f32],
        lhs: &Stored,
        rhs: &Stored,
        context: &str,
    ) {
        assert_matches_reference_of(product, lhs, rhs, context, round_to_bf16);
    }

    /// Checks `product` against `Σ_k f(a_ik) · f(b_kj)` in f64, within `k · 2⁻²³ · Σ_k |f(a_ik)
    /// f(b_kj)|` per element: the bound of [`assert_matches_reference`] (`f` the bf16
    /// rounding), which also holds for f32 operands (`f` the identity), whose products
    /// round by at most `2⁻²⁴` each or not at all inside an FMA.
    pub(in crate::kernels) fn assert_matches_reference_of(
        product: &[f32],
        lhs: &Stored,
        rhs: &Stored,
        context: &str,
        f: fn(f32) -> f32,
    ) {
        let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
        assert_eq!(product.len(), m * n, "{context}: length");
        let a = |i: usize, p: usize| f64::from(f(lhs.data[lhs.index(i, p)]));
        let b = |p: usize, j: usize| f64::from(f(rhs.data[rhs.index(p, j)]));
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
    pub(in crate::kernels) fn for_all_cases(sizes: &[usize], mut check: impl FnMut(&Stored, &Stored, &str)) {
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
    pub(in crate::kernels) const SIZES: [usize; 5] = [1, 3, 17, 33, 100];

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
                Self::Avx512 => unsafe { super::avx512::matmul_bf16(lhs, rhs, true) },
                _ => matmul_of_rounded(lhs, rhs, true),
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
            assert_matches_reference(
                &matmul_of_rounded(lhs.operand(), rhs.operand(), true),
                lhs,
                rhs,
                context,
            );
        });
    }

    /// k across three k-blocks (odd, so the last pair is padded), n neither a multiple of 16
    /// nor of 32, m not a multiple of the tile rows and large enough to split into row blocks
    /// on several threads.
    #[test]
    fn large_products_match_the_reference() {
        for_large_cases(|lhs, rhs, context| {
            assert_matches_reference(&matmul_bf16(lhs.operand(), rhs.operand()), lhs, rhs, context);
            let fallback = matmul_of_rounded(lhs.operand(), rhs.operand(), true);
            assert_matches_reference(&fallback, lhs, rhs, &format!("{context} (fallback)"));
        });
    }

    /// Runs `check` on a 101 × 1101 × 71 product with the lhs, the rhs or neither transposed.
    pub(in crate::kernels) fn for_large_cases(mut check: impl FnMut(&Stored, &Stored, &str)) {
        for (lhs_layout, rhs_layout) in [
            (Layout::Plain, Layout::Plain),
            (Layout::Plain, Layout::Transposed),
            (Layout::Transposed, Layout::Plain),
        ] {
            let (lhs, rhs) = (noise_matrix(101, 1101, lhs_layout, 3), noise_matrix(1101, 71, rhs_layout, 4));
            check(&lhs, &rhs, &format!("{lhs_layout:?} × {rhs_layout:?}"));
        }
    }

    /// Row blocks (and their number) follow the thread count; the sums must not.
    #[test]
    fn avx512_product_does_not_depend_on_the_thread_count() {
        let path = Path::on_this_cpu("avx512_product_does_not_depend_on_the_thread_count");
        assert_independent_of_the_thread_count(|lhs, rhs| path.product(lhs.operand(), rhs.operand()));
    }

    /// Checks that `product` of a product large enough to run in parallel row blocks gives the
    /// same bits on 1, 2, 3 and 5 threads (row blocks, and their number, follow the thread
    /// count; the sums must not).
    pub(in crate::kernels) fn assert_independent_of_the_thread_count(
        product: impl Fn(&Stored, &Stored) -> Vec<f32> + Sync,
    ) {
        let (lhs, rhs) =
            (noise_matrix(150, 700, Layout::Plain, 5), noise_matrix(700, 90, Layout::Transposed, 6));
        let on_threads = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| product(&lhs, &rhs))
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

    /// The parallel blocks cover the rows once, in order, in whole units, `BLOCKS_PER_THREAD`
    /// per thread where there are enough units (`MIN_UNITS_PER_BLOCK` a block), their sizes at
    /// most one unit apart (before this, equal blocks of rounded-up size left 15 blocks for two
    /// threads at m = 1600).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn balanced_row_blocks_cover_the_rows_evenly() {
        use super::{avx512, balanced_row_blocks, MIN_UNITS_PER_BLOCK};
        use std::ops::Range;
        for threads in 1..=5 {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for (m, unit) in [(1600, 12), (128, 12), (11, 12), (768, 32), (1, 32), (97, 1), (4352, 32)] {
                let blocks = pool.install(|| balanced_row_blocks(m, unit, true));
                let context = format!("m {m}, unit {unit}, {threads} threads");
                let units = m.div_ceil(unit);
                let most_blocks = threads * avx512::BLOCKS_PER_THREAD;
                assert!(blocks.len() <= most_blocks, "{context}: {} blocks", blocks.len());
                if units >= most_blocks * MIN_UNITS_PER_BLOCK {
                    assert_eq!(blocks.len(), most_blocks, "{context}");
                }
                assert_eq!((blocks[0].start, blocks[blocks.len() - 1].end), (0, m), "{context}");
                assert!(blocks.windows(2).all(|pair| pair[0].end == pair[1].start), "{context}");
                assert!(blocks.iter().all(|rows| rows.start % unit == 0 && !rows.is_empty()), "{context}");
                let whole_units = |rows: &Range<usize>| rows.len().div_ceil(unit);
                let (fewest, most) = (
                    blocks.iter().map(whole_units).min().unwrap(),
                    blocks.iter().map(whole_units).max().unwrap(),
                );
                assert!(most - fewest <= 1, "{context}: {fewest} to {most} units");
                assert!(fewest >= MIN_UNITS_PER_BLOCK.min(units), "{context}: a block of {fewest} units");
            }
            let serial = pool.install(|| balanced_row_blocks(1600, 12, false));
            assert!(serial.len() == 1 && serial[0] == (0..1600), "{threads} threads: {serial:?}");
        }
    }

    /// A kernel this CPU runs is chosen when named; an unknown name or none gives the fastest.
    #[test]
    fn a_named_kernel_is_chosen_where_the_cpu_runs_it() {
        let fastest = Bf16Kernel::available()[0];
        assert_eq!(Bf16Kernel::chosen(None), fastest);
        assert_eq!(Bf16Kernel::chosen(Some("portable")), Bf16Kernel::Portable);
        assert_eq!(Bf16Kernel::chosen(Some("avx")), fastest);
        #[cfg(target_arch = "x86_64")]
        if super::avx512::available() {
            assert_eq!(Bf16Kernel::chosen(Some("avx512_bf16")), Bf16Kernel::Avx512Bf16);
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
    pub(in crate::kernels) fn rounding_edges() -> Vec<f32> {
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
