//! GFLOP/s of `C = A · B` in f32 on two threads, for the `gemm` crate (candle's CPU matmul,
//! with the operand layouts of `robustft::kernels::linear`) and for OpenBLAS's
//! `cblas_sgemm`, on the matrix shapes of one training step of the bundled ShiftWorld model
//! (batch 256 × 17 tokens = 4352 rows, width 128, MLP 512) and of ViT-B/32 (batch 32 × 50
//! tokens = 1600 rows, width 768, MLP 3072): forward `x Wᵀ`, input gradient `g W` and weight
//! gradient `gᵀ x`. Each side's best of five rounds.

use std::time::Instant;

const CBLAS_ROW_MAJOR: i32 = 101;
const CBLAS_NO_TRANS: i32 = 111;
const CBLAS_TRANS: i32 = 112;
const THREADS: usize = 2;
/// Floating-point work per timed round; repetitions are chosen to reach it.
const WORK_PER_ROUND: f64 = 2e9;
/// Timed rounds per case and side; the best round counts.
const ROUNDS: usize = 5;
/// Pause between the two sides: both libraries' worker threads spin for a while after a call,
/// and would otherwise take a core from the other side's first rounds.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn cblas_sgemm(
        layout: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
}

/// One product `C[m, n] = op(A) · op(B)`: `A` is stored `[k, m]` when `a_transposed`
/// (else `[m, k]`), `B` is stored `[n, k]` when `b_transposed` (else `[k, n]`).
struct Case {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    a_transposed: bool,
    b_transposed: bool,
}

const fn case(name: &'static str, m: usize, n: usize, k: usize, a_t: bool, b_t: bool) -> Case {
    Case { name, m, n, k, a_transposed: a_t, b_transposed: b_t }
}

const CASES: [Case; 10] = [
    case("shiftworld qkv    x Wᵀ", 4352, 384, 128, false, true),
    case("shiftworld fc1    x Wᵀ", 4352, 512, 128, false, true),
    case("shiftworld fc2    x Wᵀ", 4352, 128, 512, false, true),
    case("shiftworld fc2 dx g W", 4352, 512, 128, false, false),
    case("shiftworld fc1 dW gᵀ x", 512, 128, 4352, true, false),
    case("shiftworld fc2 dW gᵀ x", 128, 512, 4352, true, false),
    case("ViT-B/32 fc1      x Wᵀ", 1600, 3072, 768, false, true),
    case("ViT-B/32 fc2      x Wᵀ", 1600, 768, 3072, false, true),
    case("ViT-B/32 fc2 dx   g W", 1600, 3072, 768, false, false),
    case("ViT-B/32 fc1 dW   gᵀ x", 3072, 768, 1600, true, false),
];

/// Deterministic values in [-0.5, 0.5).
fn filled(len: usize, multiplier: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * multiplier) % 1000) as f32 / 1000.0 - 0.5).collect()
}

fn run_gemm(c: &Case, a: &[f32], b: &[f32], out: &mut [f32]) {
    let (a_cs, a_rs) = if c.a_transposed { (c.m as isize, 1) } else { (1, c.k as isize) };
    let (b_cs, b_rs) = if c.b_transposed { (c.k as isize, 1) } else { (1, c.n as isize) };
    // SAFETY: `a`, `b` and `out` hold m·k, k·n and m·n elements under these strides.
    unsafe {
        gemm::gemm(
            c.m,
            c.n,
            c.k,
            out.as_mut_ptr(),
            1,
            c.n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(THREADS),
        )
    }
}

fn run_openblas(c: &Case, a: &[f32], b: &[f32], out: &mut [f32]) {
    let trans = |t: bool| if t { CBLAS_TRANS } else { CBLAS_NO_TRANS };
    let lda = if c.a_transposed { c.m } else { c.k };
    let ldb = if c.b_transposed { c.k } else { c.n };
    // SAFETY: as for `run_gemm`; OpenBLAS reads the same storage through leading dimensions.
    unsafe {
        cblas_sgemm(
            CBLAS_ROW_MAJOR,
            trans(c.a_transposed),
            trans(c.b_transposed),
            c.m as i32,
            c.n as i32,
            c.k as i32,
            1.0,
            a.as_ptr(),
            lda as i32,
            b.as_ptr(),
            ldb as i32,
            0.0,
            out.as_mut_ptr(),
            c.n as i32,
        )
    }
}

/// GFLOP/s of one timed round of `run` on `case`.
fn round_gflops(case: &Case, out: &mut [f32], run: &impl Fn(&mut [f32])) -> f64 {
    let flops = 2.0 * (case.m * case.n * case.k) as f64;
    let repetitions = (WORK_PER_ROUND / flops).ceil() as usize;
    let start = Instant::now();
    for _ in 0..repetitions {
        run(out);
    }
    flops * repetitions as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// The best GFLOP/s of `ROUNDS` rounds of `run`, after a warm-up call and a pause.
fn best_gflops(case: &Case, run: impl Fn(&mut [f32])) -> f64 {
    let mut out = vec![0f32; case.m * case.n];
    std::thread::sleep(SETTLE);
    run(&mut out);
    (0..ROUNDS).map(|_| round_gflops(case, &mut out, &run)).fold(0.0, f64::max)
}

fn main() {
    println!("| product | m × n × k | gemm GFLOP/s | OpenBLAS GFLOP/s |");
    println!("|---|---|---:|---:|");
    for case in &CASES {
        let a = filled(case.m * case.k, 7919);
        let b = filled(case.k * case.n, 104_729);
        let ours = best_gflops(case, |out| run_gemm(case, &a, &b, out));
        let theirs = best_gflops(case, |out| run_openblas(case, &a, &b, out));
        println!("| {} | {} × {} × {} | {ours:.0} | {theirs:.0} |", case.name, case.m, case.n, case.k);
    }
}
