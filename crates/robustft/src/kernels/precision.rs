//! The precision of the transformer's matrix products, one setting for the whole process
//! like PyTorch's `torch.set_float32_matmul_precision`: `fp32` (the default), or `bf16`.
//!
//! In bf16 on the CPU (the fused f32 kernels), both operands of every product of the linear
//! kernel (forward `x Wᵀ`, and the backward's `g W` and `gᵀ x`) and of the attention kernel
//! (forward `q kᵀ` and `P v`, and the five products of its backward) are rounded to bfloat16
//! and the products are summed in fp32, on the CPU's AMX tiles or AVX512-BF16 dot products
//! where it has them, into fp32 outputs. Weights (the optimiser's master copy), LayerNorm,
//! softmax and losses stay fp32, as under PyTorch's CPU autocast. In training, the output of
//! each branch's first linear layer (the q/k/v projection, the MLP's pre-activation) is kept
//! for the backward pass in bfloat16, as autocast stores a linear layer's output
//! ([`super::normed_attention`], [`super::mlp_residual`]); the other activations stay fp32.
//!
//! Elsewhere (CUDA: the primitive-op formulations of [`super::reference`]) bf16 is PyTorch's
//! autocast for these products: the linear layers' and attention's `q kᵀ` and `P v` cast both
//! operands to bfloat16, multiply with fp32 sums, round the product to bfloat16 and cast it
//! back to fp32, forward and backward; the fp32 master weights and every other op are as
//! above.

use std::sync::atomic::{AtomicU8, Ordering};

use super::matmul_bf16::Bf16Kernel;

/// How the transformer's matrix products multiply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    /// fp32 products (candle's gemm, or this crate's AVX2 kernel on CPUs with AVX2 and FMA but
    /// no AVX-512F).
    #[default]
    Fp32,
    /// Operands rounded to bfloat16, products summed in fp32.
    Bf16,
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the precision of every later linear-layer product in the process. Setting bf16 on a
/// CPU without bfloat16 instructions (the [`Bf16Kernel::Portable`] kernel) says once on the
/// terminal that fp32 is faster there.
pub fn set_matmul_precision(precision: MatmulPrecision) {
    PRECISION.store(precision as u8, Ordering::Relaxed);
    if precision == MatmulPrecision::Bf16 && Bf16Kernel::on_this_cpu() == Bf16Kernel::Portable {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| eprintln!("{PORTABLE_BF16_NOTE}"));
    }
}

/// What [`set_matmul_precision`] says when bf16 is set on a CPU without bfloat16 instructions.
pub const PORTABLE_BF16_NOTE: &str =
    "note: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX-BF16): \
     bf16 products on the CPU round their operands and run on the fp32 kernel, no faster than \
     fp32 (0.9-1.0x of its speed); fp32 is the faster setting here";

/// The precision set by [`set_matmul_precision`] (fp32 until then).
pub fn matmul_precision() -> MatmulPrecision {
    match PRECISION.load(Ordering::Relaxed) {
        0 => MatmulPrecision::Fp32,
        _ => MatmulPrecision::Bf16,
    }
}

impl MatmulPrecision {
    pub fn is_fp32(&self) -> bool {
        *self == MatmulPrecision::Fp32
    }

    /// The CPU kernel of the linear layers' products at this precision: in fp32 `avx2_fma`
    /// (this crate's, on x86_64 CPUs with AVX2 and FMA but no AVX-512F) or `gemm` (candle's,
    /// elsewhere); in bf16 the bf16 kernel this CPU runs (`amx`, `avx512_bf16` or `portable`:
    /// [`Bf16Kernel`]).
    pub fn cpu_kernel(self) -> &'static str {
        match self {
            MatmulPrecision::Fp32 if own_f32_kernel() => "avx2_fma",
            MatmulPrecision::Fp32 => "gemm",
            MatmulPrecision::Bf16 => Bf16Kernel::on_this_cpu().name(),
        }
    }

    /// The name used in recipes and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            MatmulPrecision::Fp32 => "fp32",
            MatmulPrecision::Bf16 => "bf16",
        }
    }
}

/// Whether the f32 products run on this crate's AVX2 kernel rather than on candle's gemm.
pub(super) fn own_f32_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::matmul_f32::preferred();
    #[cfg(not(target_arch = "x86_64"))]
    false
}
