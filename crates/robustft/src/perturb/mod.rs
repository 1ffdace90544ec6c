//! Robustness to small input perturbations (after Heuillet et al., "A Guide to Robust
//! Generalization: The Impact of Architecture, Pre-training, and Optimization Strategy",
//! arXiv 2508.14079): attacks and corruptions in pixel space, and the threat models that name
//! them.
//!
//! The paper's exact five perturbation types are not confirmed; the five families here are
//! this project's choice: ℓ∞, ℓ2 and ℓ1 attacks (PGD, Madry et al. 2018; APGD-CE and APGD-DLR,
//! Croce & Hein 2020, for ℓ∞ and ℓ2), common corruptions (ImageNet-C's formulas and
//! severities, Hendrycks & Dietterich 2019) and a spatial attack (the worst of a grid of small
//! rotations and translations, Engstrom et al. 2019).
//!
//! Every perturbation acts on images in pixel space `[0, 1]`, **before** the CLIP mean/std
//! normalisation, so ε is a pixel-space budget as in RobustBench; [`PixelSpace`] converts the
//! loaders' normalised tensors to pixels and back, and its normalisation is a differentiable
//! step of the attacked model's input path ([`PixelClassifier`]).

pub mod apgd;
pub mod corruptions;
pub mod pgd;
pub mod spatial;
pub mod threat;

use candle_core::{Tensor, Var};

use crate::clip::preprocess::ClipPreprocess;
use crate::error::{Error, Result};
use crate::losses::log_softmax;

/// A classifier of pixel-space images, differentiable with respect to them.
pub trait PixelClassifier {
    /// `pixels` `[n, 3, s, s]` in `[0, 1]` -> logits `[n, k]` (or log-probabilities, for a
    /// predictor that mixes probabilities), with a graph back to `pixels`.
    fn logits(&self, pixels: &Tensor) -> Result<Tensor>;
}

/// The per-channel normalisation between pixel space and the model's input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelSpace {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl PixelSpace {
    /// The normalisation of a preprocessing.
    pub fn of(preprocess: &ClipPreprocess) -> Self {
        Self { mean: preprocess.mean, std: preprocess.std }
    }

    fn channel_tensors(&self, like: &Tensor) -> Result<(Tensor, Tensor)> {
        let column = |v: [f32; 3]| Tensor::from_slice(&v, (1, 3, 1, 1), like.device());
        Ok((column(self.mean)?.to_dtype(like.dtype())?, column(self.std)?.to_dtype(like.dtype())?))
    }

    /// Normalised images `[n, 3, s, s]` -> pixels `x·std + mean`.
    pub fn to_pixels(&self, normalised: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.channel_tensors(normalised)?;
        Ok(normalised.broadcast_mul(&std)?.broadcast_add(&mean)?)
    }

    /// Pixels `[n, 3, s, s]` -> the model's input `(x − mean)/std` (differentiable).
    pub fn normalise(&self, pixels: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.channel_tensors(pixels)?;
        Ok(pixels.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }
}

/// The loss an attack ascends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttackLoss {
    /// Cross-entropy of the logits against class indices.
    CrossEntropy,
    /// Difference-of-logits ratio (Croce & Hein 2020, eq. 6) against class indices.
    Dlr,
    /// Cross-entropy against target probabilities `[n, k]` (TRADES' inner maximisation: the
    /// KL divergence from the clean prediction up to a constant).
    SoftCrossEntropy,
    /// Squared L2 distance of the outputs to target vectors `[n, d]` (FARE's embeddings).
    SquaredDistance,
}

/// Per-example loss values `[n]` of `outputs` `[n, k]` against `targets`: class indices `[n]`
/// (u32) for cross-entropy and DLR, target rows `[n, k]` (f32) for the other two.
pub fn per_example_loss(loss: AttackLoss, outputs: &Tensor, targets: &Tensor) -> Result<Tensor> {
    match loss {
        AttackLoss::CrossEntropy => {
            Ok(log_softmax(outputs)?.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?)
        }
        AttackLoss::Dlr => apgd::dlr_loss(outputs, targets),
        AttackLoss::SoftCrossEntropy => Ok((targets * log_softmax(outputs)?)?.sum(1)?.neg()?),
        AttackLoss::SquaredDistance => Ok((outputs - targets)?.sqr()?.sum(1)?),
    }
}

/// The seed of one example's random draws: a function of the run's `seed` and the example's
/// `key` only, so a result does not depend on batching.
pub fn example_seed(seed: u64, key: u64) -> u64 {
    crate::rng::SplitMix64::new(seed ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

/// One evaluation of an attack's objective at `pixels`: the per-example losses, the logits
/// and the gradient of the mean loss with respect to the pixels.
pub struct Probe {
    pub losses: Vec<f32>,
    pub logits: Vec<Vec<f32>>,
    /// `[n, 3, s, s]`, the gradient of the batch-mean loss.
    pub gradient: Tensor,
}

/// Forward and backward of `classifier` at `pixels` for `loss` (the mean over the batch, as
/// torchattacks differentiates it).
pub fn probe(
    classifier: &dyn PixelClassifier,
    pixels: &Tensor,
    labels: &Tensor,
    loss: AttackLoss,
) -> Result<Probe> {
    let input = Var::from_tensor(&pixels.detach())?;
    let logits = classifier.logits(input.as_tensor())?;
    let losses = per_example_loss(loss, &logits, labels)?;
    let mean = losses.mean_all()?;
    let grads = mean.backward()?;
    let gradient = grads.get(input.as_tensor()).cloned().ok_or_else(|| Error::Invalid {
        what: "the attacked model".into(),
        reason: "its output does not depend on the input pixels".into(),
    })?;
    Ok(Probe { losses: losses.to_vec1::<f32>()?, logits: logits.detach().to_vec2::<f32>()?, gradient })
}

/// The predicted class of every row of `logits`.
pub fn argmax_rows(logits: &[Vec<f32>]) -> Vec<usize> {
    logits
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (k, &v)| if v > best.1 { (k, v) } else { best })
                .0
        })
        .collect()
}

/// A pixel-space budget: a number (`0.0157`) or a fraction (`4/255`).
pub fn parse_budget(text: &str) -> std::result::Result<f64, String> {
    let text = text.trim();
    let value = match text.split_once('/') {
        Some((num, den)) => {
            let (num, den) = (parse_number(num, text)?, parse_number(den, text)?);
            if den == 0.0 {
                return Err(format!("ε = {text} divides by zero"));
            }
            num / den
        }
        None => parse_number(text, text)?,
    };
    if value < 0.0 {
        return Err(format!("ε = {text} is negative; a budget is ≥ 0"));
    }
    Ok(value)
}

fn parse_number(part: &str, whole: &str) -> std::result::Result<f64, String> {
    match part.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("ε = {whole} is not a number or a fraction like 4/255")),
    }
}

/// A budget as people write it: `2/255` for a multiple of 1/255 below 1, else the number.
pub fn format_budget(eps: f64) -> String {
    let levels = eps * 255.0;
    match eps > 0.0 && eps < 1.0 && (levels - levels.round()).abs() < 1e-6 {
        true => format!("{}/255", levels.round()),
        false => format!("{eps}"),
    }
}

/// A comma-separated list of budgets (`0,1/255,2/255`).
pub fn parse_budgets(text: &str) -> std::result::Result<Vec<f64>, String> {
    text.split(',').map(parse_budget).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_print_as_fractions_of_255_when_they_are() {
        assert_eq!(format_budget(2.0 / 255.0), "2/255");
        assert_eq!(format_budget(0.5), "0.5");
        assert_eq!(format_budget(0.0), "0");
        assert_eq!(format_budget(30.0), "30");
        assert_eq!(parse_budget(&format_budget(4.0 / 255.0)).unwrap(), 4.0 / 255.0);
    }
}
