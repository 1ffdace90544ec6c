//! End-to-end cross-entropy fine-tuning learns a separable toy task and is deterministic.

use candle_core::{Device, Tensor};
use robustft::clip::{Activation, ClipConfig, ClipModel, TextConfig, VisionConfig};
use robustft::rng::SplitMix64;
use robustft::train::finetune::{finetune, FinetuneConfig, ImageSet, LinearHead};

fn tiny() -> ClipConfig {
    ClipConfig {
        vision: VisionConfig { image_size: 16, patch_size: 8, width: 16, layers: 1, heads: 2, mlp_dim: 32 },
        text: TextConfig { vocab_size: 612, context_length: 8, width: 16, layers: 1, heads: 2, mlp_dim: 32 },
        embed_dim: 8,
        activation: Activation::QuickGelu,
        layer_norm_eps: 1e-5,
    }
}

/// Two classes: images brighter or darker than average, with noise.
fn toy_data(n: usize) -> ImageSet {
    let mut rng = SplitMix64::new(5);
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let label = (i % 2) as u32;
        let shift = if label == 1 { 1.0 } else { -1.0 };
        pixels.extend((0..3 * 16 * 16).map(|_| shift + 0.5 * rng.normal()));
        labels.push(label);
    }
    ImageSet { pixels, labels, image_size: 16 }
}

fn run() -> (Vec<f32>, Vec<f32>) {
    let model = ClipModel::random(tiny(), 1, &Device::Cpu).unwrap();
    let mut rng = SplitMix64::new(9);
    let init: Vec<f32> = (0..2 * 8).map(|_| rng.normal()).collect();
    let head = LinearHead::new(&Tensor::from_vec(init, (2, 8), &Device::Cpu).unwrap()).unwrap();
    let config =
        FinetuneConfig { epochs: 4, batch_size: 8, lr: 3e-3, warmup_steps: 2, weight_decay: 0.1, seed: 3 };
    let losses = finetune(&model, &head, &toy_data(64), &config).unwrap();
    (losses, head.weight.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
}

#[test]
fn loss_falls_and_a_fixed_seed_repeats_exactly() {
    let (losses, head) = run();
    assert!(losses[3] < 0.5 * losses[0], "epoch losses {losses:?}");
    let (again, head_again) = run();
    assert_eq!(losses, again);
    assert_eq!(head, head_again);
}
