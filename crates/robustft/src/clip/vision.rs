//! The CLIP image tower (OpenAI `VisionTransformer`; HF `CLIPVisionTransformer`): patch
//! embedding (a bias-free stride-`p` convolution, computed here as one matmul over unfolded
//! patches), class token, learned positions, `ln_pre`, pre-LN blocks, `ln_post` on the class
//! token, and the bias-free projection into the shared embedding space.

use candle_core::{Result, Tensor};

use super::config::{ClipConfig, VisionConfig};
use super::layers::{param, Encoder, LayerNorm, Linear};
use super::params::WeightView;
use super::CheckpointError;
use crate::allocator::LARGEST_REUSED_BLOCK_BYTES;
use crate::kernels;

/// Token rows below which a pass's matrix products lose more than smaller activations save:
/// each product packs the weights again, for fewer rows. Measured on ViT-B/32 bf16 inference
/// at batch 64 (Zen 4): two passes of 1600 rows were 1–6% slower than one, while ViT-B/16's
/// five passes of 2561 rows were 12–18% faster (BENCHMARKS.md).
const MIN_PASS_ROWS: usize = 2048;

/// Passes the image tower takes over `images` images without gradients: as many as keep
/// every pass's widest activation, the MLP's hidden layer or the packed q/k/v (`tokens ×
/// max(mlp_dim, 3 · width)` f32 per image), within [`LARGEST_REUSED_BLOCK_BYTES`], so each
/// activation reuses memory freed by an earlier one instead of a fresh mapping (page faults
/// and zeroing), but no more than give [`MIN_PASS_ROWS`] token rows per pass on average. At
/// least 1.
pub fn passes(vision: &VisionConfig, images: usize) -> usize {
    let per_image = vision.tokens() * vision.mlp_dim.max(3 * vision.width) * size_of::<f32>();
    let images_that_fit = (LARGEST_REUSED_BLOCK_BYTES / per_image).max(1);
    let for_memory = images.div_ceil(images_that_fit);
    let for_products = images * vision.tokens() / MIN_PASS_ROWS;
    for_memory.min(for_products).max(1)
}

#[derive(Clone, Debug)]
pub struct VisionTower {
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_norm: LayerNorm,
    encoder: Encoder,
    post_norm: LayerNorm,
    projection: Linear,
    /// The architecture: the patch size, and the widths [`passes`] reads.
    config: VisionConfig,
}

impl VisionTower {
    pub fn load(config: &ClipConfig, params: WeightView<'_>) -> std::result::Result<Self, CheckpointError> {
        let v = &config.vision;
        let eps = config.layer_norm_eps;
        Ok(Self {
            patch_weight: param(params, "vision_model.embeddings.patch_embedding.weight")?,
            class_embedding: param(params, "vision_model.embeddings.class_embedding")?,
            position_embedding: param(params, "vision_model.embeddings.position_embedding.weight")?,
            pre_norm: LayerNorm::load(params, "vision_model.pre_layrnorm", eps)?,
            encoder: Encoder::load(
                params,
                "vision_model.encoder",
                v.layers,
                v.heads,
                config.activation,
                eps,
            )?,
            post_norm: LayerNorm::load(params, "vision_model.post_layernorm", eps)?,
            projection: Linear::load_no_bias(params, "visual_projection.weight")?,
            config: v.clone(),
        })
    }

    /// `pixels`: `[b, 3, s, s]` normalised images -> `[b, embed_dim]` unnormalised features.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let patches = self.embed_patches(pixels)?;
        let (b, _, width) = patches.dims3()?;
        let class_token = self.class_embedding.reshape((1, 1, width))?.broadcast_as((b, 1, width))?;
        let tokens = Tensor::cat(&[&class_token, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        let hidden = self.encoder.forward(&self.pre_norm.forward(&tokens)?, None)?;
        let pooled = self.post_norm.forward(&hidden.narrow(1, 0, 1)?.squeeze(1)?)?;
        self.projection.forward(&pooled)
    }

    /// [`Self::forward`] in [`passes`] passes over the batch, for use without gradients.
    pub fn forward_without_grad(&self, pixels: &Tensor) -> Result<Tensor> {
        self.forward_in_passes(pixels, passes(&self.config, pixels.dim(0)?))
    }

    /// [`Self::forward`] in `passes` passes over the batch (as even as may be), the features
    /// concatenated: the same features, each image's computation being its own, with smaller
    /// activations.
    pub fn forward_in_passes(&self, pixels: &Tensor, passes: usize) -> Result<Tensor> {
        let images = pixels.dim(0)?;
        if passes.min(images) <= 1 {
            return self.forward(pixels);
        }
        let per_pass = images.div_ceil(passes);
        let features = (0..images)
            .step_by(per_pass)
            .map(|first| self.forward(&pixels.narrow(0, first, per_pass.min(images - first))?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&features, 0)
    }

    /// `[b, 3, s, s]` -> `[b, (s/p)², width]`, row-major over the patch grid like the conv.
    fn embed_patches(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.config.patch_size;
        if h % p != 0 || w % p != 0 {
            candle_core::bail!("image size {h}x{w} is not a multiple of the patch size {p}");
        }
        let (gh, gw) = (h / p, w / p);
        let unfolded = pixels
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * gh * gw, c * p * p))?;
        let width = self.patch_weight.dim(0)?;
        let kernel = self.patch_weight.reshape((width, c * p * p))?;
        kernels::linear(&unfolded, &kernel, None)?.reshape((b, gh * gw, width))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{passes, VisionTower, LARGEST_REUSED_BLOCK_BYTES, MIN_PASS_ROWS};
    use crate::clip::config::{ClipConfig, PRESET_NAMES};
    use crate::clip::{Activation, ClipModel, TextConfig, VisionConfig};

    /// The widest activation of `images` images, in bytes.
    fn widest_activation_bytes(vision: &VisionConfig, images: usize) -> usize {
        images * vision.tokens() * vision.mlp_dim.max(3 * vision.width) * size_of::<f32>()
    }

    /// Each pass's activations fit in reused blocks, unless that would make passes of fewer
    /// than `MIN_PASS_ROWS` rows on average; then there are as many passes as keep that many,
    /// and one more would not; and no fewer passes would fit.
    #[test]
    fn passes_keep_activations_in_reused_blocks_and_products_large() {
        for preset in PRESET_NAMES {
            let vision = ClipConfig::preset(preset).unwrap().vision;
            for images in [1, 10, 64, 128, 256] {
                let passes = passes(&vision, images);
                let context = format!("{preset}, {images} images: {passes} passes");
                assert!((1..=images).contains(&passes), "{context}");
                let largest = images.div_ceil(passes);
                if widest_activation_bytes(&vision, largest) > LARGEST_REUSED_BLOCK_BYTES {
                    assert!((passes + 1) * MIN_PASS_ROWS > images * vision.tokens(), "{context}");
                }
                if passes > 1 {
                    assert!(images * vision.tokens() >= passes * MIN_PASS_ROWS, "{context}");
                    let fewer = images.div_ceil(passes - 1);
                    assert!(
                        widest_activation_bytes(&vision, fewer) > LARGEST_REUSED_BLOCK_BYTES,
                        "{context}"
                    );
                }
            }
        }
    }

    #[test]
    fn passes_give_the_features_of_one_pass() {
        let config = ClipConfig {
            vision: VisionConfig {
                image_size: 16,
                patch_size: 8,
                width: 32,
                layers: 2,
                heads: 2,
                mlp_dim: 64,
            },
            text: TextConfig {
                vocab_size: 50,
                context_length: 6,
                width: 16,
                layers: 1,
                heads: 1,
                mlp_dim: 32,
            },
            embed_dim: 16,
            activation: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        };
        let model = ClipModel::random(config.clone(), 3, &Device::Cpu).unwrap();
        let tower = VisionTower::load(&config, model.params.detached()).unwrap();
        let pixels = Tensor::randn(0f32, 1.0, (7, 3, 16, 16), &Device::Cpu).unwrap();
        let whole: Vec<Vec<f32>> = tower.forward(&pixels).unwrap().to_vec2().unwrap();
        for passes in [1, 2, 3, 7, 100] {
            let features: Vec<Vec<f32>> =
                tower.forward_in_passes(&pixels, passes).unwrap().to_vec2().unwrap();
            assert_eq!(features.len(), whole.len(), "{passes} passes");
            for (image, (got, expected)) in features.iter().zip(&whole).enumerate() {
                for (g, e) in got.iter().zip(expected) {
                    assert!(
                        (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
                        "{passes} passes, image {image}: {g} vs {e}"
                    );
                }
            }
        }
    }
}
