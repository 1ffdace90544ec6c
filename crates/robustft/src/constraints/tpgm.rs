//! TPGM — Trainable Projected Gradient Method (Tian, Dai, Hsu, Kira, "Trainable Projected
//! Gradient Method for Robust Fine-tuning", CVPR 2023; methods.md §3.2): after every optimiser
//! step each anchored tensor is projected into a ball around its pre-trained value θ₀ whose
//! radius γ, one scalar per tensor, is learned by descending a held-out validation loss through
//! the projection (bilevel: the weights follow the training loss, the radii the validation
//! loss).
//!
//! Checked against the authors' release (github.com/PotatoTian/TPGM, `utils/tpgm.py` of both
//! `DomainNet_ResNet_Exp` — where TPGM runs during training — and `ImageNet_ViT_Exp`, and
//! `DomainNet_ResNet_Exp/engine_finetune.py`). At optimiser step t = 1, 2, … with AdamW
//! candidates θ̃, for every anchored tensor:
//!
//! * offset c = θ̃ − θ₀ and its norms n: [`TpgmNorm::Mars`] (the release's training-time
//!   default) the L1 norm of each output row, Σ_{all dims but 0} |c| (a 1-d tensor is one row,
//!   as the ViT script's sum over `dim=tuple(range(1, t.dim()))`; the ResNet script makes each
//!   element of a 1-d tensor its own row), or [`TpgmNorm::L2`] the Frobenius norm of the whole
//!   tensor (the ImageNet ViT script's default);
//! * γ starts at min n / 2 the first time the tensor is projected, and is clipped to
//!   [1e-8, max n] before every use (the ViT script's `hardtanh`);
//! * the projection θ(γ) = θ₀ + clamp(γ / (n + 1e-8), 0, 1) ⊙ c, the ratio broadcast per row;
//! * on a projection-update step — t = 1, 1 + `every`, 1 + 2·`every`, … (the release's
//!   `i % proj_freq == 0` on the batch index) — `proj_steps` iterations (the release's
//!   `max_iters`), each on the next validation batch: the weights are set to θ(γ), the run's
//!   own objective is evaluated on the batch and back-propagated, and every γ takes one Adam
//!   step (PyTorch's `torch.optim.Adam`: β = (0.9, 0.999), eps 1e-8, learning rate μ, bias
//!   corrections with γ's own step count) on ∂L/∂γ = Σ ∂L/∂θ|_{θ(γ)} ⊙ c ⊙ 1[ratio ≤ 1] /
//!   (n + 1e-8) — the chain rule through the projection, which is what autograd computes in
//!   the release;
//! * finally (every step) the weights are replaced by θ(γ) with the current, clipped γ.
//!
//! Our choices, where the release leaves room: the validation loss is the run's own objective
//! (CE for FT, the contrastive loss for FLYP, …), where the release always uses CE; at the kink
//! of min(1, ·) the gradient passes (`torch.clamp`'s convention; the ResNet script's `hardtanh`
//! blocks it, which freezes a γ clipped to max n; the ViT script does not clamp the ratio at
//! all); update steps follow the global step rather than the batch index within an epoch;
//! validation batches are drawn in a seeded order from the recipe's validation split
//! ([`crate::train::supervised`]), so a resumed run sees the same ones. Defaults follow the
//! DomainNet README's TPGM command: `every = 1`, `proj_steps = 1`, MARS norms, μ = 1e-2.
//!
//! Parameters without a pre-trained value (a new head) or matching `constraint.exclude` are
//! never projected (the release's `exclude_list`). The state — γ and its Adam moments per
//! tensor, kept in float32 — is saved with every checkpoint; γ's Adam step count and the
//! validation draws follow from the optimiser step, so a resumed run is bit-exact.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::ftp::row_l1_sums;
use super::{
    check_positive, exclusions, is_anchored, read_section, Constraint, ConstraintEntry, ConstraintSpec,
    RecipeContext, StepContext,
};
use crate::error::{Error, Result};
use crate::sections::Sections;

/// The registry's entry: `[constraint] name = "tpgm"`.
pub const ENTRY: ConstraintEntry = ConstraintEntry { name: "tpgm", read };

/// `[constraint]` keys of TPGM: it learns its radii on validation batches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TpgmSection {
    /// γ's learning rate.
    pub mu: f64,
    /// Optimiser steps between updates of the radii.
    pub every: u64,
    /// Adam steps on the radii per update, each on its own validation batch.
    pub proj_steps: u64,
    /// The distance from θ₀, per output row (`mars`) or per tensor (`l2`).
    pub norm: TpgmNorm,
    /// Examples per validation batch (default: `train.batch_size`).
    pub val_batch_size: Option<usize>,
    /// Regexes of parameter names left unconstrained.
    pub exclude: Vec<String>,
}

impl Default for TpgmSection {
    fn default() -> Self {
        Self {
            mu: 1e-2,
            every: 1,
            proj_steps: 1,
            norm: TpgmNorm::Mars,
            val_batch_size: None,
            exclude: Vec::new(),
        }
    }
}

fn read(sections: &mut Sections, _: &RecipeContext) -> std::result::Result<Box<dyn ConstraintSpec>, String> {
    let section: TpgmSection = read_section(sections, ENTRY.name)?;
    check_positive("mu", section.mu, "the radii's learning rate")?;
    if section.every == 0 || section.proj_steps == 0 || section.val_batch_size == Some(0) {
        return Err("constraint tpgm needs constraint.every, constraint.proj_steps and \
                    constraint.val_batch_size of at least 1"
            .into());
    }
    Ok(Box::new(section))
}

impl ConstraintSpec for TpgmSection {
    fn build(&self) -> Result<Box<dyn Constraint>> {
        Ok(Box::new(Tpgm::new(TpgmOptions {
            mu: self.mu,
            every: self.every,
            proj_steps: self.proj_steps,
            norm: self.norm,
            exclude: exclusions(&self.exclude)?,
        })))
    }

    fn validation_batch_size(&self) -> Option<Option<usize>> {
        Some(self.val_batch_size)
    }
}

/// γ's lower bound.
const MIN_RADIUS: f64 = 1e-8;
/// Added to the norms in the projection ratio.
const NORM_EPS: f64 = 1e-8;
/// γ's Adam: (β₁, β₂, ε), PyTorch's defaults.
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// The per-tensor state kinds, as saved by [`Constraint::state`] (`<kind>.<parameter>`).
const KINDS: [&str; 3] = ["gamma", "gamma_m", "gamma_v"];

/// How the distance of a tensor from θ₀ is measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TpgmNorm {
    /// One L1 norm per output row (the release's training-time default).
    #[default]
    Mars,
    /// The Frobenius norm of the whole tensor.
    L2,
}

/// TPGM's settings (`[constraint]` keys `mu`, `every`, `proj_steps`, `norm`, `exclude`).
pub struct TpgmOptions {
    /// γ's learning rate.
    pub mu: f64,
    /// Optimiser steps between projection updates (1: every step).
    pub every: u64,
    /// Adam steps on γ per projection update, each on its own validation batch.
    pub proj_steps: u64,
    pub norm: TpgmNorm,
    pub exclude: Vec<regex::Regex>,
}

/// Trainable Projected Gradient Method.
pub struct Tpgm {
    options: TpgmOptions,
    radii: BTreeMap<String, Radius>,
}

/// One tensor's learned radius and its Adam moments.
#[derive(Clone, Copy)]
struct Radius {
    gamma: f32,
    m: f32,
    v: f32,
}

/// An anchored tensor this step: its variable, θ₀, the offset c = θ̃ − θ₀ and n + 1e-8.
struct Target<'a> {
    name: &'a str,
    var: &'a Var,
    anchor: &'a Tensor,
    offset: Tensor,
    /// n + 1e-8, shaped to broadcast over the rows.
    padded_norms: Tensor,
    /// max n, γ's upper bound.
    max_norm: f64,
}

impl Tpgm {
    pub fn new(options: TpgmOptions) -> Self {
        Self { options, radii: BTreeMap::new() }
    }

    /// Whether step `step` (from 1) updates the radii on validation batches.
    fn updates_at(&self, step: u64) -> bool {
        (step - 1).is_multiple_of(self.options.every)
    }

    /// The validation batch of iteration `iteration` of the update at `step`; it is also γ's
    /// Adam step count before that iteration.
    fn draw(&self, step: u64, iteration: u64) -> u64 {
        (step - 1) / self.options.every * self.options.proj_steps + iteration
    }

    /// The anchored tensors with their offsets and norms; a tensor seen for the first time gets
    /// γ = min n / 2.
    fn targets<'a>(&mut self, context: &StepContext<'a>) -> Result<Vec<Target<'a>>> {
        let mut targets = Vec::new();
        for (name, var, _) in context.params {
            let Some(anchor) = is_anchored(name, context.anchor, &self.options.exclude) else { continue };
            let offset = (var.as_tensor() - anchor)?;
            let norms = self.norms(&offset)?;
            let flat = norms.flatten_all()?.to_dtype(DType::F64)?;
            let (min_norm, max_norm) = (flat.min(0)?.to_scalar::<f64>()?, flat.max(0)?.to_scalar::<f64>()?);
            self.radii.entry(name.clone()).or_insert(Radius {
                gamma: (min_norm / 2.0) as f32,
                m: 0.0,
                v: 0.0,
            });
            let padded_norms = (norms + NORM_EPS)?;
            targets.push(Target { name, var, anchor, offset, padded_norms, max_norm });
        }
        Ok(targets)
    }

    fn norms(&self, offset: &Tensor) -> Result<Tensor> {
        Ok(match self.options.norm {
            TpgmNorm::Mars => row_l1_sums(offset)?,
            TpgmNorm::L2 => offset.sqr()?.sum_all()?.sqrt()?,
        })
    }

    /// Clips every γ to [1e-8, max n] and sets the weights to θ(γ).
    fn project(&mut self, targets: &[Target<'_>]) -> Result<()> {
        for target in targets {
            let radius = self.radii.get_mut(target.name).expect("initialised in targets");
            radius.gamma = (radius.gamma as f64).clamp(MIN_RADIUS, target.max_norm.max(MIN_RADIUS)) as f32;
            let ratio = ratio(target, radius.gamma)?.clamp(0f32, 1f32)?;
            target.var.set(&target.anchor.broadcast_add(&ratio.broadcast_mul(&target.offset)?)?)?;
        }
        Ok(())
    }

    /// One Adam step (number `count`, from 1) on every γ from the validation gradients at θ(γ);
    /// a tensor the validation loss does not reach keeps its γ and moments (as PyTorch's Adam
    /// skips a parameter without a gradient).
    fn descend(
        &mut self,
        targets: &[Target<'_>],
        grads: &candle_core::backprop::GradStore,
        count: u64,
    ) -> Result<()> {
        for target in targets {
            let Some(grad) = grads.get(target.var.as_tensor()) else { continue };
            let radius = self.radii.get_mut(target.name).expect("initialised in targets");
            let ratio = ratio(target, radius.gamma)?;
            let passes = ratio.le(1f64)?.to_dtype(DType::F32)?;
            let slope = passes.broadcast_div(&target.padded_norms)?;
            let hyper_grad =
                (grad * &target.offset)?.broadcast_mul(&slope)?.sum_all()?.to_scalar::<f32>()? as f64;
            *radius = adam(*radius, hyper_grad, self.options.mu, count);
        }
        Ok(())
    }
}

/// γ / (n + 1e-8), per row.
fn ratio(target: &Target<'_>, gamma: f32) -> Result<Tensor> {
    let norms = &target.padded_norms;
    Ok(Tensor::new(gamma, norms.device())?.broadcast_div(norms)?)
}

/// `torch.optim.Adam`'s step number `count` on a scalar: γ ← γ − μ·m̂/(√v̂ + ε).
fn adam(radius: Radius, grad: f64, mu: f64, count: u64) -> Radius {
    let m = BETA1 * radius.m as f64 + (1.0 - BETA1) * grad;
    let v = BETA2 * radius.v as f64 + (1.0 - BETA2) * grad * grad;
    let t = count as i32;
    let (m_hat, v_hat) = (m / (1.0 - BETA1.powi(t)), v / (1.0 - BETA2.powi(t)));
    let gamma = radius.gamma as f64 - mu * m_hat / (v_hat.sqrt() + ADAM_EPS);
    Radius { gamma: gamma as f32, m: m as f32, v: v as f32 }
}

impl Constraint for Tpgm {
    fn after_step(&mut self, context: &StepContext<'_>) -> Result<()> {
        let targets = self.targets(context)?;
        if self.updates_at(context.step) {
            let validation = context.validation.ok_or_else(|| Error::Invalid {
                what: "constraint tpgm".into(),
                reason: "learns its radii on a validation split, and the trainer was given none".into(),
            })?;
            for iteration in 0..self.options.proj_steps {
                self.project(&targets)?;
                let draw = self.draw(context.step, iteration);
                let grads = validation.gradients(draw)?;
                self.descend(&targets, &grads, draw + 1)?;
            }
        }
        self.project(&targets)
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(KINDS.len() * self.radii.len());
        for (name, radius) in &self.radii {
            for (kind, value) in KINDS.iter().zip([radius.gamma, radius.m, radius.v]) {
                out.push((format!("{kind}.{name}"), Tensor::new(value, &candle_core::Device::Cpu)?));
            }
        }
        Ok(out)
    }

    fn restore(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.radii.clear();
        for name in state.keys().filter_map(|key| key.strip_prefix("gamma.")) {
            let scalar = |kind: &str| -> Result<f32> {
                let key = format!("{kind}.{name}");
                let tensor = state.get(&key).ok_or_else(|| Error::Invalid {
                    what: format!("constraint tpgm state of `{name}`"),
                    reason: format!("lacks `{key}` (it needs {})", KINDS.join(", ")),
                })?;
                Ok(tensor.to_dtype(DType::F32)?.to_scalar::<f32>()?)
            };
            let radius = Radius { gamma: scalar("gamma")?, m: scalar("gamma_m")?, v: scalar("gamma_v")? };
            self.radii.insert(name.to_string(), radius);
        }
        Ok(())
    }
}
