//! The primitive-op formulations of the fused kernels (candle's differentiable tensor ops,
//! one pass and one allocation per op). They run wherever the fused CPU f32 kernels do not
//! (CUDA, other dtypes) and are the reference the kernel tests compare against.
//!
//! Their matrix products (the linear layer's, and attention's `q kᵀ` and `P v`) follow the
//! process's [`matmul_precision`] in the manner of PyTorch's autocast to bfloat16: in bf16
//! both operands are cast to bfloat16 (differentiably: `to_dtype`'s backward casts the
//! gradient back), the backend multiplies them with fp32 sums (cuBLAS's `CUBLAS_COMPUTE_32F`;
//! candle's CPU matmul widens the operands to f32) and rounds the product to bfloat16, and the
//! product is cast back to the operands' dtype. Weights, softmax, LayerNorm and everything
//! else stay in their own dtype (fp32). In fp32 the products are candle's plain matmuls.

use candle_core::{DType, Result, Tensor, D};

use super::precision::{matmul_precision, MatmulPrecision};
use crate::clip::config::Activation;

/// `t` as the products take their operands in the process's precision: cast to bfloat16 in
/// bf16, itself in fp32.
fn operand(t: &Tensor) -> Result<Tensor> {
    match matmul_precision() {
        MatmulPrecision::Fp32 => Ok(t.clone()),
        MatmulPrecision::Bf16 => t.to_dtype(DType::BF16),
    }
}

/// `lhs · rhs` (candle's batched matmul) in the process's precision, in `lhs`'s dtype.
fn matmul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    operand(lhs)?.matmul(&operand(rhs)?)?.to_dtype(lhs.dtype())
}

/// `lhs · rhsᵀ` over the last two dimensions, in the process's precision (`rhs` is cast
/// before it is transposed, so the cast copies it in its own layout).
fn matmul_transposed(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    matmul(lhs, &operand(rhs)?.t()?)
}

/// LayerNorm over the last dimension: `(x − mean) / sqrt(var + eps) · weight + bias`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(variance + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last dimension, shifted by the (constant) row maximum.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let exp = shifted.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// `softmax(x + mask)` over the last dimension; `mask` broadcasts against `x`.
pub fn masked_softmax_last_dim(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    softmax_last_dim(&x.broadcast_add(mask)?)
}

/// `activation(x + bias)`, `bias` over the last dimension.
pub fn bias_activation(x: &Tensor, bias: &Tensor, activation: Activation) -> Result<Tensor> {
    activate(&x.broadcast_add(bias)?, activation)
}

/// `activation(u)`, elementwise.
fn activate(u: &Tensor, activation: Activation) -> Result<Tensor> {
    match activation {
        Activation::QuickGelu => u.mul(&candle_nn::ops::sigmoid(&(u * 1.702)?)?),
        Activation::Gelu => u.gelu_erf(),
    }
}

/// `x Wᵀ + bias` over the last dimension of `x` (any leading shape), `weight`: `[out, in]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let fan_in = dims[dims.len() - 1];
    let y = matmul_transposed(&x.reshape((x.elem_count() / fan_in, fan_in))?, weight)?;
    let mut out_dims = dims.to_vec();
    out_dims[dims.len() - 1] = weight.dim(0)?;
    let y = y.reshape(out_dims)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// `x + bias + residual`, `bias` over the last dimension, `residual` shaped like `x`.
pub fn bias_residual(x: &Tensor, bias: &Tensor, residual: &Tensor) -> Result<Tensor> {
    residual + x.broadcast_add(bias)?
}

/// `residual + f(x) Wᵀ + bias` with `f` the `activation` (the identity when `None`).
pub fn residual_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
    activation: Option<Activation>,
) -> Result<Tensor> {
    let hidden = match activation {
        Some(activation) => activate(x, activation)?,
        None => x.clone(),
    };
    residual + linear(&hidden, weight, bias)?
}

/// Multi-head attention over the packed `qkv` (`[b, t, 3·width]`: q, k, v side by side;
/// `heads` heads of `width / heads` columns) with an optional additive `mask` (`[t, t]`):
/// split heads, `softmax(q kᵀ / √d + mask) v`, merge -> `[b, t, width]`.
pub fn attention(qkv: &Tensor, heads: usize, mask: Option<&Tensor>) -> Result<Tensor> {
    let (batch, tokens, packed) = qkv.dims3()?;
    let (width, head_dim) = (packed / 3, packed / 3 / heads);
    let split_heads = |part: usize| {
        let y = qkv.narrow(2, part * width, width)?;
        y.reshape((batch, tokens, heads, head_dim))?.transpose(1, 2)?.contiguous()
    };
    let scaled_queries = (split_heads(0)? * (head_dim as f64).powf(-0.5))?;
    let scores = matmul_transposed(&scaled_queries, &split_heads(1)?)?;
    let probabilities = match mask {
        Some(m) => masked_softmax_last_dim(&scores, m)?,
        None => softmax_last_dim(&scores)?,
    };
    matmul(&probabilities, &split_heads(2)?)?.transpose(1, 2)?.reshape((batch, tokens, width))
}
