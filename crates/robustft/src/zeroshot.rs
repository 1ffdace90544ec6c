//! Zero-shot classification heads from prompts (methods.md §0.1; DRM `src/models/zeroshot.py`,
//! FLYP `src/models/zeroshot.py`): every prompt of class k is encoded by the text tower and
//! L2-normalised, the class's prompts are averaged and renormalised into w_k, and the head's
//! weights are `exp(s) · W`. Logits are `exp(s) · W · f(x)/‖f(x)‖`: the image feature is
//! normalised inside the head. Heads are rebuilt from the current text tower whenever its
//! weights change. The same code builds the default-prompt head and the concept-description
//! head (a class's "prompts" are then its description sentences).

use candle_core::Tensor;

use crate::clip::layers::l2_normalize;
use crate::clip::tokenizer::Tokenizer;
use crate::clip::ClipModel;
use crate::error::{Error, Result};

/// Prompts encoded per text-tower call.
const TEXT_BATCH: usize = 256;

/// The tokenizer whose vocabulary a model was trained with: 512 byte tokens, `merges`
/// BPE merges and the two special tokens.
pub fn tokenizer_for(model: &ClipModel) -> Result<Tokenizer> {
    let vocab = model.config.text.vocab_size;
    let merges = vocab.checked_sub(514).ok_or(Error::VocabularySize { model: vocab })?;
    Tokenizer::with_merges(merges).map_err(|_| Error::VocabularySize { model: vocab })
}

/// Encodes texts with the model's text tower: `[n, embed_dim]` L2-normalised, no gradient.
pub fn encode_texts(model: &ClipModel, tokenizer: &Tokenizer, texts: &[String]) -> Result<Tensor> {
    let context = model.config.text.context_length;
    let chunks = texts
        .chunks(TEXT_BATCH)
        .map(|chunk| {
            let ids = tokenizer.tokenize_batch(chunk, context)?;
            let ids = Tensor::new(ids, model.device())?;
            Ok(l2_normalize(&model.no_grad().encode_text(&ids)?)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&chunks, 0)?)
}

/// A linear head over normalised image features.
#[derive(Clone, Debug)]
pub struct ZeroShotHead {
    /// `[classes, embed_dim]`: unit rows times `exp(s)`.
    weights: Tensor,
}

impl ZeroShotHead {
    /// Builds the head from the prompts of each class (`prompts[k]` non-empty for every k).
    pub fn build(model: &ClipModel, tokenizer: &Tokenizer, prompts: &[Vec<String>]) -> Result<Self> {
        if let Some(k) = prompts.iter().position(Vec::is_empty) {
            return Err(Error::Invalid { what: format!("class {k}"), reason: "has no prompts".into() });
        }
        let flat: Vec<String> = prompts.iter().flatten().cloned().collect();
        let embeddings = encode_texts(model, tokenizer, &flat)?;
        let mut start = 0;
        let mut rows = Vec::with_capacity(prompts.len());
        for class_prompts in prompts {
            let class = embeddings.narrow(0, start, class_prompts.len())?.mean_keepdim(0)?;
            rows.push(l2_normalize(&class)?);
            start += class_prompts.len();
        }
        let scale = model.logit_scale().exp()?.detach();
        Ok(Self { weights: Tensor::cat(&rows, 0)?.broadcast_mul(&scale)? })
    }

    /// `[classes, embed_dim]`: unit rows times `exp(s)`.
    pub fn weights(&self) -> &Tensor {
        &self.weights
    }

    pub fn num_classes(&self) -> usize {
        self.weights.dim(0).unwrap_or(0)
    }

    /// `image_features`: `[n, embed_dim]` (unnormalised) -> logits `[n, classes]`.
    pub fn logits(&self, image_features: &Tensor) -> Result<Tensor> {
        Ok(l2_normalize(image_features)?.matmul(&self.weights.t()?)?)
    }
}

/// Row-wise softmax probabilities of `logits` as nested vectors.
pub fn probabilities(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(crate::clip::layers::softmax_last_dim(logits)?.to_vec2()?)
}

/// Indices of the `k` largest values, largest first (ties keep the lower index first).
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_value_then_index() {
        assert_eq!(top_k(&[0.1, 0.5, 0.5, 0.2], 3), vec![1, 2, 3]);
        assert_eq!(top_k(&[0.3], 5), vec![0]);
    }

    #[test]
    fn probabilities_sum_to_one() {
        let logits = Tensor::new(&[[1.0f32, 2.0, 3.0], [0.0, 0.0, 0.0]], &candle_core::Device::Cpu).unwrap();
        for row in probabilities(&logits).unwrap() {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }
}
