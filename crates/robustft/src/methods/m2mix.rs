//! m²-mix, Geodesic Multi-Modal Mixup (Oh et al., NeurIPS 2023; methods.md §3.1; checked
//! against the behaviour of changdaeoh/multimodal-mixup: the README's open_clip `ClipLoss`
//! with `mmix > 0` and `main.py`'s `--mmmix` branch): an extra contrastive term whose negatives
//! are *hard*: points on the unit sphere between each image embedding and its paired text
//! embedding.
//!
//! With L2-normalised image and text embeddings `I_i`, `T_i` of a batch of B pairs and the
//! learned scale `exp(s)`:
//!
//! * slerp `m_i = [sin(λθ_i)·I_i + sin((1 − λ)θ_i)·T_i] / sin θ_i`, `θ_i = arccos⟨I_i, T_i⟩`
//!   (the cosine clamped to `[−1 + 1e-6, 1 − 1e-6]`), one `λ ~ Beta(β_m, β_m)` per optimiser
//!   step (seeded by the run's seed and the step, so a resumed run draws the same λ; the
//!   micro-batches of one step share it); gradients flow through `m` into both towers;
//! * image side: logits `exp(s)·⟨I_i, T_i⟩` on the diagonal and `g(⟨I_i, m_j⟩)` off it; text
//!   side: `exp(s)·⟨T_i, I_i⟩` and `g(⟨T_i, m_j⟩)`; targets the diagonal;
//! * `L = L_CLIP + w_mix · ½[CE(image side) + CE(text side)]`.
//!
//! Options where the sources disagree (methods.md §3.1 leaves them open):
//! * [`TauUse`] — `g(c) = c/τ_m` (`divide`, the default: `main.py` uses its `tau` as a
//!   temperature, `1/tau` multiplying the cosines) or `g(c) = τ_m·c` (`multiply`: the README
//!   snippet's literal `m_tau * image_features @ mixed_neg.T`, which with τ_m = 0.01 makes the
//!   negatives' logits nearly 0); τ_m = 0.01 by default;
//! * [`MixSchedule`] — `w_mix` constant (default, as the README) or divided by `epoch + 1`
//!   (`main.py --schedule`, which the authors' sweep script sets);
//! * the ½ of the README (`main.py` sums the two sides instead: a factor of 2 in `w_mix`).
//!
//! Defaults β_m = 0.5 and τ_m = 0.01 follow `scripts/m2mix.sh`; its sweep of `w_mix` is
//! {0.05, 0.01, 0.005, 0.001}.
//!
//! `arccos` is not a candle operation: θ is evaluated on the host and enters the graph as
//! `θ₀ + (c − sg(c))·(−1/√(1 − c₀²))`, exact in value and in first derivative.

use candle_core::{DType, Tensor, D};

use super::registry::TermEntry;
use crate::clip::layers::l2_normalize;
use crate::error::Result;
use crate::losses::cross_entropy;
use crate::rng::SplitMix64;
use crate::sections::Sections;

/// Margin that keeps the clamped cosine away from ±1 (where sin θ = 0).
const COSINE_MARGIN: f64 = 1e-6;

/// How τ_m scales the mixed negatives' cosines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TauUse {
    Divide,
    Multiply,
}

/// The m²-mix weight over epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MixSchedule {
    Constant,
    InverseEpoch,
}

/// The registry's entry of the term `[m2mix]` (taken by FLYP, and DRM with its FLYP ERM term).
pub const TERM: TermEntry = TermEntry { section: "m2mix", refuse };

/// `[m2mix]`: a weight of 0 turns the term off.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct M2mixSection {
    /// w_mix: the term's weight.
    pub weight: f64,
    /// β_m: the mixing ratio λ ~ Beta(β_m, β_m), one draw per step.
    pub beta: f64,
    /// τ_m of the mixed negatives' logits.
    pub tau: f64,
    /// Whether the negatives' cosines are divided by τ_m (default) or multiplied by it.
    pub tau_use: TauUse,
    /// The term's weight over training: constant, or divided by (epoch + 1).
    pub schedule: MixSchedule,
}

impl Default for M2mixSection {
    fn default() -> Self {
        Self { weight: 0.0, beta: 0.5, tau: 0.01, tau_use: TauUse::Divide, schedule: MixSchedule::Constant }
    }
}

impl M2mixSection {
    /// Reads and checks `[m2mix]` for a method that takes it: the term, when it is on.
    pub fn read(sections: &mut Sections) -> std::result::Result<Option<Self>, String> {
        let section: Self = sections.read(TERM.section)?;
        section.check_weight()?;
        if section.weight == 0.0 {
            return Ok(None);
        }
        let positive = |x: f64| x > 0.0 && x.is_finite();
        if !(positive(section.beta) && positive(section.tau)) {
            return Err(format!(
                "m2mix.beta and m2mix.tau must be positive ({}, {})",
                section.beta, section.tau
            ));
        }
        Ok(Some(section))
    }

    fn check_weight(&self) -> std::result::Result<(), String> {
        match self.weight >= 0.0 && self.weight.is_finite() {
            true => Ok(()),
            false => Err(format!("m2mix.weight = {} must be a finite number ≥ 0", self.weight)),
        }
    }

    /// The term of a run seeded by `seed`.
    pub fn term(&self, seed: u64) -> M2Mix {
        M2Mix {
            weight: self.weight,
            beta: self.beta,
            tau: self.tau,
            tau_use: self.tau_use,
            schedule: self.schedule,
            seed,
        }
    }
}

/// `[m2mix]` on a method that does not take it: an error when it turns the term on.
fn refuse(sections: &Sections, method: &str) -> std::result::Result<(), String> {
    let section: M2mixSection = sections.peek(TERM.section)?;
    section.check_weight()?;
    match section.weight > 0.0 {
        true => Err(format!(
            "m2mix needs a contrastive objective (method flyp, or drm with drm.erm = \"flyp\"), not {method}"
        )),
        false => Ok(()),
    }
}

/// m²-mix's settings; attached to a contrastive objective ([`super::flyp::Flyp`]).
#[derive(Clone, Debug)]
pub struct M2Mix {
    /// w_mix.
    pub weight: f64,
    /// β_m.
    pub beta: f64,
    /// τ_m.
    pub tau: f64,
    pub tau_use: TauUse,
    pub schedule: MixSchedule,
    /// The run's seed (λ of step t is drawn from a stream seeded by (seed, t)).
    pub seed: u64,
}

impl M2Mix {
    /// The mixing ratio λ of optimiser step `step`.
    pub fn lambda(&self, step: u64) -> f64 {
        let mut rng = SplitMix64::new(self.seed ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03));
        sample_beta(&mut rng, self.beta)
    }

    /// The term's weight in `epoch` (from 0).
    pub fn weight_at(&self, epoch: usize) -> f64 {
        match self.schedule {
            MixSchedule::Constant => self.weight,
            MixSchedule::InverseEpoch => self.weight / (epoch + 1) as f64,
        }
    }

    /// `w_mix(epoch) · L_mix` of one (micro-)batch of paired, unnormalised features.
    pub fn loss(
        &self,
        image_features: &Tensor,
        text_features: &Tensor,
        logit_scale: &Tensor,
        epoch: usize,
        step: u64,
    ) -> Result<Tensor> {
        let negatives = NegativeScale { tau: self.tau, tau_use: self.tau_use };
        let mix = m2mix_loss(image_features, text_features, logit_scale, self.lambda(step), negatives)?;
        Ok((mix * self.weight_at(epoch))?)
    }
}

/// How the mixed negatives' cosines become logits.
#[derive(Clone, Copy, Debug)]
pub struct NegativeScale {
    pub tau: f64,
    pub tau_use: TauUse,
}

impl NegativeScale {
    fn apply(&self, cosines: &Tensor) -> Result<Tensor> {
        Ok(match self.tau_use {
            TauUse::Divide => (cosines / self.tau)?,
            TauUse::Multiply => (cosines * self.tau)?,
        })
    }
}

/// The unweighted m²-mix term `½[CE(image side) + CE(text side)]` of paired, unnormalised
/// features `[B, d]` with mixing ratio `lambda`.
pub fn m2mix_loss(
    image_features: &Tensor,
    text_features: &Tensor,
    logit_scale: &Tensor,
    lambda: f64,
    negatives: NegativeScale,
) -> Result<Tensor> {
    let image = l2_normalize(image_features)?;
    let text = l2_normalize(text_features)?;
    let mixed = slerp(&image, &text, lambda)?;
    let n = image.dim(0)?;
    let eye = Tensor::eye(n, DType::F32, image.device())?;
    let off_diagonal = eye.affine(-1.0, 1.0)?;
    let positives = (&image * &text)?.sum_keepdim(D::Minus1)?.broadcast_mul(&logit_scale.exp()?)?;
    let side = |anchors: &Tensor| -> Result<Tensor> {
        let negative_logits = negatives.apply(&anchors.matmul(&mixed.t()?)?)?;
        Ok((eye.broadcast_mul(&positives)? + negative_logits.mul(&off_diagonal)?)?)
    };
    let targets = Tensor::arange(0u32, n as u32, image.device())?;
    let image_side = cross_entropy(&side(&image)?, &targets)?;
    let text_side = cross_entropy(&side(&text)?, &targets)?;
    Ok(((image_side + text_side)? * 0.5)?)
}

/// Geodesic interpolation of unit rows `a`, `b` `[B, d]`:
/// `[sin(λθ)·a + sin((1 − λ)θ)·b] / sin θ`, θ = arccos⟨a, b⟩ per row (clamped).
pub fn slerp(a: &Tensor, b: &Tensor, lambda: f64) -> Result<Tensor> {
    let limit = 1.0 - COSINE_MARGIN;
    let cosine = (a * b)?.sum_keepdim(D::Minus1)?.clamp(-limit, limit)?;
    let theta = arccos(&cosine)?;
    let weight_a = (&theta * lambda)?.sin()?;
    let weight_b = (&theta * (1.0 - lambda))?.sin()?;
    let sin_theta = theta.sin()?;
    Ok((a.broadcast_mul(&weight_a)? + b.broadcast_mul(&weight_b)?)?.broadcast_div(&sin_theta)?)
}

/// Differentiable `arccos` of values in (−1, 1): the value from the host, the derivative
/// `−1/√(1 − c²)` through the graph.
fn arccos(cosine: &Tensor) -> Result<Tensor> {
    let values = cosine.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let device = cosine.device();
    let as_tensor = |v: Vec<f64>| -> Result<Tensor> {
        Ok(Tensor::from_vec(v, cosine.shape(), device)?.to_dtype(cosine.dtype())?)
    };
    let angle = as_tensor(values.iter().map(|c| c.acos()).collect())?;
    let slope = as_tensor(values.iter().map(|c| -1.0 / (1.0 - c * c).sqrt()).collect())?;
    Ok((angle + (cosine - cosine.detach())?.mul(&slope)?)?)
}

/// A Beta(β, β) sample: `X/(X + Y)` with X, Y ~ Gamma(β).
pub fn sample_beta(rng: &mut SplitMix64, beta: f64) -> f64 {
    let x = sample_gamma(rng, beta);
    let y = sample_gamma(rng, beta);
    x / (x + y)
}

/// A Gamma(shape, 1) sample (Marsaglia & Tsang 2000; shape < 1 through
/// `Gamma(shape + 1) · U^(1/shape)`).
fn sample_gamma(rng: &mut SplitMix64, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = 1.0 - rng.uniform();
        return sample_gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = rng.normal() as f64;
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = 1.0 - rng.uniform();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_samples_have_the_moments_of_beta() {
        let mut rng = SplitMix64::new(11);
        for beta in [0.5, 2.0] {
            let xs: Vec<f64> = (0..40000).map(|_| sample_beta(&mut rng, beta)).collect();
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
            let want_var = 1.0 / (4.0 * (2.0 * beta + 1.0));
            assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
            assert!((mean - 0.5).abs() < 0.01, "β {beta}: mean {mean}");
            assert!((var - want_var).abs() < 0.05 * want_var, "β {beta}: variance {var} vs {want_var}");
        }
    }

    #[test]
    fn lambda_is_a_function_of_the_step_alone() {
        let mix = M2Mix {
            weight: 0.1,
            beta: 0.5,
            tau: 0.01,
            tau_use: TauUse::Divide,
            schedule: MixSchedule::Constant,
            seed: 3,
        };
        assert_eq!(mix.lambda(17), mix.lambda(17));
        assert_ne!(mix.lambda(17), mix.lambda(18));
        assert_ne!(mix.lambda(17), M2Mix { seed: 4, ..mix.clone() }.lambda(17));
    }

    #[test]
    fn the_inverse_epoch_schedule_divides_the_weight() {
        let mix = M2Mix {
            weight: 0.3,
            beta: 0.5,
            tau: 0.01,
            tau_use: TauUse::Divide,
            schedule: MixSchedule::InverseEpoch,
            seed: 0,
        };
        assert_eq!((mix.weight_at(0), mix.weight_at(3)), (0.3, 0.075));
        assert_eq!(M2Mix { schedule: MixSchedule::Constant, ..mix }.weight_at(3), 0.3);
    }
}
