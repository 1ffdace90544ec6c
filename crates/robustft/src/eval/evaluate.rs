//! Running a model over labelled images and scoring the predictions: the image tower (no
//! gradient) feeds a predictor that turns features into class probabilities (a zero-shot
//! head's softmax, DRM's mixture, ...), and the per-split metrics of [`super::metrics`] are
//! computed on the collected probabilities. Results are written as JSON lines, one row per
//! (model, split), naming every metric explicitly together with the seed, the preprocessing,
//! the prompt set and (when not fp32) the precision of the matrix products.

use std::io::Write;
use std::path::Path;

use candle_core::Tensor;

use super::metrics::{split_metrics, Predictions, SplitMetrics};
use super::predictor::ImagePredictor;
use super::robustness::PerturbedInput;
use crate::clip::ClipModel;
use crate::error::{Error, Result};
use crate::kernels::{matmul_precision, MatmulPrecision};

/// Images of one batch with their labels and groups.
pub struct LabelledBatch {
    /// `[n, 3, s, s]`, preprocessed.
    pub pixels: Tensor,
    pub labels: Vec<usize>,
    pub groups: Vec<String>,
    /// Per image, the key its perturbation draws randomness from (its position in the split).
    pub keys: Vec<u64>,
}

/// Collects the predictor's probabilities of `model` over all batches, each first perturbed
/// by `perturbed` when given.
pub fn predict(
    model: &ClipModel,
    predictor: &dyn ImagePredictor,
    batches: impl IntoIterator<Item = Result<LabelledBatch>>,
    perturbed: Option<PerturbedInput>,
) -> Result<Predictions> {
    let (mut labels, mut probs, mut groups) = (Vec::new(), Vec::new(), Vec::new());
    for batch in batches {
        let batch = batch?;
        let pixels = match perturbed {
            Some(perturbed) => {
                perturbed.apply(model, predictor, &batch.pixels, &batch.labels, &batch.keys, None)?
            }
            None => batch.pixels,
        };
        probs.extend(predictor.image_probabilities(model, &pixels, None)?.to_vec2::<f32>()?);
        labels.extend(batch.labels);
        groups.extend(batch.groups);
    }
    let groups = (!groups.is_empty()).then_some(groups);
    Predictions::new(labels, probs, groups)
        .map_err(|e| Error::Invalid { what: "predictions".into(), reason: e.to_string() })
}

/// One `results.jsonl` row.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ResultRow {
    pub model: String,
    pub dataset: String,
    pub split: String,
    pub method: String,
    pub prompts: String,
    pub seed: u64,
    pub preprocess: String,
    /// The WiSE-FT mixing weight of the evaluated model, when it is an interpolation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wiseft_alpha: Option<f64>,
    /// The recipe a comparison ran the row under (the demo's table keys rows by it, so two
    /// recipes of one method compare side by side); absent in a single run's rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    /// Numbers a method reports about its own fitting, the same on every row of a run (DRM:
    /// `pc_top1`, `pc_entropy`, `pc_recall_macro`, `pc_recall_min` of its core predictions
    /// against the training labels).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub diagnostics: std::collections::BTreeMap<String, f64>,
    /// The precision of the model's matrix products when the row was scored; written only
    /// when it is not fp32.
    #[serde(default, skip_serializing_if = "MatmulPrecision::is_fp32")]
    pub precision: MatmulPrecision,
    /// The input perturbation a robustness row was measured under (its metrics are those of
    /// the perturbed images); absent in a clean row.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub perturbation: Option<Perturbation>,
    #[serde(flatten)]
    pub metrics: SplitMetrics,
}

/// What a robustness row was measured under (`crate::perturb`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Perturbation {
    /// `linf`, `l2`, `l1`, `apgd-ce`, `apgd-dlr`, `spatial`, or `corruption:<name>`.
    pub threat: String,
    /// The pixel-space budget (a corruption's severity, 1–5).
    pub eps: f64,
    /// Attack steps (0 for corruptions and the spatial grid).
    pub steps: usize,
    /// Top-1 on the clean images.
    pub clean_top1: f64,
    /// Top-1 on the perturbed images (the row's `top1`).
    pub robust_top1: f64,
}

impl ResultRow {
    /// Scores `predictions` and fills in the row's identity from `context`.
    pub fn score(context: &RowContext, split: &str, predictions: &Predictions, skip_groups: &[&str]) -> Self {
        Self {
            model: context.model.clone(),
            dataset: context.dataset.clone(),
            split: split.to_string(),
            method: context.method.clone(),
            prompts: context.prompts.clone(),
            seed: context.seed,
            preprocess: context.preprocess.clone(),
            wiseft_alpha: context.wiseft_alpha,
            recipe: None,
            diagnostics: Default::default(),
            precision: matmul_precision(),
            perturbation: None,
            metrics: split_metrics(predictions, skip_groups),
        }
    }
}

/// A DRM row on `shiftworld/spurious` whose every accuracy is `top1` (tests of tables and
/// selection).
#[cfg(test)]
pub(crate) fn test_row(
    recipe: Option<&str>,
    alpha: Option<f64>,
    split: &str,
    seed: u64,
    top1: f64,
) -> ResultRow {
    ResultRow {
        model: "bundled".into(),
        dataset: "shiftworld/spurious".into(),
        split: split.into(),
        method: "drm".into(),
        prompts: String::new(),
        seed,
        preprocess: String::new(),
        wiseft_alpha: alpha,
        recipe: recipe.map(String::from),
        diagnostics: Default::default(),
        precision: MatmulPrecision::Fp32,
        perturbation: None,
        metrics: SplitMetrics {
            top1,
            top5: 1.0,
            f1_macro: top1,
            recall_macro: top1,
            worst_group_acc: None,
            ece: 0.0,
            n: 10,
        },
    }
}

/// `row` measured under `threat` at budget `eps`: robust top-1 `robust` (also its `top1`),
/// clean top-1 the row's own (tests of tables and selection).
#[cfg(test)]
pub(crate) fn perturbed(row: ResultRow, threat: &str, eps: f64, robust: f64) -> ResultRow {
    let perturbation = Perturbation {
        threat: threat.into(),
        eps,
        steps: 10,
        clean_top1: row.metrics.top1,
        robust_top1: robust,
    };
    let metrics = SplitMetrics { top1: robust, ..row.metrics.clone() };
    ResultRow { perturbation: Some(perturbation), metrics, ..row }
}

/// What every row of one evaluation shares.
#[derive(Clone, Debug)]
pub struct RowContext {
    pub model: String,
    pub dataset: String,
    pub method: String,
    pub prompts: String,
    pub seed: u64,
    pub preprocess: String,
    pub wiseft_alpha: Option<f64>,
}

/// Appends rows to a `results.jsonl` file, starting a new line first when the file does not end
/// with one (a hand-edited file), so no two rows are glued together.
pub fn append_rows(path: &Path, rows: &[ResultRow]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(Error::write(path))?;
    let mut text = String::new();
    if !ends_with_newline(&mut file).map_err(Error::write(path))? {
        text.push('\n');
    }
    for row in rows {
        text.push_str(&serde_json::to_string(row).expect("serialisable"));
        text.push('\n');
    }
    file.write_all(text.as_bytes()).map_err(Error::write(path))
}

/// Whether a file is empty or its last byte is `\n`.
fn ends_with_newline(file: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}
