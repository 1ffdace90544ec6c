//! The CLIP text tower (OpenAI `CLIP.encode_text`; HF `CLIPTextTransformer`): token and
//! learned position embeddings, causal pre-LN blocks, final LayerNorm, pooling at the
//! end-of-text token, and the bias-free projection.
//!
//! Pooling takes the first position holding the largest token id of each row. In CLIP's
//! vocabularies `<|endoftext|>` has the largest id, so this is OpenAI's `argmax` pooling and
//! equals HF's "first `eos_token_id`" pooling.

use candle_core::{Result, Tensor};

use super::config::ClipConfig;
use super::layers::{causal_mask, param, Encoder, LayerNorm, Linear};
use super::params::WeightView;
use super::CheckpointError;

#[derive(Clone, Debug)]
pub struct TextTower {
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_norm: LayerNorm,
    projection: Linear,
}

impl TextTower {
    pub fn load(config: &ClipConfig, params: WeightView<'_>) -> std::result::Result<Self, CheckpointError> {
        let t = &config.text;
        let eps = config.layer_norm_eps;
        Ok(Self {
            token_embedding: param(params, "text_model.embeddings.token_embedding.weight")?,
            position_embedding: param(params, "text_model.embeddings.position_embedding.weight")?,
            encoder: Encoder::load(params, "text_model.encoder", t.layers, t.heads, config.activation, eps)?,
            final_norm: LayerNorm::load(params, "text_model.final_layer_norm", eps)?,
            projection: Linear::load_no_bias(params, "text_projection.weight")?,
        })
    }

    /// `ids`: `[b, t]` u32 token ids (t ≤ context length) -> `[b, embed_dim]` unnormalised.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let width = self.token_embedding.dim(1)?;
        let tokens = self.token_embedding.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, width))?;
        let positions = self.position_embedding.narrow(0, 0, t)?;
        let x = tokens.broadcast_add(&positions)?;
        let mask = causal_mask(t, ids.device())?;
        let hidden = self.final_norm.forward(&self.encoder.forward(&x, Some(&mask))?)?;
        let rows = end_of_text_rows(ids)?;
        let pooled = hidden.reshape((b * t, width))?.index_select(&rows, 0)?;
        self.projection.forward(&pooled)
    }
}

/// For each row, the flat index `row * t + position of the first maximal id`.
fn end_of_text_rows(ids: &Tensor) -> Result<Tensor> {
    let (_, t) = ids.dims2()?;
    let rows: Vec<u32> =
        ids.to_vec2::<u32>()?.iter().enumerate().map(|(r, row)| (r * t + first_argmax(row)) as u32).collect();
    Tensor::new(rows, ids.device())
}

fn first_argmax(row: &[u32]) -> usize {
    let max = row.iter().copied().max().unwrap_or(0);
    row.iter().position(|&id| id == max).unwrap_or(0)
}
