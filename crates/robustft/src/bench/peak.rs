//! The CPU's fp32 multiply-add ceiling, measured: every thread of the pool runs independent
//! chains of fused multiply-adds on registers, in the widest vectors the CPU has (AVX-512F,
//! else AVX2 with FMA), with no memory traffic. A product's GFLOP/s from
//! [`super::time_products`] read against it is the fraction of what the cores could issue in
//! that same minute, which a shared virtual machine's drifting speed leaves meaningful.

/// Independent chains per thread: more than an FMA's latency times the FMA pipes (4 cycles × 2
/// pipes on current x86 cores), few enough to stay in the 16 registers AVX2 has.
const CHAINS: usize = 12;

/// Multiply-add rounds per thread in one timed run: about 30 ms on one 3 GHz core with AVX2.
const ROUNDS: usize = 8_000_000;

/// Timed runs: the fastest is the peak, since a busy host only ever slows a run down.
const RUNS: usize = 8;

/// GFLOP/s of independent fp32 multiply-adds on every thread of the current rayon pool (the
/// fastest of [`RUNS`] runs after an untimed one), or `None` on a CPU without AVX2 and FMA.
pub fn fma_peak_gflops() -> Option<f64> {
    let lanes = vector_lanes()?;
    let flops = (rayon::current_num_threads() * ROUNDS * CHAINS * lanes * 2) as f64;
    rayon::broadcast(|_| multiply_add_chains(lanes, ROUNDS));
    let fastest = (0..RUNS)
        .map(|_| {
            let start = std::time::Instant::now();
            rayon::broadcast(|_| multiply_add_chains(lanes, ROUNDS));
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    Some(flops / fastest / 1e9)
}

/// f32 lanes of the widest vectors [`multiply_add_chains`] runs in on this CPU.
fn vector_lanes() -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Some(16);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Some(8);
        }
    }
    None
}

/// Runs `rounds` rounds of [`CHAINS`] independent multiply-adds in vectors of `lanes` f32, as
/// [`vector_lanes`] found them.
fn multiply_add_chains(lanes: usize, rounds: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `vector_lanes` gives 16 only where AVX-512F was detected, and 8 only where
        // AVX2 and FMA were.
        let sum = match lanes {
            16 => unsafe { x86::chains_512(rounds) },
            8 => unsafe { x86::chains_256(rounds) },
            _ => unreachable!("{lanes} lanes"),
        };
        std::hint::black_box(sum);
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no vector lanes ({lanes}) to run {rounds} rounds in off x86_64");
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    /// [`CHAINS`] chains `a ← a·b + c` in 8-lane vectors; returns a lane of their sum.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn chains_256(rounds: usize) -> f32 {
        let (b, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut chains: [__m256; CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
        for _ in 0..rounds {
            for chain in &mut chains {
                *chain = _mm256_fmadd_ps(*chain, b, c);
            }
        }
        let sum = chains.into_iter().fold(_mm256_setzero_ps(), |sum, chain| _mm256_add_ps(sum, chain));
        _mm256_cvtss_f32(sum)
    }

    /// [`CHAINS`] chains `a ← a·b + c` in 16-lane vectors; returns a lane of their sum.
    #[target_feature(enable = "avx512f")]
    pub(super) fn chains_512(rounds: usize) -> f32 {
        let (b, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut chains: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        for _ in 0..rounds {
            for chain in &mut chains {
                *chain = _mm512_fmadd_ps(*chain, b, c);
            }
        }
        let sum = chains.into_iter().fold(_mm512_setzero_ps(), |sum, chain| _mm512_add_ps(sum, chain));
        _mm512_reduce_add_ps(sum)
    }
}
