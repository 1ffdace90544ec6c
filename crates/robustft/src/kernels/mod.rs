//! Fused CPU kernels for the hot path of the CLIP transformer, as candle custom ops with
//! backward passes: the linear projection `x Wᵀ (+ b)` (in fp32, or in bf16 with fp32 sums:
//! [`MatmulPrecision`]), LayerNorm, softmax over the last dimension (optionally with an
//! additive mask fused in), bias add + MLP activation, bias add + residual add, and multi-head
//! attention read from a packed q/k/v projection and written in the merged-head layout, and
//! a transformer branch's first linear layer with the LayerNorm before it and its last with
//! the residual add after it (each keeping only its input for the backward pass), and whole
//! branches as one node (`LN → q/k/v → attention`, `LN → fc1 → activation → fc2 + residual`)
//! that keep their first layer's output inside themselves, in bf16 under bf16 precision; a
//! vectorised `exp` equal to glibc's serves the softmax and both GELUs, and a vectorised `erf`
//! with `libm`'s values the exact GELU. The f32 products run on candle's gemm, or on CPUs
//! with AVX2 and FMA but no AVX-512F on a packed AVX2 kernel of this crate's (`matmul_f32`,
//! which on AVX-512F vectors runs the bf16 products of CPUs without bfloat16 instructions);
//! attention's per-head f32 products, on CPUs with AVX-512F, on register tiles without
//! packing (`head_product`).
//!
//! Each public function runs its fused kernel on contiguous f32 CPU tensors (one pass per row
//! instead of one pass and one allocation per primitive op, parallel over blocks of rows) and
//! otherwise falls back to the primitive-op formulation in [`reference`](mod@reference), so
//! CUDA and other dtypes keep working with the same values and gradients. The fallback honours
//! the matmul precision too: in bf16 its linear and attention products take bfloat16 operands
//! (autocast-style, [`reference`](mod@reference)), which is how bf16 runs on CUDA.

mod activation;
mod attention;
mod bias;
mod erf;
mod exp;
#[cfg(target_arch = "x86_64")]
mod head_product;
mod layer_norm;
mod layer_norm_linear;
mod linear;
mod matmul_bf16;
#[cfg(target_arch = "x86_64")]
mod matmul_f32;
mod precision;
pub mod reference;
mod residual_linear;
mod rows;
mod softmax;

pub use activation::{bias_activation, bias_activation_in_place};
pub use attention::{attention, attention_kernel, normed_attention};
pub use bias::bias_residual;
pub use layer_norm::layer_norm;
pub use layer_norm_linear::layer_norm_linear;
pub use linear::{linear, product, Operand};
pub use matmul_bf16::Bf16Kernel;
pub use precision::{
    matmul_precision, set_matmul_precision, F32Kernel, KernelChoice, MatmulPrecision, PORTABLE_BF16_NOTE,
};
pub use residual_linear::{mlp_residual, residual_linear};
pub use softmax::{masked_softmax_last_dim, softmax_last_dim};
