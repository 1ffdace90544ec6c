//! `exp` of a whole slice of f32, vectorised and bit-identical to `f32::exp` on x86_64 Linux,
//! which is glibc's `expf`.
//!
//! glibc (2.28 and later; sysdeps/ieee754/flt-32/e_expf.c, Szabolcs Nagy's design) computes
//! `exp(x) = 2^(k/32) · 2^(r/32)` in double precision: `z = x · 32/ln 2`, `k = round(z)` by
//! adding and subtracting `1.5 · 2^52`, `r = z − k`, `2^(k/32)` from a 32-entry table of
//! `2^(i/32)` whose exponent field receives `k` shifted, and a degree-3 polynomial in `r`. On
//! CPUs with FMA and AVX2 its run-time dispatch picks `__expf_fma`, whose fused multiply-adds
//! are reproduced here with the same constants (glibc's `__exp2f_data`): 16 lanes at a time
//! with AVX-512F, 8 with AVX2 and FMA. Lanes with `|x| ≥ 88` (overflow, underflow,
//! infinities, NaN) are recomputed by `f32::exp`, and so is everything on other targets or
//! CPUs.

/// `exp` of every element of `xs`, in place; equal to `f32::exp` bit for bit.
pub(super) fn exp_in_place(xs: &mut [f32]) {
    // SAFETY: `widest` is a width this CPU runs.
    unsafe { exp_in_place_at(Lanes::widest(), xs) }
}

/// The vector widths `exp_in_place` (and [`super::erf`]) run at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Lanes {
    /// AVX-512F (with AVX2 and FMA).
    Sixteen,
    /// AVX2 and FMA.
    Eight,
    /// `f32::exp` one element at a time.
    One,
}

impl Lanes {
    /// Every width, widest first.
    #[cfg(test)]
    const ALL: [Lanes; 3] = [Lanes::Sixteen, Lanes::Eight, Lanes::One];

    /// The widest width this CPU runs (checked once).
    pub(super) fn widest() -> Self {
        static WIDEST: std::sync::OnceLock<Lanes> = std::sync::OnceLock::new();
        *WIDEST.get_or_init(|| {
            [Lanes::Sixteen, Lanes::Eight].into_iter().find(|lanes| lanes.runs_here()).unwrap_or(Lanes::One)
        })
    }

    /// Whether this CPU (and target) runs this width.
    fn runs_here(self) -> bool {
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        {
            let avx2_fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            match self {
                Lanes::Sixteen => avx2_fma && is_x86_feature_detected!("avx512f"),
                Lanes::Eight => avx2_fma,
                Lanes::One => true,
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
        {
            self == Lanes::One
        }
    }
}

/// [`exp_in_place`] at the given width, checked to run here (for the tests of every width).
#[cfg(test)]
fn exp_in_place_by(lanes: Lanes, xs: &mut [f32]) {
    assert!(lanes.runs_here(), "exp: {lanes:?} lanes do not run on this CPU");
    // SAFETY: checked just above.
    unsafe { exp_in_place_at(lanes, xs) }
}

/// [`exp_in_place`] at the given width.
///
/// # Safety
/// The width must run on this CPU ([`Lanes::runs_here`]).
unsafe fn exp_in_place_at(lanes: Lanes, xs: &mut [f32]) {
    match lanes {
        // SAFETY: the caller guarantees AVX-512F, AVX2 and FMA.
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        Lanes::Sixteen => unsafe { avx512::exp_in_place(xs) },
        // SAFETY: the caller guarantees AVX2 and FMA.
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        Lanes::Eight => unsafe { avx2::exp_in_place(xs) },
        _ => xs.iter_mut().for_each(|x| *x = x.exp()),
    }
}

/// `32 / ln 2`, glibc's `InvLn2N`.
const INV_LN2_SCALED: f64 = f64::from_bits(0x40471547652b82fe);

/// `1.5 · 2^52`: adding it rounds to an integer held in the low mantissa bits.
const SHIFT: f64 = f64::from_bits(0x4338000000000000);

/// The polynomial's coefficients of `r³`, `r²` and `r`: `2^(r/32) ≈ 1 + C2 r + C1 r² + C0 r³`.
const C0: f64 = f64::from_bits(0x3ebc6af84b912394);
const C1: f64 = f64::from_bits(0x3f2ebfce50fac4f3);
const C2: f64 = f64::from_bits(0x3f962e42ff0c52d6);

/// The bits of `2^(i/32)` (correctly rounded) minus `i << 47`, so that adding `k << 47`
/// for any `k ≡ i (mod 32)` yields the bits of `2^(k/32)`.
const TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// Bits of the smallest `|x|` that glibc leaves its fast path for (88.0).
const SPECIAL_ABS_BITS: i32 = 0x42b00000;

/// `lanes` on every block of `N` elements of `xs`, in place; the tail through a zero-padded
/// copy. The AVX2 drivers of `exp` and `erf`, inlined into their `target_feature` functions.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn in_padded_blocks<const N: usize>(xs: &mut [f32], mut lanes: impl FnMut(&mut [f32; N])) {
    let mut blocks = xs.chunks_exact_mut(N);
    for block in &mut blocks {
        lanes(block.try_into().expect("a block of N"));
    }
    let tail = blocks.into_remainder();
    if !tail.is_empty() {
        let mut padded = [0f32; N];
        padded[..tail.len()].copy_from_slice(tail);
        lanes(&mut padded);
        tail.copy_from_slice(&padded[..tail.len()]);
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{C0, C1, C2, INV_LN2_SCALED, SHIFT, SPECIAL_ABS_BITS, TABLE};

    /// f32 lanes per iteration.
    const LANES: usize = 16;

    /// `exp` of every element of `xs`, in place, by 16 lanes, the tail under a lane mask.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn exp_in_place(xs: &mut [f32]) {
        let mut chunks = xs.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            exp_lanes(chunk, u16::MAX);
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            exp_lanes(tail, (1 << tail.len()) - 1);
        }
    }

    /// `exp` of the first `lanes.count_ones()` elements of `xs` (the mask's low bits).
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn exp_lanes(xs: &mut [f32], lanes: __mmask16) {
        debug_assert!(xs.len() >= lanes.count_ones() as usize);
        // SAFETY: the masked lanes lie within `xs`; masked-off lanes are neither read nor written.
        let x = unsafe { _mm512_maskz_loadu_ps(lanes, xs.as_ptr()) };
        let low = exp_f64(_mm512_cvtps_pd(_mm512_castps512_ps256(x)));
        let high = exp_f64(_mm512_cvtps_pd(upper_half(x)));
        // SAFETY: as for the load.
        unsafe { _mm512_mask_storeu_ps(xs.as_mut_ptr(), lanes, join_halves(low, high)) };
        recompute_special_lanes(xs, x, lanes & special_lanes(x));
    }

    /// `f32::exp` of the lanes of `x` that `special` selects, into `xs`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn recompute_special_lanes(xs: &mut [f32], x: __m512, special: __mmask16) {
        if special == 0 {
            return;
        }
        let mut inputs = [0f32; LANES];
        // SAFETY: `inputs` holds 16 f32.
        unsafe { _mm512_storeu_ps(inputs.as_mut_ptr(), x) };
        for lane in (0..LANES).filter(|lane| special & (1 << lane) != 0) {
            xs[lane] = inputs[lane].exp();
        }
    }

    /// The lanes with `|x| ≥ 88` or NaN, which glibc handles off its fast path.
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn special_lanes(x: __m512) -> __mmask16 {
        let abs_bits = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MAX));
        _mm512_cmpge_epu32_mask(abs_bits, _mm512_set1_epi32(SPECIAL_ABS_BITS))
    }

    /// Lanes 8 to 15 of `x`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn upper_half(x: __m512) -> __m256 {
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)))
    }

    /// The f32 roundings of `low` (lanes 0 to 7) and `high` (lanes 8 to 15).
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn join_halves(low: __m512d, high: __m512d) -> __m512 {
        let low = _mm512_castps256_ps512(_mm512_cvtpd_ps(low));
        let high = _mm256_castps_pd(_mm512_cvtpd_ps(high));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(low), high))
    }

    /// glibc's fast path of `expf` on 8 lanes (`|x| < 88`), before rounding to f32.
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn exp_f64(x: __m512d) -> __m512d {
        let inv_ln2_scaled = _mm512_set1_pd(INV_LN2_SCALED);
        let shift = _mm512_set1_pd(SHIFT);
        let shifted = _mm512_fmadd_pd(inv_ln2_scaled, x, shift);
        let k = _mm512_castpd_si512(shifted);
        let r = _mm512_fmsub_pd(inv_ln2_scaled, x, _mm512_sub_pd(shifted, shift));
        let scale = _mm512_castsi512_pd(_mm512_add_epi64(table_entries(k), _mm512_slli_epi64::<47>(k)));
        let cubic_part = _mm512_fmadd_pd(_mm512_set1_pd(C0), r, _mm512_set1_pd(C1));
        let linear_part = _mm512_fmadd_pd(_mm512_set1_pd(C2), r, _mm512_set1_pd(1.0));
        let poly = _mm512_fmadd_pd(cubic_part, _mm512_mul_pd(r, r), linear_part);
        _mm512_mul_pd(poly, scale)
    }

    /// `TABLE[k mod 32]` for each lane of `k`: two 16-entry permutes and a select on bit 4.
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn table_entries(k: __m512i) -> __m512i {
        let first_half = _mm512_permutex2var_epi64(table_quarter(0), k, table_quarter(1));
        let second_half = _mm512_permutex2var_epi64(table_quarter(2), k, table_quarter(3));
        let in_second_half = _mm512_test_epi64_mask(k, _mm512_set1_epi64(16));
        _mm512_mask_blend_epi64(in_second_half, first_half, second_half)
    }

    /// Entries `8 i` to `8 i + 7` of `TABLE`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn table_quarter(i: usize) -> __m512i {
        let quarter = &TABLE[8 * i..8 * i + 8];
        // SAFETY: `quarter` holds 8 u64, one vector.
        unsafe { _mm512_loadu_si512(quarter.as_ptr().cast()) }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{in_padded_blocks, C0, C1, C2, INV_LN2_SCALED, SHIFT, SPECIAL_ABS_BITS, TABLE};

    /// f32 lanes per iteration.
    const LANES: usize = 8;

    /// `exp` of every element of `xs`, in place, by 8 lanes; the tail through a zero-padded
    /// copy.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_in_place(xs: &mut [f32]) {
        in_padded_blocks::<LANES>(xs, |block| exp_lanes(block));
    }

    /// `exp` of the 8 elements of `xs`, in place.
    #[target_feature(enable = "avx2,fma")]
    fn exp_lanes(xs: &mut [f32; LANES]) {
        // SAFETY: `xs` holds 8 f32, one vector.
        let x = unsafe { _mm256_loadu_ps(xs.as_ptr()) };
        let low = _mm256_cvtpd_ps(exp_f64(_mm256_cvtps_pd(_mm256_castps256_ps128(x))));
        let high = _mm256_cvtpd_ps(exp_f64(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x))));
        // SAFETY: as for the load.
        unsafe { _mm256_storeu_ps(xs.as_mut_ptr(), _mm256_set_m128(high, low)) };
        let special = special_lanes(x);
        if special != 0 {
            let mut inputs = [0f32; LANES];
            // SAFETY: `inputs` holds 8 f32.
            unsafe { _mm256_storeu_ps(inputs.as_mut_ptr(), x) };
            for lane in (0..LANES).filter(|lane| special & (1 << lane) != 0) {
                xs[lane] = inputs[lane].exp();
            }
        }
    }

    /// A bit per lane with `|x| ≥ 88` or NaN, which glibc handles off its fast path.
    #[target_feature(enable = "avx2,fma")]
    fn special_lanes(x: __m256) -> i32 {
        let abs_bits = _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(i32::MAX));
        let special = _mm256_cmpgt_epi32(abs_bits, _mm256_set1_epi32(SPECIAL_ABS_BITS - 1));
        _mm256_movemask_ps(_mm256_castsi256_ps(special))
    }

    /// glibc's fast path of `expf` on 4 lanes (`|x| < 88`), before rounding to f32.
    #[target_feature(enable = "avx2,fma")]
    fn exp_f64(x: __m256d) -> __m256d {
        let inv_ln2_scaled = _mm256_set1_pd(INV_LN2_SCALED);
        let shift = _mm256_set1_pd(SHIFT);
        let shifted = _mm256_fmadd_pd(inv_ln2_scaled, x, shift);
        let k = _mm256_castpd_si256(shifted);
        let r = _mm256_fmsub_pd(inv_ln2_scaled, x, _mm256_sub_pd(shifted, shift));
        let index = _mm256_and_si256(k, _mm256_set1_epi64x(31));
        // SAFETY: every index is below 32, the table's length.
        let entries = unsafe { _mm256_i64gather_epi64::<8>(TABLE.as_ptr().cast(), index) };
        let scale = _mm256_castsi256_pd(_mm256_add_epi64(entries, _mm256_slli_epi64::<47>(k)));
        let cubic_part = _mm256_fmadd_pd(_mm256_set1_pd(C0), r, _mm256_set1_pd(C1));
        let linear_part = _mm256_fmadd_pd(_mm256_set1_pd(C2), r, _mm256_set1_pd(1.0));
        let poly = _mm256_fmadd_pd(cubic_part, _mm256_mul_pd(r, r), linear_part);
        _mm256_mul_pd(poly, scale)
    }
}

#[cfg(test)]
mod tests {
    use super::{exp_in_place, exp_in_place_by, Lanes};

    /// Every this many-th f32 bit pattern forms the spread sample (about 4 million inputs).
    const STRIDE: usize = 1021;

    /// Inputs whose exp, before rounding to f32, lies within 7e-8 ulp of the boundary between
    /// two f32 (found by searching all inputs): any change to a constant or to the rounding of
    /// an intermediate step that moves the result by more than that rounds them differently.
    const HARD_TO_ROUND: [u32; 64] = [
        0x3e73ade2, 0xbfde3004, 0xb3000000, 0xbbe861b2, 0x3d8932e8, 0x400d98c7, 0x3b37991a, 0xba253b54,
        0x337fffff, 0x33800000, 0x343fffff, 0x34dffffd, 0x37ff7f01, 0x356ffff9, 0x3b0b4517, 0x3fbe11a6,
        0x40143eb5, 0x4202422f, 0x35f7fff1, 0xc0d7626b, 0x367bffe1, 0x40c12c37, 0x4197276c, 0xba921bd7,
        0xbeae4609, 0xc1d2107a, 0x36fdffc1, 0xbb378639, 0x387ebe05, 0xb9fbab76, 0xbe14c82c, 0x377eff81,
        0x38fddc11, 0xb2ffffff, 0xc068da36, 0xb9a56aae, 0xbf0fa174, 0x3b50125a, 0x337ffffe, 0x3d103181,
        0x40a63bf9, 0xbc70a558, 0x3b8f4138, 0xb3000001, 0xb3c00001, 0xb4200001, 0xbac75bcb, 0xbc3f2901,
        0xb4b00002, 0xbd3e69a5, 0x3a29cdeb, 0xb8df930d, 0xb5d4000b, 0xc27c65d9, 0xb616000b, 0xbb57a63b,
        0xbeb7bdad, 0xc2633f4c, 0x3998e24b, 0x3df0cb95, 0xc23dd581, 0xb6b50020, 0xbab8080f, 0xb2fffffe,
    ];

    /// Bit patterns where `expf` changes behaviour: the fast path's limit `|x| = 88`, overflow
    /// (88.72), the smallest normal result (−87.34), underflow to zero (−103.97), ±103,
    /// subnormal, zero, huge and infinite inputs, quiet and signalling NaNs of both signs.
    const EDGES: [u32; 17] = [
        0x42b00000, 0xc2b00000, 0x42b17218, 0xc2aeac50, 0xc2cff1b5, 0x42ce0000, 0xc2ce0000, 0x00000001,
        0x807fffff, 0x00000000, 0x80000000, 0x7f7fffff, 0xff7fffff, 0x7f800000, 0xff800000, 0x7fc00000,
        0xffc00000,
    ];

    /// Bit patterns within this many steps of an edge are tested too.
    const EDGE_RADIUS: u32 = 300;

    fn assert_equals_f32_exp(xs: &[f32], ys: &[f32]) {
        for (x, y) in xs.iter().zip(ys) {
            let expected = x.exp();
            let same = y.to_bits() == expected.to_bits() || (y.is_nan() && expected.is_nan());
            assert!(same, "exp({x:e} = {:#x}) gave {y:e}, f32::exp gives {expected:e}", x.to_bits());
        }
    }

    /// The widths this CPU runs; says which it skips.
    fn widths_run_here() -> Vec<Lanes> {
        let (run, skipped): (Vec<_>, Vec<_>) = Lanes::ALL.into_iter().partition(|lanes| lanes.runs_here());
        if !skipped.is_empty() {
            eprintln!("exp: {skipped:?} lanes skipped, this CPU does not run them");
        }
        run
    }

    fn assert_exp_in_place_equals_f32_exp(xs: &[f32]) {
        for lanes in widths_run_here() {
            let mut ys = xs.to_vec();
            exp_in_place_by(lanes, &mut ys);
            assert_equals_f32_exp(xs, &ys);
        }
        let mut ys = xs.to_vec();
        exp_in_place(&mut ys);
        assert_equals_f32_exp(xs, &ys);
    }

    #[test]
    fn equals_f32_exp_on_a_spread_of_all_bit_patterns() {
        let xs: Vec<f32> = (0..=u32::MAX).step_by(STRIDE).map(f32::from_bits).collect();
        assert_exp_in_place_equals_f32_exp(&xs);
    }

    #[test]
    fn equals_f32_exp_around_the_edges_of_the_fast_path() {
        let around = |edge: u32| edge.saturating_sub(EDGE_RADIUS)..=edge.saturating_add(EDGE_RADIUS);
        let xs: Vec<f32> = EDGES.into_iter().flat_map(around).map(f32::from_bits).collect();
        assert_exp_in_place_equals_f32_exp(&xs);
    }

    #[test]
    fn equals_f32_exp_on_inputs_that_are_hard_to_round() {
        assert_exp_in_place_equals_f32_exp(&HARD_TO_ROUND.map(f32::from_bits));
    }

    #[test]
    fn every_length_gets_each_element_and_nothing_beyond() {
        let pool: Vec<f32> = HARD_TO_ROUND.into_iter().chain(EDGES).map(f32::from_bits).collect();
        for (lanes, len) in
            widths_run_here().into_iter().flat_map(|lanes| (0..=40).map(move |len| (lanes, len)))
        {
            let xs: Vec<f32> = pool.iter().cycle().skip(len).take(len + 16).copied().collect();
            let mut ys = xs.clone();
            exp_in_place_by(lanes, &mut ys[..len]);
            assert_equals_f32_exp(&xs[..len], &ys[..len]);
            assert_eq!(
                ys[len..].iter().map(|y| y.to_bits()).collect::<Vec<_>>(),
                xs[len..].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{lanes:?} lanes, length {len}: elements past the end changed"
            );
        }
    }
}
