//! The last linear layer of a pre-LN transformer branch together with its residual add,
//! `residual + f(x) Wᵀ + b`: attention's output projection (`f` the identity) and the MLP's
//! second linear layer (`f` the MLP activation, QuickGELU or GELU, of the first linear
//! layer's output `x`, bias included), as in `x + attn(ln1(x))` and `x + mlp(ln2(x))` of
//! OpenAI CLIP's `ResidualAttentionBlock` (`clip/model.py`).
//!
//! candle keeps every input of a graph node until the backward pass. Run as a chain of ops
//! (activation, product, bias and residual add) the branch keeps the activation's output and
//! the product as well as `x`: in training the activation alone is the widest tensor of the
//! block. As one node it keeps `x` (and the residual, which the block keeps anyway); the
//! backward recomputes `f(x)` from `x`, as the activation's own backward already did for its
//! slope. Weight and bias come as one `[out, in + 1]` tensor, the bias as its last column,
//! because a candle op takes three inputs at most; `cat`'s backward splits the gradient back.
//! Values and gradients equal those of the chained kernels ([`super::bias_activation`],
//! [`super::linear`], [`super::bias_residual`]) to the bit, in either matmul precision.

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::activation::activation_in_place;
use super::linear::{check_weight_and_bias, product, with_last_dim, Matrix, Operand};
use super::reference;
use super::rows::{column_sums, contiguous_f32, fused_applies, map_row_blocks};
use crate::clip::config::Activation;

/// `residual + f(x) Wᵀ + bias` with `x`: `[..., in]`, `weight`: `[out, in]`, `bias`: `[out]`
/// (or none), `residual`: `[..., out]` and `f` the `activation` (the identity when `None`).
pub fn residual_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
    activation: Option<Activation>,
) -> Result<Tensor> {
    check_shapes(x, weight, bias, residual)?;
    let mut inputs = vec![x, weight, residual];
    inputs.extend(bias);
    if !fused_applies(&inputs) {
        return reference::residual_linear(x, weight, bias, residual, activation);
    }
    let bias = match bias {
        Some(b) => b.clone(),
        None => Tensor::zeros(weight.dim(0)?, weight.dtype(), weight.device())?,
    };
    let augmented = Tensor::cat(&[weight, &bias.unsqueeze(1)?], 1)?;
    x.contiguous()?.apply_op3(&augmented, &residual.contiguous()?, ResidualLinear { activation })
}

/// Fails unless `weight` is `[out, in]` for `x`'s last dimension `in`, `bias` is `[out]` and
/// `residual` is shaped like the product.
fn check_shapes(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, residual: &Tensor) -> Result<()> {
    check_weight_and_bias("residual_linear", x, weight, bias)?;
    let out_dims = with_last_dim(x.layout(), weight.dim(0)?);
    if residual.dims() != out_dims.dims() {
        candle_core::bail!(
            "residual_linear: residual {:?} does not fit the output {:?}",
            residual.dims(),
            out_dims.dims()
        );
    }
    Ok(())
}

/// `f(x)` row by row (`width` elements each): `x` itself without an activation.
fn activated(x: &[f32], width: usize, activation: Option<Activation>) -> Cow<'_, [f32]> {
    let Some(activation) = activation else { return Cow::Borrowed(x) };
    let mut hidden = x.to_vec();
    map_row_blocks(&mut hidden, width, |_, block| activation_in_place(activation, block, |(value, _)| value));
    Cow::Owned(hidden)
}

/// `[out, in + 1]` row-major: a weight `[out, in]` with the bias as an extra last column.
struct Augmented<'a> {
    data: &'a [f32],
    in_features: usize,
}

impl<'a> Augmented<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, op: &'static str) -> Result<Self> {
        let (_, columns) = layout.shape().dims2()?;
        Ok(Self { data: contiguous_f32(storage, layout, op)?, in_features: columns - 1 })
    }

    fn out_features(&self) -> usize {
        self.data.len() / (self.in_features + 1)
    }

    /// The weight `[out, in]`, read in place.
    fn weight(&self) -> Operand<'a> {
        let stride = self.in_features + 1;
        Operand {
            data: self.data,
            rows: self.out_features(),
            cols: self.in_features,
            row_stride: stride,
            col_stride: 1,
        }
    }

    fn bias(&self) -> Vec<f32> {
        self.data.chunks_exact(self.in_features + 1).map(|row| row[self.in_features]).collect()
    }
}

struct ResidualLinear {
    activation: Option<Activation>,
}

impl CustomOp3 for ResidualLinear {
    fn name(&self) -> &'static str {
        "residual-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        augs: &CpuStorage,
        augl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let augmented = Augmented::new(augs, augl, self.name())?;
        let x = contiguous_f32(xs, xl, self.name())?;
        let residual = contiguous_f32(rs, rl, self.name())?;
        let hidden = activated(x, augmented.in_features, self.activation);
        let mut y =
            product(Matrix::new(&hidden, augmented.in_features).plain(), augmented.weight().transposed());
        let bias = augmented.bias();
        map_row_blocks(&mut y, bias.len(), |first_row, block| {
            let residual = &residual[first_row * bias.len()..first_row * bias.len() + block.len()];
            for (y, r) in block.chunks_exact_mut(bias.len()).zip(residual.chunks_exact(bias.len())) {
                for ((y, &b), &r) in y.iter_mut().zip(&bias).zip(r) {
                    *y = *y + b + r;
                }
            }
        });
        Ok((CpuStorage::F32(y), rl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        augmented: &Tensor,
        residual: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let activation = self.activation;
        let dx = x.track_op().then(|| grad.apply_op3_no_bwd(augmented, x, &InputGrad { activation }));
        let daugmented =
            augmented.track_op().then(|| grad.apply_op2_no_bwd(x, &AugmentedGrad { activation }));
        Ok((dx.transpose()?, daugmented.transpose()?, residual.track_op().then(|| grad.clone())))
    }
}

/// `(g, [W | b], x)` -> `(g W) ⊙ f′(x)`: the gradient of `x`, shaped like it.
struct InputGrad {
    activation: Option<Activation>,
}

impl CustomOp3 for InputGrad {
    fn name(&self) -> &'static str {
        "residual-linear-input-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        augs: &CpuStorage,
        augl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let augmented = Augmented::new(augs, augl, self.name())?;
        let grad = Matrix::new(contiguous_f32(gs, gl, self.name())?, augmented.out_features());
        let mut dx = product(grad.plain(), augmented.weight());
        if let Some(activation) = self.activation {
            let x = contiguous_f32(xs, xl, self.name())?;
            scale_by_slopes(&mut dx, x, augmented.in_features, activation);
        }
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

/// `d ← d ⊙ activation′(x)`, row by row (`width` elements each).
fn scale_by_slopes(d: &mut [f32], x: &[f32], width: usize, activation: Activation) {
    map_row_blocks(d, width, |first_row, block| {
        let mut slopes = x[first_row * width..first_row * width + block.len()].to_vec();
        activation_in_place(activation, &mut slopes, |(_, slope)| slope);
        block.iter_mut().zip(&slopes).for_each(|(d, &slope)| *d *= slope);
    });
}

/// `(g, x)` -> `[gᵀ f(x) | Σ_rows g]`: the gradient of the weight with the bias as its last
/// column, `[out, in + 1]`.
struct AugmentedGrad {
    activation: Option<Activation>,
}

impl CustomOp2 for AugmentedGrad {
    fn name(&self) -> &'static str {
        "residual-linear-weight-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out_features, in_features) = (gl.dims()[gl.dims().len() - 1], xl.dims()[xl.dims().len() - 1]);
        let grad = contiguous_f32(gs, gl, self.name())?;
        let hidden = activated(contiguous_f32(xs, xl, self.name())?, in_features, self.activation);
        let dweight =
            product(Matrix::new(grad, out_features).transposed(), Matrix::new(&hidden, in_features).plain());
        let dbias = column_sums(grad, out_features);
        let mut augmented = Vec::with_capacity(out_features * (in_features + 1));
        for (row, db) in dweight.chunks_exact(in_features).zip(dbias) {
            augmented.extend_from_slice(row);
            augmented.push(db);
        }
        Ok((CpuStorage::F32(augmented), Shape::from((out_features, in_features + 1))))
    }
}
