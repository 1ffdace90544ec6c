//! One fp32 product `C = op(A) · op(B)` by the `gemm` crate, called exactly as
//! `robustft::kernels::linear`'s `matmul` calls it on CPUs with AVX-512F (row-major output,
//! operands read through their strides, every thread of the global rayon pool; CPUs with AVX2
//! but no AVX-512F run the crate's own kernel there instead), exported for ctypes so that
//! bench/gemm_vs_torch.py can time it beside `torch.mm` on the same buffers in one process.

/// `out[m, n] = A · B` where element `(i, p)` of `A` is `a[i·a_row_stride + p·a_col_stride]`
/// and element `(p, j)` of `B` is `b[p·b_row_stride + j·b_col_stride]`; `out` is row-major.
///
/// # Safety
/// `a`, `b` and `out` must hold every element those strides address for the given `m`, `n`
/// and `k`, and `out` must not overlap the operands.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_row_stride: isize,
    a_col_stride: isize,
    b: *const f32,
    b_row_stride: isize,
    b_col_stride: isize,
    out: *mut f32,
) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    gemm::gemm(
        m,
        n,
        k,
        out,
        1,
        n as isize,
        false,
        a,
        a_col_stride,
        a_row_stride,
        b,
        b_col_stride,
        b_row_stride,
        0f32,
        1f32,
        false,
        false,
        false,
        parallelism,
    );
}
