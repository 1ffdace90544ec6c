//! Adversarial fine-tuning: `[adversarial]`, a wrapper around any trained method's objective
//! (the "specialised losses" of Heuillet et al., arXiv 2508.14079), and the two CLIP-specific
//! adversarial fine-tunings that keep zero-shot heads working.
//!
//! * `pgd_at` (Madry et al., ICLR 2018): the method's own objective on adversarial images
//!   `x' = PGD(x)` that maximise the cross-entropy of the run's *readout* (below).
//! * `trades` (Zhang et al., ICML 2019): the method's objective on clean images
//!   `+ β · KL(p(x) ‖ p(x'))` over the readout's softmax (batch mean, gradients through both
//!   terms as in the reference `trades.py`), `x'` maximising that KL from the start
//!   `x + 0.001·N(0, I)` (β default 6).
//! * `tecoa` (Mao et al., ICLR 2023): cross-entropy of the **frozen pre-trained zero-shot
//!   head** (text-prompt embeddings) on adversarial images against it; the trained model
//!   predicts through that head. Needs `method = "ft"` (its image tower is what is trained).
//! * `fare` (Schlarmann et al., ICML 2024): unsupervised, `‖φ(x') − φ₀(x)‖²₂` between the
//!   image embedding of the adversarial image and the frozen pre-trained embedding of the
//!   clean one, `x'` maximising it; the model then predicts through the pre-trained zero-shot
//!   head. Needs `method = "ft"`.
//!
//! The readout is the head the method trains when it has one (FT, LP-FT, L2-SP; its current
//! values), else the pre-trained zero-shot head of the default prompts (FLYP, DRM: their text
//! heads change every step; attacking the fixed zero-shot head is this project's choice, and
//! TeCoA's). Attacks run in pixel space `[0, 1]` (`crate::perturb`) with PGD in the
//! `threat` ball (ℓ∞, ℓ2, ℓ1) of radius `eps`, `steps` steps of `step_size` (default
//! 2.5·ε/steps) from a random start; every random draw comes from a stream seeded by (seed,
//! step, example index), so a resumed run attacks exactly as an uninterrupted one.

use candle_core::{Tensor, Var};

use super::registry::{Context, Outcome};
use crate::clip::layers::softmax_last_dim;
use crate::clip::preprocess::ClipPreprocess;
use crate::clip::{ClipModel, Towers};
use crate::error::Result;
use crate::eval::predictor::Head;
use crate::losses::{cross_entropy, log_softmax};
use crate::perturb::pgd::{default_step_size, random_start, Norm, Pgd};
use crate::perturb::{example_seed, parse_budget, AttackLoss, PixelClassifier, PixelSpace};
use crate::rng::SplitMix64;
use crate::sections::Sections;
use crate::train::supervised::{Objective, TrainBatch};

/// The section's name.
pub const SECTION: &str = "adversarial";

/// TRADES' start: `x + START_STD · N(0, I)`.
const TRADES_START_STD: f32 = 0.001;

/// Which adversarial loss, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdversarialLoss {
    #[default]
    None,
    PgdAt,
    Trades,
    Tecoa,
    Fare,
}

impl AdversarialLoss {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::PgdAt => "pgd_at",
            Self::Trades => "trades",
            Self::Tecoa => "tecoa",
            Self::Fare => "fare",
        }
    }
}

/// A budget as a recipe writes it: a number or a fraction string (`"4/255"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Budget {
    Number(f64),
    Text(String),
}

/// `[adversarial]`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdversarialSection {
    pub loss: AdversarialLoss,
    /// The attack's ball: `linf`, `l2` or `l1`.
    pub threat: Norm,
    /// Its radius in pixel units.
    pub eps: Budget,
    pub steps: usize,
    /// PGD's step size (default 2.5·ε/steps).
    pub step_size: Option<f64>,
    /// TRADES' β.
    pub beta: f64,
}

impl Default for AdversarialSection {
    fn default() -> Self {
        Self {
            loss: AdversarialLoss::None,
            threat: Norm::Linf,
            eps: Budget::Text("2/255".into()),
            steps: 5,
            step_size: None,
            beta: 6.0,
        }
    }
}

/// A checked `[adversarial]` that is on.
#[derive(Clone, Debug, PartialEq)]
pub struct AdversarialPlan {
    pub loss: AdversarialLoss,
    attack: Pgd,
    beta: f64,
}

impl AdversarialSection {
    /// Reads and checks `[adversarial]` for `method`: the plan, when a loss is chosen (the
    /// resolved recipe keeps the section only when the recipe has one).
    pub fn read(
        sections: &mut Sections,
        method: &str,
        trains: bool,
    ) -> std::result::Result<Option<AdversarialPlan>, String> {
        // A recipe without the section keeps none in its resolved form (and older runs resume).
        let written = sections.names().any(|name| name == SECTION);
        let section: Self = if written { sections.read(SECTION)? } else { sections.peek(SECTION)? };
        if section.loss == AdversarialLoss::None {
            return Ok(None);
        }
        let loss = section.loss.name();
        if !trains {
            return Err(format!("adversarial.loss = \"{loss}\" needs a method that trains, not {method}"));
        }
        if matches!(section.loss, AdversarialLoss::Tecoa | AdversarialLoss::Fare) && method != "ft" {
            return Err(format!(
                "adversarial.loss = \"{loss}\" fine-tunes the image tower under the zero-shot head: it needs method.name = \"ft\", not {method}"
            ));
        }
        let eps = match &section.eps {
            Budget::Number(x) => parse_budget(&x.to_string()),
            Budget::Text(text) => parse_budget(text),
        }
        .map_err(|e| format!("adversarial.eps: {e}"))? as f32;
        if section.steps == 0 {
            return Err("adversarial.steps must be at least 1".into());
        }
        let step_size = match section.step_size {
            None => default_step_size(eps, section.steps),
            Some(s) if s > 0.0 && s.is_finite() => s as f32,
            Some(s) => return Err(format!("adversarial.step_size = {s} must be a number > 0")),
        };
        if !(section.beta >= 0.0 && section.beta.is_finite()) {
            return Err(format!("adversarial.beta = {} must be ≥ 0", section.beta));
        }
        let attack = Pgd { step_size, ..Pgd::new(section.threat, eps, section.steps) };
        Ok(Some(AdversarialPlan { loss: section.loss, attack, beta: section.beta }))
    }
}

impl AdversarialPlan {
    /// The name result rows add to the method's (`pgd_at`, `trades`, `tecoa`, `fare`).
    pub fn label(&self) -> &'static str {
        self.loss.name()
    }

    /// `objective` under the adversarial loss, and how the trained model then predicts
    /// (`outcome` unchanged, or the pre-trained zero-shot head for TeCoA and FARE).
    pub fn wrap(
        &self,
        objective: Box<dyn Objective>,
        outcome: Option<Outcome>,
        context: &Context<'_>,
    ) -> Result<(Box<dyn Objective>, Option<Outcome>)> {
        let model = context.model;
        let has_head = objective.extra_params().iter().any(|(name, _, _)| name == "head.weight");
        let fixed_head = matches!(self.loss, AdversarialLoss::Tecoa | AdversarialLoss::Fare) || !has_head;
        let readout = fixed_head.then(|| context.zero_shot.clone());
        let reference = match self.loss {
            AdversarialLoss::Fare => Some(ClipModel::from_tensors(
                model.config.clone(),
                context.pretrained.to_vec(),
                model.device(),
            )?),
            _ => None,
        };
        let outcome = match self.loss {
            AdversarialLoss::Tecoa | AdversarialLoss::Fare => Some(Outcome::Head(context.zero_shot.clone())),
            _ => outcome,
        };
        let wrapped = AdversarialObjective {
            inner: objective,
            plan: self.clone(),
            space: PixelSpace::of(&ClipPreprocess::openai(model.config.vision.image_size)),
            seed: context.seed,
            readout,
            reference,
        };
        Ok((Box::new(wrapped), outcome))
    }
}

/// A method's objective under an adversarial loss.
struct AdversarialObjective {
    inner: Box<dyn Objective>,
    plan: AdversarialPlan,
    space: PixelSpace,
    seed: u64,
    /// The fixed readout head; `None`: the head the inner objective trains.
    readout: Option<Head>,
    /// FARE's frozen pre-trained model.
    reference: Option<ClipModel>,
}

/// What an attack sees during training: the current image tower (no weight gradients) and a
/// head over its features, or the features themselves (FARE).
struct TrainingTarget<'a> {
    towers: &'a Towers,
    space: PixelSpace,
    head: Option<Head>,
}

impl PixelClassifier for TrainingTarget<'_> {
    fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        let features = self.towers.encode_image(&self.space.normalise(pixels)?)?;
        match &self.head {
            Some(head) => head.logits(&features),
            None => Ok(features),
        }
    }
}

impl AdversarialObjective {
    /// The readout head; its values detached when `detached` (attacks).
    fn head(&self, detached: bool) -> Head {
        if let Some(head) = &self.readout {
            return head.clone();
        }
        let params = self.inner.extra_params();
        let tensor = |name: &str| -> Option<Tensor> {
            params.iter().find(|(n, _, _)| n == name).map(|(_, var, _)| match detached {
                true => var.as_tensor().detach(),
                false => var.as_tensor().clone(),
            })
        };
        Head { weight: tensor("head.weight").expect("checked when wrapped"), bias: tensor("head.bias") }
    }

    /// Per-example seeds of the batch's random draws.
    fn seeds(&self, batch: &TrainBatch) -> Vec<u64> {
        batch.indices.iter().map(|&i| example_seed(self.seed, (batch.step << 32) ^ i as u64)).collect()
    }

    /// PGD from the plan's random start against `targets` under `loss`.
    fn attack(
        &self,
        model: &ClipModel,
        head: Option<Head>,
        clean: &Tensor,
        targets: &Tensor,
        loss: AttackLoss,
        start: &Tensor,
    ) -> Result<Tensor> {
        let target = TrainingTarget { towers: model.no_grad(), space: self.space, head };
        let attack = Pgd { loss, ..self.plan.attack.clone() };
        attack.attack(&target, clean, targets, Some(start), None)
    }

    fn ball_start(&self, clean: &Tensor, batch: &TrainBatch) -> Result<Tensor> {
        let attack = &self.plan.attack;
        random_start(attack.norm, attack.eps, clean.dims(), &self.seeds(batch), clean.device())
    }

    fn with_images(&self, batch: &TrainBatch, pixels: &Tensor) -> Result<TrainBatch> {
        Ok(TrainBatch {
            images: self.space.normalise(pixels)?,
            labels: batch.labels.clone(),
            indices: batch.indices.clone(),
            epoch: batch.epoch,
            step: batch.step,
        })
    }

    fn pgd_at(&self, model: &ClipModel, batch: &TrainBatch, clean: &Tensor) -> Result<Tensor> {
        let start = self.ball_start(clean, batch)?;
        let adv = self.attack(
            model,
            Some(self.head(true)),
            clean,
            &batch.labels,
            AttackLoss::CrossEntropy,
            &start,
        )?;
        self.inner.loss(model, &self.with_images(batch, &adv)?)
    }

    fn trades(&self, model: &ClipModel, batch: &TrainBatch, clean: &Tensor) -> Result<Tensor> {
        let head = self.head(false);
        let clean_logits = head.logits(&model.encode_image(&batch.images)?)?;
        let clean_probs = softmax_last_dim(&clean_logits.detach())?;
        let start = trades_noise(clean, &self.seeds(batch))?;
        let adv = self.attack(
            model,
            Some(self.head(true)),
            clean,
            &clean_probs,
            AttackLoss::SoftCrossEntropy,
            &start,
        )?;
        let adv_logits = head.logits(&model.encode_image(&self.space.normalise(&adv)?)?)?;
        let clean_log = log_softmax(&clean_logits)?;
        let kl = (clean_log.exp()? * (clean_log - log_softmax(&adv_logits)?)?)?.sum(1)?.mean_all()?;
        Ok((self.inner.loss(model, batch)? + (kl * self.plan.beta)?)?)
    }

    fn tecoa(&self, model: &ClipModel, batch: &TrainBatch, clean: &Tensor) -> Result<Tensor> {
        let head = self.head(true);
        let start = self.ball_start(clean, batch)?;
        let adv =
            self.attack(model, Some(head.clone()), clean, &batch.labels, AttackLoss::CrossEntropy, &start)?;
        let features = model.encode_image(&self.space.normalise(&adv)?)?;
        Ok(cross_entropy(&head.logits(&features)?, &batch.labels)?)
    }

    fn fare(&self, model: &ClipModel, batch: &TrainBatch, clean: &Tensor) -> Result<Tensor> {
        let reference = self.reference.as_ref().expect("FARE keeps the pre-trained model");
        let target = reference.no_grad().encode_image(&batch.images)?;
        let start = self.ball_start(clean, batch)?;
        let adv = self.attack(model, None, clean, &target, AttackLoss::SquaredDistance, &start)?;
        let features = model.encode_image(&self.space.normalise(&adv)?)?;
        Ok((features - target)?.sqr()?.sum(1)?.mean_all()?)
    }
}

/// TRADES' start noise `0.001·N(0, I)`, example `i` from `SplitMix64(seeds[i])`.
fn trades_noise(like: &Tensor, seeds: &[u64]) -> Result<Tensor> {
    let size: usize = like.dims()[1..].iter().product();
    let values: Vec<f32> = seeds
        .iter()
        .flat_map(|&seed| {
            let mut rng = SplitMix64::new(seed);
            (0..size).map(move |_| TRADES_START_STD * rng.normal())
        })
        .collect();
    Ok(Tensor::from_vec(values, like.dims(), like.device())?)
}

impl Objective for AdversarialObjective {
    fn trains(&self, name: &str) -> bool {
        self.inner.trains(name)
    }

    fn extra_params(&self) -> Vec<(String, Var, bool)> {
        self.inner.extra_params()
    }

    fn loss(&self, model: &ClipModel, batch: &TrainBatch) -> Result<Tensor> {
        let clean = self.space.to_pixels(&batch.images)?;
        match self.plan.loss {
            AdversarialLoss::PgdAt => self.pgd_at(model, batch, &clean),
            AdversarialLoss::Trades => self.trades(model, batch, &clean),
            AdversarialLoss::Tecoa => self.tecoa(model, batch, &clean),
            AdversarialLoss::Fare => self.fare(model, batch, &clean),
            AdversarialLoss::None => self.inner.loss(model, batch),
        }
    }

    fn after_step(&self, model: &ClipModel) -> Result<()> {
        self.inner.after_step(model)
    }
}
