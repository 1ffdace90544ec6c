//! A finished run evaluated again: its recipe resolved as the run did (or with other
//! inference-only settings, such as DRM's β or VRF's a and b, when a sweep evaluates them
//! without retraining), its final model loaded from `model/` with how it predicts (the trained
//! `head.safetensors`, or the text heads of `predictor.json`, the recipe's inference settings
//! replacing the saved ones), and the recipe's predictor rebuilt around it — VRF refitted on the
//! recipe's training and validation splits. `robustft robustness --run` attacks it on the
//! recipe's evaluation splits; `robustft sweep` evaluates it and its WiSE-FT points.

use std::path::Path;

use super::{Event, Experiment, Trained};
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
        let (model, outcome) = self.finished_model(model_dir)?;
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

impl Experiment {
    /// The result rows of the run's final model in `model_dir` and of its WiSE-FT points, as a
    /// run of this recipe would have written them (without the method's diagnostics, which
    /// its preparation reports).
    pub fn rows_of_finished_run(
        &self,
        model_dir: &Path,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<ResultRow>> {
        let (model, outcome) = self.finished_model(model_dir)?;
        let pretrained = self.model.params.snapshot()?;
        let zero_shot = Head::zero_shot(&self.model, &self.prompts)?;
        let trained = Trained { model: &model, outcome: &outcome, pretrained: &pretrained };
        self.evaluate_with_wiseft(&trained, &zero_shot, events)
    }

    /// The run's final model in `model_dir`, predicting as this recipe says.
    fn finished_model(&self, model_dir: &Path) -> Result<(ClipModel, Outcome)> {
        let (model, _) = ClipModel::load(&model_dir.display().to_string(), self.model.device())?;
        let outcome = self.plan.method.outcome_at_inference(saved_outcome(model_dir, &model)?);
        Ok((model, outcome))
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
