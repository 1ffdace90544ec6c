//! SPD — Selective Projection Decay (Tian, Huang, Kira, "Rethinking Weight Decay for Robust
//! Fine-Tuning of Foundation Models", NeurIPS 2024; methods.md §3.5), with the behaviour of
//! `adamSPD.py` in GT-RIPL/Selective-Projection-Decay: Adam's decoupled weight decay is replaced
//! by a decay toward the pre-trained weights θ₀, applied per tensor after a plain Adam step.
//!
//! The trainer runs AdamW with weight decay 0 (a recipe with constraint `spd` must set
//! `train.weight_decay = 0`; its section reader refuses any other value) and takes the candidate
//! θ̃; then, for every anchored tensor, with θ its value before the step and g its gradient at
//! this step (after clipping, as `p.grad` in PyTorch):
//!
//! * the condition c = −⟨g, θ − θ₀⟩ (the paper's: the negative gradient against the progress
//!   direction);
//! * when c < 0, the ratio r = clamp((‖θ̃ − θ₀‖ − ‖θ − θ₀‖) / ‖θ̃ − θ₀‖, 0, 1) (Frobenius norms of
//!   the whole tensor) and θ̃ ← θ̃ − λ·r·(θ̃ − θ₀); λ = 1 puts θ̃ back at the distance ‖θ − θ₀‖.
//!
//! Parameters without a pre-trained value (a new head) or matching `constraint.exclude` take the
//! plain Adam step. The reference anchors every trained tensor (its README caches all of them
//! before training; with `pre = None` it decays toward zero instead, for LoRA weights); here a
//! head has no θ₀ and decaying it toward zero would pull the zero-shot head away, so it is left
//! unconstrained, as L2-SP and FTP leave it. Where ‖θ̃ − θ₀‖ = 0 the reference divides by zero
//! (a NaN); here r = 0, since there is no offset to decay.

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use super::{
    exclusions, is_anchored, read_section, Constraint, ConstraintEntry, ConstraintSpec, RecipeContext,
    StepContext,
};
use crate::error::{Error, Result};
use crate::sections::Sections;

/// The registry's entry: `[constraint] name = "spd"`.
pub const ENTRY: ConstraintEntry = ConstraintEntry { name: "spd", read };

/// `[constraint]` keys of SPD.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpdSection {
    /// The decay strength λ (1 projects the candidate back onto the previous distance).
    pub lambda: f64,
    /// Regexes of parameter names left unconstrained.
    pub exclude: Vec<String>,
}

fn read(
    sections: &mut Sections,
    context: &RecipeContext,
) -> std::result::Result<Box<dyn ConstraintSpec>, String> {
    let section: SpdSection = read_section(sections, ENTRY.name)?;
    let lambda = section.lambda;
    if !(lambda.is_finite() && lambda > 0.0) {
        return Err(format!(
            "constraint spd needs constraint.lambda > 0 (the decay strength λ; 1 is a full projection), \
             not {lambda}"
        ));
    }
    if context.weight_decay != 0.0 {
        return Err(format!(
            "constraint spd replaces AdamW's weight decay by its selective decay toward the \
             pre-trained weights (strength constraint.lambda): set train.weight_decay = 0, not {}",
            context.weight_decay
        ));
    }
    Ok(Box::new(section))
}

impl ConstraintSpec for SpdSection {
    fn build(&self) -> Result<Box<dyn Constraint>> {
        Ok(Box::new(Spd { lambda: self.lambda, exclude: exclusions(&self.exclude)? }))
    }
}

/// Selective Projection Decay with strength `lambda`.
pub struct Spd {
    pub lambda: f64,
    pub exclude: Vec<regex::Regex>,
}

impl Constraint for Spd {
    fn needs_previous(&self) -> bool {
        true
    }

    fn after_step(&mut self, context: &StepContext<'_>) -> Result<()> {
        for (name, var, _) in context.params {
            let Some(anchor) = is_anchored(name, context.anchor, &self.exclude) else { continue };
            let Some(grad) = context.grads.get(var.as_tensor()) else { continue };
            let previous = previous_value(context.previous, name)?;
            let offset = (previous - anchor)?;
            if -sum(&(grad * &offset)?)? >= 0.0 {
                continue;
            }
            let candidate = (var.as_tensor() - anchor)?;
            let ratio = decay_ratio(norm(&candidate)?, norm(&offset)?);
            if ratio > 0.0 {
                var.set(&(var.as_tensor() - (candidate * (self.lambda * ratio))?)?)?;
            }
        }
        Ok(())
    }
}

/// r = clamp((‖θ̃ − θ₀‖ − ‖θ − θ₀‖) / ‖θ̃ − θ₀‖, 0, 1); 0 when θ̃ = θ₀.
fn decay_ratio(candidate_norm: f64, previous_norm: f64) -> f64 {
    if candidate_norm == 0.0 {
        return 0.0;
    }
    ((candidate_norm - previous_norm) / candidate_norm).clamp(0.0, 1.0)
}

fn previous_value<'a>(previous: &'a HashMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    previous.get(name).ok_or_else(|| Error::Invalid {
        what: format!("constraint spd on `{name}`"),
        reason: "the trainer gave no value from before the step".into(),
    })
}

fn sum(t: &Tensor) -> Result<f64> {
    Ok(t.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The Frobenius norm of a whole tensor.
fn norm(t: &Tensor) -> Result<f64> {
    Ok(sum(&t.sqr()?)?.sqrt())
}

#[cfg(test)]
mod tests {
    use super::decay_ratio;

    #[test]
    fn the_ratio_is_the_relative_growth_of_the_distance_clamped_to_0_1() {
        assert_eq!(decay_ratio(2.0, 1.5), 0.25);
        assert_eq!(decay_ratio(1.0, 1.5), 0.0);
        assert_eq!(decay_ratio(0.0, 0.0), 0.0);
    }
}
