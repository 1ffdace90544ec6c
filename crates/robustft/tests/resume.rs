//! Resume gives the same weights as an uninterrupted run: a contrastive run of 6 steps is
//! compared, parameter by parameter and bit for bit, with a run stopped after 3 steps and
//! resumed from its checkpoint. A fixed seed gives the same result twice.

use robustft::clip::tokenizer::Tokenizer;
use robustft::clip::{Activation, ClipConfig, ClipModel, TextConfig, VisionConfig};
use robustft::rng::SplitMix64;
use robustft::train::contrastive::{train, ContrastiveConfig, PairSource};
use robustft::train::run_dir::RunDir;
use robustft::train::CosineSchedule;

const MERGES: usize = 100;

struct NoisePairs;

impl PairSource for NoisePairs {
    fn batch(&self, seed: u64, step: u64, size: usize) -> (Vec<f32>, Vec<String>) {
        let mut rng = SplitMix64::new(seed.wrapping_mul(1_000_003).wrapping_add(step));
        let words = ["circle", "square", "red star", "a blue ring", "two heads"];
        let pixels = (0..size * 3 * 16 * 16).map(|_| rng.normal()).collect();
        let captions = (0..size).map(|_| words[(rng.next_u64() % 5) as usize].to_string()).collect();
        (pixels, captions)
    }
}

fn config() -> ContrastiveConfig {
    let model = ClipConfig {
        vision: VisionConfig { image_size: 16, patch_size: 8, width: 16, layers: 1, heads: 2, mlp_dim: 32 },
        text: TextConfig {
            vocab_size: 512 + MERGES + 2,
            context_length: 8,
            width: 16,
            layers: 1,
            heads: 2,
            mlp_dim: 32,
        },
        embed_dim: 8,
        activation: Activation::QuickGelu,
        layer_norm_eps: 1e-5,
    };
    ContrastiveConfig {
        model,
        seed: 7,
        batch_size: 4,
        schedule: CosineSchedule { base_lr: 1e-2, min_lr: 0.0, warmup_steps: 2, total_steps: 6 },
        weight_decay: 0.1,
        checkpoint_every: 3,
    }
}

fn run_dir(tag: &str) -> RunDir {
    let root = std::env::temp_dir().join(format!("robustft-resume-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    RunDir { root }
}

fn weights(model: &ClipModel) -> Vec<(String, Vec<f32>)> {
    model.tensors().into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap())).collect()
}

fn cleanup(dirs: &[&RunDir]) {
    for d in dirs {
        std::fs::remove_dir_all(&d.root).unwrap();
    }
}

#[test]
fn resumed_run_reaches_the_uninterrupted_weights_exactly() {
    let tokenizer = Tokenizer::with_merges(MERGES).unwrap();
    let (full, split) = (run_dir("full"), run_dir("split"));
    let mut losses = Vec::new();
    let uninterrupted =
        train(&config(), &NoisePairs, &tokenizer, &full, false, None, &mut |r| losses.push(r.loss)).unwrap();
    let stopped = train(&config(), &NoisePairs, &tokenizer, &split, false, Some(3), &mut |_| {}).unwrap();
    assert_ne!(weights(&stopped), weights(&uninterrupted), "the interrupted run really stopped early");
    let resumed = train(&config(), &NoisePairs, &tokenizer, &split, true, None, &mut |_| {}).unwrap();
    assert_eq!(weights(&resumed), weights(&uninterrupted));
    let mut other = config();
    other.seed += 1;
    let err = train(&other, &NoisePairs, &tokenizer, &split, true, None, &mut |_| {}).err().expect("refused");
    assert!(err.to_string().contains("different recipe"), "{err}");
    assert_eq!(losses.len(), 2, "a metrics row at steps 3 and 6");
    let rows = std::fs::read_to_string(full.metrics()).unwrap();
    assert_eq!(rows.lines().count(), 2);
    cleanup(&[&full, &split]);
}

#[test]
fn same_seed_same_weights() {
    let tokenizer = Tokenizer::with_merges(MERGES).unwrap();
    let (a, b) = (run_dir("seed-a"), run_dir("seed-b"));
    let first = train(&config(), &NoisePairs, &tokenizer, &a, false, None, &mut |_| {}).unwrap();
    let second = train(&config(), &NoisePairs, &tokenizer, &b, false, None, &mut |_| {}).unwrap();
    assert_eq!(weights(&first), weights(&second));
    assert!(a.checkpoint().join("model.safetensors").is_file(), "the final checkpoint is kept");
    cleanup(&[&a, &b]);
}

#[test]
fn shiftworld_pretraining_loss_falls_within_a_few_steps() {
    use robustft::pretrain::{shiftworld_recipe, ShiftWorldPairs, SHIFTWORLD_MERGES};
    let mut recipe = shiftworld_recipe(24, 0);
    recipe.batch_size = 32;
    recipe.checkpoint_every = 1;
    recipe.schedule.warmup_steps = 2;
    let tokenizer = Tokenizer::with_merges(SHIFTWORLD_MERGES).unwrap();
    let run = run_dir("shiftworld");
    let mut losses = Vec::new();
    train(&recipe, &ShiftWorldPairs::default(), &tokenizer, &run, false, None, &mut |r| losses.push(r.loss))
        .unwrap();
    let mean = |xs: &[f32]| xs.iter().sum::<f32>() / xs.len() as f32;
    let (first, last) = (mean(&losses[..4]), mean(&losses[losses.len() - 4..]));
    // Chance level of the symmetric InfoNCE over 32 pairs is ln 32 = 3.47.
    assert!(
        last < first - 0.1,
        "loss did not fall: first steps {first:.3}, last steps {last:.3} ({losses:?})"
    );
    cleanup(&[&run]);
}
