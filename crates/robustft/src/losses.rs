//! Differentiable losses shared by the methods: cross-entropy with hard or soft targets and
//! the symmetric contrastive (InfoNCE) loss of CLIP / FLYP (open_clip `ClipLoss` with one
//! process: ½[CE(T·I·Tᵀ, diag) + CE(T·T·Iᵀ, diag)], T = exp(logit_scale)).

use candle_core::{Result, Tensor, D};

use crate::clip::layers::l2_normalize;

/// Row-wise log-softmax from differentiable primitives.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?.detach())?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

/// Mean cross-entropy of `logits` `[n, k]` against class indices `targets` `[n]` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let picked = log_softmax(logits)?.gather(&targets.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// The symmetric contrastive loss of a batch of paired, unnormalised features:
/// pair `i` is the positive of row and column `i`; every other entry is a negative.
pub fn clip_contrastive_loss(
    image_features: &Tensor,
    text_features: &Tensor,
    logit_scale: &Tensor,
) -> Result<Tensor> {
    let image = l2_normalize(image_features)?;
    let text = l2_normalize(text_features)?;
    let logits = image.matmul(&text.t()?)?.broadcast_mul(&logit_scale.exp()?)?;
    let n = logits.dim(0)?;
    let targets = Tensor::arange(0u32, n as u32, logits.device())?;
    let image_to_text = cross_entropy(&logits, &targets)?;
    let text_to_image = cross_entropy(&logits.t()?, &targets)?;
    (image_to_text + text_to_image)? * 0.5
}
