//! Contrastive image-text training from scratch or from a checkpoint (CLIP pretraining;
//! Radford et al. 2021): symmetric InfoNCE over in-batch pairs, both towers and the logit
//! scale trained, AdamW with a cosine schedule and linear warm-up, the logit scale clamped to
//! ln 100 after every step as OpenAI's training code does.
//!
//! Determinism and resume: the batch of step `t` is a pure function of `(seed, t)` (see
//! [`PairSource`]), and the trainer state holds the optimiser moments and the step, so a run
//! resumed from its last checkpoint reaches exactly the weights of an uninterrupted run.
//! Checkpoints are written to `DIR/checkpoint.tmp` and renamed into place, so a kill never
//! leaves a half-written checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::run_dir::{io_error, RunDir};
use super::schedule::CosineSchedule;
use super::state::TrainerState;
use crate::clip::tokenizer::Tokenizer;
use crate::clip::{ClipConfig, ClipModel};
use crate::error::{Error, Result};
use crate::losses::clip_contrastive_loss;
use crate::optim::{default_groups, AdamW, AdamWConfig};

/// Trainer-state metadata key holding the run's recipe, checked on resume.
const RECIPE_KEY: &str = "recipe";

/// A source of (image, caption) pairs: batch `step` of a run with `seed` must always be the
/// same pairs.
pub trait PairSource: Sync {
    /// `(pixels [n, 3, s, s] normalised, captions)` for one step.
    fn batch(&self, seed: u64, step: u64, size: usize) -> (Vec<f32>, Vec<String>);
}

/// Everything that defines a contrastive run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ContrastiveConfig {
    pub model: ClipConfig,
    pub seed: u64,
    pub batch_size: usize,
    pub schedule: CosineSchedule,
    pub weight_decay: f64,
    /// Steps between checkpoints (and metrics rows).
    pub checkpoint_every: u64,
}

/// One row of `metrics.jsonl`, also handed to the progress callback.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepReport {
    pub step: u64,
    pub total_steps: u64,
    pub loss: f32,
    pub lr: f64,
    pub logit_scale: f32,
    pub images_per_s: f64,
}

/// Trains `model` on `source` until `config.schedule.total_steps`, or until `stop_after`
/// steps have been taken in this call (to simulate an interruption in tests). With
/// `resume`, continues from the run directory's latest checkpoint.
pub fn train(
    config: &ContrastiveConfig,
    source: &dyn PairSource,
    tokenizer: &Tokenizer,
    run: &RunDir,
    resume: bool,
    stop_after: Option<u64>,
    progress: &mut dyn FnMut(&StepReport),
) -> Result<ClipModel> {
    run.create()?;
    let device = Device::Cpu;
    let resume_from = if resume { run.latest_checkpoint() } else { None };
    let model = match &resume_from {
        Some(dir) => ClipModel::load(dir.to_str().unwrap_or_default(), &device)?.0,
        None => ClipModel::random(config.model.clone(), config.seed, &device)?,
    };
    let mut optimizer = build_optimizer(&model, config)?;
    let recipe = serde_json::to_string(config).expect("serialisable");
    let mut state = match &resume_from {
        Some(dir) => TrainerState::load(dir, &mut optimizer)?,
        None => TrainerState { step: 0, meta: [(RECIPE_KEY.to_string(), recipe.clone())].into() },
    };
    if state.meta.get(RECIPE_KEY) != Some(&recipe) {
        return Err(Error::Invalid {
            what: format!("--resume from {}", run.root.display()),
            reason:
                "the checkpoint was written by a run with a different recipe (steps, seed, batch or model)"
                    .into(),
        });
    }
    run.truncate_metrics(state.step)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.metrics())
        .map_err(io_error(&run.metrics()))?;
    let context = config.model.text.context_length;
    let first_step = state.step;
    let mut window = (Instant::now(), 0usize);
    while state.step < config.schedule.total_steps && stop_after.is_none_or(|n| state.step - first_step < n) {
        let lr = config.schedule.lr(state.step);
        optimizer.set_lr(lr);
        let (pixels, captions) = source.batch(config.seed, state.step, config.batch_size);
        let loss = step(&model, &mut optimizer, &pixels, &captions, tokenizer, context)?;
        state.step += 1;
        window.1 += config.batch_size;
        if state.step % config.checkpoint_every == 0 || state.step == config.schedule.total_steps {
            let report = StepReport {
                step: state.step,
                total_steps: config.schedule.total_steps,
                loss,
                lr,
                logit_scale: model.logit_scale().exp()?.to_scalar()?,
                images_per_s: window.1 as f64 / window.0.elapsed().as_secs_f64(),
            };
            writeln!(metrics, "{}", serde_json::to_string(&report).expect("serialisable"))
                .map_err(io_error(&run.metrics()))?;
            let metadata = HashMap::from([
                ("robustft.step".to_string(), state.step.to_string()),
                ("robustft.config".to_string(), recipe.clone()),
            ]);
            run.save_checkpoint(&model, &[], &state, &optimizer, &metadata)?;
            progress(&report);
            window = (Instant::now(), 0);
        }
    }
    Ok(model)
}

fn build_optimizer(model: &ClipModel, config: &ContrastiveConfig) -> Result<AdamW> {
    let params = default_groups(model.params.iter());
    let adamw =
        AdamWConfig { lr: config.schedule.base_lr, weight_decay: config.weight_decay, ..Default::default() };
    Ok(AdamW::new(params, adamw)?)
}

/// One optimisation step; returns the loss before the update.
fn step(
    model: &ClipModel,
    optimizer: &mut AdamW,
    pixels: &[f32],
    captions: &[String],
    tokenizer: &Tokenizer,
    context: usize,
) -> Result<f32> {
    let size = model.config.vision.image_size;
    let n = captions.len();
    let images = Tensor::from_slice(pixels, (n, 3, size, size), model.device())?;
    let ids = Tensor::new(tokenizer.tokenize_batch(captions, context)?, model.device())?;
    let loss = clip_contrastive_loss(
        &model.encode_image(&images)?,
        &model.encode_text(&ids)?,
        &model.logit_scale(),
    )?;
    optimizer.step(&loss.backward()?)?;
    clamp_logit_scale(model)?;
    Ok(loss.to_scalar()?)
}

/// OpenAI CLIP clamps the learned log-temperature to at most ln 100 (on the device: no copy
/// to the host per step).
pub(crate) fn clamp_logit_scale(model: &ClipModel) -> Result<()> {
    let var = model.params.get("logit_scale").expect("validated at load");
    var.set(&var.as_tensor().minimum(100f32.ln())?)?;
    Ok(())
}
