//! The AMX kernel of [`super::matmul_bf16`], for x86_64 CPUs with Intel's Advanced Matrix
//! Extensions for bf16 (AMX-TILE and AMX-BF16: Sapphire Rapids and later) under Linux.
//!
//! TDPBF16PS (Intel SDM vol. 2; the tile architecture in vol. 1, ch. 18) adds to a tile of
//! 16 × 16 f32 the product of a tile of 16 rows × 16 bf16 pairs of k (the lhs) and a tile of
//! 16 pairs of k × 16 columns (the rhs), each product of two bf16 exact in f32, sums rounded
//! to nearest even, subnormal inputs read and outputs written as zero.
//!
//! Operands are converted to bf16 pairs by the AVX-512 module's packers, so they round exactly
//! as the AVX-512 kernel's do. The rhs is packed once, into panels of 32 columns holding
//! `[pairs][32]` over the whole of k padded with zeros to whole chunks of 16 pairs: a rhs tile
//! is one chunk of one half of a panel, rows 128 bytes apart. The lhs is packed by each
//! parallel block of rows into groups of 16 rows, each group a run of 1 KiB tiles
//! `[chunk][16 rows][16 pairs]`. Each block of 32 × 32 outputs is summed over the whole of k in
//! four accumulator tiles (per chunk: two lhs tiles, two rhs tiles, four TDPBF16PS), then
//! stored; partial blocks use only the tiles they need and store through a scratch tile.
//!
//! The kernel is written against [`Tiles`], the tile operations it uses: [`Hardware`] runs
//! them as AMX instructions, and this module's tests run them on an emulator that follows the
//! SDM's pseudo-code, so the packing and tiling are checked on every CPU with AVX512_BF16.
//!
//! Before the first product the process asks Linux for permission to use tile data
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, Linux ≥ 5.16), and the kernel must
//! agree with the AVX-512 kernel on a check product; otherwise the AVX-512 kernel serves.

use std::arch::asm;
use std::arch::x86_64::{__cpuid, __cpuid_count, __m512i, _mm512_loadu_si512, _mm512_setzero_si512};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::avx512::{self, Lines, LANES, MIN_PARALLEL_WORK};
use super::{balanced_row_blocks, written_by_row_blocks, Operand};

/// Rows of every tile.
const TILE_ROWS: usize = 16;

/// u32 in a row of every tile (64 bytes): bf16 pairs of a lhs tile, columns of a rhs or an
/// accumulator tile.
const TILE_WIDTH: usize = 16;

/// u32 in a tile.
const TILE_LEN: usize = TILE_ROWS * TILE_WIDTH;

/// Columns of a packed rhs panel and of an output block: two rhs tiles side by side.
const PANEL_WIDTH: usize = 2 * TILE_WIDTH;

/// Rows of an output block: two lhs tiles.
const BLOCK_ROWS: usize = 2 * TILE_ROWS;

/// Whether this CPU and kernel run this module's kernel, and it agrees with the AVX-512
/// kernel (checked once).
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_supported() && tile_data_permitted() && agrees_with_avx512())
}

/// Whether the CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22) and the
/// AVX-512 kernels the packing uses.
#[allow(
    unused_unsafe,
    reason = "CPUID's intrinsics are safe in newer Rust releases than the oldest supported"
)]
fn cpu_supported() -> bool {
    const AMX_BF16: u32 = 1 << 22;
    const AMX_TILE: u32 = 1 << 24;
    // SAFETY: CPUID exists on every x86_64 CPU; leaf 7 is read only where leaf 0 says it exists.
    let amx = unsafe {
        __cpuid(0).eax >= 7 && __cpuid_count(7, 0).edx & (AMX_BF16 | AMX_TILE) == AMX_BF16 | AMX_TILE
    };
    amx && avx512::available()
}

/// Asks Linux for this process's permission to use tile data and reads back that it has it.
/// The kernel grants it only where it has enabled the tile state (XCR0 bits 17 and 18).
fn tile_data_permitted() -> bool {
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    let mut permitted: u64 = 0;
    // SAFETY: ARCH_REQ_XCOMP_PERM takes a feature number; ARCH_GET_XCOMP_PERM writes one u64
    // to the address given, which is `permitted`'s. Unknown codes fail with EINVAL.
    let answered = unsafe {
        libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
            && libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut permitted as *mut u64) == 0
    };
    answered && permitted & (1 << XFEATURE_XTILEDATA) != 0
}

/// Whether a product with partial blocks on both sides and k over several chunks agrees with
/// the AVX-512 kernel to within the sums' rounding; says so on the terminal when it does not.
fn agrees_with_avx512() -> bool {
    let (m, k, n) = (40, 70, 50);
    let value = |i: usize| (i * 7919 % 1000) as f32 / 500.0 - 1.0;
    let (lhs, rhs): (Vec<f32>, Vec<f32>) =
        ((0..m * k).map(value).collect(), (m * k..m * k + k * n).map(value).collect());
    let lhs = Operand { data: &lhs, rows: m, cols: k, row_stride: k, col_stride: 1 };
    let rhs = Operand { data: &rhs, rows: k, cols: n, row_stride: 1, col_stride: k };
    // SAFETY: the callers have checked AMX-TILE, AMX-BF16, the AVX-512 features and the
    // permission to use tile data.
    let (amx, reference) = unsafe { (matmul_bf16(lhs, rhs, true), avx512::matmul_bf16(lhs, rhs, true)) };
    // Each sum is of 70 products of magnitude below 1: f32 rounding stays far below 10⁻³.
    let agrees = amx.iter().zip(&reference).all(|(a, r)| (a - r).abs() <= 1e-3);
    if !agrees {
        eprintln!("warning: the AMX bf16 kernel disagrees with the AVX-512 kernel on a check product; using AVX-512");
    }
    agrees
}

/// `lhs · rhs` as a new row-major matrix (see [`super::matmul_bf16`]; all dimensions > 0), on
/// the thread pool where `may_parallelise` and the product is large.
///
/// # Safety
/// [`cpu_supported`] and [`tile_data_permitted`] must hold.
pub(super) unsafe fn matmul_bf16(lhs: Operand, rhs: Operand, may_parallelise: bool) -> Vec<f32> {
    // SAFETY: the caller has checked the CPU's features and the permission.
    unsafe { matmul_with_tiles::<Hardware>(lhs, rhs, may_parallelise) }
}

/// `lhs · rhs` on tiles `T`, packed by the AVX-512 packers, parallel over blocks of rows where
/// `may_parallelise` and the product is large.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX512_BF16, and [`Tiles::configured`]'s
/// conditions for `T` must hold.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn matmul_with_tiles<T: Tiles>(lhs: Operand, rhs: Operand, may_parallelise: bool) -> Vec<f32> {
    let (m, n) = (lhs.rows, rhs.cols);
    let chunks = lhs.cols.div_ceil(2).div_ceil(TILE_WIDTH);
    let parallel = may_parallelise && m * n * lhs.cols >= MIN_PARALLEL_WORK;
    let rhs_panels = pack_rhs(Lines::columns_of(rhs), chunks, parallel);
    let lhs = Lines::rows_of(lhs);
    let multiply_rows = |rows: Range<usize>, block: &mut [MaybeUninit<f32>]| {
        let rows = lhs.slice(rows.start, rows.len());
        // SAFETY: the caller vouches for `T` on this CPU.
        let mut tiles = unsafe { T::configured() };
        multiply_row_block(&mut tiles, rows, &rhs_panels, chunks, n, block);
    };
    // SAFETY: `multiply_row_block` writes every element of its block of rows.
    unsafe { written_by_row_blocks(m, n, balanced_row_blocks(m, BLOCK_ROWS, parallel), multiply_rows) }
}

/// The rhs's columns packed in panels of `PANEL_WIDTH` (the last one padded with zero
/// columns), each `[chunks · TILE_ROWS pairs][PANEL_WIDTH]`, pairs past k zero.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_rhs(columns: Lines, chunks: usize, parallel: bool) -> Vec<u32> {
    let panel_len = chunks * TILE_ROWS * PANEL_WIDTH;
    let mut packed = vec![0u32; columns.count.div_ceil(PANEL_WIDTH) * panel_len];
    let pack_panel = |(index, panel): (usize, &mut [u32])| {
        let first = index * PANEL_WIDTH;
        let lines = columns.slice(first, (columns.count - first).min(PANEL_WIDTH));
        let pairs = columns.pairs();
        avx512::pack_panels(lines, PANEL_WIDTH, 0..pairs, &mut panel[..pairs * PANEL_WIDTH]);
    };
    if parallel {
        packed.par_chunks_mut(panel_len).enumerate().for_each(pack_panel);
    } else {
        packed.chunks_mut(panel_len).enumerate().for_each(pack_panel);
    }
    packed
}

/// The lines packed in groups of `TILE_ROWS` (the last one padded with zero lines), each
/// group `chunks` lhs tiles `[TILE_ROWS lines][TILE_WIDTH pairs]`, pairs past k zero.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_lhs(rows: Lines, chunks: usize) -> Vec<u32> {
    let group_len = chunks * TILE_LEN;
    let mut packed = vec![0u32; rows.count.div_ceil(TILE_ROWS) * group_len];
    for (index, group) in packed.chunks_exact_mut(group_len).enumerate() {
        let first = index * TILE_ROWS;
        let lines = rows.slice(first, (rows.count - first).min(TILE_ROWS));
        if lines.k_stride == 1 {
            pack_group_of_contiguous_k(lines, group);
        } else {
            pack_group_by_transposing(lines, group);
        }
    }
    packed
}

/// [`pack_lhs`]'s group for lines whose k is contiguous: each tile row is the bf16 of 32
/// consecutive elements of a line.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_group_of_contiguous_k(lines: Lines, group: &mut [u32]) {
    for (chunk, tile) in group.chunks_exact_mut(TILE_LEN).enumerate() {
        let first_k = 2 * TILE_WIDTH * chunk;
        let elements = (2 * TILE_WIDTH).min(lines.len - first_k);
        for line in 0..lines.count {
            let pairs = avx512::converted(lines.data, lines.offset(line, first_k), elements);
            avx512::store_masked(tile, line * TILE_WIDTH, LANES, pairs);
        }
    }
}

/// [`pack_lhs`]'s group for lines of any other layout: packed by [`avx512::pack_panels`] as
/// `[pairs][lines]`, then each 16 × 16 block transposed into a tile.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pack_group_by_transposing(lines: Lines, group: &mut [u32]) {
    let mut by_pair = [0u32; TILE_LEN];
    for (chunk, tile) in group.chunks_exact_mut(TILE_LEN).enumerate() {
        let first_pair = TILE_WIDTH * chunk;
        let pairs = first_pair..(first_pair + TILE_WIDTH).min(lines.pairs());
        let packed = &mut by_pair[..pairs.len() * TILE_ROWS];
        avx512::pack_panels(lines, TILE_ROWS, pairs.clone(), packed);
        let rows: [__m512i; LANES] = std::array::from_fn(|pair| {
            if pair < pairs.len() {
                // SAFETY: `packed` holds `TILE_ROWS` = 16 u32 for each of its pairs.
                unsafe { _mm512_loadu_si512(packed[pair * TILE_ROWS..].as_ptr().cast()) }
            } else {
                _mm512_setzero_si512()
            }
        });
        for (line, row) in avx512::transpose(rows).into_iter().enumerate() {
            avx512::store_masked(tile, line * TILE_WIDTH, LANES, row);
        }
    }
}

/// Which tiles of an output block are in use: lhs tiles (`groups`, of 16 rows) and rhs tiles
/// (`halves`, of 16 columns), 1 or 2 each.
#[derive(Clone, Copy)]
struct Block {
    groups: usize,
    halves: usize,
}

impl Block {
    /// The accumulator tiles in use, as (group, half).
    fn accumulators(self) -> impl Iterator<Item = (usize, usize)> {
        (0..self.groups).flat_map(move |group| (0..self.halves).map(move |half| (group, half)))
    }
}

/// Writes `rows · rhs` (`rows` the lhs rows of this block, `rhs_panels` from [`pack_rhs`])
/// to every element of `out`: every rhs panel meets every output block of rows.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn multiply_row_block<T: Tiles>(
    tiles: &mut T,
    rows: Lines,
    rhs_panels: &[u32],
    chunks: usize,
    n: usize,
    out: &mut [MaybeUninit<f32>],
) {
    let lhs_groups = pack_lhs(rows, chunks);
    let group_len = chunks * TILE_LEN;
    for (panel_index, panel) in rhs_panels.chunks_exact(chunks * TILE_ROWS * PANEL_WIDTH).enumerate() {
        let cols = (n - panel_index * PANEL_WIDTH).min(PANEL_WIDTH);
        for (block_index, groups) in lhs_groups.chunks(2 * group_len).enumerate() {
            let block_rows = (rows.count - block_index * BLOCK_ROWS).min(BLOCK_ROWS);
            let block = Block { groups: groups.len() / group_len, halves: cols.div_ceil(TILE_WIDTH) };
            multiply_block(tiles, groups, panel, chunks, block);
            let block_out = &mut out[block_index * BLOCK_ROWS * n + panel_index * PANEL_WIDTH..];
            store_block(tiles, block, block_rows, cols, n, block_out);
        }
    }
}

/// Sums one output block in the accumulator tiles: `lhs` its 1 or 2 groups of lhs tiles,
/// `rhs` its panel, chunk by chunk of k.
fn multiply_block<T: Tiles>(tiles: &mut T, lhs: &[u32], rhs: &[u32], chunks: usize, block: Block) {
    for (group, half) in block.accumulators() {
        tiles.zero_accumulator(group, half);
    }
    for chunk in 0..chunks {
        for group in 0..block.groups {
            tiles.load_lhs(group, &lhs[(group * chunks + chunk) * TILE_LEN..], TILE_WIDTH);
        }
        for half in 0..block.halves {
            tiles.load_rhs(half, &rhs[chunk * TILE_ROWS * PANEL_WIDTH + half * TILE_WIDTH..], PANEL_WIDTH);
        }
        for (group, half) in block.accumulators() {
            tiles.multiply(group, half);
        }
    }
}

/// Stores the block's accumulators to the top-left `rows × cols` of `out` (rows `n` apart):
/// whole tiles directly, partial ones through a scratch tile.
fn store_block<T: Tiles>(
    tiles: &T,
    block: Block,
    rows: usize,
    cols: usize,
    n: usize,
    out: &mut [MaybeUninit<f32>],
) {
    for (group, half) in block.accumulators() {
        let tile_rows = (rows - group * TILE_ROWS).min(TILE_ROWS);
        let tile_cols = (cols - half * TILE_WIDTH).min(TILE_WIDTH);
        let tile_out = &mut out[group * TILE_ROWS * n + half * TILE_WIDTH..];
        if tile_rows == TILE_ROWS && tile_cols == TILE_WIDTH {
            tiles.store_accumulator(group, half, tile_out, n);
            continue;
        }
        let mut scratch = [MaybeUninit::uninit(); TILE_LEN];
        tiles.store_accumulator(group, half, &mut scratch, TILE_WIDTH);
        for (row, stored) in scratch.chunks_exact(TILE_WIDTH).take(tile_rows).enumerate() {
            tile_out[row * n..][..tile_cols].copy_from_slice(&stored[..tile_cols]);
        }
    }
}

/// The tile operations of the kernel, on eight tiles of 16 rows of 64 bytes: accumulators
/// (f32) indexed by (group, half), two lhs tiles by group and two rhs tiles by half (bf16
/// pairs). A source or destination is a slice whose first element is the tile's first, rows
/// `stride` elements apart.
trait Tiles {
    /// Tiles configured for the calling thread, released when dropped.
    ///
    /// # Safety
    /// The CPU must run the implementation's instructions.
    unsafe fn configured() -> Self;

    fn zero_accumulator(&mut self, group: usize, half: usize);

    fn load_lhs(&mut self, group: usize, source: &[u32], stride: usize);

    fn load_rhs(&mut self, half: usize, source: &[u32], stride: usize);

    /// Accumulator (group, half) += lhs tile `group` · rhs tile `half`, by TDPBF16PS.
    fn multiply(&mut self, group: usize, half: usize);

    fn store_accumulator(&self, group: usize, half: usize, out: &mut [MaybeUninit<f32>], stride: usize);
}

/// Whether a slice holds a tile of rows `stride` elements apart.
fn holds_tile<T>(slice: &[T], stride: usize) -> bool {
    stride >= TILE_WIDTH && slice.len() >= (TILE_ROWS - 1) * stride + TILE_WIDTH
}

/// The AMX tile registers: accumulator (group, half) in tmm`2·group + half`, lhs tile `group`
/// in tmm`4 + group`, rhs tile `half` in tmm`6 + half`. The compiler never uses tile registers
/// itself, so their contents last from one instruction to the next.
struct Hardware;

/// LDTILECFG's 64-byte operand (SDM vol. 1, 18.2): palette 1, every tile `TILE_ROWS` rows of
/// `TILE_WIDTH` u32.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn every_tile_full() -> Self {
        let (used_bytes, used_rows) = ([(TILE_WIDTH * 4) as u16; 8], [TILE_ROWS as u8; 8]);
        let mut config =
            Self { palette: 1, start_row: 0, reserved: [0; 14], bytes_per_row: [0; 16], rows: [0; 16] };
        config.bytes_per_row[..8].copy_from_slice(&used_bytes);
        config.rows[..8].copy_from_slice(&used_rows);
        config
    }
}

impl Tiles for Hardware {
    unsafe fn configured() -> Self {
        let config = TileConfig::every_tile_full();
        // SAFETY: the caller vouches for AMX-TILE and the permission; `config` is a valid
        // 64-byte configuration, read and not kept.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly, preserves_flags)) };
        Self
    }

    fn zero_accumulator(&mut self, group: usize, half: usize) {
        // SAFETY (each arm): the tiles are configured (`Self` exists only so).
        match (group, half) {
            (0, 0) => unsafe { asm!("tilezero tmm0", options(nomem, nostack, preserves_flags)) },
            (0, 1) => unsafe { asm!("tilezero tmm1", options(nomem, nostack, preserves_flags)) },
            (1, 0) => unsafe { asm!("tilezero tmm2", options(nomem, nostack, preserves_flags)) },
            (1, 1) => unsafe { asm!("tilezero tmm3", options(nomem, nostack, preserves_flags)) },
            _ => unreachable!("accumulator ({group}, {half})"),
        }
    }

    fn load_lhs(&mut self, group: usize, source: &[u32], stride: usize) {
        match group {
            0 => load_tile::<4>(source, stride),
            1 => load_tile::<5>(source, stride),
            _ => unreachable!("lhs tile {group}"),
        }
    }

    fn load_rhs(&mut self, half: usize, source: &[u32], stride: usize) {
        match half {
            0 => load_tile::<6>(source, stride),
            1 => load_tile::<7>(source, stride),
            _ => unreachable!("rhs tile {half}"),
        }
    }

    fn multiply(&mut self, group: usize, half: usize) {
        // SAFETY (each arm): AMX-BF16 is there and the tiles are configured (`Self` exists
        // only so); TDPBF16PS reads and writes tile registers only.
        match (group, half) {
            (0, 0) => unsafe { asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nomem, nostack, preserves_flags)) },
            (0, 1) => unsafe { asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nomem, nostack, preserves_flags)) },
            (1, 0) => unsafe { asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nomem, nostack, preserves_flags)) },
            (1, 1) => unsafe { asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nomem, nostack, preserves_flags)) },
            _ => unreachable!("accumulator ({group}, {half})"),
        }
    }

    fn store_accumulator(&self, group: usize, half: usize, out: &mut [MaybeUninit<f32>], stride: usize) {
        assert!(holds_tile(out, stride), "store_accumulator: the destination is smaller than a tile");
        let (base, stride_bytes) = (out.as_mut_ptr(), stride * 4);
        // SAFETY (each arm): the tiles are configured (`Self` exists only so); TILESTORED
        // writes 16 rows of 64 bytes, `stride_bytes` apart from `base`, all inside `out`.
        match (group, half) {
            (0, 0) => unsafe {
                asm!("tilestored [{b} + {s}*1], tmm0", b = in(reg) base, s = in(reg) stride_bytes, options(nostack, preserves_flags))
            },
            (0, 1) => unsafe {
                asm!("tilestored [{b} + {s}*1], tmm1", b = in(reg) base, s = in(reg) stride_bytes, options(nostack, preserves_flags))
            },
            (1, 0) => unsafe {
                asm!("tilestored [{b} + {s}*1], tmm2", b = in(reg) base, s = in(reg) stride_bytes, options(nostack, preserves_flags))
            },
            (1, 1) => unsafe {
                asm!("tilestored [{b} + {s}*1], tmm3", b = in(reg) base, s = in(reg) stride_bytes, options(nostack, preserves_flags))
            },
            _ => unreachable!("accumulator ({group}, {half})"),
        }
    }
}

impl Drop for Hardware {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured; TILERELEASE returns them to their initial state.
        unsafe { asm!("tilerelease", options(nomem, nostack, preserves_flags)) };
    }
}

/// Loads tile register tmm`TMM` from `source`, rows `stride` u32 apart.
fn load_tile<const TMM: u8>(source: &[u32], stride: usize) {
    assert!(holds_tile(source, stride), "load_tile: the source is smaller than a tile");
    // SAFETY: only called on a configured `Hardware`; TILELOADD reads 16 rows of 64 bytes,
    // `stride` u32 apart from the slice's start, all inside `source`.
    unsafe {
        asm!(
            "tileloadd tmm{t}, [{b} + {s}*1]",
            t = const TMM,
            b = in(reg) source.as_ptr(),
            s = in(reg) stride * 4,
            options(nostack, readonly, preserves_flags)
        )
    };
}

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use super::super::tests::{
        assert_independent_of_the_thread_count, assert_matches_reference, for_all_cases, for_large_cases,
        Stored, SIZES,
    };
    use super::{
        avx512, cpu_supported, matmul_with_tiles, tile_data_permitted, Tiles, TILE_ROWS, TILE_WIDTH,
    };

    type Tile<T> = [[T; TILE_WIDTH]; TILE_ROWS];

    /// The tiles in memory, each operation as the SDM's pseudo-code for it says; TDPBF16PS
    /// adds the products of the even then the odd halves of each pair, k by k, each sum
    /// rounded to nearest even (f32 addition) and flushed to zero below the normal range.
    struct Emulated {
        accumulators: [[Tile<f32>; 2]; 2],
        lhs: [Tile<u32>; 2],
        rhs: [Tile<u32>; 2],
    }

    /// A bf16 (the high half of a f32), subnormals read as zero.
    fn bf16_value(half: u32) -> f32 {
        let value = f32::from_bits(half << 16);
        if value.is_subnormal() {
            0.0f32.copysign(value)
        } else {
            value
        }
    }

    fn flushed(sum: f32) -> f32 {
        if sum.is_subnormal() {
            0.0f32.copysign(sum)
        } else {
            sum
        }
    }

    fn load(tile: &mut Tile<u32>, source: &[u32], stride: usize) {
        for (row, tile_row) in tile.iter_mut().enumerate() {
            tile_row.copy_from_slice(&source[row * stride..][..TILE_WIDTH]);
        }
    }

    impl Tiles for Emulated {
        unsafe fn configured() -> Self {
            // Garbage, as a tile's contents are until written.
            Self {
                accumulators: [[[[f32::NAN; TILE_WIDTH]; TILE_ROWS]; 2]; 2],
                lhs: [[[u32::MAX; TILE_WIDTH]; TILE_ROWS]; 2],
                rhs: [[[u32::MAX; TILE_WIDTH]; TILE_ROWS]; 2],
            }
        }

        fn zero_accumulator(&mut self, group: usize, half: usize) {
            self.accumulators[group][half] = [[0.0; TILE_WIDTH]; TILE_ROWS];
        }

        fn load_lhs(&mut self, group: usize, source: &[u32], stride: usize) {
            load(&mut self.lhs[group], source, stride);
        }

        fn load_rhs(&mut self, half: usize, source: &[u32], stride: usize) {
            load(&mut self.rhs[half], source, stride);
        }

        fn multiply(&mut self, group: usize, half: usize) {
            let (lhs, rhs) = (&self.lhs[group], &self.rhs[half]);
            for (lhs_row, sums) in lhs.iter().zip(self.accumulators[group][half].iter_mut()) {
                for (&lhs_pair, rhs_row) in lhs_row.iter().zip(rhs) {
                    for (sum, &rhs_pair) in sums.iter_mut().zip(rhs_row) {
                        *sum = flushed(*sum + bf16_value(lhs_pair & 0xffff) * bf16_value(rhs_pair & 0xffff));
                        *sum = flushed(*sum + bf16_value(lhs_pair >> 16) * bf16_value(rhs_pair >> 16));
                    }
                }
            }
        }

        fn store_accumulator(&self, group: usize, half: usize, out: &mut [MaybeUninit<f32>], stride: usize) {
            for (row, sums) in self.accumulators[group][half].iter().enumerate() {
                for (column, &sum) in sums.iter().enumerate() {
                    out[row * stride + column] = MaybeUninit::new(sum);
                }
            }
        }
    }

    /// Whether this CPU has the AVX-512 packers the kernel uses; says so when it has not.
    fn packers_available(test: &str) -> bool {
        let available = avx512::available();
        if !available {
            eprintln!("note: {test}: this CPU lacks AVX-512F/BW/BF16, which the AMX kernel's packing needs; not run");
        }
        available
    }

    fn emulated_product(lhs: &Stored, rhs: &Stored) -> Vec<f32> {
        // SAFETY: `packers_available` has checked the AVX-512 features; the emulator runs anywhere.
        unsafe { matmul_with_tiles::<Emulated>(lhs.operand(), rhs.operand(), true) }
    }

    #[test]
    fn emulated_amx_product_matches_the_reference_on_every_layout() {
        if !packers_available("emulated_amx_product_matches_the_reference_on_every_layout") {
            return;
        }
        for_all_cases(&SIZES, |lhs, rhs, context| {
            assert_matches_reference(&emulated_product(lhs, rhs), lhs, rhs, context);
        });
    }

    /// k over 35 chunks (odd, so the last pair and chunk are padded), n over three panels,
    /// the last of 7 columns, m over row blocks on several threads, the last of 5 rows.
    #[test]
    fn emulated_large_products_match_the_reference() {
        if !packers_available("emulated_large_products_match_the_reference") {
            return;
        }
        for_large_cases(|lhs, rhs, context| {
            assert_matches_reference(&emulated_product(lhs, rhs), lhs, rhs, context);
        });
    }

    #[test]
    fn emulated_amx_product_does_not_depend_on_the_thread_count() {
        if packers_available("emulated_amx_product_does_not_depend_on_the_thread_count") {
            assert_independent_of_the_thread_count(emulated_product);
        }
    }

    /// On a CPU with AMX (`grep -o 'amx[a-z_]*' /proc/cpuinfo`), under a Linux that grants
    /// tile data: the hardware kernel passed its check, is what `matmul_bf16` runs, and matches
    /// the reference on every layout and on a large product. Elsewhere it says it was skipped.
    #[test]
    fn hardware_amx_product_matches_the_reference() {
        if !(cpu_supported() && tile_data_permitted()) {
            eprintln!(
                "note: hardware_amx_product_matches_the_reference: skipped, this CPU or kernel has no AMX-BF16 \
                 tiles (the emulated tests check the kernel's logic)"
            );
            return;
        }
        assert!(super::available(), "the AMX kernel failed its check against the AVX-512 kernel");
        let check = |lhs: &Stored, rhs: &Stored, context: &str| {
            let product = super::super::matmul_bf16(lhs.operand(), rhs.operand());
            // SAFETY: the features and the permission were checked above.
            let hardware = unsafe { super::matmul_bf16(lhs.operand(), rhs.operand(), true) };
            assert!(
                product.iter().zip(&hardware).all(|(p, h)| p.to_bits() == h.to_bits()),
                "{context}: dispatch"
            );
            assert_matches_reference(&hardware, lhs, rhs, context);
        };
        for_all_cases(&SIZES, check);
        for_large_cases(check);
        eprintln!("note: hardware_amx_product_matches_the_reference: ran on AMX tiles");
    }
}
