//! Threat models as the command line and recipes name them (`linf`, `l2`, `l1`, `apgd-ce`,
//! `apgd-dlr`, `apgd-ce-l2`, `apgd-dlr-l2`, `spatial`, `corruption:<name>`, and `corruptions`
//! for all nine corruptions), and one perturbation — a threat at a budget — applied to a batch
//! of pixel-space images.
//!
//! Randomness (attack starts, corruption noise) is drawn per example from a stream seeded by
//! the perturbation's seed and the example's key, so a result does not depend on batching.

use candle_core::Tensor;

use super::apgd::{self, Apgd};
use super::corruptions::{self, Corruption};
use super::pgd::{self, Norm, Pgd};
use super::{example_seed, spatial, AttackLoss, PixelClassifier};
use crate::error::Result;

/// A family of perturbations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threat {
    /// PGD in an ℓp ball.
    Pgd(Norm),
    /// APGD (ℓ∞ or ℓ2) with cross-entropy or DLR.
    Apgd { norm: Norm, loss: AttackLoss },
    /// The worst of a grid of rotations and translations (`eps`: the largest rotation, degrees).
    Spatial,
    /// A common corruption (`eps`: its severity, 1–5).
    Corruption(Corruption),
}

/// Every threat name but the corruptions'.
const ATTACK_NAMES: [&str; 8] =
    ["linf", "l2", "l1", "apgd-ce", "apgd-dlr", "apgd-ce-l2", "apgd-dlr-l2", "spatial"];

impl Threat {
    /// Reads one name (`corruption:<name>` for a corruption).
    pub fn parse(name: &str) -> std::result::Result<Threat, String> {
        let apgd = |norm, loss| Threat::Apgd { norm, loss };
        Ok(match name.trim() {
            "linf" => Threat::Pgd(Norm::Linf),
            "l2" => Threat::Pgd(Norm::L2),
            "l1" => Threat::Pgd(Norm::L1),
            "apgd-ce" => apgd(Norm::Linf, AttackLoss::CrossEntropy),
            "apgd-dlr" => apgd(Norm::Linf, AttackLoss::Dlr),
            "apgd-ce-l2" => apgd(Norm::L2, AttackLoss::CrossEntropy),
            "apgd-dlr-l2" => apgd(Norm::L2, AttackLoss::Dlr),
            "spatial" => Threat::Spatial,
            other => match other.strip_prefix("corruption:") {
                Some(corruption) => Threat::Corruption(Corruption::parse(corruption)?),
                None => {
                    return Err(format!(
                        "unknown threat `{other}` (known: {}, corruptions, corruption:<name>)",
                        ATTACK_NAMES.join(", ")
                    ))
                }
            },
        })
    }

    /// Reads a comma-separated list; `corruptions` stands for all nine.
    pub fn parse_list(text: &str) -> std::result::Result<Vec<Threat>, String> {
        let mut threats = Vec::new();
        for name in text.split(',') {
            match name.trim() {
                "corruptions" => threats.extend(Corruption::ALL.map(Threat::Corruption)),
                one => threats.push(Threat::parse(one)?),
            }
        }
        Ok(threats)
    }

    /// The name rows carry.
    pub fn name(&self) -> String {
        match self {
            Threat::Pgd(Norm::Linf) => "linf".into(),
            Threat::Pgd(Norm::L2) => "l2".into(),
            Threat::Pgd(Norm::L1) => "l1".into(),
            Threat::Apgd { norm, loss } => {
                let loss = if *loss == AttackLoss::Dlr { "dlr" } else { "ce" };
                let norm = if *norm == Norm::L2 { "-l2" } else { "" };
                format!("apgd-{loss}{norm}")
            }
            Threat::Spatial => "spatial".into(),
            Threat::Corruption(c) => format!("corruption:{}", c.name()),
        }
    }

    /// Whether it takes gradient steps (and so a step count).
    pub fn is_attack(&self) -> bool {
        matches!(self, Threat::Pgd(_) | Threat::Apgd { .. })
    }
}

/// A threat at a budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Perturbation {
    pub threat: Threat,
    /// The pixel-space radius; the largest rotation for `spatial`; the severity of a corruption.
    pub eps: f64,
    /// Gradient steps (attacks only; 0 otherwise).
    pub steps: usize,
    /// PGD's step size (default `2.5·ε/steps`).
    pub step_size: Option<f64>,
    /// PGD starts at a random point of the ball (APGD always does, as published; default).
    pub random_start: bool,
    pub seed: u64,
}

impl Perturbation {
    /// A checked perturbation: ε ≥ 0 and finite, at least one step for an attack, a severity
    /// 1–5 for a corruption.
    pub fn new(threat: Threat, eps: f64, steps: usize, seed: u64) -> std::result::Result<Self, String> {
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(format!("ε = {eps} must be a finite number ≥ 0"));
        }
        if threat.is_attack() && steps == 0 {
            return Err(format!("{}: steps must be at least 1", threat.name()));
        }
        if let Threat::Corruption(c) = threat {
            if !(1.0..=5.0).contains(&eps) || eps.fract() != 0.0 {
                return Err(format!(
                    "corruption:{}: the severity (eps) must be 1, 2, 3, 4 or 5, not {eps}",
                    c.name()
                ));
            }
        }
        let steps = if threat.is_attack() { steps } else { 0 };
        Ok(Self { threat, eps, steps, step_size: None, random_start: true, seed })
    }

    /// The perturbed `images` `[n, 3, s, s]` (pixels in [0, 1]) of `labels` (u32), example `i`
    /// drawing its randomness from `keys[i]`.
    pub fn apply(
        &self,
        classifier: &dyn PixelClassifier,
        images: &Tensor,
        labels: &Tensor,
        keys: &[u64],
    ) -> Result<Tensor> {
        let seeds: Vec<u64> = keys.iter().map(|&k| example_seed(self.seed, k)).collect();
        let (shape, device, eps) = (images.dims().to_vec(), images.device(), self.eps as f32);
        match self.threat {
            Threat::Pgd(norm) => {
                let mut attack = Pgd::new(norm, eps, self.steps);
                if let Some(step) = self.step_size {
                    attack.step_size = step as f32;
                }
                let start = match self.random_start {
                    true => Some(pgd::random_start(norm, eps, &shape, &seeds, device)?),
                    false => None,
                };
                attack.attack(classifier, images, labels, start.as_ref(), None)
            }
            Threat::Apgd { norm, loss } => {
                let start = apgd::random_start(norm, eps, &shape, &seeds, device)?;
                Apgd::new(norm, eps, self.steps, loss).attack(classifier, images, labels, &start, None)
            }
            Threat::Spatial => spatial::worst_of_grid(classifier, images, labels, eps),
            Threat::Corruption(corruption) => corrupt_batch(images, corruption, self.eps as u8, &seeds),
        }
    }
}

fn corrupt_batch(images: &Tensor, corruption: Corruption, severity: u8, seeds: &[u64]) -> Result<Tensor> {
    let (_, _, height, width) = images.dims4()?;
    let rows = images.flatten_from(1)?.to_vec2::<f32>()?;
    let corrupted = rows
        .iter()
        .zip(seeds)
        .map(|(image, &seed)| corruptions::corrupt(image, height, width, corruption, severity, seed))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::from_vec(corrupted.concat(), images.dims(), images.device())?)
}
