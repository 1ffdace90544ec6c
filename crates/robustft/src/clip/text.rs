//! The CLIP text tower (OpenAI `CLIP.encode_text`; HF `CLIPTextTransformer`): token and
//! learned position embeddings, causal pre-LN blocks, final LayerNorm, pooling at the
//! end-of-text token, and the bias-free projection.
//!
//! Pooling takes the first position holding the largest token id of each row. In CLIP's
//! vocabularies `<|endoftext|>` has the largest id, so this is OpenAI's `argmax` pooling and
//! equals HF's "first `eos_token_id`" pooling.
//!
//! Rows are encoded in groups cut after their end-of-text tokens (see [`TextTower::forward`]):
//! exact under the causal mask, and several times less work than the full 77-token context.

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
    ///
    /// Rows are encoded in groups of similar length, each group cut after its longest row's
    /// end-of-text token (rounded up to [`LENGTH_STEP`]): the causal mask keeps a row's
    /// end-of-text feature independent of every position after it, so the result is the
    /// full-context one, for a fraction of the work and activation memory (prompts and concept
    /// descriptions mostly end far before CLIP's 77 tokens).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let ends: Vec<usize> = ids.to_vec2::<u32>()?.iter().map(|row| first_argmax(row)).collect();
        let groups = length_groups(&ends, t);
        if let [(_, length)] = groups.as_slice() {
            return self.encode_group(&ids.narrow(1, 0, *length)?, &ends);
        }
        let mut encoded = Vec::with_capacity(groups.len());
        let mut order: Vec<usize> = Vec::with_capacity(ends.len());
        for (rows, length) in &groups {
            let index = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), ids.device())?;
            let group_ids = ids.index_select(&index, 0)?.narrow(1, 0, *length)?;
            let group_ends: Vec<usize> = rows.iter().map(|&r| ends[r]).collect();
            encoded.push(self.encode_group(&group_ids, &group_ends)?);
            order.extend(rows);
        }
        let mut position_of_row = vec![0u32; order.len()];
        for (position, &row) in order.iter().enumerate() {
            position_of_row[row] = position as u32;
        }
        Tensor::cat(&encoded, 0)?.index_select(&Tensor::new(position_of_row, ids.device())?, 0)
    }

    /// Rows whose end-of-text tokens sit at `ends` (each within the `[b, t]` ids).
    fn encode_group(&self, ids: &Tensor, ends: &[usize]) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let width = self.token_embedding.dim(1)?;
        let tokens = self.token_embedding.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, width))?;
        let positions = self.position_embedding.narrow(0, 0, t)?;
        let x = tokens.broadcast_add(&positions)?;
        let mask = causal_mask(t, ids.device())?;
        let hidden = self.final_norm.forward(&self.encoder.forward(&x, Some(&mask))?)?;
        let rows: Vec<u32> = ends.iter().enumerate().map(|(r, &end)| (r * t + end) as u32).collect();
        let pooled = hidden.reshape((b * t, width))?.index_select(&Tensor::new(rows, ids.device())?, 0)?;
        self.projection.forward(&pooled)
    }
}

/// Group lengths are multiples of this many tokens (or the full context): few groups, little
/// padding.
const LENGTH_STEP: usize = 8;

/// Rows grouped by the length that keeps their end-of-text token (`end + 1` rounded up to
/// [`LENGTH_STEP`], at most `t`): `(rows in ascending order, length)`, shortest group first.
fn length_groups(ends: &[usize], t: usize) -> Vec<(Vec<usize>, usize)> {
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (row, &end) in ends.iter().enumerate() {
        groups.entry((end + 1).next_multiple_of(LENGTH_STEP).min(t)).or_default().push(row);
    }
    groups.into_iter().map(|(length, rows)| (rows, length)).collect()
}

fn first_argmax(row: &[u32]) -> usize {
    let max = row.iter().copied().max().unwrap_or(0);
    row.iter().position(|&id| id == max).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use crate::clip::bundled::load_bundled;

    /// Rows ending at `ends` (end-of-text = the vocabulary's largest id), padded with 0 to `t`.
    fn ids_ending_at(ends: &[usize], t: usize, vocab: usize) -> Tensor {
        let rows: Vec<u32> = ends
            .iter()
            .enumerate()
            .flat_map(|(r, &end)| {
                (0..t).map(move |p| match p {
                    p if p < end => (1 + (r * 31 + p * 17) % (vocab - 2)) as u32,
                    p if p == end => (vocab - 1) as u32,
                    _ => 0,
                })
            })
            .collect();
        Tensor::from_vec(rows, (ends.len(), t), &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Grouped, cut encoding equals the full-context encoding of every row (the reference:
    /// one pass over all `t` positions, as OpenAI's `encode_text`), in value and in gradient.
    #[test]
    fn length_groups_give_the_full_context_features_and_gradients() {
        let model = load_bundled(&Device::Cpu).unwrap();
        let (t, vocab) = (model.config.text.context_length, model.config.text.vocab_size);
        let ends = [3, 9, 5, t - 1, 15, 8];
        assert_eq!(super::length_groups(&ends, t).len(), 3, "groups of 8, 16 and t = {t} tokens");
        let ids = ids_ending_at(&ends, t, vocab);
        let text = &model.trainable.text;
        let grouped = text.forward(&ids).unwrap();
        let full = text.encode_group(&ids, &ends).unwrap();
        assert!(max_abs_diff(&grouped, &full) < 1e-5, "{}", max_abs_diff(&grouped, &full));

        let weights = Tensor::rand(-1f32, 1f32, full.shape(), &Device::Cpu).unwrap();
        let gradients =
            |features: &Tensor| (features * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let (grouped_grads, full_grads) = (gradients(&grouped), gradients(&full));
        for name in [
            "text_model.embeddings.token_embedding.weight",
            "text_model.embeddings.position_embedding.weight",
            "text_model.encoder.layers.0.self_attn.q_proj.weight",
            "text_projection.weight",
        ] {
            let var = model.params.get(name).unwrap().as_tensor();
            let (g, f) = (grouped_grads.get(var).unwrap(), full_grads.get(var).unwrap());
            let scale: f32 = f.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(max_abs_diff(g, f) <= 1e-5 * scale.max(1.0), "{name}: {} of {scale}", max_abs_diff(g, f));
        }
    }
}
