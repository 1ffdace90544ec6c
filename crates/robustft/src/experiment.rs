//! Running a recipe end to end (docs/design.md, "data flow"): resolve and validate the
//! recipe against the data (splits exist, class lists agree, concept descriptions align), write
//! the resolved recipe to `<out>/<name>/recipe.toml` before any work, train the method with
//! checkpoints (`--resume` continues a killed run to the same weights), evaluate it and its
//! WiSE-FT interpolations on every evaluation split, and write `results.jsonl` and the final
//! weights.
//!
//! Methods (methods.md §2, §1b): `zeroshot`; `lp` (logistic regression on frozen features, C
//! chosen on ID validation); `ft` (CE, head from the zero-shot head); `l2sp` (`ft` + the L2-SP
//! constraint); `lp_ft` (`lp`, then `ft` from the LP head); `flyp`; `drm`; any trained method
//! takes a recipe's `[constraint]` (L2-SP, SPD, FTP, TPGM, DiGraP; result rows then name it,
//! `flyp+ftp`; TPGM learns on batches of the validation split `data.val_split`). WiSE-FT
//! interpolates every parameter of both towers between the pre-trained and the trained model
//! and, for head-based methods, the head between the zero-shot head and the trained head; FLYP
//! and DRM rebuild their heads from the interpolated towers.
//!
//! Objective terms: `[m2mix]` adds m²-mix's hard negatives to FLYP's contrastive loss (method
//! `flyp`, or `drm` with the FLYP ERM term; [`crate::methods::m2mix`]); `[fsr]` wraps the CE
//! objective of `ft`, `lp_ft`, `l2sp` in function-space regularisation
//! ([`crate::methods::fsr`]).
//!
//! With `eval.predictor = "vrf"` (head-based methods), every evaluated model — the trained one
//! and each WiSE-FT interpolation — predicts through VRF ([`crate::methods::vrf`]): its
//! zero-shot failures are found on the training split and its temperature on ID validation,
//! against the pre-trained model with the zero-shot head.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::clip::layers::l2_normalize;
use crate::clip::preprocess::ClipPreprocess;
use crate::clip::ClipModel;
use crate::data::{load_fmow_split, load_imagenet_variant, load_iwildcam_split, load_manifest_split, Split};
use crate::error::{Error, Result};
use crate::eval::dataset::evaluate_split;
use crate::eval::evaluate::{ResultRow, RowContext};
use crate::eval::metrics::Predictions;
use crate::eval::predictor::{Head, ImagePredictor, Predictor};
use crate::eval::suite::{evaluate_suite, render_split};
use crate::kernels::MatmulPrecision;
use crate::methods::ce::{CrossEntropy, TrainableHead};
use crate::methods::drm::{core_predictions, Drm, Erm};
use crate::methods::flyp::Flyp;
use crate::methods::fsr::{FunctionSpace, HeadObjective, OodSimulator};
use crate::methods::linear_probe::{select_c, LbfgsOptions};
use crate::methods::m2mix::M2Mix;
use crate::methods::vrf::{Vrf, ZeroShotSide};
use crate::methods::ClassTexts;
use crate::prompts::{class_prompts, load_templates, template_set, ConceptDescriptions};
use crate::recipe::{ConstraintName, DiskFormat, ErmKind, MethodName, PredictorKind, Recipe};
use crate::shiftworld::{build_suite, Suite, CLASSES};
use crate::train::images::DiskSet;
use crate::train::run_dir::RunDir;
use crate::train::supervised::{
    train, Checkpointing, Objective, StepReport, TrainOptions, TrainSource, ValidationData,
};
use crate::train::wiseft::interpolate;
use crate::zeroshot::{tokenizer_for, ZeroShotHead};

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
    /// Stop training after this many steps, as an interruption would: nothing is evaluated
    /// or saved beyond the checkpoints (tests, benchmarks).
    pub stop_after: Option<u64>,
}

/// The examples of a run: training and validation sources, and the evaluation splits.
struct Data {
    train: Arc<dyn TrainSource>,
    val: Option<Arc<dyn TrainSource>>,
    eval: EvalSplits,
}

enum EvalSplits {
    /// A ShiftWorld suite holding only the splits to evaluate.
    Suite(Suite),
    /// Splits on disk.
    Disk(Vec<Arc<Split>>),
}

/// A validated recipe with its data, prompts and model.
pub struct Experiment {
    pub recipe: Recipe,
    data: Data,
    pub classes: Vec<String>,
    /// Default prompts of each class.
    pub prompts: Vec<Vec<String>>,
    /// Concept descriptions of each class (when the recipe names them).
    pub descriptions: Option<Vec<Vec<String>>>,
    pub model: ClipModel,
    preprocess: ClipPreprocess,
}

impl Experiment {
    /// Loads and validates everything a recipe names.
    pub fn resolve(recipe: Recipe, device: &Device) -> Result<Self> {
        let (model, _) = ClipModel::load(&recipe.model, device)?;
        let preprocess = ClipPreprocess::openai(model.config.vision.image_size);
        let (data, classes) = load_data(&recipe, &preprocess)?;
        let is_suite = matches!(data.eval, EvalSplits::Suite(_));
        let templates = recipe
            .data
            .templates
            .clone()
            .unwrap_or(if is_suite { "shiftworld" } else { "openai_imagenet" }.into());
        let prompts = class_prompts(&classes, &resolve_templates(&templates)?);
        let descriptions = match recipe.data.descriptions.as_deref() {
            None => None,
            Some("shiftworld") if is_suite => Some(crate::shiftworld::concept_descriptions()),
            Some(path) => Some(ConceptDescriptions::load(Path::new(path), &classes)?.per_class().to_vec()),
        };
        if recipe.method.name == MethodName::Drm && descriptions.is_none() {
            return Err(Error::Invalid {
                what: format!("recipe {}", recipe.name),
                reason: "method drm needs data.descriptions (a concept-description file)".into(),
            });
        }
        let experiment = Self { recipe, data, classes, prompts, descriptions, model, preprocess };
        experiment.train_options().validate(experiment.data.train.len())?;
        if experiment.recipe.eval.predictor == PredictorKind::Vrf {
            experiment.val_source("VRF's temperature calibration")?;
        }
        if experiment.recipe.constraint.name == ConstraintName::Tpgm {
            experiment.val_source("constraint tpgm (its radii are learned on validation batches)")?;
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
        self.write_recipe(&run, settings.resume)?;
        let pretrained = self.model.params.snapshot()?;
        let zero_shot = self.head_from(&self.model, &self.prompts)?;
        let method = self.recipe.method.name;
        let outcome = match method {
            MethodName::Zeroshot => Outcome::Head(zero_shot.clone()),
            MethodName::Lp => Outcome::Head(self.linear_probe(&settings.out, events)?),
            _ => self.fine_tune(&run, settings, &pretrained, &zero_shot, events)?,
        };
        if settings.stop_after.is_some() {
            return Ok(Vec::new());
        }
        report_skipped("training", &self.data.train.skipped(), events);
        let vrf = self.vrf_zero_shot_side(&pretrained, &zero_shot, events)?;
        events(Event::Stage("evaluating".into()));
        let predictor = self.image_predictor(&self.model, &outcome, vrf.as_ref(), events)?;
        let mut rows = self.score(None, &self.evaluate(&self.model, predictor.as_ref(), events)?);
        let alphas = self.recipe.eval.wiseft.iter().filter(|&&a| a < 1.0 && method != MethodName::Zeroshot);
        for &alpha in alphas {
            events(Event::Stage(format!("evaluating WiSE-FT α = {alpha}")));
            let mixed = interpolate(&pretrained, &self.model.tensors(), alpha, &|_| false)?;
            let model = ClipModel::from_tensors(self.model.config.clone(), mixed, self.model.device())?;
            let outcome = match &outcome {
                Outcome::Head(head) => Outcome::Head(zero_shot.lerp(head, alpha)?),
                rebuilt => rebuilt.clone(),
            };
            let predictor = self.image_predictor(&model, &outcome, vrf.as_ref(), events)?;
            rows.extend(self.score(Some(alpha), &self.evaluate(&model, predictor.as_ref(), events)?));
        }
        self.save_outputs(&run, &outcome, &rows)?;
        Ok(rows)
    }

    /// The optimisation settings of the recipe.
    pub fn train_options(&self) -> TrainOptions {
        TrainOptions { seed: self.recipe.seed, ..self.recipe.train.clone() }
    }

    /// Writes the resolved recipe; on resume, insists the run directory holds the same one.
    fn write_recipe(&self, run: &RunDir, resume: bool) -> Result<()> {
        run.create()?;
        let path = run.root.join("recipe.toml");
        let text = self.recipe.to_toml();
        if resume {
            let existing = std::fs::read_to_string(&path).unwrap_or_default();
            if existing != text {
                return Err(Error::Invalid {
                    what: format!("--resume in {}", run.root.display()),
                    reason: "the run directory holds a different recipe (or none)".into(),
                });
            }
            return Ok(());
        }
        crate::clip::checkpoint::write_atomic(&path, text.as_bytes())?;
        for stale in [run.metrics(), run.results()] {
            if stale.exists() {
                std::fs::remove_file(&stale).map_err(crate::train::run_dir::io_error(&stale))?;
            }
        }
        Ok(())
    }

    /// The zero-shot head of `prompts` from `model`'s text tower.
    fn head_from(&self, model: &ClipModel, prompts: &[Vec<String>]) -> Result<Head> {
        Ok(Head::from(&ZeroShotHead::build(model, &tokenizer_for(model)?, prompts)?))
    }

    fn descriptions(&self) -> Result<&[Vec<String>]> {
        self.descriptions.as_deref().ok_or_else(|| Error::Invalid {
            what: format!("recipe {}", self.recipe.name),
            reason: "needs data.descriptions".into(),
        })
    }

    /// How `model` predicts after training.
    fn predictor(&self, model: &ClipModel, outcome: &Outcome) -> Result<Predictor> {
        Ok(match outcome {
            Outcome::Head(head) => Predictor::single(head.clone()),
            Outcome::Rebuilt => Predictor::single(self.head_from(model, &self.prompts)?),
            Outcome::Mixture => Predictor::mixture(
                self.head_from(model, &self.prompts)?,
                self.head_from(model, self.descriptions()?)?,
                self.recipe.drm.beta,
            )?,
        })
    }

    /// A head-based objective, wrapped in function-space regularisation when the recipe asks
    /// for it (the frozen reference model is built from the `pretrained` tensors).
    fn head_objective<O: HeadObjective + 'static>(
        &self,
        objective: O,
        pretrained: &[(String, Tensor)],
    ) -> Result<Box<dyn Objective>> {
        let fsr = &self.recipe.fsr;
        if !fsr.enabled() {
            return Ok(Box::new(objective));
        }
        let reference =
            ClipModel::from_tensors(self.model.config.clone(), pretrained.to_vec(), self.model.device())?;
        let simulator = OodSimulator {
            noise_std: fsr.noise_std,
            contrast: fsr.contrast,
            erase_prob: fsr.erase_prob,
            erase_area: fsr.erase_area,
            seed: self.recipe.seed,
        };
        Ok(Box::new(FunctionSpace {
            inner: objective,
            reference,
            simulator,
            lambda1: fsr.lambda1,
            lambda2: fsr.lambda2,
            distance: fsr.distance,
        }))
    }

    /// m²-mix's term, when the recipe gives it a weight.
    fn m2mix(&self) -> Option<M2Mix> {
        let m = &self.recipe.m2mix;
        (m.weight > 0.0).then_some(M2Mix {
            weight: m.weight,
            beta: m.beta,
            tau: m.tau,
            tau_use: m.tau_use,
            schedule: m.schedule,
            seed: self.recipe.seed,
        })
    }

    /// The predictor evaluation runs for `model`: the method's own, or VRF over its head
    /// (when `zero_shot`, VRF's zero-shot side, is given).
    fn image_predictor<'a>(
        &self,
        model: &ClipModel,
        outcome: &Outcome,
        zero_shot: Option<&'a ZeroShotSide>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Box<dyn ImagePredictor + 'a>> {
        let (Some(zero_shot), Outcome::Head(head)) = (zero_shot, outcome) else {
            return Ok(Box::new(self.predictor(model, outcome)?));
        };
        let (train, val) = (self.data.train.as_ref(), self.val_source("VRF's temperature calibration")?);
        let vrf = &self.recipe.vrf;
        let vrf = Vrf::fit(zero_shot, model, head.clone(), train, val, vrf.a, vrf.b)?;
        events(Event::Stage(vrf.fit.summary()));
        Ok(Box::new(vrf))
    }

    /// VRF's zero-shot side (the pre-trained model and the zero-shot head), when the recipe
    /// evaluates with VRF.
    fn vrf_zero_shot_side(
        &self,
        pretrained: &[(String, Tensor)],
        zero_shot: &Head,
        events: &mut dyn FnMut(Event),
    ) -> Result<Option<ZeroShotSide>> {
        if self.recipe.eval.predictor != PredictorKind::Vrf {
            return Ok(None);
        }
        events(Event::Stage("VRF: the zero-shot model on the training and validation splits".into()));
        let model =
            ClipModel::from_tensors(self.model.config.clone(), pretrained.to_vec(), self.model.device())?;
        let val = self.val_source("VRF's temperature calibration")?;
        Ok(Some(ZeroShotSide::new(model, zero_shot.clone(), self.data.train.as_ref(), val)?))
    }

    /// The linear probe on frozen, normalised features; C chosen on ID validation.
    fn linear_probe(&self, out: &Path, events: &mut dyn FnMut(Event)) -> Result<Head> {
        events(Event::Stage("features for the linear probe".into()));
        let cache = out.join("cache");
        let (train_x, train_y) =
            self.cached_features(self.data.train.as_ref(), &self.recipe.data.train_split, &cache)?;
        let (val_x, val_y) =
            self.cached_features(self.val_source("the linear probe")?, &self.recipe.data.val_split, &cache)?;
        events(Event::Stage("fitting the linear probe (L-BFGS)".into()));
        let options = LbfgsOptions { max_iter: self.recipe.lp.max_iter, ..LbfgsOptions::default() };
        let selection = select_c(
            (&train_x, &train_y),
            (&val_x, &val_y),
            self.classes.len(),
            &self.recipe.lp.c_grid,
            &options,
        )?;
        let c = selection.c;
        let accuracy = selection.sweep.iter().find(|(grid_c, _)| *grid_c == c).map_or(f64::NAN, |s| s.1);
        events(Event::Stage(format!("linear probe: C = {c} (ID validation top-1 {accuracy:.3})")));
        let fit = selection.model;
        let device = self.model.device();
        Ok(Head {
            weight: Tensor::from_vec(fit.weight, (fit.classes, fit.dim), device)?,
            bias: Some(Tensor::from_vec(fit.bias, fit.classes, device)?),
        })
    }

    /// The ID validation split, which `user` needs.
    fn val_source(&self, user: &str) -> Result<&dyn TrainSource> {
        self.data.val.as_deref().ok_or_else(|| Error::Invalid {
            what: format!("recipe {}", self.recipe.name),
            reason: format!("{user} needs the validation split `{}`", self.recipe.data.val_split),
        })
    }

    /// Predictions of `model` + `predictor` on every evaluation split.
    fn evaluate(
        &self,
        model: &ClipModel,
        predictor: &dyn ImagePredictor,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<(String, Predictions)>> {
        match &self.data.eval {
            EvalSplits::Suite(suite) => evaluate_suite(model, suite, predictor),
            EvalSplits::Disk(splits) => splits
                .iter()
                .map(|split| {
                    let evaluation = evaluate_split(model, split.clone(), predictor)?;
                    let skipped: Vec<(String, String)> = evaluation
                        .skipped
                        .iter()
                        .map(|(p, r)| (p.display().to_string(), r.clone()))
                        .collect();
                    report_skipped(&format!("split {}", evaluation.split), &skipped, events);
                    Ok((evaluation.split, evaluation.predictions))
                })
                .collect(),
        }
    }

    /// Result rows of one evaluation.
    fn score(&self, alpha: Option<f64>, predictions: &[(String, Predictions)]) -> Vec<ResultRow> {
        let recipe = &self.recipe;
        let (dataset, skip): (String, &[&str]) = match &recipe.data.suite {
            Some(suite) => (format!("shiftworld/{suite}"), &[]),
            None => (recipe.data.root.as_deref().unwrap_or(Path::new("")).display().to_string(), &["Other"]),
        };
        let templates = recipe.data.templates.clone().unwrap_or_default();
        let prompts = match (&recipe.data.descriptions, recipe.method.name) {
            (Some(cd), MethodName::Drm) => format!("{templates}+{cd}"),
            _ => templates,
        };
        let context = RowContext {
            model: recipe.model.clone(),
            dataset,
            method: recipe.label(),
            prompts,
            seed: recipe.seed,
            preprocess: self.preprocess.id(),
            wiseft_alpha: alpha,
        };
        predictions.iter().map(|(split, p)| ResultRow::score(&context, split, p, skip)).collect()
    }

    /// Writes `results.jsonl`, the trained weights (`model/`, HF layout) and the head.
    fn save_outputs(&self, run: &RunDir, outcome: &Outcome, rows: &[ResultRow]) -> Result<()> {
        let lines: String =
            rows.iter().map(|row| serde_json::to_string(row).expect("serialisable") + "\n").collect();
        crate::clip::checkpoint::write_atomic(&run.results(), lines.as_bytes())?;
        let metadata = HashMap::from([("robustft.recipe".to_string(), self.recipe.to_toml())]);
        let dir = run.root.join("model");
        let tmp = run.root.join("model.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(crate::train::run_dir::io_error(&tmp))?;
        }
        self.model.save_hf(&tmp, &metadata)?;
        if let Outcome::Head(head) = outcome {
            head.save(&tmp.join("head.safetensors"), metadata)?;
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(crate::train::run_dir::io_error(&dir))?;
        }
        std::fs::rename(&tmp, &dir).map_err(crate::train::run_dir::io_error(&tmp))
    }

    /// Frozen, normalised features of a split, computed once and kept in `cache` under a key
    /// naming the model (spec and a checksum of its weights), the data, the split, the
    /// preprocessing and (when not fp32) the matmul precision.
    fn cached_features(
        &self,
        source: &dyn TrainSource,
        split: &str,
        cache: &Path,
    ) -> Result<(Vec<f32>, Vec<u32>)> {
        let mut checksum = 0f64;
        for (_, tensor) in self.model.tensors() {
            checksum += tensor.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
        let data = &self.recipe.data;
        let dataset = match &data.suite {
            Some(suite) => format!("shiftworld/{suite}/seed{}", self.recipe.seed),
            None => data.root.as_deref().unwrap_or(Path::new("")).display().to_string(),
        };
        let precision = match self.recipe.train.matmul_precision {
            MatmulPrecision::Fp32 => String::new(),
            other => format!("|matmul {}", other.name()),
        };
        let key = format!(
            "{}|{checksum:e}|{dataset}|{split}|{}|{}{precision}",
            self.recipe.model,
            self.preprocess.id(),
            source.len()
        );
        let path = cache.join(format!("features-{:016x}.safetensors", crate::rng::fnv1a(key.as_bytes())));
        if let Ok(tensors) = candle_core::safetensors::load(&path, &Device::Cpu) {
            if let (Some(x), Some(y)) = (tensors.get("features"), tensors.get("labels")) {
                return Ok((x.flatten_all()?.to_vec1()?, y.to_dtype(candle_core::DType::U32)?.to_vec1()?));
            }
        }
        let (x, y) = features(&self.model, source)?;
        let n = y.len();
        let tensors = vec![
            ("features".to_string(), Tensor::from_slice(&x, (n, x.len() / n.max(1)), &Device::Cpu)?),
            ("labels".to_string(), Tensor::from_slice(&y, n, &Device::Cpu)?), // stored as f32 (exact below 2^24)
        ];
        std::fs::create_dir_all(cache).map_err(crate::train::run_dir::io_error(cache))?;
        let metadata = HashMap::from([("robustft.features".to_string(), key)]);
        crate::clip::checkpoint::write_safetensors(&path, &tensors, metadata)?;
        Ok((x, y))
    }

    /// Trains the model (FT, L2-SP, LP-FT, FLYP, DRM) and says how it predicts.
    fn fine_tune(
        &self,
        run: &RunDir,
        settings: &RunSettings,
        pretrained: &[(String, Tensor)],
        zero_shot: &Head,
        events: &mut dyn FnMut(Event),
    ) -> Result<Outcome> {
        let source = self.data.train.clone();
        let tokenizer = tokenizer_for(&self.model)?;
        let flyp = || -> Result<Flyp> {
            Ok(Flyp {
                class_prompts: self.prompts.clone(),
                tokenizer: tokenizer_for(&self.model)?,
                m2mix: self.m2mix(),
            })
        };
        let objective: Box<dyn Objective> = match self.recipe.method.name {
            MethodName::Ft | MethodName::L2sp => {
                self.head_objective(CrossEntropy { head: TrainableHead::new(zero_shot)? }, pretrained)?
            }
            MethodName::LpFt => {
                let head = TrainableHead::new(&self.linear_probe(&settings.out, events)?)?;
                self.head_objective(CrossEntropy { head }, pretrained)?
            }
            MethodName::Flyp => Box::new(flyp()?),
            MethodName::Drm => {
                events(Event::Stage("core predictions p_c of the pre-trained model".into()));
                let descriptions = ClassTexts::new(&self.model, &tokenizer, self.descriptions()?)?;
                let core =
                    core_predictions(&self.model, source.as_ref(), &descriptions, self.recipe.drm.affinity)?;
                let erm = match self.recipe.drm.erm {
                    ErmKind::Flyp => Erm::Flyp(Box::new(flyp()?)),
                    ErmKind::Ce => Erm::Ce(ClassTexts::new(&self.model, &tokenizer, &self.prompts)?),
                };
                let drm = Drm {
                    erm,
                    descriptions,
                    core,
                    classes: self.classes.len(),
                    lambda: self.recipe.drm.lambda,
                    wrm: self.recipe.drm.wrm,
                };
                Box::new(drm)
            }
            MethodName::Zeroshot | MethodName::Lp => unreachable!("no fine-tuning"),
        };
        events(Event::Stage(format!("training {}", self.recipe.label())));
        let checkpointing = Checkpointing {
            run,
            resume: settings.resume,
            stop_after: settings.stop_after,
            metadata: HashMap::from([("robustft.recipe".to_string(), self.recipe.to_toml())]),
        };
        let options = self.train_options();
        let mut constraint = crate::constraints::build(&self.recipe.constraint)?;
        let validation = self.data.val.as_deref().map(|source| ValidationData {
            source,
            batch_size: self.recipe.constraint.val_batch_size.unwrap_or(options.batch_size),
        });
        train(
            &self.model,
            objective.as_ref(),
            constraint.as_mut(),
            source.as_ref(),
            validation,
            &options,
            pretrained,
            &checkpointing,
            &mut |r| events(Event::Step(r)),
        )?;
        Ok(match self.recipe.method.name {
            MethodName::Flyp => Outcome::Rebuilt,
            MethodName::Drm => Outcome::Mixture,
            _ => Outcome::Head(trained_head(objective.as_ref())),
        })
    }
}

/// What training produced besides the towers' weights: how the model predicts.
#[derive(Clone)]
enum Outcome {
    /// A head over image features (zero-shot, LP, or trained with CE).
    Head(Head),
    /// The zero-shot head rebuilt from the current text tower (FLYP).
    Rebuilt,
    /// DRM's mixture of the default-prompt and concept-description heads, rebuilt.
    Mixture,
}

/// The head a CE objective trained (its `head.weight` and optional `head.bias`).
fn trained_head(objective: &dyn Objective) -> Head {
    let params = objective.extra_params();
    let find = |name: &str| params.iter().find(|(n, _, _)| n == name).map(|(_, v, _)| v.as_tensor().clone());
    Head { weight: find("head.weight").expect("a CE objective has a head"), bias: find("head.bias") }
}

/// L2-normalised frozen image features `[n, d]` (flat) and labels of a whole source.
fn features(model: &ClipModel, source: &dyn TrainSource) -> Result<(Vec<f32>, Vec<u32>)> {
    let size = source.image_size();
    let all: Vec<usize> = (0..source.len()).collect();
    let (mut values, mut labels) = (Vec::new(), Vec::new());
    for chunk in all.chunks(256) {
        let (pixels, kept) = source.load(chunk)?;
        if kept.is_empty() {
            continue;
        }
        let images = Tensor::from_vec(pixels, (kept.len(), 3, size, size), model.device())?;
        let features = l2_normalize(&model.no_grad().encode_image(&images)?)?;
        values.extend(features.flatten_all()?.to_vec1::<f32>()?);
        labels.extend(kept.iter().map(|&i| source.label(i)));
    }
    Ok((values, labels))
}

/// A template set name or a templates file.
fn resolve_templates(spec: &str) -> Result<Vec<String>> {
    Ok(match template_set(spec) {
        Some(set) => set.iter().map(|t| t.to_string()).collect(),
        None => load_templates(Path::new(spec))?,
    })
}

/// Loads the recipe's data and checks it: the named splits exist and share one class list.
fn load_data(recipe: &Recipe, preprocess: &ClipPreprocess) -> Result<(Data, Vec<String>)> {
    let d = &recipe.data;
    if let Some(name) = &d.suite {
        let suite = build_suite(name, recipe.seed)?;
        let available: Vec<&str> = suite.splits.iter().map(|s| s.name.as_str()).collect();
        let find = |split: &str| {
            suite.split(split).ok_or_else(|| missing_split(split, &format!("suite {name}"), &available))
        };
        let train: Arc<dyn TrainSource> = Arc::new(render_split(find(&d.train_split)?, preprocess));
        let val =
            suite.split(&d.val_split).map(|s| Arc::new(render_split(s, preprocess)) as Arc<dyn TrainSource>);
        let wanted: Vec<String> = match d.eval_splits.is_empty() {
            true => available.iter().filter(|s| **s != d.train_split).map(|s| s.to_string()).collect(),
            false => d.eval_splits.clone(),
        };
        let eval_splits = wanted.iter().map(|s| find(s).cloned()).collect::<Result<Vec<_>>>()?;
        let eval = Suite { splits: eval_splits, ..suite.clone() };
        let classes = CLASSES.iter().map(|c| c.to_string()).collect();
        return Ok((Data { train, val, eval: EvalSplits::Suite(eval) }, classes));
    }
    let format = d.format.expect("checked at parse");
    let root = d.root.clone().expect("checked at parse");
    if !root.exists() {
        return Err(Error::Invalid {
            what: format!("data.root {}", root.display()),
            reason: "does not exist".into(),
        });
    }
    let available = disk_split_names(format, &root)?;
    let load = |split: &str| -> Result<Arc<Split>> {
        if !available.iter().any(|s| s == split) {
            let names: Vec<&str> = available.iter().map(String::as_str).collect();
            return Err(missing_split(split, &root.display().to_string(), &names));
        }
        Ok(Arc::new(match format {
            DiskFormat::Manifest => load_manifest_split(&root, split)?,
            DiskFormat::Iwildcam => load_iwildcam_split(&root, split)?,
            DiskFormat::Fmow => load_fmow_split(&root, split)?,
            DiskFormat::Imagenet => imagenet_split(&root, split)?,
        }))
    };
    let train = load(&d.train_split)?;
    let classes = train.classes.clone();
    let wanted: Vec<String> = match d.eval_splits.is_empty() {
        true => available.iter().filter(|s| **s != d.train_split).cloned().collect(),
        false => d.eval_splits.clone(),
    };
    let eval = wanted.iter().map(|s| load(s)).collect::<Result<Vec<_>>>()?;
    for split in &eval {
        check_classes(split, &classes)?;
    }
    let val = match available.contains(&d.val_split) {
        true => {
            let split = load(&d.val_split)?;
            check_classes(&split, &classes)?;
            Some(Arc::new(DiskSet::new(split, preprocess.clone())) as Arc<dyn TrainSource>)
        }
        false => None,
    };
    let train: Arc<dyn TrainSource> = Arc::new(DiskSet::new(train, preprocess.clone()));
    Ok((Data { train, val, eval: EvalSplits::Disk(eval) }, classes))
}

/// The split names a dataset on disk offers.
fn disk_split_names(format: DiskFormat, root: &Path) -> Result<Vec<String>> {
    let fixed = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
    Ok(match format {
        DiskFormat::Manifest => crate::data::manifest_splits(root)?,
        DiskFormat::Iwildcam => fixed(&crate::data::IWILDCAM_SPLITS),
        DiskFormat::Fmow => fixed(&crate::data::FMOW_SPLITS),
        DiskFormat::Imagenet => {
            std::iter::once("train").chain(crate::data::IMAGENET_VARIANTS).map(String::from).collect()
        }
    })
}

/// ImageNet layouts: `root/train` (the training set, WordNet-id folders) and `root/<variant>`
/// for each variant (`imagenet` = the validation set, `imagenet-v2`, `-sketch`, `-r`, `-a`,
/// `objectnet`; layouts in `data/imagenet.rs`).
fn imagenet_split(root: &Path, split: &str) -> Result<Split> {
    let variant = if split == "train" { "imagenet" } else { split };
    let mut loaded = load_imagenet_variant(&root.join(split), variant)?;
    loaded.name = split.to_string();
    Ok(loaded)
}

fn missing_split(split: &str, dataset: &str, available: &[&str]) -> Error {
    Error::Invalid {
        what: format!("split `{split}` of {dataset}"),
        reason: format!("does not exist (available: {})", available.join(", ")),
    }
}

/// An evaluation split must share the training classes, or project onto them.
fn check_classes(split: &Split, classes: &[String]) -> Result<()> {
    let fits = match &split.projection {
        Some(projection) => projection.input_len() <= classes.len(),
        None => split.classes == classes,
    };
    if fits {
        return Ok(());
    }
    Err(Error::Invalid {
        what: format!("split `{}`", split.name),
        reason: format!(
            "has {} classes that do not match the training split's {} (class-count or class-name mismatch)",
            split.classes.len(),
            classes.len()
        ),
    })
}

/// Reports unreadable images (left out, never fatal).
fn report_skipped(what: &str, skipped: &[(String, String)], events: &mut dyn FnMut(Event)) {
    for (image, reason) in skipped {
        events(Event::Stage(format!("warning: skipped unreadable image {image} ({what}): {reason}")));
    }
}
