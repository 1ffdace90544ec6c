//! The primitive-op formulations of the fused kernels (candle's differentiable tensor ops,
//! one pass and one allocation per op). They run wherever the fused CPU f32 kernels do not
//! (CUDA, other dtypes) and are the reference the kernel tests compare against.

use candle_core::{Result, Tensor, D};

use crate::clip::config::Activation;

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
    let u = x.broadcast_add(bias)?;
    match activation {
        Activation::QuickGelu => u.mul(&candle_nn::ops::sigmoid(&(&u * 1.702)?)?),
        Activation::Gelu => u.gelu_erf(),
    }
}

/// `x Wᵀ + bias` over the last dimension of `x` (any leading shape), `weight`: `[out, in]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let fan_in = dims[dims.len() - 1];
    let y = x.reshape((x.elem_count() / fan_in, fan_in))?.matmul(&weight.t()?)?;
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
