//! LayerNorm followed by a linear layer, `LN(x) Wᵀ + b`: the first layer of each branch of
//! a pre-LN transformer block (the stacked q/k/v projection of `attn(ln1(x))` and the MLP's
//! first layer of `mlp(ln2(x))` in OpenAI CLIP's `ResidualAttentionBlock`, `clip/model.py`).
//!
//! candle keeps every input of a graph node until the backward pass; chained, the LayerNorm's
//! output would be kept for the linear layer's weight gradient. As one node the branch keeps
//! `x` (the residual stream, which the block keeps anyway) and recomputes `LN(x)` in the
//! backward pass, one more pass over the rows. The linear bias and LayerNorm's weight and
//! bias travel as one vector `[b | γ | β]`, because a candle op takes three inputs at most.
//! Values and gradients equal those of the chained kernels ([`super::layer_norm`],
//! [`super::linear`]) to the bit, in either matmul precision. The whole branches
//! ([`super::normed_attention`], [`super::mlp_residual`]) start with the same computation.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::bias::bias_grad;
use super::layer_norm::{layer_norm_grads, normalized};
use super::linear::{
    add_bias_in_place, check_weight_and_bias, input_grad, product, weight_grad, with_last_dim, Matrix,
};
use super::reference;
use super::rows::{contiguous_f32, fused_applies, rows_and_width, to_f32};

/// `LN(x) Wᵀ + bias` with `x`: `[..., in]`, LayerNorm's `norm_weight` and `norm_bias`: `[in]`
/// and `eps`, `weight`: `[out, in]` and `bias`: `[out]` (or none).
pub fn layer_norm_linear(
    x: &Tensor,
    norm: (&Tensor, &Tensor, f64),
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let Some([x, weight, vectors]) = fused_inputs(x, norm, weight, bias)? else {
        let normed = reference::layer_norm(x, norm.0, norm.1, norm.2)?;
        return reference::linear(&normed, weight, bias);
    };
    x.apply_op3(&weight, &vectors, LayerNormLinear { eps: norm.2 })
}

/// The fused op's inputs `x`, `W` and `[b | γ | β]` (checked to fit each other), or `None`
/// where the fused kernels do not apply.
pub(super) fn fused_inputs(
    x: &Tensor,
    (norm_weight, norm_bias, _): (&Tensor, &Tensor, f64),
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Option<[Tensor; 3]>> {
    check_shapes(x, norm_weight, norm_bias, weight, bias)?;
    let mut inputs = vec![x, norm_weight, norm_bias, weight];
    inputs.extend(bias);
    if !fused_applies(&inputs) {
        return Ok(None);
    }
    let bias = match bias {
        Some(b) => b.clone(),
        None => Tensor::zeros(weight.dim(0)?, weight.dtype(), weight.device())?,
    };
    let vectors = Tensor::cat(&[&bias, norm_weight, norm_bias], 0)?;
    Ok(Some([x.contiguous()?, weight.contiguous()?, vectors]))
}

/// Fails unless LayerNorm's parameters are `[in]` for `x`'s last dimension `in`, `weight` is
/// `[out, in]` and `bias` is `[out]`.
fn check_shapes(
    x: &Tensor,
    norm_weight: &Tensor,
    norm_bias: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<()> {
    let (_, fan_in) = rows_and_width(x)?;
    for (name, param) in [("weight", norm_weight), ("bias", norm_bias)] {
        if param.dims() != [fan_in] {
            candle_core::bail!(
                "layer_norm_linear: LayerNorm {name} {:?} does not fit x {:?}",
                param.dims(),
                x.dims()
            );
        }
    }
    check_weight_and_bias("layer_norm_linear", x, weight, bias)
}

/// The vector `[b | γ | β]` of the op, split (as tensors) by the layer's widths.
fn split_vectors(vectors: &Tensor, fan_out: usize, fan_in: usize) -> Result<[Tensor; 3]> {
    Ok([
        vectors.narrow(0, 0, fan_out)?,
        vectors.narrow(0, fan_out, fan_in)?,
        vectors.narrow(0, fan_out + fan_in, fan_in)?,
    ])
}

pub(super) struct LayerNormLinear {
    pub eps: f64,
}

impl LayerNormLinear {
    /// `LN(x) Wᵀ + b` row-major, from the rows of `x` (`fan_in` wide), the row-major `weight`
    /// and `vectors` = `[b | γ | β]`.
    pub(super) fn values(&self, x: &[f32], weight: &[f32], vectors: &[f32], fan_in: usize) -> Vec<f32> {
        let (bias, norm) = vectors.split_at(vectors.len() - 2 * fan_in);
        let (norm_weight, norm_bias) = norm.split_at(fan_in);
        let normed = normalized(x, norm_weight, norm_bias, self.eps as f32);
        let mut y = product(Matrix::new(&normed, fan_in).plain(), Matrix::new(weight, fan_in).transposed());
        add_bias_in_place(&mut y, bias);
        y
    }

    /// The gradients of `x`, `weight` and `vectors` (each where it tracks one) from the output
    /// gradient `grad` (f32 or bf16).
    pub(super) fn grads(
        &self,
        x: &Tensor,
        weight: &Tensor,
        vectors: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = to_f32(&grad.contiguous()?)?;
        let (fan_out, fan_in) = weight.dims2()?;
        let [_, norm_weight, norm_bias] = split_vectors(vectors, fan_out, fan_in)?;
        let dweight = if weight.track_op() {
            let normed =
                super::layer_norm(&x.detach(), &norm_weight.detach(), &norm_bias.detach(), self.eps)?;
            Some(weight_grad(&grad, &normed)?)
        } else {
            None
        };
        if !x.track_op() && !vectors.track_op() {
            return Ok((None, dweight, None));
        }
        let dnormed = input_grad(&grad, weight)?;
        let (dx, dnorm_weight, dnorm_bias) = layer_norm_grads(x, &norm_weight, &dnormed, self.eps as f32)?;
        let dvectors = Tensor::cat(&[&bias_grad(&grad)?, &dnorm_weight, &dnorm_bias], 0)?;
        Ok((x.track_op().then_some(dx), dweight, vectors.track_op().then_some(dvectors)))
    }
}

impl CustomOp3 for LayerNormLinear {
    fn name(&self) -> &'static str {
        "layer-norm-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (fan_out, fan_in) = wl.shape().dims2()?;
        let [x, weight, vectors] =
            [(xs, xl), (ws, wl), (vs, vl)].map(|(s, l)| contiguous_f32(s, l, self.name()));
        let y = self.values(x?, weight?, vectors?, fan_in);
        Ok((CpuStorage::F32(y), with_last_dim(xl, fan_out)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        vectors: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.grads(x, weight, vectors, grad)
    }
}
