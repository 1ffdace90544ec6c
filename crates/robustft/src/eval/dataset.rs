//! Evaluating a model on on-disk splits (CSV manifests, ImageFolder, WILDS, ImageNet variants)
//! through the parallel loader: images are decoded and preprocessed exactly as OpenAI CLIP
//! does, the head's logits are projected to the split's label space where the split needs it
//! (ImageNet-R/-A subsets, ObjectNet max-pooling; methods.md §4.3) **before** the softmax, and
//! unreadable images are skipped and reported, never fatal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Tensor;

use super::metrics::Predictions;
use super::predictor::ImagePredictor;
use super::robustness::PerturbedInput;
use crate::clip::preprocess::ClipPreprocess;
use crate::clip::ClipModel;
use crate::data::{Loader, LoaderConfig, Split, Transform};
use crate::error::{Error, Result};

/// Images per image-tower call.
const EVAL_BATCH: usize = 64;

/// The predictions on one split, with the example ids and the images that could not be read.
pub struct SplitEvaluation {
    pub split: String,
    pub ids: Vec<String>,
    pub predictions: Predictions,
    pub skipped: Vec<(PathBuf, String)>,
}

/// Runs `predictor` (heads in the model's class space; the split's projection is applied to
/// each head's logits) over every image of `split`.
pub fn evaluate_split(
    model: &ClipModel,
    split: Arc<Split>,
    predictor: &dyn ImagePredictor,
) -> Result<SplitEvaluation> {
    evaluate_split_under(model, split, predictor, None)
}

/// [`evaluate_split`] with every batch perturbed by `perturbed` when given (example keys are
/// the records' positions in the split).
pub fn evaluate_split_under(
    model: &ClipModel,
    split: Arc<Split>,
    predictor: &dyn ImagePredictor,
    perturbed: Option<PerturbedInput>,
) -> Result<SplitEvaluation> {
    let preprocess = ClipPreprocess::openai(model.config.vision.image_size);
    let size = preprocess.image_size;
    let transform: Transform =
        Arc::new(move |path: &Path| preprocess.load(path).map_err(|e| error_chain(&e)));
    let config = LoaderConfig { batch_size: EVAL_BATCH, ..LoaderConfig::default() };
    let mut loader = Loader::new(split.clone(), transform, 3 * size * size, config);
    let (mut ids, mut labels, mut probs, mut groups) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for batch in loader.by_ref() {
        if batch.indices.is_empty() {
            continue;
        }
        let mut pixels =
            Tensor::from_vec(batch.pixels, (batch.indices.len(), 3, size, size), model.device())?;
        if let Some(perturbed) = perturbed {
            let labels: Vec<usize> = batch.indices.iter().map(|&i| split.records[i].label).collect();
            let keys: Vec<u64> = batch.indices.iter().map(|&i| i as u64).collect();
            pixels = perturbed.apply(model, predictor, &pixels, &labels, &keys, split.projection.as_ref())?;
        }
        let probabilities = predictor.image_probabilities(model, &pixels, split.projection.as_ref())?;
        probs.extend(probabilities.to_vec2::<f32>()?);
        for &i in &batch.indices {
            let record = &split.records[i];
            ids.push(record.id.clone());
            labels.push(record.label);
            groups.push(record.group.clone().unwrap_or_default());
        }
    }
    let has_groups = split.records.iter().any(|r| r.group.is_some());
    let predictions = Predictions::new(labels, probs, has_groups.then_some(groups))
        .map_err(|e| Error::Invalid { what: format!("split {}", split.name), reason: e.to_string() })?;
    Ok(SplitEvaluation { split: split.name.clone(), ids, predictions, skipped: loader.skipped() })
}

/// An error and its causes on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Writes one CSV row per example, `split,id,label,pred,group,confidence` (label and pred as
/// class indices, group empty when the split has none, confidence = probability of the
/// predicted class), so any metric can be recomputed outside the tool.
pub fn write_predictions_csv(path: &Path, evaluations: &[SplitEvaluation]) -> Result<()> {
    let mut out = String::from("split,id,label,pred,group,confidence\n");
    for evaluation in evaluations {
        let p = &evaluation.predictions;
        let (preds, confidences) = (p.preds(), p.confidences());
        for (i, id) in evaluation.ids.iter().enumerate() {
            let group = p.groups.as_ref().map_or("", |g| g[i].as_str());
            let fields = [
                csv_field(&evaluation.split),
                csv_field(id),
                p.labels[i].to_string(),
                preds[i].to_string(),
                csv_field(group),
                confidences[i].to_string(),
            ];
            out.push_str(&fields.join(","));
            out.push('\n');
        }
    }
    let mut file = std::fs::File::create(path).map_err(Error::write(path))?;
    file.write_all(out.as_bytes()).map_err(Error::write(path))
}

/// RFC 4180 quoting where needed.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}
