//! The projection of a linear layer, `y = x Wᵀ (+ b)` over the last dimension of `x` (any
//! leading shape) with `W`: `[out, in]` as stored by PyTorch's `nn.Linear`, as one custom op
//! over the `gemm` crate that candle's CPU matmul runs on, called with the operand layouts
//! candle uses for `x.reshape(..).matmul(&w.t())`, so the values are the same to the bit. In
//! bf16 precision ([`super::MatmulPrecision::Bf16`]) the same three products run on
//! [`super::matmul_bf16`]'s bfloat16 operands with fp32 sums instead.
//!
//! The primitive-op form puts a reshape, a transpose and a matmul into the graph, and candle's
//! backprop zero-fills and adds a gradient buffer for every edge between them (the weight's
//! through a strided transpose). Here the layer is one node: the backward writes
//! `dx = g W` and `dW = gᵀ x` straight into the layouts of `x` and `W` (and `db`, the row sum
//! of `g`), skips either product when its input tracks no gradient (the pixels under the patch
//! embedding, a frozen weight), and outputs are written by gemm without being zero-filled
//! first. The bias is added to the product in place, as [`super::bias_residual`] and
//! [`super::bias_activation`] add theirs (those layers pass no bias here).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::bias::bias_grad;
use super::matmul_bf16::matmul_bf16;
#[cfg(target_arch = "x86_64")]
use super::matmul_f32;
use super::precision::{matmul_precision, F32Kernel, MatmulPrecision};
use super::reference;
use super::rows::{contiguous_f32, fused_applies, map_row_blocks, rows_and_width};

/// `x Wᵀ + bias` with `x`: `[..., in]`, `weight`: `[out, in]` and `bias`: `[out]` (or none)
/// -> `[..., out]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if !fused_applies(&[x, weight]) || !bias.is_none_or(|b| fused_applies(&[b])) {
        return reference::linear(x, weight, bias);
    }
    check_weight_and_bias("linear", x, weight, bias)?;
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        None => x.apply_op2(&weight, Linear),
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, LinearWithBias),
    }
}

/// Fails (naming `op`) unless `weight` is `[out, in]` for `x`'s last dimension `in` and
/// `bias` is `[out]`.
pub(super) fn check_weight_and_bias(
    op: &str,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<()> {
    let (_, fan_in) = rows_and_width(x)?;
    if weight.rank() != 2 || weight.dim(1)? != fan_in {
        candle_core::bail!("{op}: weight {:?} does not fit x {:?}", weight.dims(), x.dims());
    }
    if let Some(b) = bias.filter(|b| b.dims() != [weight.dims()[0]]) {
        candle_core::bail!("{op}: bias {:?} does not fit weight {:?}", b.dims(), weight.dims());
    }
    Ok(())
}

/// A row-major f32 matrix, read as itself or transposed.
pub(super) struct Matrix<'a> {
    data: &'a [f32],
    cols: usize,
}

impl<'a> Matrix<'a> {
    pub(super) fn new(data: &'a [f32], cols: usize) -> Self {
        Self { data, cols }
    }

    pub(super) fn plain(&self) -> Operand<'a> {
        let rows = self.data.len() / self.cols;
        Operand { data: self.data, rows, cols: self.cols, row_stride: self.cols, col_stride: 1 }
    }

    pub(super) fn transposed(&self) -> Operand<'a> {
        self.plain().transposed()
    }
}

/// A matrix operand of a product: element `(i, j)` is `data[i · row_stride + j · col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Operand<'_> {
    /// Whether `data` holds every element the strides address.
    pub(super) fn holds_all_elements(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }

    /// The same elements read as the transposed matrix.
    pub(super) fn transposed(self) -> Self {
        let (rows, cols, row_stride, col_stride) = (self.cols, self.rows, self.col_stride, self.row_stride);
        Self { rows, cols, row_stride, col_stride, ..self }
    }
}

/// `y ← y + bias` on every row of `y` (`bias.len()` elements each).
pub(super) fn add_bias_in_place(y: &mut [f32], bias: &[f32]) {
    map_row_blocks(y, bias.len(), |_, block| {
        for row in block.chunks_exact_mut(bias.len()) {
            row.iter_mut().zip(bias).for_each(|(y, &b)| *y += b);
        }
    });
}

/// `lhs · rhs` as a new row-major matrix, in the process's [`matmul_precision`], on the kernel
/// the linear layers' products run on in this CPU ([`MatmulPrecision::cpu_kernel`] names it)
/// and the threads of the current rayon pool; `bench/gemm_vs_torch.sh` times it beside
/// PyTorch's `torch.mm`.
///
/// # Panics
/// If the inner dimensions differ or an operand's slice lacks an element its strides address.
pub fn product(lhs: Operand, rhs: Operand) -> Vec<f32> {
    match matmul_precision() {
        MatmulPrecision::Fp32 => matmul(lhs, rhs),
        MatmulPrecision::Bf16 => matmul_bf16(lhs, rhs),
    }
}

/// `lhs · rhs` as a new row-major matrix on the threads of the current rayon pool (the CLI's
/// `--threads`), on the f32 kernel of this CPU ([`F32Kernel`]): [`matmul_f32`] or candle's
/// gemm.
pub(super) fn matmul(lhs: Operand, rhs: Operand) -> Vec<f32> {
    let threads = rayon::current_num_threads();
    #[cfg(target_arch = "x86_64")]
    if let Some(width) = F32Kernel::on_this_cpu().width() {
        // SAFETY: `F32Kernel::on_this_cpu` chooses only a kernel whose width this CPU runs.
        return unsafe { matmul_f32::matmul::<matmul_f32::AsStored>(width, lhs, rhs, threads) };
    }
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    matmul_with(lhs, rhs, parallelism)
}

/// `lhs · rhs` as a new row-major matrix, by candle's gemm with the given `parallelism`.
pub(super) fn matmul_with(lhs: Operand, rhs: Operand, parallelism: gemm::Parallelism) -> Vec<f32> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "matmul: inner dimensions differ");
    assert!(lhs.holds_all_elements() && rhs.holds_all_elements(), "matmul: operand out of its slice");
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: the operands' slices hold all `m × k` and `k × n` elements under their strides
    // (asserted); gemm writes all `m × n` elements of `out` without reading them
    // (`read_dst = false`), after which they are initialised.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            0f32,
            1f32,
            false,
            false,
            false,
            parallelism,
        );
        out.set_len(m * n);
    }
    out
}

/// The shape of `x`'s layout with its last dimension replaced by `width`.
pub(super) fn with_last_dim(layout: &Layout, width: usize) -> Shape {
    let mut dims = layout.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = width;
    }
    Shape::from(dims)
}

/// `x Wᵀ` of the op's inputs `x` and `W`, and its shape.
fn project(
    op: &'static str,
    xs: &CpuStorage,
    xl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
) -> Result<(Vec<f32>, Shape)> {
    let (out_features, in_features) = wl.shape().dims2()?;
    let x = Matrix::new(contiguous_f32(xs, xl, op)?, in_features);
    let weight = Matrix::new(contiguous_f32(ws, wl, op)?, in_features);
    Ok((product(x.plain(), weight.transposed()), with_last_dim(xl, out_features)))
}

/// The gradients of `x` and `W` from the output gradient `grad`, each only where it tracks one.
fn input_and_weight_grads(
    x: &Tensor,
    weight: &Tensor,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dx = x.track_op().then(|| input_grad(grad, weight)).transpose()?;
    let dweight = weight.track_op().then(|| weight_grad(grad, x)).transpose()?;
    Ok((dx, dweight))
}

/// `g W`: the gradient of the layer's input from the output gradient `grad` (contiguous).
pub(super) fn input_grad(grad: &Tensor, weight: &Tensor) -> Result<Tensor> {
    grad.apply_op2_no_bwd(weight, &InputGrad)
}

/// `gᵀ x`: the gradient of the layer's weight from the output gradient `grad` (contiguous).
pub(super) fn weight_grad(grad: &Tensor, x: &Tensor) -> Result<Tensor> {
    grad.apply_op2_no_bwd(x, &WeightGrad)
}

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = project(self.name(), xs, xl, ws, wl)?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        input_and_weight_grads(x, weight, &grad.contiguous()?)
    }
}

struct LinearWithBias;

impl CustomOp3 for LinearWithBias {
    fn name(&self) -> &'static str {
        "linear-with-bias"
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
        let (mut y, shape) = project(self.name(), xs, xl, ws, wl)?;
        add_bias_in_place(&mut y, contiguous_f32(bs, bl, self.name())?);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dx, dweight) = input_and_weight_grads(x, weight, &grad)?;
        let dbias = bias.track_op().then(|| bias_grad(&grad)).transpose()?;
        Ok((dx, dweight, dbias))
    }
}

/// `(g, W)` -> `g W`: the gradient of the layer's input, shaped like it.
struct InputGrad;

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "linear-input-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out_features, in_features) = wl.shape().dims2()?;
        let grad = Matrix::new(contiguous_f32(gs, gl, self.name())?, out_features);
        let weight = Matrix::new(contiguous_f32(ws, wl, self.name())?, in_features);
        let dx = product(grad.plain(), weight.plain());
        Ok((CpuStorage::F32(dx), with_last_dim(gl, in_features)))
    }
}

/// `(g, x)` -> `gᵀ x` over all rows: the gradient of `W`, `[out, in]`.
struct WeightGrad;

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "linear-weight-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out_features, in_features) = (gl.dims()[gl.dims().len() - 1], xl.dims()[xl.dims().len() - 1]);
        let grad = Matrix::new(contiguous_f32(gs, gl, self.name())?, out_features);
        let x = Matrix::new(contiguous_f32(xs, xl, self.name())?, in_features);
        let dweight = product(grad.transposed(), x.plain());
        Ok((CpuStorage::F32(dweight), Shape::from((out_features, in_features))))
    }
}
