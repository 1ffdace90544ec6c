//! Cross-entropy fine-tuning through a linear head (methods.md §2.3 "FT"/ERM, §2.4 LP-FT,
//! §2.7 L2-SP): the image tower and a head `z = normalize(f)·Wᵀ + b` are trained with CE; the
//! head starts from the zero-shot head (§0.1: class embeddings × exp(s), no bias) for FT and
//! L2-SP, or from the linear probe (with its bias) for LP-FT. The text tower is not used.

use candle_core::{Tensor, Var};

use crate::clip::ClipModel;
use crate::error::Result;
use crate::eval::predictor::Head;
use crate::losses::cross_entropy;
use crate::train::supervised::{Objective, Tower, TrainBatch};

/// A trainable copy of a [`Head`].
pub struct TrainableHead {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl TrainableHead {
    pub fn new(head: &Head) -> Result<Self> {
        let var = |t: &Tensor| -> Result<Var> { Ok(Var::from_tensor(&t.detach().copy()?)?) };
        Ok(Self { weight: var(&head.weight)?, bias: head.bias.as_ref().map(var).transpose()? })
    }

    /// The current values as a head (the variables themselves: logits keep their graph).
    pub fn head(&self) -> Head {
        Head {
            weight: self.weight.as_tensor().clone(),
            bias: self.bias.as_ref().map(|b| b.as_tensor().clone()),
        }
    }

    /// `features` `[n, embed_dim]` -> `[n, classes]`, with a graph back to the head.
    pub fn logits(&self, features: &Tensor) -> Result<Tensor> {
        self.head().logits(features)
    }
}

/// CE through a trainable head; trains the image tower and the head.
pub struct CrossEntropy {
    pub head: TrainableHead,
}

impl CrossEntropy {
    /// The mean CE of image `features` `[n, embed_dim]` against class indices `labels`.
    pub fn loss_from_features(&self, features: &Tensor, labels: &Tensor) -> Result<Tensor> {
        Ok(cross_entropy(&self.head.logits(features)?, labels)?)
    }
}

impl Objective for CrossEntropy {
    fn trains(&self, name: &str) -> bool {
        Tower::of(name) == Tower::Image
    }

    fn extra_params(&self) -> Vec<(String, Var, bool)> {
        let mut params = vec![("head.weight".to_string(), self.head.weight.clone(), true)];
        if let Some(bias) = &self.head.bias {
            params.push(("head.bias".to_string(), bias.clone(), false));
        }
        params
    }

    fn loss(&self, model: &ClipModel, batch: &TrainBatch) -> Result<Tensor> {
        self.loss_from_features(&model.encode_image(&batch.images)?, &batch.labels)
    }
}
