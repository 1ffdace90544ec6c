//! Fused LayerNorm over the last dimension (Ba et al. 2016; PyTorch `nn.LayerNorm`): one
//! forward pass per row (two-pass mean and variance in f32 with lane-split sums), and a fused
//! backward that recomputes each row's mean and 1/std and yields `dx`, `dweight` and `dbias`
//! together in one more pass.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::reference;
use super::rows::{
    contiguous_f32, fused_applies, lane_sum, lane_sum2, rows_and_width, rows_with_column_sums,
    zeroed_by_row_blocks,
};

/// LayerNorm of `x` (`[..., width]`) with `weight` and `bias` (`[width]`).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !fused_applies(&[x, weight, bias]) {
        return reference::layer_norm(x, weight, bias, eps);
    }
    let (_, width) = rows_and_width(x)?;
    for (name, param) in [("weight", weight), ("bias", bias)] {
        if param.dims() != [width] {
            candle_core::bail!("layer_norm: {name} has shape {:?}, expected [{width}]", param.dims());
        }
    }
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNormOp { eps: eps as f32 })
}

/// The mean and 1/std of one row.
#[inline(always)]
fn row_moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lane_sum(x, |v| v) / n;
    let variance = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (variance + eps).sqrt())
}

/// LayerNorm of each row of `x` (`weight.len()` elements each).
pub(super) fn normalized(x: &[f32], weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let width = weight.len();
    zeroed_by_row_blocks(x.len(), width, |first_row, block| {
        let x_block = &x[first_row * width..first_row * width + block.len()];
        for (y, x) in block.chunks_exact_mut(width).zip(x_block.chunks_exact(width)) {
            let (mean, rstd) = row_moments(x, eps);
            for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(weight).zip(bias) {
                *y = (x - mean) * rstd * w + b;
            }
        }
    })
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let (weight, bias) = (contiguous_f32(ws, wl, self.name())?, contiguous_f32(bs, bl, self.name())?);
        let out = normalized(x, weight, bias, self.eps);
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dweight, dbias) = layer_norm_grads(x, weight, &grad.contiguous()?, self.eps)?;
        Ok((Some(dx), Some(dweight), Some(dbias)))
    }
}

/// The gradients of `x`, `weight` and `bias` of LayerNorm at `x` from the output gradient
/// `grad` (contiguous).
pub(super) fn layer_norm_grads(
    x: &Tensor,
    weight: &Tensor,
    grad: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (rows, _) = rows_and_width(x)?;
    let packed = x.apply_op3_no_bwd(weight, grad, &LayerNormBackward { eps })?;
    Ok((packed.narrow(0, 0, rows)?.reshape(x.shape())?, packed.get(rows)?, packed.get(rows + 1)?))
}

/// `(x, weight, grad)` -> `[rows + 2, width]`: the rows of `dx`, then `dweight`, then `dbias`.
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let weight = contiguous_f32(ws, wl, self.name())?;
        let grad = contiguous_f32(gs, gl, self.name())?;
        let width = weight.len();
        let rows = x.len() / width.max(1);
        let out = rows_with_column_sums(rows * width, width, 2 * width, |first_row, block, sums| {
            let offset = first_row * width;
            let (x_block, g_block) = (&x[offset..offset + block.len()], &grad[offset..offset + block.len()]);
            let (dweight, dbias) = sums.split_at_mut(width);
            let rows = block
                .chunks_exact_mut(width)
                .zip(x_block.chunks_exact(width).zip(g_block.chunks_exact(width)));
            for (dx, (x, g)) in rows {
                row_backward(x, g, weight, self.eps, dx, dweight, dbias);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, width))))
    }
}

/// One row of the LayerNorm backward, with `x̂ = (x − mean)·rstd` and `ĝ = g ⊙ weight`:
/// `dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂))`; adds `g ⊙ x̂` to `dweight`, `g` to `dbias`.
#[inline(always)]
fn row_backward(
    x: &[f32],
    g: &[f32],
    weight: &[f32],
    eps: f32,
    dx: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
) {
    let n = x.len() as f32;
    let (mean, rstd) = row_moments(x, eps);
    dx.iter_mut().zip(g.iter().zip(weight)).for_each(|(d, (&g, &w))| *d = g * w);
    let mean_g_hat = lane_sum(dx, |v| v) / n;
    let mean_g_hat_x_hat = lane_sum2(dx, x, |gw, x| gw * (x - mean)) * rstd / n;
    for (d, &x) in dx.iter_mut().zip(x) {
        *d = rstd * (*d - mean_g_hat - (x - mean) * rstd * mean_g_hat_x_hat);
    }
    for (((dw, db), &x), &g) in dweight.iter_mut().zip(dbias.iter_mut()).zip(x).zip(g) {
        *dw += g * (x - mean) * rstd;
        *db += g;
    }
}
