//! A finished run evaluated again under input perturbations (`robustft robustness --run`): its
//! recipe resolved as the run did, its final model loaded from `model/` with how it predicts
//! (the trained `head.safetensors`, or the text heads of `predictor.json`), and the recipe's
//! predictor rebuilt around it — VRF refitted on the recipe's training and validation splits —
//! then attacked on the recipe's evaluation splits.

use std::path::Path;

use super::Experiment;
use crate::clip::ClipModel;
use crate::error::{Error, Result};
use crate::eval::evaluate::{ResultRow, RowContext};
use crate::eval::predictor::{Head, TextPredictor};
use crate::eval::robustness::{evaluate_perturbations, PerturbationSpec, RobustnessProgress};
use crate::methods::registry::Outcome;

impl Experiment {
    /// Robustness rows of the run's final model in `model_dir` under `specs`, predicting
    /// through the recipe's predictor; the perturbations draw from `attack_seed` (the rows'
    /// seed).
    pub fn perturbed_rows_of_run(
        &self,
        model_dir: &Path,
        specs: &[PerturbationSpec],
        attack_seed: u64,
        progress: &mut dyn FnMut(RobustnessProgress),
    ) -> Result<Vec<ResultRow>> {
        let (model, _) = ClipModel::load(&model_dir.display().to_string(), self.model.device())?;
        let outcome = saved_outcome(model_dir, &model)?;
        let pretrained = self.model.params.snapshot()?;
        let zero_shot = Head::zero_shot(&self.model, &self.prompts)?;
        let mut stage = |s: String| progress(RobustnessProgress::Stage(s));
        let predictors = self.plan.predictor.prepare(
            &crate::methods::registry::PredictorContext {
                model: &self.model,
                pretrained: &pretrained,
                zero_shot: &zero_shot,
                train: self.data.train.as_ref(),
                val: self.data.val.as_deref(),
            },
            &mut stage,
        )?;
        let own = self.predictor(&model, &outcome)?;
        let predictor = predictors.predictor(&model, &outcome, own, &mut stage)?;
        let context = RowContext { seed: attack_seed, ..self.row_context(None) };
        evaluate_perturbations(&self.data.eval, &model, predictor.as_ref(), specs, &context, progress)
    }
}

/// How the saved model in `dir` predicts: its trained head, or the text heads its
/// `predictor.json` rebuilds.
fn saved_outcome(dir: &Path, model: &ClipModel) -> Result<Outcome> {
    let head = dir.join("head.safetensors");
    if head.is_file() {
        return Ok(Outcome::Head(Head::load(&head, model.device())?));
    }
    match TextPredictor::load(dir)? {
        Some(TextPredictor { descriptions: Some(_), beta, .. }) => Ok(Outcome::Mixture { beta }),
        Some(_) => Ok(Outcome::Rebuilt),
        None => Err(Error::Invalid {
            what: dir.display().to_string(),
            reason: "holds neither head.safetensors nor predictor.json: not the model of a finished run"
                .into(),
        }),
    }
}
