//! End-to-end fine-tuning with cross-entropy (methods.md §2.3, "FT"/ERM): the image tower and
//! a linear head initialised from the zero-shot head (§0.1: class embeddings × exp(s)) are
//! trained with AdamW under a cosine schedule with warm-up; the image feature is L2-normalised
//! inside the head, as in the zero-shot head. The text tower is not used.
//!
//! The data are pre-rendered, preprocessed images in memory; the epoch order is a Fisher–Yates
//! shuffle seeded by `seed + epoch`, so a fixed seed gives the same weights.

use candle_core::{Tensor, Var};

use super::schedule::CosineSchedule;
use crate::clip::layers::l2_normalize;
use crate::clip::ClipModel;
use crate::data::epoch_order;
use crate::error::Result;
use crate::losses::cross_entropy;
use crate::optim::{default_groups, AdamW, AdamWConfig};

/// Preprocessed images (`[n, 3, s, s]` row-major) with their labels.
pub struct ImageSet {
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
    pub image_size: usize,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn batch(&self, indices: &[usize], model: &ClipModel) -> Result<(Tensor, Tensor)> {
        let per_image = 3 * self.image_size * self.image_size;
        let mut pixels = Vec::with_capacity(indices.len() * per_image);
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i * per_image..(i + 1) * per_image]);
        }
        let size = self.image_size;
        let images = Tensor::from_vec(pixels, (indices.len(), 3, size, size), model.device())?;
        let labels =
            Tensor::new(indices.iter().map(|&i| self.labels[i]).collect::<Vec<_>>(), model.device())?;
        Ok((images, labels))
    }
}

/// Hyper-parameters of a fine-tuning run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FinetuneConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub seed: u64,
}

/// A linear head over L2-normalised image features: `logits = normalize(f) · Wᵀ`.
pub struct LinearHead {
    pub weight: Var,
}

impl LinearHead {
    /// A trainable copy of `weights` (`[classes, embed_dim]`, e.g. a zero-shot head's).
    pub fn new(weights: &Tensor) -> Result<Self> {
        Ok(Self { weight: Var::from_tensor(&weights.detach().copy()?)? })
    }

    /// `features`: `[n, embed_dim]` -> `[n, classes]`.
    pub fn logits(&self, features: &Tensor) -> Result<Tensor> {
        Ok(l2_normalize(features)?.matmul(&self.weight.as_tensor().t()?)?)
    }
}

/// Fine-tunes `model`'s image tower and `head` in place; returns the mean loss of each epoch.
pub fn finetune(
    model: &ClipModel,
    head: &LinearHead,
    data: &ImageSet,
    config: &FinetuneConfig,
) -> Result<Vec<f32>> {
    let steps_per_epoch = data.len().div_ceil(config.batch_size);
    let schedule = CosineSchedule {
        base_lr: config.lr,
        min_lr: 0.0,
        warmup_steps: config.warmup_steps,
        total_steps: (steps_per_epoch * config.epochs) as u64,
    };
    let mut params = default_groups(model.image_tower_params());
    params.push(("head.weight".into(), head.weight.clone(), true));
    let adamw = AdamWConfig { lr: config.lr, weight_decay: config.weight_decay, ..Default::default() };
    let mut optimizer = AdamW::new(params, adamw)?;
    let mut step = 0u64;
    let mut epoch_losses = Vec::with_capacity(config.epochs);
    for epoch in 0..config.epochs {
        let order = epoch_order(data.len(), Some(config.seed.wrapping_add(epoch as u64)));
        let mut total = 0f32;
        for indices in order.chunks(config.batch_size) {
            optimizer.set_lr(schedule.lr(step));
            let (images, labels) = data.batch(indices, model)?;
            let loss = cross_entropy(&head.logits(&model.encode_image(&images)?)?, &labels)?;
            optimizer.step(&loss.backward()?)?;
            total += loss.to_scalar::<f32>()?;
            step += 1;
        }
        epoch_losses.push(total / steps_per_epoch as f32);
    }
    Ok(epoch_losses)
}
