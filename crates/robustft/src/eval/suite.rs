//! Zero-shot evaluation of a CLIP model on a ShiftWorld suite, rendered in memory: the
//! default-prompt head (the `shiftworld` template set over the class names) or the concept-
//! description head (each class's core descriptions, embedded separately and averaged).

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::evaluate::{predict, LabelledBatch, ResultRow, RowContext};
use super::metrics::Predictions;
use super::predictor::{Head, ImagePredictor, Predictor};
use super::robustness::PerturbedInput;
use crate::clip::preprocess::ClipPreprocess;
use crate::clip::ClipModel;
use crate::error::Result;
use crate::prompts::{class_prompts, template_set};
use crate::shiftworld::{self, Example, Suite, SuiteSplit, CLASSES};
use crate::train::images::ImageSet;
use crate::zeroshot::{tokenizer_for, ZeroShotHead};

/// Images per image-tower call.
const EVAL_BATCH: usize = 250;

/// Which prompts build the zero-shot head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptKind {
    /// Templates filled with class names.
    Default,
    /// The classes' concept descriptions.
    Descriptions,
}

impl PromptKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "shiftworld_templates",
            Self::Descriptions => "shiftworld_concept_descriptions",
        }
    }
}

/// The prompts of every ShiftWorld class for `kind`.
pub fn shiftworld_prompts(kind: PromptKind) -> Vec<Vec<String>> {
    match kind {
        PromptKind::Default => {
            let names: Vec<String> = CLASSES.iter().map(|c| c.to_string()).collect();
            class_prompts(&names, template_set("shiftworld").expect("bundled set"))
        }
        PromptKind::Descriptions => shiftworld::concept_descriptions(),
    }
}

/// Renders and preprocesses `examples` (in parallel) into `[n, 3, s, s]` row-major pixels.
fn render_examples(examples: &[Example], preprocess: &ClipPreprocess) -> Vec<f32> {
    examples
        .par_iter()
        .flat_map_iter(|e| preprocess.apply(&image::DynamicImage::ImageRgb8(shiftworld::render(&e.scene))))
        .collect()
}

/// Renders and preprocesses `examples` into labelled batches.
pub fn suite_batches<'a>(
    examples: &'a [Example],
    preprocess: &'a ClipPreprocess,
    device: &'a Device,
) -> impl Iterator<Item = Result<LabelledBatch>> + 'a {
    examples.chunks(EVAL_BATCH).enumerate().map(move |(number, chunk)| {
        let size = preprocess.image_size;
        let first = (number * EVAL_BATCH) as u64;
        Ok(LabelledBatch {
            pixels: Tensor::from_vec(
                render_examples(chunk, preprocess),
                (chunk.len(), 3, size, size),
                device,
            )?,
            labels: chunk.iter().map(|e| e.label).collect(),
            groups: chunk.iter().map(|e| e.group.clone()).collect(),
            keys: (first..first + chunk.len() as u64).collect(),
        })
    })
}

/// The zero-shot head of `kind` for ShiftWorld's classes.
pub fn shiftworld_head(model: &ClipModel, kind: PromptKind) -> Result<ZeroShotHead> {
    ZeroShotHead::build(model, &tokenizer_for(model)?, &shiftworld_prompts(kind))
}

/// Zero-shot predictions on every evaluation split of `suite` (all splits but `train`).
pub fn zeroshot_suite(
    model: &ClipModel,
    suite: &Suite,
    kind: PromptKind,
) -> Result<Vec<(String, Predictions)>> {
    let head = shiftworld_head(model, kind)?;
    evaluate_suite(model, suite, &Predictor::single(Head::from(&head)))
}

/// The zero-shot result rows of `model` (named `model_name` in the rows) on every
/// evaluation split of `suite`.
pub fn zeroshot_suite_rows(
    model: &ClipModel,
    model_name: &str,
    suite: &Suite,
    kind: PromptKind,
) -> Result<Vec<ResultRow>> {
    let context = RowContext {
        model: model_name.to_string(),
        dataset: format!("shiftworld/{}", suite.name),
        method: "zeroshot".into(),
        prompts: kind.name().into(),
        seed: suite.seed,
        preprocess: ClipPreprocess::openai(model.config.vision.image_size).id(),
        wiseft_alpha: None,
    };
    Ok(zeroshot_suite(model, suite, kind)?
        .iter()
        .map(|(split, predictions)| ResultRow::score(&context, split, predictions, &[]))
        .collect())
}

/// Predictions of `predictor` on every evaluation split.
pub fn evaluate_suite(
    model: &ClipModel,
    suite: &Suite,
    predictor: &dyn ImagePredictor,
) -> Result<Vec<(String, Predictions)>> {
    evaluate_suite_under(model, suite, predictor, None, None)
}

/// Predictions of `predictor` on the first `limit` examples (all when `None`) of every
/// evaluation split, perturbed by `perturbed` when given.
pub fn evaluate_suite_under(
    model: &ClipModel,
    suite: &Suite,
    predictor: &dyn ImagePredictor,
    perturbed: Option<PerturbedInput>,
    limit: Option<usize>,
) -> Result<Vec<(String, Predictions)>> {
    evaluation_splits(suite)
        .map(|split| {
            let examples = &split.examples[..limit.unwrap_or(usize::MAX).min(split.examples.len())];
            Ok((split.name.clone(), predict_examples(model, predictor, examples, perturbed)?))
        })
        .collect()
}

/// Predictions of `predictor` on rendered `examples`.
fn predict_examples(
    model: &ClipModel,
    predictor: &dyn ImagePredictor,
    examples: &[Example],
    perturbed: Option<PerturbedInput>,
) -> Result<Predictions> {
    let preprocess = ClipPreprocess::openai(model.config.vision.image_size);
    predict(model, predictor, suite_batches(examples, &preprocess, model.device()), perturbed)
}

/// Renders and preprocesses a whole split into memory (for training).
pub fn render_split(split: &SuiteSplit, preprocess: &ClipPreprocess) -> ImageSet {
    let pixels = render_examples(&split.examples, preprocess);
    let labels = split.examples.iter().map(|e| e.label as u32).collect();
    ImageSet { pixels, labels, image_size: preprocess.image_size }
}

/// The same examples with every background replaced by another example's (a seeded cyclic
/// shift of a shuffled order, so no example keeps its own): everything else about each scene
/// is unchanged.
pub fn swap_backgrounds(examples: &[Example], seed: u64) -> Vec<Example> {
    let order = crate::data::epoch_order(examples.len(), Some(seed));
    let mut swapped = examples.to_vec();
    for (k, &i) in order.iter().enumerate() {
        let donor = order[(k + 1) % order.len()];
        swapped[i].scene.background = examples[donor].scene.background.clone();
    }
    swapped
}

/// Top-1 of the zero-shot head of `kind` on `examples`, as they are and with swapped
/// backgrounds: how much the head's predictions rest on the background.
pub fn background_swap_top1(
    model: &ClipModel,
    examples: &[Example],
    kind: PromptKind,
    seed: u64,
) -> Result<(f64, f64)> {
    let predictor = Predictor::single(Head::from(&shiftworld_head(model, kind)?));
    let swapped = swap_backgrounds(examples, seed);
    let top1 = |examples: &[Example]| -> Result<f64> {
        let p = predict_examples(model, &predictor, examples, None)?;
        Ok(super::metrics::top1(&p.labels, &p.preds()))
    };
    Ok((top1(examples)?, top1(&swapped)?))
}

/// The splits a suite is evaluated on: everything but `train`.
pub fn evaluation_splits(suite: &Suite) -> impl Iterator<Item = &SuiteSplit> {
    suite.splits.iter().filter(|s| s.name != "train")
}
