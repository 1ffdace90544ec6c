//! What a model is evaluated on — a ShiftWorld suite rendered in memory or the splits of a
//! dataset on disk — and its evaluation on every split, for every command that evaluates
//! (a recipe's run, `eval`, `wiseft`): per split the predictions, the example ids (a suite's
//! examples are numbered) and the images that could not be read (disk only; skipped, never
//! fatal).

use std::path::PathBuf;
use std::sync::Arc;

use super::dataset::{evaluate_split_under, SplitEvaluation};
use super::predictor::ImagePredictor;
use super::robustness::PerturbedInput;
use super::suite::evaluate_suite_under;
use crate::clip::ClipModel;
use crate::data::Split;
use crate::error::Result;
use crate::shiftworld::Suite;

/// The splits a model is evaluated on.
pub enum Benchmark {
    /// A ShiftWorld suite holding the splits to evaluate.
    Suite(Suite),
    /// Splits of the dataset at `root`.
    Disk { root: PathBuf, splits: Vec<Arc<Split>> },
}

impl Benchmark {
    /// The `dataset` result rows name: `shiftworld/<suite>` or the root.
    pub fn name(&self) -> String {
        match self {
            Self::Suite(suite) => format!("shiftworld/{}", suite.name),
            Self::Disk { root, .. } => root.display().to_string(),
        }
    }

    /// The world seed of a suite (0 for data on disk).
    pub fn seed(&self) -> u64 {
        match self {
            Self::Suite(suite) => suite.seed,
            Self::Disk { .. } => 0,
        }
    }

    /// Groups left out of the worst-group accuracy (FMoW's `Other` region, on disk).
    pub fn skipped_groups(&self) -> &'static [&'static str] {
        match self {
            Self::Suite(_) => &[],
            Self::Disk { .. } => &["Other"],
        }
    }

    /// `model` + `predictor` on every split.
    pub fn evaluate(
        &self,
        model: &ClipModel,
        predictor: &dyn ImagePredictor,
    ) -> Result<Vec<SplitEvaluation>> {
        self.evaluate_under(model, predictor, None, None)
    }

    /// `model` + `predictor` on the first `limit` examples (all when `None`) of every split,
    /// each batch perturbed by `perturbed` when given.
    pub fn evaluate_under(
        &self,
        model: &ClipModel,
        predictor: &dyn ImagePredictor,
        perturbed: Option<PerturbedInput>,
        limit: Option<usize>,
    ) -> Result<Vec<SplitEvaluation>> {
        match self {
            Self::Suite(suite) => Ok(evaluate_suite_under(model, suite, predictor, perturbed, limit)?
                .into_iter()
                .map(|(split, predictions)| SplitEvaluation {
                    ids: (0..predictions.labels.len()).map(|i| i.to_string()).collect(),
                    split,
                    predictions,
                    skipped: Vec::new(),
                })
                .collect()),
            Self::Disk { splits, .. } => splits
                .iter()
                .map(|split| evaluate_split_under(model, first_records(split, limit), predictor, perturbed))
                .collect(),
        }
    }
}

/// The split cut to its first `limit` records.
fn first_records(split: &Arc<Split>, limit: Option<usize>) -> Arc<Split> {
    match limit {
        Some(n) if n < split.records.len() => {
            Arc::new(Split { records: split.records[..n].to_vec(), ..(**split).clone() })
        }
        _ => split.clone(),
    }
}
