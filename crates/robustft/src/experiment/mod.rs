//! Running a recipe end to end (docs/design.md, "data flow"): resolve and validate the
//! recipe against the data (splits exist, class lists agree, concept descriptions align), write
//! the resolved recipe to `<out>/<name>/recipe.toml` before any work, train the method with
//! checkpoints (`--resume` continues a killed run to the same weights), evaluate it and its
//! WiSE-FT interpolations on every evaluation split, and write `results.jsonl` and the final
//! weights.
//!
//! The experiment never names a method: the recipe's [`MethodPlan`] (the method registry,
//! [`crate::methods::registry`]) gives the objective to train (or the fitted outcome), the
//! constraint, and the predictor evaluation runs; any trained method takes any constraint, and
//! WiSE-FT interpolates every parameter of both towers between the pre-trained and the trained
//! model and, for head-based methods, the head between the zero-shot head and the trained head
//! (methods whose heads are rebuilt from the text tower rebuild them from the interpolated
//! towers).

mod data;
mod features;
mod finished;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use self::data::{load_data, Data};
use crate::clip::preprocess::ClipPreprocess;
use crate::clip::{ClipModel, ConfigSource, LoadedCheckpointInfo};
use crate::error::{Error, Result};
use crate::eval::benchmark::Benchmark;
use crate::eval::dataset::SplitEvaluation;
use crate::eval::evaluate::{ResultRow, RowContext};
use crate::eval::predictor::{Head, Predictor, TextPredictor};
use crate::eval::robustness::{evaluate_perturbations, RobustnessProgress};
use crate::methods::registry::{
    Context, MethodPlan, ModelPredictors, Outcome, PredictorContext, Prepared, SplitRole,
};
use crate::prompts::{class_prompts, load_templates, template_set, ConceptDescriptions};
use crate::recipe::Recipe;
use crate::train::run_dir::RunDir;
use crate::train::supervised::{train, Checkpointing, StepReport, TrainOptions, TrainSource, ValidationData};
use crate::train::wiseft::interpolate;

/// The recipe's `model`, its architecture facts from `model_config` when the recipe names one.
fn load_model(recipe: &Recipe, device: &Device) -> Result<(ClipModel, LoadedCheckpointInfo)> {
    let config = match recipe.model_config.as_deref() {
        None => None,
        Some(spec) => Some(ConfigSource::parse(spec).map_err(|e| Error::Invalid {
            what: format!("recipe {}: model_config = {spec:?}", recipe.name),
            reason: e.to_string(),
        })?),
    };
    Ok(ClipModel::load_with_config(&recipe.model, config.as_ref(), device)?)
}

/// Numbers a method reports about its preparation, by name.
type Diagnostics = std::collections::BTreeMap<String, f64>;

/// What a running experiment reports.
pub enum Event<'a> {
    /// A new stage begins (features, training, evaluation, ...).
    Stage(String),
    /// An optimiser step finished.
    Step(&'a StepReport),
}

/// How to run a recipe.
pub struct RunSettings {
    /// Runs are written to `<out>/<recipe name>/`.
    pub out: PathBuf,
    pub resume: bool,
    /// Start over in a directory that holds an earlier run (deleting it); without it such a
    /// directory is refused, naming `--resume` and `--force`.
    pub force: bool,
    /// Stop training after this many steps, as an interruption would: nothing is evaluated
    /// or saved beyond the checkpoints (tests, benchmarks).
    pub stop_after: Option<u64>,
}

/// A trained model, how it predicts, and the pre-trained weights its WiSE-FT points start from.
struct Trained<'a> {
    model: &'a ClipModel,
    outcome: &'a Outcome,
    pretrained: &'a [(String, Tensor)],
}

/// A validated recipe with its data, prompts and model.
pub struct Experiment {
    pub recipe: Recipe,
    plan: MethodPlan,
    data: Data,
    pub classes: Vec<String>,
    /// Default prompts of each class.
    pub prompts: Vec<Vec<String>>,
    /// Concept descriptions of each class (when the recipe names them).
    pub descriptions: Option<Vec<Vec<String>>>,
    pub model: ClipModel,
    /// What loading the model assumed from a convention (the caller shows them).
    pub model_notices: Vec<String>,
    preprocess: ClipPreprocess,
}

impl Experiment {
    /// Loads and validates everything a recipe names.
    pub fn resolve(recipe: Recipe, device: &Device) -> Result<Self> {
        let plan = recipe.plan()?;
        let (model, loaded) = load_model(&recipe, device)?;
        let preprocess = ClipPreprocess::openai(model.config.vision.image_size);
        let (data, classes) = load_data(&recipe, &preprocess)?;
        let is_suite = matches!(data.eval, Benchmark::Suite(_));
        let templates = recipe
            .data
            .templates
            .clone()
            .unwrap_or(if is_suite { "shiftworld" } else { "openai_imagenet" }.into());
        let prompts = class_prompts(&classes, &resolve_templates(&templates)?);
        let descriptions = match recipe.data.descriptions.as_deref() {
            None => None,
            Some(name) => match crate::shiftworld::description_set(name).filter(|_| is_suite) {
                Some(set) => Some(set),
                None => Some(
                    ConceptDescriptions::load_with(
                        Path::new(name),
                        &classes,
                        recipe.data.descriptions_alignment,
                    )?
                    .per_class()
                    .to_vec(),
                ),
            },
        };
        if plan.method.uses_descriptions() && descriptions.is_none() {
            return Err(Error::Invalid {
                what: format!("recipe {}", recipe.name),
                reason: format!(
                    "method {} needs data.descriptions (a concept-description file)",
                    plan.method.name()
                ),
            });
        }
        let model_notices = loaded.notices;
        let experiment =
            Self { recipe, plan, data, classes, prompts, descriptions, model, model_notices, preprocess };
        experiment
            .train_options()
            .validate(experiment.data.train.len(), experiment.model.config.vision.layers)?;
        let plan = &experiment.plan;
        let constraint = format!("constraint {} (it learns on validation batches)", plan.constraint_name);
        let users = [
            plan.method.validation_user().map(String::from),
            plan.predictor.validation_user().map(String::from),
            plan.constraint.validation_batch_size().map(|_| constraint),
        ];
        for user in users.into_iter().flatten() {
            experiment.val_source(&user)?;
        }
        Ok(experiment)
    }

    fn run_dir(&self, settings: &RunSettings) -> RunDir {
        RunDir::new(settings.out.join(&self.recipe.name))
    }

    /// Runs the recipe; returns the result rows (also written to `results.jsonl`).
    pub fn run(&self, settings: &RunSettings, events: &mut dyn FnMut(Event)) -> Result<Vec<ResultRow>> {
        crate::kernels::set_matmul_precision(self.recipe.train.matmul_precision);
        let run = self.run_dir(settings);
        run.start(&self.recipe.to_toml(), settings.resume, settings.force)?;
        let pretrained = self.model.params.snapshot()?;
        let zero_shot = Head::zero_shot(&self.model, &self.prompts)?;
        let (outcome, diagnostics) = self.fit(&run, settings, &pretrained, &zero_shot, events)?;
        if settings.stop_after.is_some() {
            return Ok(Vec::new());
        }
        report_skipped("training", &self.data.train.skipped(), events);
        let trained = Trained { model: &self.model, outcome: &outcome, pretrained: &pretrained };
        let mut rows = self.evaluate_with_wiseft(&trained, &zero_shot, events)?;
        for row in &mut rows {
            row.diagnostics = diagnostics.clone();
        }
        self.save_outputs(&run, &outcome, &rows)?;
        Ok(rows)
    }

    /// The result rows of a trained model and of its WiSE-FT points (`eval.wiseft`).
    fn evaluate_with_wiseft(
        &self,
        trained: &Trained,
        zero_shot: &Head,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<ResultRow>> {
        let Trained { model, outcome, pretrained } = *trained;
        let predictors = self.prepare_predictors(pretrained, zero_shot, events)?;
        events(Event::Stage("evaluating".into()));
        let mut rows = self.evaluate_model(None, model, outcome, predictors.as_ref(), events)?;
        let alphas = self.recipe.eval.wiseft.iter().filter(|&&a| a < 1.0 && self.plan.method.interpolates());
        for &alpha in alphas {
            events(Event::Stage(format!("evaluating WiSE-FT α = {alpha}")));
            let mixed = interpolate(pretrained, &model.tensors(), alpha, &|_| false)?;
            let mixed = ClipModel::from_tensors(model.config.clone(), mixed, model.device())?;
            let outcome = outcome.interpolated(zero_shot, alpha)?;
            rows.extend(self.evaluate_model(Some(alpha), &mixed, &outcome, predictors.as_ref(), events)?);
        }
        Ok(rows)
    }

    /// The result rows of `model` (the WiSE-FT point `alpha`, if any) predicting by `outcome`.
    fn evaluate_model(
        &self,
        alpha: Option<f64>,
        model: &ClipModel,
        outcome: &Outcome,
        predictors: &dyn ModelPredictors,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<ResultRow>> {
        let own = self.predictor(model, outcome)?;
        let predictor = predictors.predictor(model, outcome, own, &mut |s| events(Event::Stage(s)))?;
        let evaluations = self.data.eval.evaluate(model, predictor.as_ref())?;
        for evaluation in &evaluations {
            let skipped: Vec<(String, String)> =
                evaluation.skipped.iter().map(|(p, r)| (p.display().to_string(), r.clone())).collect();
            report_skipped(&format!("split {}", evaluation.split), &skipped, events);
        }
        let mut rows = self.score(alpha, &evaluations);
        let (benchmark, specs) = (&self.data.eval, &self.recipe.eval.perturbations);
        let mut progress = |report: RobustnessProgress| match report {
            RobustnessProgress::Start { what, .. } => {
                events(Event::Stage(format!("evaluating under {what}")))
            }
            RobustnessProgress::Stage(line) => events(Event::Stage(line)),
            RobustnessProgress::Images(_) => {}
        };
        let context = self.row_context(alpha);
        rows.extend(evaluate_perturbations(
            benchmark,
            model,
            predictor.as_ref(),
            specs,
            &context,
            &mut progress,
        )?);
        Ok(rows)
    }

    /// The optimisation settings of the recipe.
    pub fn train_options(&self) -> TrainOptions {
        TrainOptions { seed: self.recipe.seed, ..self.recipe.train.clone() }
    }

    /// How `model` predicts by `outcome` through its method's own predictor.
    fn predictor(&self, model: &ClipModel, outcome: &Outcome) -> Result<Predictor> {
        match (outcome, self.text_predictor(outcome)) {
            (Outcome::Head(head), _) => Ok(Predictor::single(head.clone())),
            (_, text) => text.expect("an outcome other than a head rebuilds its heads").build(model),
        }
    }

    /// The heads an outcome rebuilds from the model's text tower (none for a fixed head).
    fn text_predictor(&self, outcome: &Outcome) -> Option<TextPredictor> {
        let (descriptions, beta) = match outcome {
            Outcome::Head(_) => return None,
            Outcome::Rebuilt => (None, 1.0),
            Outcome::Mixture { beta } => (self.descriptions.clone(), *beta),
        };
        Some(TextPredictor { prompts: self.prompts.clone(), descriptions, beta })
    }

    /// The recipe's predictor, prepared once for every evaluated model.
    fn prepare_predictors<'a>(
        &'a self,
        pretrained: &'a [(String, Tensor)],
        zero_shot: &'a Head,
        events: &mut dyn FnMut(Event),
    ) -> Result<Box<dyn ModelPredictors + 'a>> {
        let context = PredictorContext {
            model: &self.model,
            pretrained,
            zero_shot,
            train: self.data.train.as_ref(),
            val: self.data.val.as_deref(),
        };
        self.plan.predictor.prepare(&context, &mut |s| events(Event::Stage(s)))
    }

    /// The ID validation split, which `user` needs.
    fn val_source(&self, user: &str) -> Result<&dyn TrainSource> {
        self.data.val.as_deref().ok_or_else(|| Error::Invalid {
            what: format!("recipe {}", self.recipe.name),
            reason: format!("{user} needs the validation split `{}`", self.recipe.data.val_split),
        })
    }

    /// Result rows of one evaluation.
    fn score(&self, alpha: Option<f64>, evaluations: &[SplitEvaluation]) -> Vec<ResultRow> {
        let context = self.row_context(alpha);
        let skip = self.data.eval.skipped_groups();
        evaluations.iter().map(|e| ResultRow::score(&context, &e.split, &e.predictions, skip)).collect()
    }

    /// What the rows of the model at WiSE-FT point `alpha` (the trained model: `None`) name;
    /// the method label carries an update protocol other than `all` (`ft+pgd_at@last:2`).
    fn row_context(&self, alpha: Option<f64>) -> RowContext {
        let recipe = &self.recipe;
        let templates = recipe.data.templates.clone().unwrap_or_default();
        let prompts = match &recipe.data.descriptions {
            Some(cd) if self.plan.method.uses_descriptions() => format!("{templates}+{cd}"),
            _ => templates,
        };
        let method = match recipe.train.trainable.is_all() {
            true => self.plan.label(),
            false => format!("{}@{}", self.plan.label(), recipe.train.trainable),
        };
        RowContext {
            model: recipe.model.clone(),
            dataset: self.data.eval.name(),
            method,
            prompts,
            seed: recipe.seed,
            preprocess: self.preprocess.id(),
            wiseft_alpha: alpha,
        }
    }

    /// Writes the trained weights (`model/`, HF layout) with how they predict (a trained
    /// `head.safetensors`, or the text heads' `predictor.json`), then `results.jsonl` (so
    /// results on disk mean a complete run).
    fn save_outputs(&self, run: &RunDir, outcome: &Outcome, rows: &[ResultRow]) -> Result<()> {
        let metadata = HashMap::from([("robustft.recipe".to_string(), self.recipe.to_toml())]);
        let dir = run.root.join("model");
        let tmp = run.root.join("model.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(crate::train::run_dir::io_error(&tmp))?;
        }
        self.model.save_hf(&tmp, &metadata)?;
        if let Outcome::Head(head) = outcome {
            head.save_with_classes(&tmp.join("head.safetensors"), metadata, &self.classes)?;
        }
        if let Some(text) = self.text_predictor(outcome) {
            text.save(&tmp)?;
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(crate::train::run_dir::io_error(&dir))?;
        }
        std::fs::rename(&tmp, &dir).map_err(crate::train::run_dir::io_error(&tmp))?;
        let lines: String =
            rows.iter().map(|row| serde_json::to_string(row).expect("serialisable") + "\n").collect();
        Ok(crate::clip::checkpoint::write_atomic(&run.results(), lines.as_bytes())?)
    }

    /// Fits or trains the method; says how the model then predicts, and what the method
    /// reported about its preparation.
    fn fit(
        &self,
        run: &RunDir,
        settings: &RunSettings,
        pretrained: &[(String, Tensor)],
        zero_shot: &Head,
        events: &mut dyn FnMut(Event),
    ) -> Result<(Outcome, Diagnostics)> {
        let cache = settings.out.join("cache");
        let features = |role: SplitRole| self.cached_features(role, &cache);
        let mut stage = |s: String| events(Event::Stage(s));
        let mut context = Context {
            model: &self.model,
            prompts: &self.prompts,
            descriptions: self.descriptions.as_deref(),
            zero_shot,
            pretrained,
            train: self.data.train.as_ref(),
            seed: self.recipe.seed,
            features: &features,
            stage: &mut stage,
        };
        let (objective, outcome, diagnostics) = match self.plan.method.prepare(&mut context)? {
            Prepared::Fitted(outcome) => return Ok((outcome, Diagnostics::new())),
            Prepared::Train { objective, outcome, diagnostics } => (objective, outcome, diagnostics),
        };
        let (objective, outcome) = match &self.plan.adversarial {
            Some(adversarial) => adversarial.wrap(objective, outcome, &context)?,
            None => (objective, outcome),
        };
        events(Event::Stage(format!("training {}", self.plan.label())));
        let checkpointing = Checkpointing {
            run,
            resume: settings.resume,
            stop_after: settings.stop_after,
            metadata: HashMap::from([("robustft.recipe".to_string(), self.recipe.to_toml())]),
        };
        let options = self.train_options();
        let mut constraint = self.plan.constraint.build()?;
        let batch_size = self.plan.constraint.validation_batch_size().flatten();
        let validation = self
            .data
            .val
            .as_deref()
            .map(|source| ValidationData { source, batch_size: batch_size.unwrap_or(options.batch_size) });
        train(
            &self.model,
            objective.as_ref(),
            constraint.as_mut(),
            self.data.train.as_ref(),
            validation,
            &options,
            pretrained,
            &checkpointing,
            &mut |r| events(Event::Step(r)),
        )?;
        Ok((Prepared::trained_outcome(objective.as_ref(), &outcome), diagnostics.into_iter().collect()))
    }
}

/// A template set name or a templates file.
fn resolve_templates(spec: &str) -> Result<Vec<String>> {
    Ok(match template_set(spec) {
        Some(set) => set.iter().map(|t| t.to_string()).collect(),
        None => load_templates(Path::new(spec))?,
    })
}

/// Reports unreadable images (left out, never fatal).
fn report_skipped(what: &str, skipped: &[(String, String)], events: &mut dyn FnMut(Event)) {
    for (image, reason) in skipped {
        events(Event::Stage(format!("warning: skipped unreadable image {image} ({what}): {reason}")));
    }
}
