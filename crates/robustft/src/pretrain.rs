//! Pretraining the bundled tiny CLIP on ShiftWorld captions (`robustft pretrain`): the
//! architecture, the recipe and the stream of (image, caption) pairs.
//!
//! The recipe follows the ShiftWorld pilot's advice (docs in `docs/shiftworld-pilot.md`):
//! few image tokens (32 px images, 8 px patches: 16 patches + class token), small towers, a
//! shape word or core description in every caption, a high learning rate held long (cosine
//! over the whole run after a short warm-up), batch 256 for enough in-batch negatives.

use rayon::prelude::*;

use crate::clip::preprocess::ClipPreprocess;
use crate::clip::{Activation, ClipConfig, TextConfig, VisionConfig};
use crate::rng::SplitMix64;
use crate::shiftworld;
use crate::train::contrastive::{ContrastiveConfig, PairSource};
use crate::train::CosineSchedule;

/// BPE merges of the tiny model's vocabulary (512 + merges + 2 tokens).
pub const SHIFTWORLD_MERGES: usize = 1000;

/// The bundled model's architecture.
pub fn shiftworld_model() -> ClipConfig {
    ClipConfig {
        vision: VisionConfig {
            image_size: shiftworld::IMAGE_SIZE as usize,
            patch_size: 8,
            width: 128,
            layers: 4,
            heads: 4,
            mlp_dim: 512,
        },
        text: TextConfig {
            vocab_size: 512 + SHIFTWORLD_MERGES + 2,
            context_length: 24,
            width: 64,
            layers: 2,
            heads: 2,
            mlp_dim: 256,
        },
        embed_dim: 64,
        activation: Activation::QuickGelu,
        layer_norm_eps: 1e-5,
    }
}

/// The pretraining recipe for `steps` optimiser steps.
pub fn shiftworld_recipe(steps: u64, seed: u64) -> ContrastiveConfig {
    ContrastiveConfig {
        model: shiftworld_model(),
        seed,
        batch_size: 256,
        schedule: CosineSchedule {
            base_lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: (steps / 20).clamp(1, 200),
            total_steps: steps,
        },
        weight_decay: 0.05,
        checkpoint_every: (steps / 50).clamp(1, 100),
    }
}

/// Fresh, independently sampled ShiftWorld scenes with captions, rendered and normalised.
pub struct ShiftWorldPairs {
    preprocess: ClipPreprocess,
}

impl Default for ShiftWorldPairs {
    fn default() -> Self {
        Self { preprocess: ClipPreprocess::openai(shiftworld::IMAGE_SIZE as usize) }
    }
}

impl PairSource for ShiftWorldPairs {
    fn batch(&self, seed: u64, step: u64, size: usize) -> (Vec<f32>, Vec<String>) {
        let samples: Vec<(Vec<f32>, String)> = (0..size)
            .into_par_iter()
            .map(|i| {
                let mut rng = SplitMix64::new(sample_seed(seed, step, i as u64));
                let (scene, caption) = shiftworld::sample_pretraining(&mut rng);
                let image = image::DynamicImage::ImageRgb8(shiftworld::render(&scene));
                (self.preprocess.apply(&image), caption)
            })
            .collect();
        let mut pixels = Vec::with_capacity(samples.iter().map(|(p, _)| p.len()).sum());
        let mut captions = Vec::with_capacity(size);
        for (p, c) in samples {
            pixels.extend(p);
            captions.push(c);
        }
        (pixels, captions)
    }
}

/// The seed of sample `index` of batch `step`: independent of batch composition and threads.
fn sample_seed(seed: u64, step: u64, index: u64) -> u64 {
    let mut mix = SplitMix64::new(
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    mix.next_u64()
}
