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
//!
//! [`mlp_residual`] runs the whole MLP branch, `x + fc2(f(fc1(LN(x))))`, as one node that
//! keeps `fc1`'s output inside itself, in bf16 under bf16 precision (as autocast stores a
//! linear layer's output), rather than as a graph edge, which candle would keep in f32 and
//! whose gradient it would add into a zero-filled buffer. The op's kernels read that output
//! in either dtype, widening it to f32 where read, and give its gradient in its dtype.

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::activation::{activation_in_place, Part};
use super::layer_norm_linear::{fused_inputs, layer_norm_linear, LayerNormLinear};
use super::linear::{check_weight_and_bias, product, with_last_dim, Matrix, Operand};
use super::precision::matmul_precision;
use super::reference;
use super::rows::{
    column_sums, contiguous_f32, fused_applies, kept_dtype, map_row_blocks, storage_of, stored_tensor,
    with_values, Kept, Values,
};
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
    x.contiguous()?.apply_op3(
        &augmented(weight, bias)?,
        &residual.contiguous()?,
        ResidualLinear { activation },
    )
}

/// `[W | b]`: `[out, in + 1]`, the bias (zeros where none) as the last column.
fn augmented(weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let bias = match bias {
        Some(b) => b.clone(),
        None => Tensor::zeros(weight.dim(0)?, weight.dtype(), weight.device())?,
    };
    Tensor::cat(&[weight, &bias.unsqueeze(1)?], 1)
}

/// `x + f(LN(x) W₁ᵀ + b₁) W₂ᵀ + b₂` with `x`: `[..., width]`, LayerNorm's `(γ, β, eps)`,
/// `fc1` = `(W₁, b₁)`: `[hidden, width]`, `[hidden]` (or none), `fc2` = `(W₂, b₂)`:
/// `[width, hidden]`, `[width]` (or none) and `f` the `activation`: [`residual_linear`] of
/// [`layer_norm_linear`] as one node that keeps `x` and, inside itself, the first layer's
/// output (in bf16 under bf16 precision). Values and gradients equal those of the two
/// kernels chained, to the bit, in fp32; in bf16, those of the chain with the first layer's
/// output and its gradient rounded to bfloat16.
pub fn mlp_residual(
    x: &Tensor,
    norm: (&Tensor, &Tensor, f64),
    (fc1_weight, fc1_bias): (&Tensor, Option<&Tensor>),
    (fc2_weight, fc2_bias): (&Tensor, Option<&Tensor>),
    activation: Activation,
) -> Result<Tensor> {
    check_fc2(x, fc1_weight, fc2_weight, fc2_bias)?;
    let mut second = vec![fc2_weight];
    second.extend(fc2_bias);
    let inputs = fused_inputs(x, norm, fc1_weight, fc1_bias)?.filter(|_| fused_applies(&second));
    let Some([x, fc1_weight, vectors]) = inputs else {
        let pre_activation = layer_norm_linear(x, norm, fc1_weight, fc1_bias)?;
        return residual_linear(&pre_activation, fc2_weight, fc2_bias, x, Some(activation));
    };
    let packed = Tensor::cat(&[&augmented(fc2_weight, fc2_bias)?.flatten_all()?, &vectors], 0)?;
    let stored = kept_dtype(matmul_precision());
    let branch =
        MlpResidual { first: LayerNormLinear { eps: norm.2 }, activation, stored, hidden: Kept::default() };
    x.apply_op3(&fc1_weight, &packed, branch)
}

/// Fails unless the second layer's weight is `[width, hidden]` for `x`'s width and the first
/// layer's `hidden` outputs, and its bias is `[width]`.
fn check_fc2(x: &Tensor, fc1_weight: &Tensor, fc2_weight: &Tensor, fc2_bias: Option<&Tensor>) -> Result<()> {
    let expected = [x.dim(candle_core::D::Minus1)?, fc1_weight.dim(0)?];
    if fc2_weight.dims() != expected {
        candle_core::bail!(
            "mlp_residual: second weight {:?} does not fit x {:?} and first weight {:?}",
            fc2_weight.dims(),
            x.dims(),
            fc1_weight.dims()
        );
    }
    if let Some(b) = fc2_bias.filter(|b| b.dims() != [expected[0]]) {
        candle_core::bail!("mlp_residual: second bias {:?} does not fit x {:?}", b.dims(), x.dims());
    }
    Ok(())
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

/// `f(x)` row by row (`width` elements each) in f32: `x` itself without an activation.
fn activated(x: Values<'_>, width: usize, activation: Option<Activation>) -> Cow<'_, [f32]> {
    match (x, activation) {
        (Values::F32(x), None) => Cow::Borrowed(x),
        (x, None) => Cow::Owned(x.to_f32_then(width, |_| {})),
        (x, Some(activation)) => {
            Cow::Owned(x.to_f32_then(width, |block| activation_in_place(activation, Part::Value, block)))
        }
    }
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

    /// Elements of `[W | b]` for `out_features` outputs of `in_features` inputs.
    fn len(out_features: usize, in_features: usize) -> usize {
        out_features * (in_features + 1)
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
        let x = Values::of(xs, xl, self.name())?;
        let residual = contiguous_f32(rs, rl, self.name())?;
        Ok((CpuStorage::F32(branch_output(x, self.activation, &augmented, residual)), rl.shape().clone()))
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

/// `residual + f(x) Wᵀ + b` row-major, for `[W | b]` = `augmented`.
fn branch_output(
    x: Values,
    activation: Option<Activation>,
    augmented: &Augmented,
    residual: &[f32],
) -> Vec<f32> {
    let hidden = activated(x, augmented.in_features, activation);
    let mut y = product(Matrix::new(&hidden, augmented.in_features).plain(), augmented.weight().transposed());
    let bias = augmented.bias();
    map_row_blocks(&mut y, bias.len(), |first_row, block| {
        let residual = &residual[first_row * bias.len()..first_row * bias.len() + block.len()];
        for (y, r) in block.chunks_exact_mut(bias.len()).zip(residual.chunks_exact(bias.len())) {
            for ((y, &b), &r) in y.iter_mut().zip(&bias).zip(r) {
                *y = *y + b + r;
            }
        }
    });
    y
}

/// `x + f(LN(x) W₁ᵀ + b₁) W₂ᵀ + b₂` as one node with inputs `x`, `W₁` and the packed vector
/// `[[W₂ | b₂] row-major | b₁ | γ | β]`, keeping `LN(x) W₁ᵀ + b₁` inside itself.
struct MlpResidual {
    first: LayerNormLinear,
    activation: Activation,
    /// The dtype the first layer's output is kept in.
    stored: DType,
    /// The first layer's output from the forward pass.
    hidden: Kept,
}

impl CustomOp3 for MlpResidual {
    fn name(&self) -> &'static str {
        "mlp-residual"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (hidden_width, width) = wl.shape().dims2()?;
        let [x, weight, packed] =
            [(xs, xl), (ws, wl), (ps, pl)].map(|(s, l)| contiguous_f32(s, l, self.name()));
        let (x, packed) = (x?, packed?);
        let (second, vectors) = packed.split_at(Augmented::len(width, hidden_width));
        let pre_activation = self.first.values(x, weight?, vectors, width);
        let hidden = stored_tensor(pre_activation, self.stored, with_last_dim(xl, hidden_width))?;
        let second = Augmented { data: second, in_features: hidden_width };
        let y = with_values(&hidden, self.name(), |h| branch_output(h, Some(self.activation), &second, x))?;
        self.hidden.keep(hidden, self.name())?;
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let hidden = self.hidden.get(self.name())?;
        let grad = grad.contiguous()?;
        let (hidden_width, width) = weight.dims2()?;
        let second_len = Augmented::len(width, hidden_width);
        let second = packed.detach().narrow(0, 0, second_len)?.reshape((width, hidden_width + 1))?;
        let vectors = packed.narrow(0, second_len, packed.dim(0)? - second_len)?;
        let activation = Some(self.activation);
        let dhidden = grad.apply_op3_no_bwd(&second, hidden, &InputGrad { activation })?;
        let (dx, dweight, dvectors) = self.first.grads(x, weight, &vectors, &dhidden)?;
        let dpacked = match dvectors {
            Some(dvectors) => {
                let dsecond = grad.apply_op2_no_bwd(hidden, &AugmentedGrad { activation })?;
                Some(Tensor::cat(&[&dsecond.flatten_all()?, &dvectors], 0)?)
            }
            None => None,
        };
        Ok((dx.map(|dx| dx + &grad).transpose()?, dweight, dpacked))
    }
}

/// `(g, [W | b], x)` -> `(g W) ⊙ f′(x)`: the gradient of `x`, shaped like it and of its dtype.
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
        let x = Values::of(xs, xl, self.name())?;
        let mut dx = product(grad.plain(), augmented.weight());
        if let Some(activation) = self.activation {
            scale_by_slopes(&mut dx, x, augmented.in_features, activation);
        }
        Ok((storage_of(dx, x.dtype()), xl.shape().clone()))
    }
}

/// `d ← d ⊙ activation′(x)`, row by row (`width` elements each).
fn scale_by_slopes(d: &mut [f32], x: Values, width: usize, activation: Activation) {
    map_row_blocks(d, width, |first_row, block| {
        let mut slopes = x.widened(first_row * width..first_row * width + block.len()).into_owned();
        activation_in_place(activation, Part::Slope, &mut slopes);
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
        let hidden = activated(Values::of(xs, xl, self.name())?, in_features, self.activation);
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
