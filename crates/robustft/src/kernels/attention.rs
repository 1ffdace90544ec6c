//! Fused multi-head scaled dot-product attention (Vaswani et al. 2017, `softmax(q kᵀ / √d +
//! mask) v` per head) over the `[b, t, width]` outputs of separate q/k/v projections.
//!
//! The kernel reads each head's columns of q, k and v in place and writes its output straight
//! into the merged `[b, t, width]` layout, so no head split, transpose or `contiguous` copy is
//! materialised and no `[b, heads, t, t]` score tensor is kept for the backward pass. Per
//! batch element and head it runs two strided `gemm` calls around an in-place (masked)
//! softmax; the backward recomputes the probabilities and yields `dq`, `dk`, `dv` with five
//! more (`dP = dO vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dq = dS k / √d`, `dk = dSᵀ q / √d`,
//! `dv = Pᵀ dO`). Batch elements run in parallel.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::rows::{contiguous_f32, fused_applies, lane_sum2, rows_per_block};
use super::softmax::{masked_softmax_last_dim, softmax_last_dim, softmax_row_in_place};

/// Attention of `q`, `k`, `v` (`[b, t, width]`, `heads` heads of `width / heads` columns) with
/// an optional additive `mask` (`[t, t]`) -> `[b, t, width]`, heads merged.
///
/// A mask that is itself trained (tracks gradients) goes through the unfused path, as do
/// tensors off the CPU or not f32.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, mask: Option<&Tensor>) -> Result<Tensor> {
    let geometry = Geometry::of(q, heads)?;
    if k.dims() != q.dims() || v.dims() != q.dims() {
        candle_core::bail!("attention: q {:?}, k {:?} and v {:?} differ", q.dims(), k.dims(), v.dims());
    }
    let constant_mask = mask.is_none_or(|m| !m.track_op() && fused_applies(&[m]));
    if !constant_mask || !fused_applies(&[q, k, v]) {
        return unfused_attention(q, k, v, geometry, mask);
    }
    let mask = mask.map(|m| mask_rows(m, geometry.tokens)).transpose()?;
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, Attention { geometry, mask })
}

/// The head-split formulation from tensor ops (with the softmax kernels).
fn unfused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    geometry: Geometry,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let Geometry { batch, tokens, width, heads, head_dim, scale } = geometry;
    let split_heads = |y: &Tensor| y.reshape((batch, tokens, heads, head_dim))?.transpose(1, 2)?.contiguous();
    let scores = (split_heads(q)? * f64::from(scale))?.matmul(&split_heads(k)?.t()?)?;
    let probabilities = match mask {
        Some(m) => masked_softmax_last_dim(&scores, m)?,
        None => softmax_last_dim(&scores)?,
    };
    probabilities.matmul(&split_heads(v)?)?.transpose(1, 2)?.reshape((batch, tokens, width))
}

/// The `[t, t]` mask as row-major values.
fn mask_rows(mask: &Tensor, tokens: usize) -> Result<Vec<f32>> {
    if mask.dims() != [tokens, tokens] {
        candle_core::bail!("attention: mask of shape {:?} does not fit {tokens} tokens", mask.dims());
    }
    mask.flatten_all()?.to_vec1()
}

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    tokens: usize,
    width: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
}

impl Geometry {
    fn of(q: &Tensor, heads: usize) -> Result<Self> {
        let (batch, tokens, width) = q.dims3()?;
        if heads == 0 || width % heads != 0 {
            candle_core::bail!("attention: width {width} does not split into {heads} heads");
        }
        let head_dim = width / heads;
        Ok(Self { batch, tokens, width, heads, head_dim, scale: (head_dim as f32).powf(-0.5) })
    }

    /// Elements of one batch element's `[t, width]` block.
    fn block_len(&self) -> usize {
        self.tokens * self.width
    }

    /// Head `h`'s `[t, head_dim]` columns of a `[t, width]` block.
    fn head(&self, h: usize) -> View {
        View {
            offset: h * self.head_dim,
            rows: self.tokens,
            cols: self.head_dim,
            row_stride: self.width,
            col_stride: 1,
        }
    }

    /// A dense row-major `[t, t]` matrix.
    fn square(&self) -> View {
        View { offset: 0, rows: self.tokens, cols: self.tokens, row_stride: self.tokens, col_stride: 1 }
    }

    /// Batch elements per parallel task.
    fn batches_per_task(&self) -> usize {
        rows_per_block(self.block_len())
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
}

/// `dst[d] = scale · lhs[l] · rhs[r]`, overwriting `d` (single-threaded `gemm`).
fn matmul_into(dst: &mut [f32], d: View, lhs: &[f32], l: View, rhs: &[f32], r: View, scale: f32) {
    assert!(l.rows == d.rows && r.cols == d.cols && l.cols == r.rows, "attention: matmul shapes");
    assert!(d.fits(dst.len()) && l.fits(lhs.len()) && r.fits(rhs.len()), "attention: matmul bounds");
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

/// `probabilities ← softmax(scale · q_h k_hᵀ + mask)` for head `h` of one batch element.
fn head_probabilities(
    g: &Geometry,
    h: usize,
    q: &[f32],
    k: &[f32],
    mask: Option<&[f32]>,
    probabilities: &mut [f32],
) {
    let head = g.head(h);
    matmul_into(probabilities, g.square(), q, head, k, head.transposed(), g.scale);
    for (i, row) in probabilities.chunks_exact_mut(g.tokens).enumerate() {
        if let Some(mask) = mask {
            row.iter_mut().zip(&mask[i * g.tokens..(i + 1) * g.tokens]).for_each(|(s, &m)| *s += m);
        }
        softmax_row_in_place(row);
    }
}

/// `(q, k, v)` -> merged-head attention output.
struct Attention {
    geometry: Geometry,
    mask: Option<Vec<f32>>,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            contiguous_f32(qs, ql, self.name())?,
            contiguous_f32(ks, kl, self.name())?,
            contiguous_f32(vs, vl, self.name())?,
        );
        let g = self.geometry;
        let n = g.block_len();
        let mut out = vec![0f32; q.len()];
        out.par_chunks_mut(n).enumerate().with_min_len(g.batches_per_task()).for_each_init(
            || vec![0f32; g.tokens * g.tokens],
            |probabilities, (b, out)| {
                let (q, k, v) = (&q[b * n..(b + 1) * n], &k[b * n..(b + 1) * n], &v[b * n..(b + 1) * n]);
                for h in 0..g.heads {
                    head_probabilities(&g, h, q, k, self.mask.as_deref(), probabilities);
                    matmul_into(out, g.head(h), probabilities, g.square(), v, g.head(h), 1.0);
                }
            },
        );
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let guards = [q, k, v, &grad].map(|t| t.storage_and_layout());
        let slices = guards
            .iter()
            .map(|(storage, layout)| match &**storage {
                Storage::Cpu(cpu) => contiguous_f32(cpu, layout, "attention-backward"),
                _ => candle_core::bail!("attention-backward: expects CPU tensors"),
            })
            .collect::<Result<Vec<_>>>()?;
        let (dq, dk, dv) = self.backward([slices[0], slices[1], slices[2], slices[3]]);
        let tensor = |values: Vec<f32>| Tensor::from_vec(values, q.shape(), q.device());
        Ok((Some(tensor(dq)?), Some(tensor(dk)?), Some(tensor(dv)?)))
    }
}

impl Attention {
    /// `dq`, `dk`, `dv` from the inputs and the output gradient `dout`.
    fn backward(&self, [q, k, v, dout]: [&[f32]; 4]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let g = self.geometry;
        let n = g.block_len();
        let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; q.len()], vec![0f32; q.len()]);
        let blocks = dq.par_chunks_mut(n).zip(dk.par_chunks_mut(n)).zip(dv.par_chunks_mut(n));
        blocks.enumerate().with_min_len(g.batches_per_task()).for_each_init(
            || (vec![0f32; g.tokens * g.tokens], vec![0f32; g.tokens * g.tokens]),
            |(probabilities, dscores), (b, ((dq, dk), dv))| {
                let range = b * n..(b + 1) * n;
                let inputs = [&q[range.clone()], &k[range.clone()], &v[range.clone()], &dout[range]];
                for h in 0..g.heads {
                    self.head_backward(h, inputs, probabilities, dscores, [&mut *dq, &mut *dk, &mut *dv]);
                }
            },
        );
        (dq, dk, dv)
    }

    /// Head `h` of one batch element: writes its columns of `dq`, `dk`, `dv`.
    fn head_backward(
        &self,
        h: usize,
        [q, k, v, dout]: [&[f32]; 4],
        probabilities: &mut [f32],
        dscores: &mut [f32],
        [dq, dk, dv]: [&mut [f32]; 3],
    ) {
        let g = &self.geometry;
        let (head, square) = (g.head(h), g.square());
        head_probabilities(g, h, q, k, self.mask.as_deref(), probabilities);
        matmul_into(dv, head, probabilities, square.transposed(), dout, head, 1.0);
        matmul_into(dscores, square, dout, head, v, head.transposed(), 1.0);
        for (ds, p) in dscores.chunks_exact_mut(g.tokens).zip(probabilities.chunks_exact(g.tokens)) {
            let dp_dot_p = lane_sum2(ds, p, |d, p| d * p);
            ds.iter_mut().zip(p).for_each(|(d, &p)| *d = p * (*d - dp_dot_p));
        }
        matmul_into(dq, head, dscores, square, k, head, g.scale);
        matmul_into(dk, head, dscores, square.transposed(), q, head, g.scale);
    }
}
