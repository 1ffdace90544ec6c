//! The supervised trainer on a tiny random CLIP and a separable toy task: the loss falls and a
//! fixed seed repeats exactly; gradient accumulation over micro-batches reaches the weights of
//! the whole batch (CE is a per-example mean); a frozen tower does not move; a non-finite loss or
//! gradient stops the run naming the step; a resumed run logs each step once; `[train]` options
//! are checked for finiteness, range and overflow; the update protocols (`train.trainable`) move
//! exactly the parameters they name on the bundled model, and a resume under another protocol
//! is refused.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use robustft::clip::bundled::load_bundled;
use robustft::clip::{Activation, ClipConfig, ClipModel, TextConfig, VisionConfig};
use robustft::constraints::Unconstrained;
use robustft::eval::predictor::Head;
use robustft::methods::ce::{CrossEntropy, TrainableHead};
use robustft::rng::SplitMix64;
use robustft::train::images::ImageSet;
use robustft::train::run_dir::RunDir;
use robustft::train::supervised::{
    train, Checkpointing, Objective, StepReport, Tower, TrainBatch, TrainOptions,
};
use robustft::train::trainable::Trainable;

fn tiny() -> ClipConfig {
    ClipConfig {
        vision: VisionConfig { image_size: 16, patch_size: 8, width: 16, layers: 1, heads: 2, mlp_dim: 32 },
        text: TextConfig { vocab_size: 612, context_length: 8, width: 16, layers: 1, heads: 2, mlp_dim: 32 },
        embed_dim: 8,
        activation: Activation::QuickGelu,
        layer_norm_eps: 1e-5,
    }
}

/// Two classes of `size`-pixel images: brighter or darker than average, with noise.
fn toy_data(n: usize, size: usize) -> ImageSet {
    let mut rng = SplitMix64::new(5);
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let label = (i % 2) as u32;
        let shift = if label == 1 { 1.0 } else { -1.0 };
        pixels.extend((0..3 * size * size).map(|_| shift + 0.5 * rng.normal()));
        labels.push(label);
    }
    ImageSet { pixels, labels, image_size: size }
}

fn options(epochs: usize, accumulation: usize, freeze: Vec<Tower>) -> TrainOptions {
    TrainOptions {
        epochs,
        batch_size: 8,
        lr: 3e-3,
        min_lr: 0.0,
        warmup_steps: 2,
        weight_decay: 0.1,
        grad_clip: Some(10.0),
        accumulation,
        freeze,
        seed: 3,
        checkpoint_every: 0,
        ..TrainOptions::default()
    }
}

/// Trains FT on the toy task; returns the per-step losses and every final weight.
fn run(options: &TrainOptions, tag: &str) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
    let model = ClipModel::random(tiny(), 1, &Device::Cpu).unwrap();
    let mut rng = SplitMix64::new(9);
    let init: Vec<f32> = (0..2 * 8).map(|_| rng.normal()).collect();
    let head = Head { weight: Tensor::from_vec(init, (2, 8), &Device::Cpu).unwrap(), bias: None };
    let objective = CrossEntropy { head: TrainableHead::new(&head).unwrap() };
    let root = std::env::temp_dir().join(format!("robustft-supervised-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let run = RunDir::new(&root);
    let checkpointing =
        Checkpointing { run: &run, resume: false, stop_after: None, metadata: HashMap::new() };
    let mut losses = Vec::new();
    let anchor = model.params.snapshot().unwrap();
    train(
        &model,
        &objective,
        &mut Unconstrained,
        &toy_data(64, 16),
        None,
        options,
        &anchor,
        &checkpointing,
        &mut |r: &StepReport| losses.push(r.loss),
    )
    .unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    let mut weights: Vec<(String, Vec<f32>)> =
        model.tensors().into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap())).collect();
    weights
        .push(("head".into(), objective.head.weight.as_tensor().flatten_all().unwrap().to_vec1().unwrap()));
    (losses, weights)
}

#[test]
fn loss_falls_and_a_fixed_seed_repeats_exactly() {
    let (losses, weights) = run(&options(4, 1, vec![]), "seed-a");
    let (first, last) = (losses[..8].iter().sum::<f32>(), losses[losses.len() - 8..].iter().sum::<f32>());
    assert!(last < 0.5 * first, "losses {losses:?}");
    let (again, weights_again) = run(&options(4, 1, vec![]), "seed-b");
    assert_eq!(losses, again);
    assert_eq!(weights, weights_again);
}

#[test]
fn accumulation_matches_the_whole_batch() {
    let (whole_losses, whole) = run(&options(1, 1, vec![]), "accum-1");
    let (split_losses, split) = run(&options(1, 4, vec![]), "accum-4");
    for (a, b) in whole_losses.iter().zip(&split_losses) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    // The key projection's bias has an exactly zero gradient (softmax is shift-invariant), so
    // Adam turns rounding noise in it into full-size steps; it is left out of the comparison.
    for ((name, a), (_, b)) in whole.iter().zip(&split).filter(|((n, _), _)| !n.ends_with("k_proj.bias")) {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "`{name}` differs by {diff}");
    }
}

#[test]
fn a_frozen_tower_does_not_move() {
    let start = ClipModel::random(tiny(), 1, &Device::Cpu).unwrap();
    let before: Vec<(String, Vec<f32>)> =
        start.tensors().into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap())).collect();
    let (_, after) = run(&options(1, 1, vec![Tower::Image]), "frozen");
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "`{name}` moved although its tower is frozen");
    }
    assert_ne!(after.last().unwrap().1.len(), 0, "the head trained");
}

/// A model and an FT objective on the toy task's two classes.
fn toy_model_and_objective() -> (ClipModel, CrossEntropy) {
    let model = ClipModel::random(tiny(), 1, &Device::Cpu).unwrap();
    let mut rng = SplitMix64::new(9);
    let init: Vec<f32> = (0..2 * 8).map(|_| rng.normal()).collect();
    let head = Head { weight: Tensor::from_vec(init, (2, 8), &Device::Cpu).unwrap(), bias: None };
    (model, CrossEntropy { head: TrainableHead::new(&head).unwrap() })
}

/// Trains `objective` on the toy task in the run directory `root`.
fn train_toy(
    model: &ClipModel,
    objective: &dyn Objective,
    options: &TrainOptions,
    root: &std::path::Path,
    resume: bool,
    stop_after: Option<u64>,
) -> robustft::Result<u64> {
    let run = RunDir::new(root);
    let checkpointing = Checkpointing { run: &run, resume, stop_after, metadata: HashMap::new() };
    let anchor = model.params.snapshot().unwrap();
    train(
        model,
        objective,
        &mut Unconstrained,
        &toy_data(64, 16),
        None,
        options,
        &anchor,
        &checkpointing,
        &mut |_| {},
    )
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("robustft-supervised-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    root
}

/// How [`Poisoned`] breaks a step.
#[derive(Clone, Copy)]
enum Poison {
    /// The loss itself is infinite.
    Loss,
    /// The loss is finite but its gradient is NaN: `0 · sqrt(Σ (w − w)²)` adds 0 to the loss
    /// and 0 / 0 to the head's gradient.
    Gradient,
}

/// CE whose steps from `from_step` (0-based) on are broken by `poison`.
struct Poisoned {
    inner: CrossEntropy,
    from_step: u64,
    poison: Poison,
}

impl Objective for Poisoned {
    fn trains(&self, name: &str) -> bool {
        self.inner.trains(name)
    }

    fn extra_params(&self) -> Vec<(String, candle_core::Var, bool)> {
        self.inner.extra_params()
    }

    fn loss(&self, model: &ClipModel, batch: &TrainBatch) -> robustft::Result<Tensor> {
        let loss = self.inner.loss(model, batch)?;
        if batch.step < self.from_step {
            return Ok(loss);
        }
        Ok(match self.poison {
            Poison::Loss => loss.affine(f64::INFINITY, 0.0)?,
            Poison::Gradient => {
                let w = self.inner.head.weight.as_tensor();
                let root = w.sub(w)?.sqr()?.sum_all()?.sqrt()?;
                (loss + root.mul(&root.zeros_like()?)?)?
            }
        })
    }
}

#[test]
fn a_non_finite_loss_or_gradient_stops_training_naming_the_step() {
    for (poison, tag) in [(Poison::Loss, "nan-loss"), (Poison::Gradient, "nan-grad")] {
        let (model, inner) = toy_model_and_objective();
        let objective = Poisoned { inner, from_step: 2, poison };
        let options = TrainOptions { checkpoint_every: 1, ..options(2, 1, vec![]) };
        let root = scratch(tag);
        let message = train_toy(&model, &objective, &options, &root, false, None).unwrap_err().to_string();
        assert!(message.contains("diverged at step 3"), "{tag}: {message}");
        assert!(message.contains("learning rate"), "{tag}: {message}");
        let head = objective.inner.head.weight.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(head.iter().all(|w| w.is_finite()), "{tag}: the broken step was applied");
        let logged = std::fs::read_to_string(root.join("metrics.jsonl")).unwrap();
        assert_eq!(logged.lines().count(), 2, "{tag}: only the finite steps are logged");
        std::fs::remove_dir_all(&root).unwrap();
    }
    // The loss message carries the value: inf.
    let (model, inner) = toy_model_and_objective();
    let objective = Poisoned { inner, from_step: 0, poison: Poison::Loss };
    let root = scratch("inf-loss");
    let message = train_toy(&model, &objective, &options(1, 1, vec![]), &root, false, None).unwrap_err();
    assert!(message.to_string().contains("loss inf"), "{message}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_resumed_run_logs_every_step_once() {
    let root = scratch("metrics-resume");
    let options = TrainOptions { checkpoint_every: 2, ..options(1, 1, vec![]) };
    let (model, objective) = toy_model_and_objective();
    // 64 examples in batches of 8: 8 steps. Killed after 3 (the last checkpoint is step 2).
    assert_eq!(train_toy(&model, &objective, &options, &root, false, Some(3)).unwrap(), 3);
    let (model, objective) = toy_model_and_objective();
    assert_eq!(train_toy(&model, &objective, &options, &root, true, None).unwrap(), 6);
    let steps: Vec<u64> = std::fs::read_to_string(root.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=8).collect::<Vec<u64>>());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn train_options_check_names_the_key() {
    let base = options(1, 1, vec![]);
    let cases = [
        (TrainOptions { lr: f64::NAN, ..base.clone() }, "train.lr"),
        (TrainOptions { lr: 0.0, ..base.clone() }, "train.lr"),
        (TrainOptions { lr: f64::INFINITY, ..base.clone() }, "train.lr"),
        (TrainOptions { weight_decay: f64::NAN, ..base.clone() }, "train.weight_decay"),
        (TrainOptions { weight_decay: -0.1, ..base.clone() }, "train.weight_decay"),
        (TrainOptions { min_lr: f64::NAN, ..base.clone() }, "train.min_lr"),
        (TrainOptions { min_lr: 1.0, ..base.clone() }, "train.min_lr"),
        (TrainOptions { grad_clip: Some(f64::NAN), ..base.clone() }, "train.grad_clip"),
        (TrainOptions { grad_clip: Some(-1.0), ..base.clone() }, "train.grad_clip"),
        (TrainOptions { batch_size: 0, ..base.clone() }, "train.batch_size"),
        (TrainOptions { accumulation: 9, ..base.clone() }, "train.accumulation"),
        (TrainOptions { warmup_steps: u64::MAX, ..base.clone() }, "train.warmup_steps"),
        (TrainOptions { epochs: usize::MAX, ..base.clone() }, "train.epochs"),
    ];
    assert_eq!(base.check(), Ok(()));
    for (options, key) in cases {
        let message = options.check().expect_err(key);
        assert!(message.contains(key), "{key}: {message}");
    }
}

#[test]
fn step_counts_that_would_overflow_are_refused_with_data() {
    let options = TrainOptions { epochs: 1 << 50, ..options(1, 1, vec![]) };
    assert_eq!(options.check(), Ok(()));
    // 2^50 epochs of 2^10 steps: 2^60 steps, which wrapped before.
    let message = options.validate(8 << 10, 1).unwrap_err().to_string();
    assert!(message.contains("train.epochs") && message.contains("exceed"), "{message}");
}

/// Every model parameter, flattened, by name.
fn weights(model: &ClipModel) -> Vec<(String, Vec<f32>)> {
    model.tensors().into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap())).collect()
}

/// Three FT steps on the bundled model under `trainable`: the model parameters that changed,
/// and whether the head did.
fn bundled_changes(trainable: Trainable, tag: &str) -> (Vec<String>, bool) {
    let model = load_bundled(&Device::Cpu).unwrap();
    let mut rng = SplitMix64::new(9);
    let init: Vec<f32> = (0..2 * 64).map(|_| rng.normal()).collect();
    let head = Head { weight: Tensor::from_vec(init, (2, 64), &Device::Cpu).unwrap(), bias: None };
    let objective = CrossEntropy { head: TrainableHead::new(&head).unwrap() };
    let head_before = objective.head.weight.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let before = weights(&model);
    let root = scratch(tag);
    let run = RunDir::new(&root);
    let checkpointing =
        Checkpointing { run: &run, resume: false, stop_after: None, metadata: HashMap::new() };
    let options = TrainOptions { trainable, ..options(1, 1, vec![]) };
    let anchor = model.params.snapshot().unwrap();
    let data = toy_data(24, model.config.vision.image_size);
    train(
        &model,
        &objective,
        &mut Unconstrained,
        &data,
        None,
        &options,
        &anchor,
        &checkpointing,
        &mut |_| {},
    )
    .unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    let changed =
        before.iter().zip(weights(&model)).filter(|((_, a), (_, b))| a != b).map(|((n, _), _)| n.clone());
    let head_after = objective.head.weight.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (changed.collect(), head_after != head_before)
}

#[test]
fn the_head_protocol_moves_the_head_and_no_model_parameter() {
    let (changed, head_moved) = bundled_changes(Trainable::Head, "trainable-head");
    assert_eq!(changed, Vec::<String>::new(), "model parameters moved under trainable = head");
    assert!(head_moved, "the head did not train");
}

#[test]
fn last_1_moves_the_last_block_post_norm_projection_and_head_only() {
    let (changed, head_moved) = bundled_changes(Trainable::Last(1), "trainable-last-1");
    let model = load_bundled(&Device::Cpu).unwrap();
    assert_eq!(model.config.vision.layers, 4);
    let top = |name: &str| {
        name.starts_with("vision_model.encoder.layers.3.")
            || name.starts_with("vision_model.post_layernorm.")
            || name == "visual_projection.weight"
    };
    let outside: Vec<&String> = changed.iter().filter(|name| !top(name)).collect();
    assert!(outside.is_empty(), "moved outside the last block: {outside:?}");
    // The key projection's bias has an exactly zero gradient (softmax is shift-invariant) and
    // no weight decay, so Adam may leave it where it was.
    let unmoved: Vec<String> = weights(&model)
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| top(name) && !name.ends_with("k_proj.bias") && !changed.contains(name))
        .collect();
    assert!(unmoved.is_empty(), "trainable but unchanged: {unmoved:?}");
    assert!(head_moved, "the head did not train");
}

/// CE that keeps its head fixed: it trains model parameters only.
struct Headless(CrossEntropy);

impl Objective for Headless {
    fn trains(&self, name: &str) -> bool {
        self.0.trains(name)
    }

    fn loss(&self, model: &ClipModel, batch: &TrainBatch) -> robustft::Result<Tensor> {
        self.0.loss(model, batch)
    }
}

#[test]
fn protocols_the_model_or_objective_cannot_follow_are_refused_before_training() {
    let (model, objective) = toy_model_and_objective();
    let root = scratch("trainable-refused");
    let deep = TrainOptions { trainable: Trainable::Last(2), ..options(1, 1, vec![]) };
    let message = train_toy(&model, &objective, &deep, &root, false, None).unwrap_err().to_string();
    assert!(message.contains("\"last:2\"") && message.contains("image tower's 1"), "{message}");
    let head = TrainOptions { trainable: Trainable::Head, ..options(1, 1, vec![]) };
    let headless = Headless(objective);
    let message = train_toy(&model, &headless, &head, &root, false, None).unwrap_err().to_string();
    assert!(message.contains("train.trainable = \"head\"") && message.contains("no head"), "{message}");
    assert!(!root.exists(), "a refused run created its directory");
}

#[test]
fn a_resume_under_another_protocol_is_refused() {
    let root = scratch("trainable-resume");
    let all = TrainOptions { checkpoint_every: 1, ..options(1, 1, vec![]) };
    let (model, objective) = toy_model_and_objective();
    assert_eq!(train_toy(&model, &objective, &all, &root, false, Some(2)).unwrap(), 2);
    let last = TrainOptions { trainable: Trainable::Last(1), ..all };
    let (model, objective) = toy_model_and_objective();
    let message = train_toy(&model, &objective, &last, &root, true, None).unwrap_err().to_string();
    assert!(message.contains("different training options"), "{message}");
    std::fs::remove_dir_all(&root).unwrap();
}
