//! Fused bias add and MLP activation, `activation(x + bias)`, for CLIP's two activations:
//! QuickGELU `u · σ(1.702 u)` (OpenAI CLIP, `clip/model.py: QuickGELU`) and the exact GELU
//! `u · Φ(u)` (Hendrycks & Gimpel 2016). One pass forward; the backward recomputes `u` and
//! yields `du = g · act′(u)` and `dbias = Σ_rows du` in one pass. The exponentials (and the
//! exact GELU's `erf`) are taken a chunk of a row at a time by the vectorised `exp`, which
//! equals `f32::exp`, and `erf`, which equals `libm`'s `erff`.
//! Without gradients (inference) [`bias_activation_in_place`] writes over the pre-activations
//! instead of allocating an output as large as them.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, InplaceOp2, Layout, Result, Shape, Tensor};

use super::erf::erf_in_place;
use super::exp::exp_in_place;
use super::reference;
use super::rows::{
    contiguous_f32, contiguous_f32_mut, fused_applies, map_row_blocks, map_rows, rows_and_width,
    rows_with_column_sums,
};
use crate::clip::config::Activation;

/// QuickGELU's sigmoid gain.
const QUICK_GELU_GAIN: f32 = 1.702;

/// Elements whose exponentials (or `erf`s) one stack buffer holds.
const EXP_CHUNK: usize = 256;

/// `activation(x + bias)` with `x`: `[..., width]`, `bias`: `[width]`.
pub fn bias_activation(x: &Tensor, bias: &Tensor, activation: Activation) -> Result<Tensor> {
    if !fused_applies(&[x, bias]) {
        return reference::bias_activation(x, bias, activation);
    }
    let (_, width) = rows_and_width(x)?;
    if bias.dims() != [width] {
        candle_core::bail!("bias_activation: bias has shape {:?}, expected [{width}]", bias.dims());
    }
    x.contiguous()?.apply_op2(&bias.contiguous()?, BiasActivation { activation })
}

/// [`bias_activation`] of `x`, a tensor nobody else reads (a fresh product), written over
/// `x`'s own storage when neither input tracks a gradient; otherwise as [`bias_activation`].
/// The values are the same to the bit either way.
pub fn bias_activation_in_place(x: Tensor, bias: &Tensor, activation: Activation) -> Result<Tensor> {
    let (_, width) = rows_and_width(&x)?;
    let in_place = !x.track_op() && !bias.track_op() && x.is_contiguous() && bias.is_contiguous();
    if !in_place || !fused_applies(&[&x, bias]) || bias.dims() != [width] {
        return bias_activation(&x, bias, activation);
    }
    x.inplace_op2(bias, &BiasActivationInPlace { activation })?;
    Ok(x)
}

/// Which of an activation's two functions [`activation_in_place`] computes.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Part {
    /// `activation(u)`.
    Value,
    /// `activation′(u)`.
    Slope,
}

/// `activation(u)` or `activation′(u)` (`part`) for each `u` of `us`, in place; the
/// exponentials and `erf`s are taken `EXP_CHUNK` at a time by the vectorised `exp` and `erf`
/// (the exact GELU's value needs no exponential).
#[inline(always)]
pub(super) fn activation_in_place(activation: Activation, part: Part, us: &mut [f32]) {
    let pick = |(value, slope)| if part == Part::Value { value } else { slope };
    let mut scratch = [0f32; EXP_CHUNK];
    match activation {
        Activation::QuickGelu => {
            for us in us.chunks_mut(EXP_CHUNK) {
                let exps = applied(us, &mut scratch, |u| -QUICK_GELU_GAIN * u, exp_in_place);
                us.iter_mut().zip(exps).for_each(|(u, &e)| *u = pick(quick_gelu_and_slope(*u, e)));
            }
        }
        Activation::Gelu => {
            let mut exp_scratch = [0f32; EXP_CHUNK];
            for us in us.chunks_mut(EXP_CHUNK) {
                let erfs = applied(us, &mut scratch, |u| u * std::f32::consts::FRAC_1_SQRT_2, erf_in_place);
                if part == Part::Value {
                    us.iter_mut().zip(erfs).for_each(|(u, &erf)| *u *= gelu_cdf(erf));
                } else {
                    let parts =
                        erfs.iter().zip(applied(us, &mut exp_scratch, |u| -0.5 * u * u, exp_in_place));
                    us.iter_mut().zip(parts).for_each(|(u, (&erf, &e))| *u = gelu_slope(*u, erf, e));
                }
            }
        }
    }
}

/// `apply(f(u))` for each `u` of `us` (at most `EXP_CHUNK`), in `scratch`: the vectorised
/// `exp` or `erf` of a chunk of an activation's arguments.
#[inline(always)]
fn applied<'a>(
    us: &[f32],
    scratch: &'a mut [f32; EXP_CHUNK],
    f: impl Fn(f32) -> f32,
    apply: fn(&mut [f32]),
) -> &'a [f32] {
    let out = &mut scratch[..us.len()];
    out.iter_mut().zip(us).for_each(|(out, &u)| *out = f(u));
    apply(out);
    out
}

/// QuickGELU and its derivative at `u`, given `e = exp(−1.702 u)`.
#[inline(always)]
fn quick_gelu_and_slope(u: f32, e: f32) -> (f32, f32) {
    let s = 1.0 / (1.0 + e);
    (u * s, s + QUICK_GELU_GAIN * u * s * (1.0 - s))
}

/// `Φ(u)` given `erf = erf(u / √2)`: GELU is `u · Φ(u)`.
#[inline(always)]
fn gelu_cdf(erf: f32) -> f32 {
    0.5 * (1.0 + erf)
}

/// GELU's derivative `Φ(u) + u φ(u)` at `u`, given `erf = erf(u / √2)` and `e = exp(−u²/2)`.
#[inline(always)]
fn gelu_slope(u: f32, erf: f32, e: f32) -> f32 {
    let pdf = e * (0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2);
    gelu_cdf(erf) + u * pdf
}

/// `y ← x + bias` for one row.
fn add_bias(y: &mut [f32], x: &[f32], bias: &[f32]) {
    y.iter_mut().zip(x.iter().zip(bias)).for_each(|(y, (&x, &b))| *y = x + b);
}

struct BiasActivation {
    activation: Activation,
}

impl CustomOp2 for BiasActivation {
    fn name(&self) -> &'static str {
        "bias-activation"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let bias = contiguous_f32(bs, bl, self.name())?;
        let out = map_rows(x, bias.len(), |y, x| {
            add_bias(y, x, bias);
            activation_in_place(self.activation, Part::Value, y);
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, _) = rows_and_width(x)?;
        let backward = BiasActivationBackward { activation: self.activation };
        let packed = x.apply_op3_no_bwd(bias, &grad.contiguous()?, &backward)?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        Ok((Some(dx), Some(packed.get(rows)?)))
    }
}

/// `x ← activation(x + bias)`, row by row.
struct BiasActivationInPlace {
    activation: Activation,
}

impl InplaceOp2 for BiasActivationInPlace {
    fn name(&self) -> &'static str {
        "bias-activation-in-place"
    }

    fn cpu_fwd(&self, xs: &mut CpuStorage, xl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<()> {
        let bias = contiguous_f32(bs, bl, self.name())?;
        let x = contiguous_f32_mut(xs, xl, self.name())?;
        map_row_blocks(x, bias.len(), |_, block| {
            for row in block.chunks_exact_mut(bias.len()) {
                row.iter_mut().zip(bias).for_each(|(u, &b)| *u += b);
                activation_in_place(self.activation, Part::Value, row);
            }
        });
        Ok(())
    }
}

/// `(x, bias, grad)` -> `[rows + 1, width]`: the rows of `du = grad · act′(x + bias)`, then
/// `dbias`.
struct BiasActivationBackward {
    activation: Activation,
}

impl CustomOp3 for BiasActivationBackward {
    fn name(&self) -> &'static str {
        "bias-activation-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let bias = contiguous_f32(bs, bl, self.name())?;
        let grad = contiguous_f32(gs, gl, self.name())?;
        let width = bias.len();
        let rows = x.len() / width;
        let out = rows_with_column_sums(rows * width, width, width, |first_row, block, dbias| {
            let offset = first_row * width;
            let (x_block, g_block) = (&x[offset..offset + block.len()], &grad[offset..offset + block.len()]);
            let rows = block
                .chunks_exact_mut(width)
                .zip(x_block.chunks_exact(width).zip(g_block.chunks_exact(width)));
            for (du, (x, g)) in rows {
                add_bias(du, x, bias);
                activation_in_place(self.activation, Part::Slope, du);
                for ((du, db), &g) in du.iter_mut().zip(dbias.iter_mut()).zip(g) {
                    *du *= g;
                    *db += *du;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows + 1, width))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pre-activations spanning QuickGELU's saturated tails, its bend, and a NaN.
    fn pre_activations(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| if i == 7 { f32::NAN } else { (i as f32 * 0.731).sin() * 60.0 / (1 + i % 5) as f32 })
            .collect()
    }

    #[test]
    fn quick_gelu_rows_equal_the_elementwise_formula_with_f32_exp() {
        for len in [0, 1, 17, EXP_CHUNK, EXP_CHUNK + 45, 3 * EXP_CHUNK - 1] {
            let us = pre_activations(len);
            let expected: Vec<(f32, f32)> =
                us.iter().map(|&u| quick_gelu_and_slope(u, (-QUICK_GELU_GAIN * u).exp())).collect();
            let (mut values, mut slopes) = (us.clone(), us.clone());
            activation_in_place(Activation::QuickGelu, Part::Value, &mut values);
            activation_in_place(Activation::QuickGelu, Part::Slope, &mut slopes);
            for (i, (&(value, slope), (v, s))) in expected.iter().zip(values.iter().zip(&slopes)).enumerate()
            {
                let bits = |x: f32| if x.is_nan() { f32::NAN.to_bits() } else { x.to_bits() };
                assert_eq!((bits(*v), bits(*s)), (bits(value), bits(slope)), "length {len}, element {i}");
            }
        }
    }
}
