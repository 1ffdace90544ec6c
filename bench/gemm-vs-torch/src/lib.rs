//! robustft's matrix product (`robustft::kernels::product`: the kernel its linear layers run
//! on this CPU, in the precision set here, on every thread of the global rayon pool), exported
//! for ctypes so that bench/gemm_vs_torch.py can time it beside `torch.mm` on the same buffers
//! in one process.

use std::ffi::{c_char, CString};

use robustft::kernels::{product, set_matmul_precision, MatmulPrecision, Operand};

/// robustft's outputs are allocated as in the CLI: freed blocks of 32 MiB or more are kept for
/// reuse, so that such an output (ViT-B/32's fc1 at batch 64) is not a fresh mapping,
/// page-faulted and zeroed, at every call. PyTorch's allocations do not pass through it.
#[global_allocator]
static ALLOCATOR: robustft::allocator::CachedSystem = robustft::allocator::CachedSystem;

/// Sets the precision of later products (bf16 where `bf16`, else fp32) and returns the name of
/// the kernel they run on (`MatmulPrecision::cpu_kernel`) as a C string kept for the rest of
/// the process.
#[no_mangle]
pub extern "C" fn robustft_set_precision(bf16: bool) -> *const c_char {
    let precision = if bf16 { MatmulPrecision::Bf16 } else { MatmulPrecision::Fp32 };
    set_matmul_precision(precision);
    let name = CString::new(precision.cpu_kernel()).expect("kernel names hold no NUL");
    name.into_raw()
}

/// `A · B` as a new row-major `m × n` buffer owned by this library (give it back with
/// [`robustft_free`]), where element `(i, p)` of `A` is `a[i·a_row_stride + p·a_col_stride]`
/// and element `(p, j)` of `B` is `b[p·b_row_stride + j·b_col_stride]`; all dimensions > 0.
///
/// # Safety
/// `a` and `b` must hold every element those strides address for the given `m`, `n` and `k`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn robustft_product(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_row_stride: usize,
    a_col_stride: usize,
    b: *const f32,
    b_row_stride: usize,
    b_col_stride: usize,
) -> *mut f32 {
    // SAFETY: the caller vouches for the elements the strides address, the last at the extent.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, (m - 1) * a_row_stride + (k - 1) * a_col_stride + 1),
            std::slice::from_raw_parts(b, (k - 1) * b_row_stride + (n - 1) * b_col_stride + 1),
        )
    };
    let lhs = Operand { data: a, rows: m, cols: k, row_stride: a_row_stride, col_stride: a_col_stride };
    let rhs = Operand { data: b, rows: k, cols: n, row_stride: b_row_stride, col_stride: b_col_stride };
    Box::into_raw(product(lhs, rhs).into_boxed_slice()).cast()
}

/// Frees a product of [`robustft_product`].
///
/// # Safety
/// `data` must come from `robustft_product` with `len` = `m · n`, and not be used again.
#[no_mangle]
pub unsafe extern "C" fn robustft_free(data: *mut f32, len: usize) {
    // SAFETY: `data` and `len` are a boxed slice that `robustft_product` gave out.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(data, len)) });
}
