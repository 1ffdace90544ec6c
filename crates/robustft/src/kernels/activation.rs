//! Fused bias add and MLP activation, `activation(x + bias)`, for CLIP's two activations:
//! QuickGELU `u · σ(1.702 u)` (OpenAI CLIP, `clip/model.py: QuickGELU`) and the exact GELU
//! `u · Φ(u)` (Hendrycks & Gimpel 2016). One pass forward; the backward recomputes `u` and
//! yields `du = g · act′(u)` and `dbias = Σ_rows du` in one pass.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::reference;
use super::rows::{contiguous_f32, fused_applies, map_with_bias, rows_and_width, rows_with_column_sums};
use crate::clip::config::Activation;

/// QuickGELU's sigmoid gain.
const QUICK_GELU_GAIN: f32 = 1.702;

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

/// The activation and its derivative at `u`.
#[inline(always)]
fn activation_and_slope(activation: Activation, u: f32) -> (f32, f32) {
    match activation {
        Activation::QuickGelu => {
            let s = 1.0 / (1.0 + (-QUICK_GELU_GAIN * u).exp());
            (u * s, s + QUICK_GELU_GAIN * u * s * (1.0 - s))
        }
        Activation::Gelu => {
            let cdf = 0.5 * (1.0 + candle_core::cpu::erf::erf_f32(u * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * u * u).exp()
                * (0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2);
            (u * cdf, cdf + u * pdf)
        }
    }
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
        let out = map_with_bias(x, bias, |x, b| activation_and_slope(self.activation, x + b).0);
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
        let mut out = vec![0f32; (rows + 1) * width];
        rows_with_column_sums(&mut out, width, width, |first_row, block, dbias| {
            let offset = first_row * width;
            let (x_block, g_block) = (&x[offset..offset + block.len()], &grad[offset..offset + block.len()]);
            let rows = block
                .chunks_exact_mut(width)
                .zip(x_block.chunks_exact(width).zip(g_block.chunks_exact(width)));
            for (du, (x, g)) in rows {
                for ((((du, db), &x), &g), &b) in du.iter_mut().zip(dbias.iter_mut()).zip(x).zip(g).zip(bias)
                {
                    *du = g * activation_and_slope(self.activation, x + b).1;
                    *db += *du;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows + 1, width))))
    }
}
