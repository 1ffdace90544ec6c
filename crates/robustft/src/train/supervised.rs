//! The supervised fine-tuning loop every method runs on (docs/design.md: a method is an
//! [`Objective`] — the loss of a batch — plus optimiser-side constraints — plus a predictor
//! used at evaluation). The loop:
//!
//! * AdamW with the usual parameter groups (no decay on norms, biases, embeddings, logit
//!   scale), cosine schedule with linear warm-up (FLYP `src/models/utils.py: cosine_lr`);
//! * per-tower freezing ([`Tower`]) and the update protocol ([`Trainable`]: all, the head
//!   only, or the image tower's last K blocks): parameters they exclude are left out of the
//!   optimiser;
//! * a [`Constraint`] toward the pre-trained weights (L2-SP, SPD, FTP, ...; `crate::constraints`):
//!   its gradient changes come before clipping (as a loss-term penalty would), its weight
//!   changes after the AdamW step, and its state is checkpointed; a constraint that learns on
//!   held-out data (TPGM) gets the objective's loss on [`ValidationData`] batches, drawn like
//!   training batches from their own seeded order (epoch `e` of the validation split visits
//!   `epoch_order(n, (seed ⊕ salt) + e)` in chunks), so they too are a pure function of the
//!   seed and the draw;
//! * gradient clipping by global L2 norm, as `torch.nn.utils.clip_grad_norm_`;
//! * divergence: a non-finite loss or gradient norm stops the run before its optimiser step,
//!   with an error naming the step, the loss and the learning rate ([`TrainOptions::check`]
//!   refuses non-finite or out-of-range options, and step counts beyond [`MAX_STEPS`], first);
//! * gradient accumulation: a batch is split into `accumulation` micro-batches whose losses are
//!   weighted by their share of the batch and whose gradients are summed — identical to the
//!   full batch for per-example losses (CE); a contrastive loss sees fewer negatives per
//!   micro-batch, as in open_clip without its feature cache;
//! * determinism and resume: the batch of step `t` is a pure function of the seed and `t`
//!   (epoch `e` visits [`epoch_order`]`(n, seed + e)` in chunks), checkpoints hold the weights,
//!   the extra trained tensors and the optimiser moments, so `--resume` reaches exactly the
//!   weights of an uninterrupted run; `metrics.jsonl` is cut back to the checkpoint's step on
//!   resume, so every step is logged once.

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::run_dir::{io_error, load_extra, RunDir};
use super::schedule::CosineSchedule;
use super::state::TrainerState;
use super::trainable::Trainable;
use crate::clip::ClipModel;
use crate::constraints::{Constraint, StepContext, Validation};
use crate::data::epoch_order;
use crate::error::{Error, Result};
use crate::kernels::MatmulPrecision;
use crate::optim::{decays_by_default, AdamW, AdamWConfig};

/// Trainer-state metadata key holding the run's options, checked on resume.
const OPTIONS_KEY: &str = "train_options";

/// Prefix of the constraint's state in a checkpoint's extra tensors.
const CONSTRAINT_PREFIX: &str = "constraint.";

/// Mixed into the seed of the validation batches' order, so it differs from the training order.
const VALIDATION_SALT: u64 = 0x7661_6c69_6461_7465;

/// Labelled training images, decoded on demand.
pub trait TrainSource: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn label(&self, index: usize) -> u32;
    /// Preprocessed `[3, s, s]` images of `indices`, concatenated, and the indices that could
    /// be read (an unreadable image is left out and reported by the source, never fatal).
    fn load(&self, indices: &[usize]) -> Result<(Vec<f32>, Vec<usize>)>;
    fn image_size(&self) -> usize;
    /// A hint that `indices` will be loaded next (a source on disk starts decoding them).
    fn prefetch(&self, _indices: &[usize]) {}
    /// `(example id, reason)` of every image that could not be read so far.
    fn skipped(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Held-out examples a constraint may learn from, `batch_size` at a time.
#[derive(Clone, Copy)]
pub struct ValidationData<'a> {
    pub source: &'a dyn TrainSource,
    pub batch_size: usize,
}

/// One (micro-)batch handed to an objective.
pub struct TrainBatch {
    /// `[n, 3, s, s]`.
    pub images: Tensor,
    /// `[n]` u32 class indices.
    pub labels: Tensor,
    /// The examples' indices into the source.
    pub indices: Vec<usize>,
    pub epoch: usize,
    /// The optimiser step this batch is for, from 0 (seeds an objective's randomness, so a
    /// resumed run draws the same values).
    pub step: u64,
}

/// The loss part of a method.
pub trait Objective {
    /// Whether the objective trains this model parameter (before any freezing).
    fn trains(&self, name: &str) -> bool;
    /// Trainable tensors beyond the model's (a classification head): `(name, var, decay)`.
    fn extra_params(&self) -> Vec<(String, Var, bool)> {
        Vec::new()
    }
    /// The mean loss over the batch, with a graph back to the trained parameters.
    fn loss(&self, model: &ClipModel, batch: &TrainBatch) -> Result<Tensor>;
    /// Called after every optimiser step (e.g. to clamp the logit scale).
    fn after_step(&self, _model: &ClipModel) -> Result<()> {
        Ok(())
    }
}

/// A part of the model that can be frozen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tower {
    Image,
    Text,
    LogitScale,
}

impl Tower {
    /// The tower a canonical (HF) parameter name belongs to.
    pub fn of(name: &str) -> Tower {
        if name == "logit_scale" {
            Tower::LogitScale
        } else if name.starts_with("vision_model.") || name == "visual_projection.weight" {
            Tower::Image
        } else {
            Tower::Text
        }
    }
}

/// The optimisation settings of a run (a recipe's `[train]` table, strict, with defaults).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    /// Maximum global gradient norm.
    pub grad_clip: Option<f64>,
    /// Micro-batches per optimiser step.
    pub accumulation: usize,
    pub freeze: Vec<Tower>,
    /// Which model parameters may be updated at all (`all`, `head`, `last:K`); left out of a
    /// resolved recipe when `all`, so runs from before the option resume unchanged.
    #[serde(skip_serializing_if = "Trainable::is_all")]
    pub trainable: Trainable,
    /// Orders the data; set from the recipe's top-level `seed`, not from `[train]`.
    #[serde(skip)]
    pub seed: u64,
    /// Optimiser steps between checkpoints (0: at the end of every epoch).
    pub checkpoint_every: u64,
    /// The transformer's products, for the whole run (training and its evaluations): `fp32`,
    /// or `bf16` operands with fp32 sums (on the CPU the linear layers'; on CUDA, autocast-style,
    /// the linear layers' and attention's: [`crate::kernels::MatmulPrecision`]).
    #[serde(skip_serializing_if = "MatmulPrecision::is_fp32")]
    pub matmul_precision: MatmulPrecision,
}

impl Default for TrainOptions {
    /// FLYP's iWildCam settings, scaled to a short run: 10 epochs, batch 256, lr 1e-5,
    /// weight decay 0.1, 500 warm-up steps.
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 256,
            lr: 1e-5,
            min_lr: 0.0,
            warmup_steps: 500,
            weight_decay: 0.1,
            grad_clip: None,
            accumulation: 1,
            freeze: Vec::new(),
            trainable: Trainable::All,
            seed: 0,
            checkpoint_every: 0,
            matmul_precision: MatmulPrecision::Fp32,
        }
    }
}

impl TrainOptions {
    pub fn steps_per_epoch(&self, examples: usize) -> u64 {
        examples.div_ceil(self.batch_size) as u64
    }

    /// Checks the settings that need no data: every float finite and in range, step counts
    /// that cannot overflow. Messages name the key as `train.KEY`.
    pub fn check(&self) -> std::result::Result<(), String> {
        let positive = |key: &str, value: f64| match value > 0.0 && value.is_finite() {
            true => Ok(()),
            false => Err(format!("train.{key} must be a positive finite number, not {value}")),
        };
        let non_negative = |key: &str, value: f64| match value >= 0.0 && value.is_finite() {
            true => Ok(()),
            false => Err(format!("train.{key} must be a finite number ≥ 0, not {value}")),
        };
        positive("lr", self.lr)?;
        non_negative("min_lr", self.min_lr)?;
        if self.min_lr > self.lr {
            return Err(format!("train.min_lr = {} is above train.lr = {}", self.min_lr, self.lr));
        }
        non_negative("weight_decay", self.weight_decay)?;
        if let Some(clip) = self.grad_clip {
            positive("grad_clip", clip)?;
        }
        if self.batch_size == 0 {
            return Err("train.batch_size must be at least 1".into());
        }
        if self.accumulation == 0 || self.accumulation > self.batch_size {
            return Err(format!("train.accumulation must lie in 1..={} (the batch size)", self.batch_size));
        }
        for (key, value) in [("epochs", self.epochs as u64), ("warmup_steps", self.warmup_steps)] {
            if value > MAX_STEPS {
                return Err(format!("train.{key} = {value} is above the limit of {MAX_STEPS} steps"));
            }
        }
        Ok(())
    }

    /// Checks the settings against a training set of `examples` and a model whose image tower
    /// has `image_layers` blocks.
    pub fn validate(&self, examples: usize, image_layers: usize) -> Result<()> {
        let invalid = |what: &str, reason: String| Err(Error::Invalid { what: what.into(), reason });
        if let Err(reason) = self.check().and_then(|()| self.trainable.check_layers(image_layers)) {
            return invalid("[train]", reason);
        }
        if examples == 0 {
            return invalid("the training split", "has no examples".into());
        }
        if self.total_steps(examples).is_none() {
            return invalid(
                "train.epochs",
                format!(
                    "{} epochs of {} steps exceed the limit of {MAX_STEPS} steps",
                    self.epochs,
                    self.steps_per_epoch(examples)
                ),
            );
        }
        Ok(())
    }

    /// Optimiser steps of the whole run on `examples`, when within [`MAX_STEPS`].
    pub fn total_steps(&self, examples: usize) -> Option<u64> {
        self.steps_per_epoch(examples).checked_mul(self.epochs as u64).filter(|&total| total <= MAX_STEPS)
    }
}

/// The most optimiser steps (and epochs, and warm-up steps) a run may have: 2⁵³, beyond which
/// step counts are no longer exact in the `f64` schedule arithmetic.
pub const MAX_STEPS: u64 = 1 << 53;

/// One row of `metrics.jsonl`, also handed to the progress callback.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepReport {
    pub step: u64,
    pub total_steps: u64,
    pub epoch: usize,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub images_per_s: f64,
}

/// Where and how a run saves itself.
pub struct Checkpointing<'a> {
    pub run: &'a RunDir,
    /// Continue from the run's latest checkpoint.
    pub resume: bool,
    /// Stop after this many steps in this call (to simulate an interruption).
    pub stop_after: Option<u64>,
    /// Written into every checkpoint's metadata.
    pub metadata: HashMap<String, String>,
}

/// Trains `model` (and the objective's extra parameters) in place under `constraint`; `anchor`
/// is the frozen pre-trained copy the constraint pulls towards, `validation` the held-out data
/// a constraint may learn from. Returns the number of steps taken in this call.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &ClipModel,
    objective: &dyn Objective,
    constraint: &mut dyn Constraint,
    source: &dyn TrainSource,
    validation: Option<ValidationData<'_>>,
    options: &TrainOptions,
    anchor: &[(String, Tensor)],
    checkpointing: &Checkpointing<'_>,
    progress: &mut dyn FnMut(&StepReport),
) -> Result<u64> {
    options.validate(source.len(), model.config.vision.layers)?;
    let params = trained_params(model, objective, options)?;
    let run = checkpointing.run;
    run.create()?;
    let anchor: HashMap<String, Tensor> = anchor.iter().cloned().collect();
    let adamw = AdamWConfig { lr: options.lr, weight_decay: options.weight_decay, ..Default::default() };
    let mut optimizer = AdamW::new(params.clone(), adamw)?;
    let fingerprint =
        format!("{} seed {}", serde_json::to_string(options).expect("serialisable"), options.seed);
    let mut state = TrainerState { step: 0, meta: [(OPTIONS_KEY.to_string(), fingerprint.clone())].into() };
    if let Some(dir) = checkpointing.resume.then(|| run.latest_checkpoint()).flatten() {
        state = restore(&dir, model, &params, &mut optimizer, constraint)?;
        if state.meta.get(OPTIONS_KEY) != Some(&fingerprint) {
            return Err(Error::Invalid {
                what: format!("--resume from {}", run.root.display()),
                reason: "the checkpoint was written with different training options".into(),
            });
        }
    }
    run.truncate_metrics(state.step)?;
    let steps_per_epoch = options.steps_per_epoch(source.len());
    let total = options.total_steps(source.len()).expect("checked by validate");
    let schedule = CosineSchedule {
        base_lr: options.lr,
        min_lr: options.min_lr,
        warmup_steps: options.warmup_steps,
        total_steps: total,
    };
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.metrics())
        .map_err(io_error(&run.metrics()))?;
    let every = if options.checkpoint_every == 0 { steps_per_epoch } else { options.checkpoint_every };
    let first = state.step;
    let mut order = (usize::MAX, Vec::new());
    while state.step < total && checkpointing.stop_after.is_none_or(|n| state.step - first < n) {
        let started = Instant::now();
        let epoch = (state.step / steps_per_epoch) as usize;
        if order.0 != epoch {
            order = (epoch, epoch_order(source.len(), Some(options.seed.wrapping_add(epoch as u64))));
        }
        let position = (state.step % steps_per_epoch) as usize * options.batch_size;
        let indices = &order.1[position..(position + options.batch_size).min(source.len())];
        let lr = schedule.lr(state.step);
        optimizer.set_lr(lr);
        let next = position + options.batch_size;
        if next < source.len() && state.step + 1 < total {
            source.prefetch(&order.1[next..(next + options.batch_size).min(source.len())]);
        }
        let batch = BatchSpec { indices, epoch, step: state.step, split: "training" };
        let (loss, mut grads, seen) = accumulate(model, objective, source, &batch, options.accumulation)?;
        constraint.adjust_gradients(&mut grads, &params, &anchor)?;
        let grad_norm = clip_gradients(&mut grads, &params, options.grad_clip)?;
        check_finite(state.step + 1, loss, grad_norm, lr)?;
        let previous = snapshot_if(constraint.needs_previous(), &params)?;
        optimizer.step(&grads)?;
        let held_out =
            validation.map(|data| HeldOut { model, objective, data, seed: options.seed, step: state.step });
        let context = StepContext {
            params: &params,
            anchor: &anchor,
            grads: &grads,
            previous: &previous,
            lr,
            step: state.step + 1,
            validation: held_out.as_ref().map(|h| h as &dyn Validation),
        };
        constraint.after_step(&context)?;
        objective.after_step(model)?;
        state.step += 1;
        let report = StepReport {
            step: state.step,
            total_steps: total,
            epoch,
            loss,
            lr,
            grad_norm,
            images_per_s: seen as f64 / started.elapsed().as_secs_f64(),
        };
        writeln!(metrics, "{}", serde_json::to_string(&report).expect("serialisable"))
            .map_err(io_error(&run.metrics()))?;
        progress(&report);
        if state.step.is_multiple_of(every) || state.step == total {
            let extra = extra_tensors(objective, constraint)?;
            run.save_checkpoint(model, &extra, &state, &optimizer, &checkpointing.metadata)?;
        }
    }
    Ok(state.step - first)
}

/// Stops a diverged run before its optimiser step: a non-finite loss or gradient norm at
/// `step` (1-based, as in `metrics.jsonl`) is an error naming both and the learning rate.
fn check_finite(step: u64, loss: f32, grad_norm: f64, lr: f64) -> Result<()> {
    if loss.is_finite() && grad_norm.is_finite() {
        return Ok(());
    }
    Err(Error::Invalid {
        what: format!("training diverged at step {step}"),
        reason: format!(
            "loss {loss}, gradient norm {grad_norm} at learning rate {lr:e}; nothing after the last \
             checkpoint was kept (lower train.lr, or set train.grad_clip)"
        ),
    })
}

/// `(name, var, decay)` of every parameter the run updates: the model parameters the
/// objective trains, no frozen tower holds and the update protocol allows, then the objective's
/// own tensors. The `head` protocol needs an objective with tensors of its own.
fn trained_params(
    model: &ClipModel,
    objective: &dyn Objective,
    options: &TrainOptions,
) -> Result<Vec<(String, Var, bool)>> {
    let layers = model.config.vision.layers;
    let extra = objective.extra_params();
    if options.trainable == Trainable::Head && extra.is_empty() {
        return Err(Error::Invalid {
            what: "train.trainable = \"head\"".into(),
            reason: "the objective trains no head of its own, so nothing would be trained".into(),
        });
    }
    let mut params: Vec<(String, Var, bool)> = model
        .params
        .iter()
        .filter(|(name, _)| objective.trains(name) && !options.freeze.contains(&Tower::of(name)))
        .filter(|(name, _)| options.trainable.allows(name, layers))
        .map(|(name, var)| (name.to_string(), var.clone(), decays_by_default(name)))
        .collect();
    params.extend(extra);
    Ok(params)
}

/// The objective's extra parameters and the constraint's state (`constraint.`-prefixed).
fn extra_tensors(objective: &dyn Objective, constraint: &dyn Constraint) -> Result<Vec<(String, Tensor)>> {
    let mut extra: Vec<(String, Tensor)> =
        objective.extra_params().into_iter().map(|(name, var, _)| (name, var.as_tensor().clone())).collect();
    extra.extend(constraint.state()?.into_iter().map(|(name, t)| (format!("{CONSTRAINT_PREFIX}{name}"), t)));
    Ok(extra)
}

/// Copies of the parameters' values, when a constraint needs them.
fn snapshot_if(needed: bool, params: &[(String, Var, bool)]) -> Result<HashMap<String, Tensor>> {
    if !needed {
        return Ok(HashMap::new());
    }
    params.iter().map(|(name, var, _)| Ok((name.clone(), var.as_tensor().copy()?))).collect()
}

/// Loads a checkpoint's weights into the live parameters and restores the optimiser.
fn restore(
    dir: &std::path::Path,
    model: &ClipModel,
    params: &[(String, Var, bool)],
    optimizer: &mut AdamW,
    constraint: &mut dyn Constraint,
) -> Result<TrainerState> {
    let (saved, _) = ClipModel::load(dir.to_str().unwrap_or_default(), model.device())?;
    for (name, var) in model.params.iter() {
        var.set(saved.params.get(name).expect("same architecture").as_tensor())?;
    }
    let extra = load_extra(dir)?;
    for (name, var, _) in params.iter().filter(|(name, _, _)| model.params.get(name).is_none()) {
        let tensor = extra.get(name).ok_or_else(|| Error::Invalid {
            what: format!("checkpoint {}", dir.display()),
            reason: format!("lacks the trained tensor `{name}`"),
        })?;
        var.set(tensor)?;
    }
    let constraint_state: HashMap<String, Tensor> = extra
        .iter()
        .filter_map(|(name, t)| {
            name.strip_prefix(CONSTRAINT_PREFIX).map(|local| (local.to_string(), t.clone()))
        })
        .collect();
    constraint.restore(&constraint_state)?;
    Ok(TrainerState::load(dir, optimizer)?)
}

/// The run's objective on validation batches at the model's current weights.
struct HeldOut<'a> {
    model: &'a ClipModel,
    objective: &'a dyn Objective,
    data: ValidationData<'a>,
    seed: u64,
    /// The optimiser step being taken, from 0 (as [`TrainBatch::step`]).
    step: u64,
}

impl Validation for HeldOut<'_> {
    fn gradients(&self, draw: u64) -> Result<GradStore> {
        let source = self.data.source;
        let n = source.len();
        if n == 0 || self.data.batch_size == 0 {
            return Err(Error::Invalid {
                what: "the validation split".into(),
                reason: format!("cannot give batches of {} from {n} examples", self.data.batch_size),
            });
        }
        let size = self.data.batch_size.min(n);
        let per_epoch = n.div_ceil(size) as u64;
        let epoch = draw / per_epoch;
        let order = epoch_order(n, Some((self.seed ^ VALIDATION_SALT).wrapping_add(epoch)));
        let start = (draw % per_epoch) as usize * size;
        let indices = &order[start..(start + size).min(n)];
        let batch = BatchSpec { indices, epoch: epoch as usize, step: self.step, split: "validation" };
        Ok(accumulate(self.model, self.objective, source, &batch, 1)?.1)
    }
}

/// Which examples a batch holds, and when it is drawn.
struct BatchSpec<'a> {
    indices: &'a [usize],
    epoch: usize,
    step: u64,
    /// Names the split in errors.
    split: &'a str,
}

/// Loss and summed gradients of a batch over `accumulation` micro-batches; returns the
/// batch's mean loss, the gradients and the number of images seen.
fn accumulate(
    model: &ClipModel,
    objective: &dyn Objective,
    source: &dyn TrainSource,
    batch: &BatchSpec<'_>,
    accumulation: usize,
) -> Result<(f32, GradStore, usize)> {
    let BatchSpec { indices, epoch, step, split } = *batch;
    let (pixels, kept) = source.load(indices)?;
    let size = source.image_size();
    let per_image = 3 * size * size;
    let micro = kept.len().div_ceil(accumulation).max(1);
    let (mut total_loss, mut grads): (Option<Tensor>, Option<GradStore>) = (None, None);
    for (chunk, chunk_indices) in kept.chunks(micro).enumerate() {
        let start = chunk * micro;
        let images = Tensor::from_slice(
            &pixels[start * per_image..(start + chunk_indices.len()) * per_image],
            (chunk_indices.len(), 3, size, size),
            model.device(),
        )?;
        let labels: Vec<u32> = chunk_indices.iter().map(|&i| source.label(i)).collect();
        let batch = TrainBatch {
            images,
            labels: Tensor::new(labels, model.device())?,
            indices: chunk_indices.to_vec(),
            epoch,
            step,
        };
        let share = chunk_indices.len() as f64 / kept.len() as f64;
        let loss = (objective.loss(model, &batch)? * share)?;
        total_loss = Some(match total_loss {
            Some(sum) => (sum + loss.detach())?,
            None => loss.detach(),
        });
        let chunk_grads = loss.backward()?;
        match &mut grads {
            Some(sum) => sum.extend(chunk_grads)?,
            None => grads = Some(chunk_grads),
        }
    }
    let grads = grads.ok_or_else(|| Error::Invalid {
        what: format!("a {split} batch of epoch {epoch}"),
        reason: "none of its images could be read".into(),
    })?;
    // One copy to the host per step, not one per accumulation chunk.
    let total_loss = total_loss.map_or(Ok(0.0), |t| t.to_scalar::<f32>())?;
    Ok((total_loss, grads, kept.len()))
}

/// Scales the gradients so their global L2 norm is at most `max_norm`
/// (`clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1); returns the norm
/// before clipping.
pub fn clip_gradients(
    grads: &mut GradStore,
    params: &[(String, Var, bool)],
    max_norm: Option<f64>,
) -> Result<f64> {
    let mut squares = Vec::with_capacity(params.len());
    for (_, var, _) in params {
        if let Some(g) = grads.get(var.as_tensor()) {
            squares.push(g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?);
        }
    }
    // Summed on the device: one copy to the host per step, not one per parameter.
    let norm = if squares.is_empty() {
        0.0
    } else {
        Tensor::stack(&squares, 0)?.sum_all()?.to_scalar::<f64>()?.sqrt()
    };
    if let Some(max_norm) = max_norm {
        let factor = max_norm / (norm + 1e-6);
        if factor < 1.0 {
            for (_, var, _) in params {
                if let Some(g) = grads.get(var.as_tensor()) {
                    let scaled = (g * factor)?;
                    grads.insert(var.as_tensor(), scaled);
                }
            }
        }
    }
    Ok(norm)
}
