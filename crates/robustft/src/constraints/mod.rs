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
//!
//! The registry [`CONSTRAINTS`] maps a recipe's `[constraint] name` to the module that owns the
//! constraint: each reads the rest of the `[constraint]` section into its own strict struct
//! (a [`ConstraintSpec`]), checks it, and builds the constraint's fresh state for a run.

pub mod digrap;
pub mod ftp;
pub mod l2sp;
pub mod spd;
pub mod tpgm;

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{Error, Result};
use crate::sections::{find_entry, Sections};

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

/// A constraint as its `[constraint]` section configures it.
pub trait ConstraintSpec {
    /// The constraint's fresh state for a run.
    fn build(&self) -> Result<Box<dyn Constraint>>;

    /// Examples per batch of the validation split the constraint learns from, when it learns
    /// from one (`None`: it does not; `Some(None)`: the training batch size).
    fn validation_batch_size(&self) -> Option<Option<usize>> {
        None
    }
}

/// What a constraint's checks may need from the rest of the recipe.
pub struct RecipeContext {
    /// `train.weight_decay` (SPD replaces it).
    pub weight_decay: f64,
}

/// Reads and checks a constraint's section (its `name` key already matched).
pub type ReadConstraint =
    fn(&mut Sections, &RecipeContext) -> std::result::Result<Box<dyn ConstraintSpec>, String>;

/// One registered constraint.
pub struct ConstraintEntry {
    /// `[constraint] name`.
    pub name: &'static str,
    pub read: ReadConstraint,
}

/// The section every constraint reads.
pub const SECTION: &str = "constraint";

/// Every constraint a recipe can name.
pub const CONSTRAINTS: &[ConstraintEntry] = &[
    ConstraintEntry { name: "none", read: read_none },
    l2sp::ENTRY,
    spd::ENTRY,
    ftp::ENTRY,
    tpgm::ENTRY,
    digrap::ENTRY,
];

/// The recipe's constraint (`none` when its `[constraint]` names none): its name and spec.
pub fn read(
    sections: &mut Sections,
    context: &RecipeContext,
) -> std::result::Result<(&'static str, Box<dyn ConstraintSpec>), String> {
    let name = sections.tag(SECTION, "name")?.unwrap_or_else(|| "none".into());
    let entry = find_entry(CONSTRAINTS, |entry| entry.name, &name, "constraint.name")?;
    Ok((entry.name, (entry.read)(sections, context)?))
}

/// Reads the section of constraint `name` into its struct `T`.
pub fn read_section<T>(sections: &mut Sections, name: &str) -> std::result::Result<T, String>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    sections.read_tagged(SECTION, "name", name)
}

/// No constraint: `[constraint]` holds no other key.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoConstraint {}

fn read_none(
    sections: &mut Sections,
    _: &RecipeContext,
) -> std::result::Result<Box<dyn ConstraintSpec>, String> {
    let spec: NoConstraint = read_section(sections, "none")?;
    Ok(Box::new(spec))
}

impl ConstraintSpec for NoConstraint {
    fn build(&self) -> Result<Box<dyn Constraint>> {
        Ok(Box::new(Unconstrained))
    }
}

/// Checks that `value` (the key `constraint.{key}`) is finite and positive.
pub fn check_positive(key: &str, value: f64, meaning: &str) -> std::result::Result<(), String> {
    match value.is_finite() && value > 0.0 {
        true => Ok(()),
        false => Err(format!("constraint.{key} must be a finite number > 0 ({meaning}), not {value}")),
    }
}

/// Compiled `constraint.exclude` patterns.
pub fn exclusions(patterns: &[String]) -> Result<Vec<regex::Regex>> {
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
