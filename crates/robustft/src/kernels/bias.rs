//! The fused bias and residual add `x + bias + residual` of the output projection and the
//! second MLP linear of a pre-LN transformer block (`x + attn(ln1(x))`, `x + mlp(ln2(x))`),
//! one pass instead of two, and the bias gradient of every linear layer: the output gradient
//! summed over its rows in one parallel pass (where candle's broadcast add reduces it with
//! strided passes). The backward passes the gradient through to `x` and `residual`.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

use super::reference;
use super::rows::{column_sums, contiguous_f32, fused_applies, rows_and_width, zeroed_by_row_blocks};

/// `x + bias + residual` with `x`, `residual`: `[..., width]` and `bias`: `[width]`.
pub fn bias_residual(x: &Tensor, bias: &Tensor, residual: &Tensor) -> Result<Tensor> {
    if !fused_applies(&[x, bias, residual]) {
        return reference::bias_residual(x, bias, residual);
    }
    let (_, width) = rows_and_width(x)?;
    if bias.dims() != [width] || residual.dims() != x.dims() {
        candle_core::bail!(
            "bias_residual: bias {:?} and residual {:?} do not fit x {:?}",
            bias.dims(),
            residual.dims(),
            x.dims()
        );
    }
    x.contiguous()?.apply_op3(&bias.contiguous()?, &residual.contiguous()?, BiasResidual)
}

/// The gradient of `bias` in `x + bias (+ residual)`: `grad` summed over its rows.
pub(super) fn bias_grad(grad: &Tensor) -> Result<Tensor> {
    grad.contiguous()?.apply_op1_no_bwd(&ColumnSums)
}

struct BiasResidual;

impl CustomOp3 for BiasResidual {
    fn name(&self) -> &'static str {
        "bias-residual"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let bias = contiguous_f32(bs, bl, self.name())?;
        let residual = contiguous_f32(rs, rl, self.name())?;
        let width = bias.len();
        let out = zeroed_by_row_blocks(x.len(), width, |first_row, block| {
            let offset = first_row * width;
            let (x_block, r_block) =
                (&x[offset..offset + block.len()], &residual[offset..offset + block.len()]);
            let rows = block
                .chunks_exact_mut(width)
                .zip(x_block.chunks_exact(width).zip(r_block.chunks_exact(width)));
            for (y, (x, r)) in rows {
                for (((y, &x), &r), &b) in y.iter_mut().zip(x).zip(r).zip(bias) {
                    *y = x + b + r;
                }
            }
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _bias: &Tensor,
        _residual: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(bias_grad(grad)?), Some(grad.clone())))
    }
}

/// `[..., width]` -> `[width]`: the sum over all rows.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let width = layout.dims().last().copied().unwrap_or(1);
        Ok((CpuStorage::F32(column_sums(x, width)), Shape::from(width)))
    }
}
