//! Evaluation under input perturbations (`crate::perturb`): the evaluated predictor — a head,
//! DRM's mixture, VRF — is attacked through its own log-probabilities, with the CLIP
//! normalisation as the first differentiable step of its input path, and its predictions on
//! the perturbed images are scored like clean ones. Rows carry the threat, the budget, the
//! steps, and the clean and robust top-1.

use candle_core::Tensor;

use super::benchmark::Benchmark;
use super::dataset::SplitEvaluation;
use super::evaluate::{ResultRow, RowContext};
use super::metrics::top1;
use super::predictor::ImagePredictor;
use crate::clip::preprocess::ClipPreprocess;
use crate::clip::ClipModel;
use crate::data::LogitProjection;
use crate::error::{Error, Result};
use crate::eval::evaluate::Perturbation as RowPerturbation;
use crate::perturb::pgd::Norm;
use crate::perturb::threat::{Perturbation, Threat};
use crate::perturb::{format_budget, parse_budget, parse_budgets, PixelClassifier, PixelSpace};

/// A predictor of `model` seen as a classifier of pixel-space images.
struct UnderAttack<'a> {
    model: &'a ClipModel,
    predictor: &'a dyn ImagePredictor,
    space: PixelSpace,
    projection: Option<&'a LogitProjection>,
}

impl PixelClassifier for UnderAttack<'_> {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        let input = self.space.normalise(pixels)?;
        self.predictor.image_log_probabilities(self.model, &input, self.projection)
    }
}

/// A perturbation applied to evaluation batches of preprocessed (normalised) images.
#[derive(Clone, Copy)]
pub struct PerturbedInput<'a> {
    pub perturbation: &'a Perturbation,
    /// Hears the size of every batch once it is perturbed.
    pub done: &'a dyn Fn(usize),
}

impl PerturbedInput<'_> {
    /// The perturbed, normalised `pixels` `[n, 3, s, s]` of `labels`; example `i` draws its
    /// randomness from `keys[i]`.
    pub fn apply(
        &self,
        model: &ClipModel,
        predictor: &dyn ImagePredictor,
        pixels: &Tensor,
        labels: &[usize],
        keys: &[u64],
        projection: Option<&LogitProjection>,
    ) -> Result<Tensor> {
        let space = PixelSpace::of(&ClipPreprocess::openai(model.config.vision.image_size));
        let classifier = UnderAttack { model, predictor, space, projection };
        let clean = space.to_pixels(pixels)?;
        let targets: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let targets = Tensor::new(targets, pixels.device())?;
        let perturbed = self.perturbation.apply(&classifier, &clean, &targets, keys)?;
        (self.done)(labels.len());
        space.normalise(&perturbed)
    }
}

/// Robustness rows: each perturbed split's row (its metrics are the perturbed predictions')
/// with the clean top-1 of the same split from `clean`.
pub fn robustness_rows(
    context: &RowContext,
    perturbation: &Perturbation,
    clean: &[SplitEvaluation],
    perturbed: &[SplitEvaluation],
    skip_groups: &[&str],
) -> Vec<ResultRow> {
    perturbed
        .iter()
        .zip(clean)
        .map(|(attacked, clean)| {
            let mut row = ResultRow::score(context, &attacked.split, &attacked.predictions, skip_groups);
            let clean_top1 = top1(&clean.predictions.labels, &clean.predictions.preds());
            row.perturbation = Some(RowPerturbation {
                threat: perturbation.threat.name(),
                eps: perturbation.eps,
                steps: perturbation.steps,
                clean_top1,
                robust_top1: row.metrics.top1,
            });
            row
        })
        .collect()
}

/// Perturbations to evaluate, as a recipe's `[eval] perturbations` entries name them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerturbationSpec {
    /// Threat names, comma-separated (`linf`, `l2`, `l1`, `apgd-ce`, `apgd-dlr`, `apgd-ce-l2`,
    /// `apgd-dlr-l2`, `spatial`, `corruption:<name>`, `corruptions`).
    pub threat: String,
    /// Budgets, comma-separated numbers or fractions (`0,1/255,2/255`); a corruption's
    /// severities; absent: each threat's default ([`default_budgets`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<String>,
    /// Attack steps.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// PGD's step size, a number or a fraction (default 2.5·ε/steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_size: Option<String>,
    /// PGD starts at a random point of the ball (else at the clean image).
    #[serde(default = "default_random_start")]
    pub random_start: bool,
    /// Examples per split (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Steps of an attack unless told.
pub const DEFAULT_STEPS: usize = 10;

fn default_steps() -> usize {
    DEFAULT_STEPS
}

fn default_random_start() -> bool {
    true
}

/// A threat's budgets unless told: ℓ∞ 2/255 (PGD and APGD), ℓ2 0.25, ℓ1 4, spatial 30°,
/// corruptions severities 1–5.
pub fn default_budgets(threat: &Threat) -> Vec<f64> {
    match threat {
        Threat::Pgd(Norm::Linf) | Threat::Apgd { norm: Norm::Linf, .. } => vec![2.0 / 255.0],
        Threat::Pgd(Norm::L2) | Threat::Apgd { .. } => vec![0.25],
        Threat::Pgd(Norm::L1) => vec![4.0],
        Threat::Spatial => vec![30.0],
        Threat::Corruption(_) => vec![1.0, 2.0, 3.0, 4.0, 5.0],
    }
}

impl PerturbationSpec {
    /// Every (threat, budget) it names, checked, drawing randomness from `seed`.
    pub fn expand(&self, seed: u64) -> std::result::Result<Vec<Perturbation>, String> {
        let budgets = self.eps.as_deref().map(parse_budgets).transpose()?;
        let step_size = match self.step_size.as_deref().map(parse_budget).transpose()? {
            Some(step) if step <= 0.0 => return Err(format!("step size {step} must be > 0")),
            step => step,
        };
        let mut perturbations = Vec::new();
        for threat in Threat::parse_list(&self.threat)? {
            for eps in budgets.clone().unwrap_or_else(|| default_budgets(&threat)) {
                let perturbation = Perturbation::new(threat, eps, self.steps, seed)?;
                perturbations.push(Perturbation {
                    step_size,
                    random_start: self.random_start,
                    ..perturbation
                });
            }
        }
        Ok(perturbations)
    }
}

/// What [`evaluate_perturbations`] reports.
pub enum RobustnessProgress {
    /// A stage of the preparation (a predictor's fitting).
    Stage(String),
    /// A perturbation starts over `examples` images.
    Start { what: String, examples: usize },
    /// This many more images were perturbed.
    Images(usize),
}

/// The robustness rows of `model` + `predictor` on `benchmark` under every perturbation of
/// `specs`; `progress` hears of each perturbation before it runs and of every batch after.
pub fn evaluate_perturbations(
    benchmark: &Benchmark,
    model: &ClipModel,
    predictor: &dyn ImagePredictor,
    specs: &[PerturbationSpec],
    context: &RowContext,
    progress: &mut dyn FnMut(RobustnessProgress),
) -> Result<Vec<ResultRow>> {
    let progress = std::cell::RefCell::new(progress);
    let mut rows = Vec::new();
    for spec in specs {
        let perturbations = spec
            .expand(context.seed)
            .map_err(|reason| Error::Invalid { what: format!("perturbation {}", spec.threat), reason })?;
        let clean = benchmark.evaluate_under(model, predictor, None, spec.limit)?;
        let examples = clean.iter().map(|e| e.predictions.labels.len()).sum();
        for perturbation in &perturbations {
            (progress.borrow_mut())(RobustnessProgress::Start { what: describe(perturbation), examples });
            let done = |n: usize| (progress.borrow_mut())(RobustnessProgress::Images(n));
            let input = PerturbedInput { perturbation, done: &done };
            let perturbed = benchmark.evaluate_under(model, predictor, Some(input), spec.limit)?;
            rows.extend(robustness_rows(
                context,
                perturbation,
                &clean,
                &perturbed,
                benchmark.skipped_groups(),
            ));
        }
    }
    Ok(rows)
}

/// `linf at ε = 2/255, 10 steps`.
fn describe(perturbation: &Perturbation) -> String {
    let steps = match perturbation.steps {
        0 => String::new(),
        n => format!(", {n} steps"),
    };
    format!("{} at ε = {}{steps}", perturbation.threat.name(), format_budget(perturbation.eps))
}
