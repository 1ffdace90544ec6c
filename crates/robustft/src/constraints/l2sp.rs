//! L2-SP (Li, Grandvalet, Davoine, ICML 2018; methods.md §2.7): the penalty
//! `(λ/2)‖θ − θ₀‖²` over the pre-trained parameters (not over a new head), applied as its
//! gradient `λ(θ − θ₀)` added to each anchored parameter's gradient before clipping and the
//! optimiser step — equal to adding the penalty to the loss, without building it in the graph.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use super::{exclusions, read_section, Constraint, ConstraintEntry, ConstraintSpec, Params, RecipeContext};
use crate::error::Result;
use crate::sections::Sections;

/// The registry's entry: `[constraint] name = "l2sp"`.
pub const ENTRY: ConstraintEntry = ConstraintEntry { name: "l2sp", read };

/// `[constraint]` keys of L2-SP.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct L2SpSection {
    /// The strength λ.
    pub lambda: f64,
    /// Regexes of parameter names left unpulled (a new head is never anchored).
    pub exclude: Vec<String>,
}

fn read(sections: &mut Sections, _: &RecipeContext) -> std::result::Result<Box<dyn ConstraintSpec>, String> {
    let section: L2SpSection = read_section(sections, ENTRY.name)?;
    if section.lambda.is_nan() || section.lambda <= 0.0 {
        return Err("constraint l2sp needs constraint.lambda > 0 (the strength λ)".into());
    }
    Ok(Box::new(section))
}

impl ConstraintSpec for L2SpSection {
    fn build(&self) -> Result<Box<dyn Constraint>> {
        Ok(Box::new(L2Sp { lambda: self.lambda, exclude: exclusions(&self.exclude)? }))
    }
}

/// L2-SP with strength `lambda`; parameters matching `exclude` are not pulled.
pub struct L2Sp {
    pub lambda: f64,
    pub exclude: Vec<regex::Regex>,
}

impl Constraint for L2Sp {
    fn adjust_gradients(
        &mut self,
        grads: &mut GradStore,
        params: &Params,
        anchor: &HashMap<String, Tensor>,
    ) -> Result<()> {
        let kept: HashMap<String, Tensor> = anchor
            .iter()
            .filter(|(name, _)| super::is_anchored(name, anchor, &self.exclude).is_some())
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        add_l2sp(grads, params, &kept, self.lambda)
    }
}

/// Adds `λ(θ − θ₀)` to the gradient of every parameter that has an anchor (a parameter without
/// a gradient gets the pull alone).
pub fn add_l2sp(
    grads: &mut GradStore,
    params: &Params,
    anchor: &HashMap<String, Tensor>,
    lambda: f64,
) -> Result<()> {
    if lambda == 0.0 {
        return Ok(());
    }
    for (name, var, _) in params {
        let Some(reference) = anchor.get(name) else { continue };
        let pull = ((var.as_tensor() - reference)? * lambda)?;
        let grad = match grads.get(var.as_tensor()) {
            Some(g) => (g + pull)?,
            None => pull,
        };
        grads.insert(var.as_tensor(), grad);
    }
    Ok(())
}
