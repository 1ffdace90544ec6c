//! FLYP, "Finetune like you pretrain" (Goyal et al., CVPR 2023; methods.md §0.2, §2.5;
//! FLYP `src/models/flyp_loss.py`, `clip/loss.py`): each training image is paired with a
//! caption made from its class name and a prompt template, and the symmetric contrastive
//! (InfoNCE) loss over the batch trains both towers and the logit scale, with the diagonal as
//! targets even when two images share a class. The logit scale is clamped to ln 100 after
//! every step, as in CLIP training. Evaluation uses the zero-shot head rebuilt from the current
//! text tower over all templates.
//!
//! An optional [`M2Mix`] term (methods.md §3.1) adds m²-mix's hard negatives to the
//! contrastive loss, wherever FLYP's loss is used (FLYP itself, DRM's FLYP ERM term).
//!
//! Captions: FLYP writes each iWildCam image once per template; here example `i` of epoch `e`
//! takes template `(i + e) mod m` of its class, so every template is used over the epochs and a
//! step's captions stay a pure function of the step (deterministic resume).

use candle_core::Tensor;

use super::m2mix::{M2Mix, M2mixSection};
use super::registry::{Context, Method, MethodEntry, Outcome, Prepared};
use crate::clip::tokenizer::Tokenizer;
use crate::clip::ClipModel;
use crate::error::Result;
use crate::losses::clip_contrastive_loss;
use crate::sections::Sections;
use crate::train::contrastive::clamp_logit_scale;
use crate::train::supervised::{Objective, TrainBatch};
use crate::zeroshot::tokenizer_for;

/// FLYP's objective.
pub struct Flyp {
    /// `class_prompts[k]`: class k's name in every template.
    pub class_prompts: Vec<Vec<String>>,
    pub tokenizer: Tokenizer,
    /// m²-mix's extra term, when the recipe asks for it.
    pub m2mix: Option<M2Mix>,
}

impl Flyp {
    /// The captions of a batch.
    pub fn captions(&self, batch_labels: &[u32], indices: &[usize], epoch: usize) -> Vec<String> {
        batch_labels
            .iter()
            .zip(indices)
            .map(|(&label, &i)| {
                let prompts = &self.class_prompts[label as usize];
                prompts[(i + epoch) % prompts.len()].clone()
            })
            .collect()
    }

    /// The contrastive loss of `image_features` against the batch's captions (plus m²-mix's
    /// term).
    pub fn loss_from_features(
        &self,
        model: &ClipModel,
        image_features: &Tensor,
        batch: &TrainBatch,
    ) -> Result<Tensor> {
        let captions = self.captions(&batch.labels.to_vec1::<u32>()?, &batch.indices, batch.epoch);
        let ids = self.tokenizer.tokenize_batch(&captions, model.config.text.context_length)?;
        let text = model.encode_text(&Tensor::new(ids, model.device())?)?;
        let scale = model.logit_scale();
        let loss = clip_contrastive_loss(image_features, &text, &scale)?;
        match &self.m2mix {
            Some(mix) => Ok((loss + mix.loss(image_features, &text, &scale, batch.epoch, batch.step)?)?),
            None => Ok(loss),
        }
    }
}

impl Objective for Flyp {
    fn trains(&self, _name: &str) -> bool {
        true
    }

    fn loss(&self, model: &ClipModel, batch: &TrainBatch) -> Result<Tensor> {
        self.loss_from_features(model, &model.encode_image(&batch.images)?, batch)
    }

    fn after_step(&self, model: &ClipModel) -> Result<()> {
        clamp_logit_scale(model)
    }
}

/// The registry's entry: `[method] name = "flyp"`, with `[m2mix]`.
pub const ENTRY: MethodEntry = MethodEntry { name: "flyp", sections: &[], read };

/// FLYP as a method: the objective above, m²-mix's term when `[m2mix]` turns it on, and the
/// zero-shot head rebuilt from the fine-tuned towers.
struct FlypMethod {
    m2mix: Option<M2mixSection>,
}

fn read(sections: &mut Sections) -> std::result::Result<Box<dyn Method>, String> {
    Ok(Box::new(FlypMethod { m2mix: M2mixSection::read(sections)? }))
}

impl Flyp {
    /// FLYP over the context's default prompts, with `m2mix`'s term when given.
    pub fn new(context: &Context<'_>, m2mix: Option<&M2mixSection>) -> Result<Self> {
        Ok(Self {
            class_prompts: context.prompts.to_vec(),
            tokenizer: tokenizer_for(context.model)?,
            m2mix: m2mix.map(|m| m.term(context.seed)),
        })
    }
}

impl Method for FlypMethod {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn terms(&self) -> Vec<&'static str> {
        self.m2mix.iter().map(|_| super::m2mix::TERM.section).collect()
    }

    fn prepare(&self, context: &mut Context<'_>) -> Result<Prepared> {
        let objective = Box::new(Flyp::new(context, self.m2mix.as_ref())?);
        Ok(Prepared::Train { objective, outcome: Some(Outcome::Rebuilt), diagnostics: Vec::new() })
    }
}
