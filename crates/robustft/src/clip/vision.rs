//! The CLIP image tower (OpenAI `VisionTransformer`; HF `CLIPVisionTransformer`): patch
//! embedding (a bias-free stride-`p` convolution, computed here as one matmul over unfolded
//! patches), class token, learned positions, `ln_pre`, pre-LN blocks, `ln_post` on the class
//! token, and the bias-free projection into the shared embedding space.

use candle_core::{Result, Tensor};

use super::config::ClipConfig;
use super::layers::{param, Encoder, LayerNorm, Linear};
use super::params::WeightView;
use super::CheckpointError;
use crate::kernels;

#[derive(Clone, Debug)]
pub struct VisionTower {
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_norm: LayerNorm,
    encoder: Encoder,
    post_norm: LayerNorm,
    projection: Linear,
    patch_size: usize,
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
            patch_size: v.patch_size,
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

    /// `[b, 3, s, s]` -> `[b, (s/p)², width]`, row-major over the patch grid like the conv.
    fn embed_patches(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.patch_size;
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
