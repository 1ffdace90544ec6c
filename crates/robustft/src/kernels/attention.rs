//! Fused multi-head scaled dot-product attention (Vaswani et al. 2017, `softmax(q kᵀ / √d +
//! mask) v` per head) over a packed `[b, t, 3·width]` q/k/v projection (one matmul with the
//! three weight matrices stacked).
//!
//! The kernel reads each head's columns of q, k and v in place and writes its output straight
//! into the merged `[b, t, width]` layout, so no head split, transpose or `contiguous` copy is
//! materialised and no `[b, heads, t, t]` score tensor is kept for the backward pass. Per
//! batch element and head it runs two strided products around an in-place (masked)
//! softmax; the backward recomputes the probabilities and writes the packed `d(qkv)` with five
//! more (`dP = dO vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dq = dS k / √d`, `dk = dSᵀ q / √d`,
//! `dv = Pᵀ dO`). Batch elements run in parallel, each head's products on one thread. The
//! products follow the process's matmul precision (as PyTorch's CPU autocast runs attention's
//! `bmm`s in bfloat16): in fp32 on CPUs with AVX-512F the register tiles of
//! `super::head_product` (no packing: a head's products are a few dozen to a few hundred
//! rows), elsewhere `gemm`; in bf16 the bf16 kernel of [`super::matmul_bf16`] (both operands
//! rounded to bfloat16, fp32 sums, fp32 results); the scores, the softmax and its backward
//! stay fp32 in both.
//!
//! [`normed_attention`] runs the branch up to the output projection, `LN(x) → q/k/v projection
//! → attention`, as one node that keeps the q/k/v projection inside itself, in bf16 under bf16
//! precision (as autocast stores a linear layer's output), rather than as a graph edge, which
//! candle would keep in f32 and whose gradient it would add into a zero-filled buffer. The
//! kernel reads a bf16 q/k/v by widening each batch element's block to f32, and gives `d(qkv)`
//! in bf16 too.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};

#[cfg(target_arch = "x86_64")]
use super::head_product;
use super::layer_norm_linear::{fused_inputs, layer_norm_linear, LayerNormLinear};
use super::linear::{matmul_with, with_last_dim, Operand};
use super::matmul_bf16::matmul_bf16_on_this_thread;
use super::precision::{matmul_precision, MatmulPrecision};
use super::reference;
use super::rows::{
    contiguous_f32, fused_applies, kept_dtype, lane_sum2, rows_per_block, storage_of, stored_tensor,
    with_values, zeroed_by_blocks, Kept, Values,
};
use super::softmax::softmax_row_in_place;

/// Attention of the packed `qkv` (`[b, t, 3·width]`: q, k, v side by side; `heads` heads of
/// `width / heads` columns each) with an optional additive `mask` (`[t, t]`) ->
/// `[b, t, width]`, heads merged.
///
/// The products run in the process's matmul precision, the backward pass's in the precision
/// the forward pass had. A mask that is itself trained (tracks gradients) goes through the
/// primitive-op formulation ([`reference::attention`]), as do tensors off the CPU or not f32.
pub fn attention(qkv: &Tensor, heads: usize, mask: Option<&Tensor>) -> Result<Tensor> {
    let geometry = Geometry::of(qkv.shape(), heads)?;
    let constant_mask = mask.is_none_or(|m| !m.track_op() && fused_applies(&[m]));
    if !constant_mask || !fused_applies(&[qkv]) {
        return reference::attention(qkv, heads, mask);
    }
    let mask = mask.map(|m| mask_rows(m, geometry.tokens)).transpose()?;
    qkv.contiguous()?.apply_op1(Attention { geometry, mask })
}

/// The kernel attention's products run on in `precision` on this CPU, as benchmark reports
/// name it: in fp32 `avx512f` (one head's products in registers, [`head_product`]) on CPUs
/// with AVX-512F and `gemm` elsewhere; in bf16 the bf16 kernel's name.
pub fn attention_kernel(precision: MatmulPrecision) -> &'static str {
    match precision {
        MatmulPrecision::Fp32 if f32_products_in_registers() => "avx512f",
        MatmulPrecision::Fp32 => "gemm",
        MatmulPrecision::Bf16 => precision.cpu_kernel(),
    }
}

/// Whether attention's fp32 products run on [`head_product`] (AVX-512F) rather than gemm.
fn f32_products_in_registers() -> bool {
    #[cfg(target_arch = "x86_64")]
    return head_product::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `attention(LN(x) Wᵀ + bias)` with `x`: `[b, t, width]`, LayerNorm's `(γ, β, eps)`, the
/// stacked q/k/v projection `weight`: `[3·width, width]` and `bias`: `[3·width]` (or none):
/// [`attention`] of [`layer_norm_linear`] as one node that keeps `x` and, inside itself, the
/// projection (in bf16 under bf16 precision). Values and gradients equal those of the two
/// kernels chained, to the bit, in fp32; in bf16, those of the chain with the projection and
/// its gradient rounded to bfloat16.
pub fn normed_attention(
    x: &Tensor,
    norm: (&Tensor, &Tensor, f64),
    (weight, bias): (&Tensor, Option<&Tensor>),
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let constant_mask = mask.is_none_or(|m| !m.track_op() && fused_applies(&[m]));
    let inputs = fused_inputs(x, norm, weight, bias)?.filter(|_| constant_mask);
    let Some([x, weight, vectors]) = inputs else {
        return attention(&layer_norm_linear(x, norm, weight, bias)?, heads, mask);
    };
    let geometry = Geometry::of(&with_last_dim(x.layout(), weight.dim(0)?), heads)?;
    let mask = mask.map(|m| mask_rows(m, geometry.tokens)).transpose()?;
    let branch = NormedAttention {
        first: LayerNormLinear { eps: norm.2 },
        attention: Attention { geometry, mask },
        qkv: Kept::default(),
    };
    x.apply_op3(&weight, &vectors, branch)
}

/// The `[t, t]` mask as row-major values.
fn mask_rows(mask: &Tensor, tokens: usize) -> Result<Vec<f32>> {
    if mask.dims() != [tokens, tokens] {
        candle_core::bail!("attention: mask of shape {:?} does not fit {tokens} tokens", mask.dims());
    }
    mask.flatten_all()?.to_vec1()
}

/// The sizes of one attention call, and the precision of its products (the process's when the
/// op is built, so the backward pass multiplies as the forward pass did).
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    tokens: usize,
    width: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
    precision: MatmulPrecision,
}

/// Which third of a packed q/k/v row.
#[derive(Clone, Copy, Debug)]
enum Part {
    Query = 0,
    Key = 1,
    Value = 2,
}

impl Geometry {
    /// The geometry of a packed q/k/v of `shape`.
    fn of(shape: &Shape, heads: usize) -> Result<Self> {
        let (batch, tokens, packed) = shape.dims3()?;
        if packed % 3 != 0 {
            candle_core::bail!("attention: packed q/k/v width {packed} is not a multiple of 3");
        }
        let width = packed / 3;
        if heads == 0 || width % heads != 0 {
            candle_core::bail!("attention: width {width} does not split into {heads} heads");
        }
        let head_dim = width / heads;
        let scale = (head_dim as f32).powf(-0.5);
        Ok(Self { batch, tokens, width, heads, head_dim, scale, precision: matmul_precision() })
    }

    /// Elements of one batch element's `[t, width]` output block.
    fn out_block_len(&self) -> usize {
        self.tokens * self.width
    }

    /// Elements of one batch element's `[t, 3·width]` packed input block.
    fn packed_block_len(&self) -> usize {
        3 * self.out_block_len()
    }

    /// Head `h`'s `[t, head_dim]` columns of an output block.
    fn out_head(&self, h: usize) -> View {
        View {
            offset: h * self.head_dim,
            rows: self.tokens,
            cols: self.head_dim,
            row_stride: self.width,
            col_stride: 1,
        }
    }

    /// Head `h`'s `[t, head_dim]` columns of `part` in a packed block.
    fn packed_head(&self, part: Part, h: usize) -> View {
        let offset = part as usize * self.width + h * self.head_dim;
        View { offset, row_stride: 3 * self.width, ..self.out_head(h) }
    }

    /// A dense row-major `[t, t]` matrix.
    fn square(&self) -> View {
        View { offset: 0, rows: self.tokens, cols: self.tokens, row_stride: self.tokens, col_stride: 1 }
    }

    /// A new vector of a block of `block_len` elements per batch element, each block written
    /// by `f(batch_element, block)` (onto zeros), by parallel tasks of several batch elements.
    fn by_batch_elements(&self, block_len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
        let per_task = rows_per_block(self.packed_block_len());
        zeroed_by_blocks(self.batch * block_len, per_task * block_len, |task, blocks| {
            for (i, block) in blocks.chunks_exact_mut(block_len).enumerate() {
                f(task * per_task + i, block);
            }
        })
    }
}

/// A strided matrix inside a slice: element `(r, c)` at `offset + r·row_stride + c·col_stride`.
#[derive(Clone, Copy, Debug)]
struct View {
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl View {
    fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element lies inside a slice of `len` elements (`rows`, `cols` ≥ 1).
    fn fits(&self, len: usize) -> bool {
        self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < len
    }

    /// The matrix this view shows of `data`, as a product's operand.
    fn operand(self, data: &[f32]) -> Operand<'_> {
        let (rows, cols, row_stride, col_stride) = (self.rows, self.cols, self.row_stride, self.col_stride);
        Operand { data: &data[self.offset..], rows, cols, row_stride, col_stride }
    }
}

/// A product's operand: a slice and the view of it to multiply.
type Strided<'a> = (&'a [f32], View);

/// `lhs · rhs` as a new dense row-major matrix, on this thread, in `precision`.
fn product(precision: MatmulPrecision, (lhs, l): Strided, (rhs, r): Strided) -> Vec<f32> {
    assert!(l.cols == r.rows && l.fits(lhs.len()) && r.fits(rhs.len()), "attention: product operands");
    #[cfg(target_arch = "x86_64")]
    if precision == MatmulPrecision::Fp32 && f32_products_in_registers() {
        let mut out = vec![0.0; l.rows * r.cols];
        head_product::multiply_into(&mut out, r.cols, l.operand(lhs), r.operand(rhs), 1.0);
        return out;
    }
    match precision {
        MatmulPrecision::Fp32 => matmul_with(l.operand(lhs), r.operand(rhs), Parallelism::None),
        MatmulPrecision::Bf16 => matmul_bf16_on_this_thread(l.operand(lhs), r.operand(rhs)),
    }
}

/// `dst[d] = scale · lhs · rhs`, overwriting `d` (whose rows are contiguous), on this thread,
/// in `precision`: gemm writes fp32 products in place; bf16 ones are copied in by rows.
fn matmul_into(
    precision: MatmulPrecision,
    dst: &mut [f32],
    d: View,
    (lhs, l): Strided,
    (rhs, r): Strided,
    scale: f32,
) {
    assert!(l.rows == d.rows && r.cols == d.cols && l.cols == r.rows, "attention: matmul shapes");
    assert!(d.fits(dst.len()) && l.fits(lhs.len()) && r.fits(rhs.len()), "attention: matmul bounds");
    assert_eq!(d.col_stride, 1, "attention: a product is written by contiguous rows");
    #[cfg(target_arch = "x86_64")]
    if precision == MatmulPrecision::Fp32 && f32_products_in_registers() {
        let (lhs, rhs) = (l.operand(lhs), r.operand(rhs));
        head_product::multiply_into(&mut dst[d.offset..], d.row_stride, lhs, rhs, scale);
        return;
    }
    if precision == MatmulPrecision::Bf16 {
        let product = product(precision, (lhs, l), (rhs, r));
        for (i, row) in product.chunks_exact(d.cols).enumerate() {
            let first = d.offset + i * d.row_stride;
            dst[first..first + d.cols].iter_mut().zip(row).for_each(|(out, p)| *out = scale * p);
        }
        return;
    }
    // SAFETY: the assertions keep every strided access inside its slice, and `dst` is a
    // unique borrow, so it aliases neither input; `read_dst = false` never reads `dst`.
    unsafe {
        gemm(
            d.rows,
            d.cols,
            l.cols,
            dst.as_mut_ptr().add(d.offset),
            d.col_stride as isize,
            d.row_stride as isize,
            false,
            lhs.as_ptr().add(l.offset),
            l.col_stride as isize,
            l.row_stride as isize,
            rhs.as_ptr().add(r.offset),
            r.col_stride as isize,
            r.row_stride as isize,
            0.0,
            scale,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// `softmax(scale · q_h k_hᵀ + mask)` for head `h` of one packed block, a dense `[t, t]` matrix.
fn head_probabilities(g: &Geometry, h: usize, qkv: &[f32], mask: Option<&[f32]>) -> Vec<f32> {
    let (q, k) = (g.packed_head(Part::Query, h), g.packed_head(Part::Key, h));
    let mut scores = product(g.precision, (qkv, q), (qkv, k.transposed()));
    for (i, row) in scores.chunks_exact_mut(g.tokens).enumerate() {
        match mask {
            Some(mask) => {
                let mask = &mask[i * g.tokens..(i + 1) * g.tokens];
                row.iter_mut().zip(mask).for_each(|(s, &m)| *s = g.scale * *s + m);
            }
            None => row.iter_mut().for_each(|s| *s *= g.scale),
        }
        softmax_row_in_place(row);
    }
    scores
}

/// Packed `qkv` -> merged-head attention output.
struct Attention {
    geometry: Geometry,
    mask: Option<Vec<f32>>,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = self.forward(Values::of(storage, layout, self.name())?);
        let g = self.geometry;
        Ok((CpuStorage::F32(out), Shape::from((g.batch, g.tokens, g.width))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.qkv_grad(qkv, grad)?))
    }
}

impl Attention {
    /// The merged-head output of the packed `qkv`, row-major.
    fn forward(&self, qkv: Values) -> Vec<f32> {
        let g = self.geometry;
        let (n_in, n_out) = (g.packed_block_len(), g.out_block_len());
        g.by_batch_elements(n_out, |b, out| {
            let qkv = &qkv.widened(b * n_in..(b + 1) * n_in);
            for h in 0..g.heads {
                let probabilities = head_probabilities(&g, h, qkv, self.mask.as_deref());
                let v = g.packed_head(Part::Value, h);
                matmul_into(g.precision, out, g.out_head(h), (&probabilities, g.square()), (qkv, v), 1.0);
            }
        })
    }

    /// The packed `d(qkv)` (in the dtype of `qkv`) from the output's gradient `grad`.
    fn qkv_grad(&self, qkv: &Tensor, grad: &Tensor) -> Result<Tensor> {
        qkv.apply_op2_no_bwd(&grad.contiguous()?, &AttentionBackward { forward: self })
    }
}

/// `LN(x) → q/k/v projection → attention` as one node, keeping the projection inside itself.
struct NormedAttention {
    first: LayerNormLinear,
    attention: Attention,
    /// The q/k/v projection of the forward pass, in bf16 under bf16 precision.
    qkv: Kept,
}

impl CustomOp3 for NormedAttention {
    fn name(&self) -> &'static str {
        "normed-attention"
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
        let [x, weight, vectors] =
            [(xs, xl), (ws, wl), (vs, vl)].map(|(s, l)| contiguous_f32(s, l, self.name()));
        let g = self.attention.geometry;
        let projection = self.first.values(x?, weight?, vectors?, g.width);
        let qkv = stored_tensor(
            projection,
            kept_dtype(g.precision),
            Shape::from((g.batch, g.tokens, 3 * g.width)),
        )?;
        let out = with_values(&qkv, self.name(), |qkv| self.attention.forward(qkv))?;
        self.qkv.keep(qkv, self.name())?;
        Ok((CpuStorage::F32(out), Shape::from((g.batch, g.tokens, g.width))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        vectors: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let qkv = self.qkv.get(self.name())?;
        self.first.grads(x, weight, vectors, &self.attention.qkv_grad(qkv, grad)?)
    }
}

/// `(qkv, dout)` -> the packed `d(qkv)` of [`Attention`], in the dtype of `qkv`.
struct AttentionBackward<'a> {
    forward: &'a Attention,
}

impl candle_core::CustomOp2 for AttentionBackward<'_> {
    fn name(&self) -> &'static str {
        "attention-backward"
    }

    fn cpu_fwd(
        &self,
        qkv_storage: &CpuStorage,
        qkv_layout: &Layout,
        grad_storage: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = Values::of(qkv_storage, qkv_layout, self.name())?;
        let dout = contiguous_f32(grad_storage, grad_layout, self.name())?;
        let g = self.forward.geometry;
        let (n_in, n_out) = (g.packed_block_len(), g.out_block_len());
        let dqkv = g.by_batch_elements(n_in, |b, dqkv| {
            let (qkv, dout) = (&qkv.widened(b * n_in..(b + 1) * n_in), &dout[b * n_out..(b + 1) * n_out]);
            for h in 0..g.heads {
                self.head_backward(h, qkv, dout, dqkv);
            }
        });
        Ok((storage_of(dqkv, qkv.dtype()), qkv_layout.shape().clone()))
    }
}

impl AttentionBackward<'_> {
    /// Head `h` of one batch element: writes its q, k and v columns of `dqkv`.
    fn head_backward(&self, h: usize, qkv: &[f32], dout: &[f32], dqkv: &mut [f32]) {
        let g = &self.forward.geometry;
        let (square, out_head, precision) = (g.square(), g.out_head(h), g.precision);
        let [q, k, v] = [Part::Query, Part::Key, Part::Value].map(|part| g.packed_head(part, h));
        let probabilities = head_probabilities(g, h, qkv, self.forward.mask.as_deref());
        matmul_into(precision, dqkv, v, (&probabilities, square.transposed()), (dout, out_head), 1.0);
        let mut dscores = product(precision, (dout, out_head), (qkv, v.transposed()));
        for (ds, p) in dscores.chunks_exact_mut(g.tokens).zip(probabilities.chunks_exact(g.tokens)) {
            let dp_dot_p = lane_sum2(ds, p, |d, p| d * p);
            ds.iter_mut().zip(p).for_each(|(d, &p)| *d = p * (*d - dp_dot_p));
        }
        matmul_into(precision, dqkv, q, (&dscores, square), (qkv, k), g.scale);
        matmul_into(precision, dqkv, k, (&dscores, square.transposed()), (qkv, q), g.scale);
    }
}
