//! Zero-shot evaluation of a CLIP model on a ShiftWorld suite, rendered in memory: the
//! default-prompt head (the `shiftworld` template set over the class names), the concept-
//! description head (each class's core descriptions, embedded separately and averaged) or a
//! head from any prompts. Also the background-swap measurement of how much a head rests on
//! the background ([`background_swap`]): every example's background replaced by another
//! example's, optionally only by backgrounds the object's colour contrasts with, as the scene
//! sampler guarantees ([`crate::shiftworld::Color::contrasts_with`]), so that the swap does not
//! also hide the object.

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
    zeroshot_suite_with(model, suite, &shiftworld_prompts(kind))
}

/// Zero-shot predictions of the head built from `prompts` (one list per class) on every
/// evaluation split of `suite`.
pub fn zeroshot_suite_with(
    model: &ClipModel,
    suite: &Suite,
    prompts: &[Vec<String>],
) -> Result<Vec<(String, Predictions)>> {
    let head = ZeroShotHead::build(model, &tokenizer_for(model)?, prompts)?;
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
    zeroshot_suite_rows_with(model, model_name, suite, kind.name(), &shiftworld_prompts(kind))
}

/// [`zeroshot_suite_rows`] for the head built from `prompts`, named `prompts_name` in the rows.
pub fn zeroshot_suite_rows_with(
    model: &ClipModel,
    model_name: &str,
    suite: &Suite,
    prompts_name: &str,
    prompts: &[Vec<String>],
) -> Result<Vec<ResultRow>> {
    let context = RowContext {
        model: model_name.to_string(),
        dataset: format!("shiftworld/{}", suite.name),
        method: "zeroshot".into(),
        prompts: prompts_name.into(),
        seed: suite.seed,
        preprocess: ClipPreprocess::openai(model.config.vision.image_size).id(),
        wiseft_alpha: None,
    };
    Ok(zeroshot_suite_with(model, suite, prompts)?
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

/// The same examples with every background replaced by another example's: everything else
/// about each scene is unchanged. Donors follow a seeded shuffled order, each example taking
/// the background of the next one after it in that order (a cyclic shift, so no example keeps
/// its own); with `keep_contrast`, the next one whose background colour the object's colour
/// contrasts with ([`crate::shiftworld::Color::contrasts_with`], as in every rendered scene),
/// so that no object becomes hard to see on its new background. An example without such a
/// donor keeps the plain cyclic one.
pub fn swap_backgrounds(examples: &[Example], seed: u64, keep_contrast: bool) -> Vec<Example> {
    let order = crate::data::epoch_order(examples.len(), Some(seed));
    let n = order.len();
    let mut swapped = examples.to_vec();
    for (k, &i) in order.iter().enumerate() {
        let object = examples[i].scene.color;
        let fits =
            |donor: usize| !keep_contrast || object.contrasts_with(examples[donor].scene.background.color);
        let donor = (1..n).map(|step| order[(k + step) % n]).find(|&d| fits(d)).unwrap_or(order[(k + 1) % n]);
        swapped[i].scene.background = examples[donor].scene.background.clone();
    }
    swapped
}

/// Per-example correctness of a head on examples as rendered and with swapped backgrounds
/// ([`swap_backgrounds`]), in example order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackgroundSwap {
    /// Whether the head is right on each example as rendered.
    pub original: Vec<bool>,
    /// Whether it is right with the example's background swapped.
    pub swapped: Vec<bool>,
    /// Whether the object's colour does not contrast with its new background's
    /// ([`crate::shiftworld::Color::contrasts_with`]): the object is hard to see.
    pub lost_contrast: Vec<bool>,
}

impl BackgroundSwap {
    /// Top-1 as rendered and with swapped backgrounds over the examples `keep` selects (by
    /// index); `None` when it selects none.
    pub fn top1_where(&self, keep: impl Fn(usize) -> bool) -> Option<(f64, f64)> {
        let chosen: Vec<usize> = (0..self.original.len()).filter(|&i| keep(i)).collect();
        if chosen.is_empty() {
            return None;
        }
        let rate =
            |correct: &[bool]| chosen.iter().filter(|&&i| correct[i]).count() as f64 / chosen.len() as f64;
        Some((rate(&self.original), rate(&self.swapped)))
    }

    /// Top-1 over every example, as rendered and with swapped backgrounds.
    pub fn top1(&self) -> (f64, f64) {
        self.top1_where(|_| true).unwrap_or((0.0, 0.0))
    }
}

/// The head built from `prompts` (one non-empty list per ShiftWorld class) on `examples`, as
/// they are and with swapped backgrounds: how much the head's predictions rest on the
/// background.
pub fn background_swap(
    model: &ClipModel,
    examples: &[Example],
    prompts: &[Vec<String>],
    seed: u64,
    keep_contrast: bool,
) -> Result<BackgroundSwap> {
    let head = ZeroShotHead::build(model, &tokenizer_for(model)?, prompts)?;
    let predictor = Predictor::single(Head::from(&head));
    let correct = |examples: &[Example]| -> Result<Vec<bool>> {
        let p = predict_examples(model, &predictor, examples, None)?;
        Ok(p.labels.iter().zip(p.preds()).map(|(&label, pred)| label == pred).collect())
    };
    let swapped = swap_backgrounds(examples, seed, keep_contrast);
    let lost_contrast =
        swapped.iter().map(|e| !e.scene.color.contrasts_with(e.scene.background.color)).collect();
    Ok(BackgroundSwap { original: correct(examples)?, swapped: correct(&swapped)?, lost_contrast })
}

/// The splits a suite is evaluated on: everything but `train`.
pub fn evaluation_splits(suite: &Suite) -> impl Iterator<Item = &SuiteSplit> {
    suite.splits.iter().filter(|s| s.name != "train")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shiftworld::build_suite;

    fn id_test(suite: &str) -> Vec<Example> {
        let suite = build_suite(suite, 3).unwrap();
        suite.splits.into_iter().find(|s| s.name == "id_test").unwrap().examples
    }

    /// The example with its background replaced by `fixed`, for comparing everything else.
    fn without_background(example: &Example, fixed: &crate::shiftworld::Background) -> Example {
        let mut example = example.clone();
        example.scene.background = fixed.clone();
        example
    }

    #[test]
    fn swapping_changes_every_background_and_nothing_else() {
        let examples = id_test("spurious");
        for keep_contrast in [false, true] {
            let swapped = swap_backgrounds(&examples, 7, keep_contrast);
            assert_eq!(swapped.len(), examples.len());
            for (before, after) in examples.iter().zip(&swapped) {
                assert_ne!(before.scene.background, after.scene.background, "no example keeps its own");
                let fixed = &examples[0].scene.background;
                assert_eq!(without_background(before, fixed), without_background(after, fixed));
            }
            assert_eq!(swapped, swap_backgrounds(&examples, 7, keep_contrast), "seeded");
            assert_ne!(swapped, swap_backgrounds(&examples, 8, keep_contrast));
        }
    }

    #[test]
    fn a_plain_swap_hides_some_objects_and_a_contrast_keeping_swap_none() {
        let examples = id_test("spurious");
        let lost = |swapped: &[Example]| {
            swapped.iter().filter(|e| !e.scene.color.contrasts_with(e.scene.background.color)).count()
        };
        assert_eq!(lost(&examples), 0, "rendered scenes always contrast");
        let plain = lost(&swap_backgrounds(&examples, 7, false));
        assert!(plain > examples.len() / 10, "{plain} of {} objects lose contrast", examples.len());
        assert_eq!(lost(&swap_backgrounds(&examples, 7, true)), 0);
    }

    #[test]
    fn swap_top1_counts_the_chosen_examples() {
        let measured = BackgroundSwap {
            original: vec![true, true, false, true],
            swapped: vec![false, true, false, false],
            lost_contrast: vec![true, false, false, true],
        };
        assert_eq!(measured.top1(), (0.75, 0.25));
        assert_eq!(measured.top1_where(|i| measured.lost_contrast[i]), Some((1.0, 0.0)));
        assert_eq!(measured.top1_where(|i| i == 2), Some((0.0, 0.0)));
        assert_eq!(measured.top1_where(|_| false), None);
    }
}
