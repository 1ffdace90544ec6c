//! Constraints: the optimiser-side part of a method (docs/design.md: a method = objective +
//! constraint + predictor), which keeps the fine-tuned weights close to the pre-trained ones θ₀
//! and combines with any objective (DRM + SPD, FLYP + FTP, ...). A constraint may change the
//! gradients before the AdamW step ([`Constraint::adjust_gradients`]: L2-SP, DiGraP) and/or
//! the weights after it ([`Constraint::after_step`], seeing the weights before the step: SPD,
//! FTP; or a held-out [`Validation`] loss at weights it sets: TPGM). Its state (learned radii,
//! moments) is saved in every checkpoint so a resumed run is bit-exact.
//!
//! Implemented here: [`l2sp::L2Sp`] (methods.md §2.7), [`spd::Spd`] (§3.5), [`ftp::Ftp`]
//! (§3.2), [`tpgm::Tpgm`] (§3.2) and [`digrap::Digrap`] (§3.6).

pub mod digrap;
pub mod ftp;
pub mod l2sp;
pub mod spd;
pub mod tpgm;

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{Error, Result};
use crate::recipe::{ConstraintName, ConstraintRecipe};

/// The trained parameters, in the optimiser's (stable) order: `(name, var, decays)`.
pub type Params = [(String, Var, bool)];

/// What a constraint sees around one optimiser step.
pub struct StepContext<'a> {
    pub params: &'a Params,
    /// The pre-trained values of the model's parameters (a new head has none).
    pub anchor: &'a HashMap<String, Tensor>,
    /// This step's gradients (after [`Constraint::adjust_gradients`]).
    pub grads: &'a GradStore,
    /// The values before the step, by parameter name (only when
    /// [`Constraint::needs_previous`] says so; empty otherwise).
    pub previous: &'a HashMap<String, Tensor>,
    /// The learning rate of this step.
    pub lr: f64,
    /// The optimiser step just taken, from 1.
    pub step: u64,
    /// The run's objective on held-out batches, when the trainer has a validation split.
    pub validation: Option<&'a dyn Validation>,
}

/// A held-out loss a constraint can learn from (TPGM's radii): the run's own objective on a
/// validation batch, at the parameters' current values.
pub trait Validation {
    /// The gradients, by parameter, of the loss on validation batch number `draw` (0, 1, …;
    /// the same `draw` gives the same batch, so a resumed run sees the same ones).
    fn gradients(&self, draw: u64) -> Result<GradStore>;
}

/// An optimiser-side constraint toward the pre-trained weights.
pub trait Constraint {
    /// Changes the gradients before the optimiser step.
    fn adjust_gradients(
        &mut self,
        _grads: &mut GradStore,
        _params: &Params,
        _anchor: &HashMap<String, Tensor>,
    ) -> Result<()> {
        Ok(())
    }

    /// Whether [`Constraint::after_step`] needs the weights from before the step.
    fn needs_previous(&self) -> bool {
        false
    }

    /// Changes the weights after the optimiser step.
    fn after_step(&mut self, _context: &StepContext<'_>) -> Result<()> {
        Ok(())
    }

    /// The constraint's state for a checkpoint (names are local to the constraint).
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Restores the state saved by [`Constraint::state`].
    fn restore(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}

/// No constraint: plain AdamW.
pub struct Unconstrained;

impl Constraint for Unconstrained {}

/// The constraint a recipe names.
pub fn build(recipe: &ConstraintRecipe) -> Result<Box<dyn Constraint>> {
    let exclude = exclusions(&recipe.exclude)?;
    Ok(match recipe.name {
        ConstraintName::None => Box::new(Unconstrained),
        ConstraintName::L2sp => Box::new(l2sp::L2Sp { lambda: recipe.lambda, exclude }),
        ConstraintName::Digrap => Box::new(digrap::Digrap::new(digrap::DigrapOptions {
            mu: recipe.mu,
            lambda: recipe.lambda,
            conflict: recipe.conflict,
            exclude,
        })),
        ConstraintName::Spd => Box::new(spd::Spd { lambda: recipe.lambda, exclude }),
        ConstraintName::Ftp => Box::new(ftp::Ftp::new(recipe.k, recipe.mu, exclude)),
        ConstraintName::Tpgm => Box::new(tpgm::Tpgm::new(tpgm::TpgmOptions {
            mu: recipe.mu,
            every: recipe.every,
            proj_steps: recipe.proj_steps,
            norm: recipe.norm,
            exclude,
        })),
    })
}

/// Compiled `constraint.exclude` patterns.
fn exclusions(patterns: &[String]) -> Result<Vec<regex::Regex>> {
    patterns
        .iter()
        .map(|p| {
            regex::Regex::new(p).map_err(|e| Error::Invalid {
                what: format!("constraint.exclude `{p}`"),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Whether a parameter is constrained: it has a pre-trained value and no exclusion matches.
pub fn is_anchored<'a>(
    name: &str,
    anchor: &'a HashMap<String, Tensor>,
    exclude: &[regex::Regex],
) -> Option<&'a Tensor> {
    anchor.get(name).filter(|_| !exclude.iter().any(|re| re.is_match(name)))
}
