//! The robust fine-tuning methods, each an objective (the loss of a batch, run by
//! [`crate::train::supervised::train`]) plus the predictor it evaluates with. One method is
//! one file: it owns its recipe section, its checks and its construction, and the
//! [`registry`] maps the names recipes use to those files.
//!
//! * [`zeroshot`]: the pre-trained model with its default-prompt head; §0.1, §2.1.
//! * [`ce`]: cross-entropy through a linear head over normalised image features — FT (head
//!   initialised from the zero-shot head), LP-FT (head from the linear probe), L2-SP (FT with
//!   the trainer's L2-SP constraint); methods.md §2.3, §2.4, §2.7.
//! * [`flyp`]: FLYP's contrastive loss over (image, class-prompt caption) pairs; §0.2, §2.5.
//! * [`drm`]: Dual Risk Minimization; §1, §1b.
//! * [`m2mix`]: m²-mix's geodesic hard negatives, a term of FLYP's contrastive loss (and so of
//!   DRM's FLYP ERM); §3.1.
//! * [`adversarial`]: `[adversarial]` — PGD-AT, TRADES, TeCoA, FARE — a wrapper around any
//!   trained method's objective (robustness to input perturbations, `crate::perturb`).
//! * [`fsr`]: function-space regularisation on simulated-OOD views, a wrapper around a
//!   head-based CE objective; §3.3.
//! * [`linear_probe`]: multinomial logistic regression on frozen features (L-BFGS); §2.2.
//! * [`vrf`]: VRF's per-sample mixture of the fine-tuned and zero-shot models, a predictor
//!   over any head-based fine-tuning; §3.4.

pub mod adversarial;
pub mod ce;
pub mod drm;
pub mod flyp;
pub mod fsr;
pub mod linear_probe;
pub mod m2mix;
pub mod registry;
pub mod vrf;
pub mod zeroshot;

use candle_core::Tensor;

use crate::clip::layers::l2_normalize;
use crate::clip::tokenizer::Tokenizer;
use crate::clip::ClipModel;
use crate::error::Result;

/// Texts of every class, tokenised once, with the averaging matrix that turns their
/// embeddings into one unit vector per class (methods.md §0.1: normalise, average over the
/// class's texts, renormalise) — differentiably, through the current text tower.
pub struct ClassTexts {
    ids: Tensor,
    /// `[classes, texts]`: `1/m_k` on class k's texts.
    averaging: Tensor,
}

impl ClassTexts {
    pub fn new(model: &ClipModel, tokenizer: &Tokenizer, per_class: &[Vec<String>]) -> Result<Self> {
        let flat: Vec<String> = per_class.iter().flatten().cloned().collect();
        let ids = tokenizer.tokenize_batch(&flat, model.config.text.context_length)?;
        let mut averaging = vec![0f32; per_class.len() * flat.len()];
        let mut start = 0;
        for (k, texts) in per_class.iter().enumerate() {
            for j in start..start + texts.len() {
                averaging[k * flat.len() + j] = 1.0 / texts.len() as f32;
            }
            start += texts.len();
        }
        Ok(Self {
            ids: Tensor::new(ids, model.device())?,
            averaging: Tensor::from_vec(averaging, (per_class.len(), flat.len()), model.device())?,
        })
    }

    /// `[classes, embed_dim]` unit class embeddings from the model's current text tower, with
    /// a graph back to it (each distinct text is encoded once per call).
    pub fn embed(&self, model: &ClipModel) -> Result<Tensor> {
        self.average(&model.encode_text(&self.ids)?)
    }

    /// The same without a graph (a frozen model).
    pub fn embed_frozen(&self, model: &ClipModel) -> Result<Tensor> {
        self.average(&model.no_grad().encode_text(&self.ids)?)
    }

    fn average(&self, text_features: &Tensor) -> Result<Tensor> {
        Ok(l2_normalize(&self.averaging.matmul(&l2_normalize(text_features)?)?)?)
    }
}

/// `exp(s) · normalize(f) · Wᵀ` for unit class embeddings `W`, differentiable in `s`.
pub fn cosine_logits(model: &ClipModel, image_features: &Tensor, classes: &Tensor) -> Result<Tensor> {
    let cosines = l2_normalize(image_features)?.matmul(&classes.t()?)?;
    Ok(cosines.broadcast_mul(&model.logit_scale().exp()?)?)
}
