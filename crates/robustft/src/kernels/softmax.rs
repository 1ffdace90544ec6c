//! Fused softmax over the last dimension, optionally with an additive mask fused in
//! (`softmax(x + mask)`, the causal attention of CLIP's text tower): per row the maximum, the
//! shifted `exp` (vectorised, equal to `f32::exp`), its sum, and the scaling. The backward is
//! `dx = y ⊙ (g − Σ g ⊙ y)` per row, fused; the mask's gradient (the row sum of `dx` over the
//! broadcast rows) is only formed when the mask itself tracks gradients.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::exp::exp_in_place;
use super::reference;
use super::rows::{contiguous_f32, fused_applies, lane_sum, lane_sum2, map_row_blocks, zeroed_by_row_blocks};

/// Softmax of `x` over its last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !fused_applies(&[x]) {
        return reference::softmax_last_dim(x);
    }
    x.contiguous()?.apply_op1(Softmax)
}

/// `softmax(x + mask)` over the last dimension, with `x`: `[..., m, n]` and `mask`: `[m, n]`
/// (broadcast over the leading dimensions; `-inf` entries get probability 0).
pub fn masked_softmax_last_dim(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if !fused_applies(&[x, mask]) {
        return reference::masked_softmax_last_dim(x, mask);
    }
    let dims = x.dims();
    if dims.len() < 2 || mask.dims() != &dims[dims.len() - 2..] {
        candle_core::bail!("masked_softmax: mask of shape {:?} does not fit scores {:?}", mask.dims(), dims);
    }
    x.contiguous()?.apply_op2(&mask.contiguous()?, MaskedSoftmax)
}

/// Softmax of one row in place: `y ← exp(y − max y) / Σ exp(y − max y)`.
#[inline(always)]
pub(super) fn softmax_row_in_place(y: &mut [f32]) {
    let max = y.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    y.iter_mut().for_each(|v| *v -= max);
    exp_in_place(y);
    let inverse_sum = 1.0 / lane_sum(y, |v| v);
    y.iter_mut().for_each(|v| *v *= inverse_sum);
}

/// `dx = y ⊙ (g − Σ g ⊙ y)` of softmax output `y` and its gradient `grad` (same shape).
fn softmax_backward(y: &Tensor, grad: &Tensor) -> Result<Tensor> {
    y.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let width = layout.dims().last().copied().unwrap_or(1);
        let mut out = x.to_vec();
        map_row_blocks(&mut out, width, |_, block| {
            block.chunks_exact_mut(width).for_each(softmax_row_in_place)
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(softmax_backward(y, grad)?))
    }
}

struct MaskedSoftmax;

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax-last-dim"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let mask = contiguous_f32(ms, ml, self.name())?;
        let width = xl.dims().last().copied().unwrap_or(1);
        let mask_rows = mask.len() / width.max(1);
        let out = zeroed_by_row_blocks(x.len(), width, |first_row, block| {
            let x_block = &x[first_row * width..first_row * width + block.len()];
            let rows = block.chunks_exact_mut(width).zip(x_block.chunks_exact(width));
            for (row, (y, x)) in rows.enumerate() {
                let mask_row = (first_row + row) % mask_rows;
                let m = &mask[mask_row * width..(mask_row + 1) * width];
                y.iter_mut().zip(x.iter().zip(m)).for_each(|(y, (&x, &m))| *y = x + m);
                softmax_row_in_place(y);
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        mask: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = softmax_backward(y, grad)?;
        let dmask = if mask.track_op() {
            let (mask_rows, width) = mask.dims2()?;
            Some(dx.reshape(((), mask_rows, width))?.sum(0)?)
        } else {
            None
        };
        Ok((Some(dx), dmask))
    }
}

/// `(y, grad)` -> `dx = y ⊙ (grad − Σ grad ⊙ y)` per row.
struct SoftmaxBackward;

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-last-dim-backward"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(ys, yl, self.name())?;
        let grad = contiguous_f32(gs, gl, self.name())?;
        let width = yl.dims().last().copied().unwrap_or(1);
        let out = zeroed_by_row_blocks(y.len(), width, |first_row, block| {
            let offset = first_row * width;
            let (y_block, g_block) = (&y[offset..offset + block.len()], &grad[offset..offset + block.len()]);
            let rows = block
                .chunks_exact_mut(width)
                .zip(y_block.chunks_exact(width).zip(g_block.chunks_exact(width)));
            for (dx, (y, g)) in rows {
                let g_dot_y = lane_sum2(g, y, |g, y| g * y);
                dx.iter_mut().zip(y.iter().zip(g)).for_each(|(d, (&y, &g))| *d = y * (g - g_dot_y));
            }
        });
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }
}
