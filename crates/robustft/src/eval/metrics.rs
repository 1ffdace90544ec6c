//! Classification metrics of one evaluation split, checked against scikit-learn / NumPy by
//! `tests/metrics_parity.rs` (fixture by `scripts/fixtures/metrics.py`). Accuracies are
//! fractions in [0, 1], not percentages.
//!
//! - **Top-1 accuracy** ([`top1`]): sklearn `accuracy_score(y, argmax(p))`. The prediction is
//!   the arg-max of the probability row with ties going to the **lowest** class index, as
//!   `np.argmax` ([`Predictions::preds`]).
//! - **Top-k accuracy** ([`top_k`]): sklearn `top_k_accuracy_score(y, p, k=k, labels=0..K)`.
//!   sklearn ranks by a stable ascending argsort reversed, so among tied scores the **highest**
//!   class index ranks first: the label is a hit when fewer than `k` classes score strictly
//!   higher or score the same with a higher index. Hence `top_k(.., 1)` can differ from
//!   [`top1`] on rows with a tie at the maximum. The same rule is used for K = 2, where sklearn
//!   takes its binary branch (`p[:, 1] > 0.5`); the two agree on rows without exact ties. With
//!   k ≥ K every label is a hit (sklearn warns and returns 1).
//! - **Macro-F1 / macro-recall over present classes** ([`f1_macro_present`],
//!   [`recall_macro_present`]): sklearn `f1_score` / `recall_score` with `average='macro',
//!   labels=np.unique(y_true), zero_division=0`, the WILDS iWildCam convention
//!   (`wilds/common/metrics/all_metrics.py`): the mean over the classes present in the ground
//!   truth of the split; a class that is predicted but absent adds no term (its predictions
//!   only lower the recall of the true classes). Per class F1 = 2·tp / (n_true + n_pred) and
//!   recall = tp / n_true; n_true ≥ 1 for a present class, so no zero division arises.
//! - **Worst-group accuracy** ([`worst_group_accuracy`]): the minimum of the per-group
//!   accuracies ([`group_accuracies`]) over groups with at least one example, skipping the
//!   named groups: WILDS FMoW worst-region accuracy skips "Other". `None` when no group is left.
//! - **Expected calibration error** ([`expected_calibration_error`]), Guo et al. 2017, "On
//!   Calibration of Modern Neural Networks": Σ_b |B_b|/n · |acc(B_b) − conf(B_b)| over `bins`
//!   equal-width confidence bins (15 in [`split_metrics`]), bin b = (b/bins, (b+1)/bins] with
//!   the edges computed in f64 as `b as f64 / bins as f64` and compared with the confidence
//!   widened to f64. A confidence exactly on an edge goes to the **lower** bin; the first bin is
//!   closed at 0, so [0, 1/bins]. Empty bins add nothing. The confidence is the maximum
//!   probability of the row, and "correct" means the arg-max prediction equals the label.
//! - **Effective robustness** ([`LinearFit`]), Taori et al. 2020, "Measuring Robustness to
//!   Natural Distribution Shifts in Image Classification": the OOD accuracy minus the OOD
//!   accuracy predicted from the ID accuracy by a least-squares line fitted in logit space
//!   over a testbed of models, predicted = sigmoid(slope · logit(id) + intercept), with every
//!   accuracy clamped to [1e-6, 1 − 1e-6] before the logit. The fit equals
//!   `np.polyfit(logit(id), logit(ood), 1)`.
//!
//! [`Predictions::new`] validates a split (non-empty, equal lengths, one width for every
//! probability row, rows that are distributions, labels below the number of classes) and
//! returns a [`MetricError`] naming the offending index. The free functions take plain slices
//! and assume what `Predictions::new` checks: equal lengths and at least one example.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Number of confidence bins of the ECE in [`split_metrics`] (Guo et al.'s 15).
pub const ECE_BINS: usize = 15;
/// The `k` of the top-k accuracy in [`split_metrics`].
pub const TOP_K: usize = 5;
/// How far a probability row's sum may be from 1 (float32 softmax over 1000 classes is off
/// by well under 1e-4).
pub const PROB_SUM_TOLERANCE: f64 = 1e-3;
/// Accuracies are clamped to [`ACC_CLAMP`, 1 − `ACC_CLAMP`] before the logit.
pub const ACC_CLAMP: f64 = 1e-6;

#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    #[error("empty input: {what} has no elements")]
    Empty { what: &'static str },
    #[error("length mismatch: {left} has {left_len} elements but {right} has {right_len}")]
    LengthMismatch { left: &'static str, left_len: usize, right: &'static str, right_len: usize },
    #[error("probs row {row} has {width} columns, expected {expected} (the width of row 0)")]
    RowWidth { row: usize, width: usize, expected: usize },
    #[error("probs row {row}, column {column}: {value} is not a probability (finite and >= 0)")]
    InvalidProbability { row: usize, column: usize, value: f32 },
    #[error("probs row {row} sums to {sum}, not 1 (tolerance {PROB_SUM_TOLERANCE})")]
    NotNormalised { row: usize, sum: f64 },
    #[error("label {label} at index {index} is out of range for {classes} classes")]
    LabelOutOfRange { index: usize, label: usize, classes: usize },
    #[error("{what}[{index}] = {value} is not an accuracy in [0, 1]")]
    AccuracyOutOfRange { what: &'static str, index: usize, value: f64 },
    #[error("the linear fit needs at least 2 distinct ID accuracies, got {distinct} among {points} points")]
    TooFewPoints { points: usize, distinct: usize },
}

/// Per-example predictions of one split: true labels, one probability row per example (rows
/// sum to 1) and optionally a group name per example (FMoW region, …). Build it with
/// [`Predictions::new`], which checks those invariants.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    pub labels: Vec<usize>,
    pub probs: Vec<Vec<f32>>,
    pub groups: Option<Vec<String>>,
}

impl Predictions {
    pub fn new(
        labels: Vec<usize>,
        probs: Vec<Vec<f32>>,
        groups: Option<Vec<String>>,
    ) -> Result<Self, MetricError> {
        if labels.is_empty() {
            return Err(MetricError::Empty { what: "labels" });
        }
        check_lengths("labels", labels.len(), "probs", probs.len())?;
        if let Some(groups) = &groups {
            check_lengths("labels", labels.len(), "groups", groups.len())?;
        }
        let classes = probs[0].len();
        for (row, p) in probs.iter().enumerate() {
            check_row(row, p, classes)?;
        }
        if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &y)| y >= classes) {
            return Err(MetricError::LabelOutOfRange { index, label, classes });
        }
        Ok(Self { labels, probs, groups })
    }

    /// Arg-max class of every row; ties go to the lowest index (`np.argmax`).
    pub fn preds(&self) -> Vec<usize> {
        self.probs.iter().map(|row| argmax(row)).collect()
    }

    /// The maximum probability of every row.
    pub fn confidences(&self) -> Vec<f32> {
        self.probs.iter().map(|row| row[argmax(row)]).collect()
    }
}

fn check_lengths(
    left: &'static str,
    left_len: usize,
    right: &'static str,
    right_len: usize,
) -> Result<(), MetricError> {
    if left_len == right_len {
        Ok(())
    } else {
        Err(MetricError::LengthMismatch { left, left_len, right, right_len })
    }
}

fn check_row(row: usize, p: &[f32], expected: usize) -> Result<(), MetricError> {
    if p.len() != expected {
        return Err(MetricError::RowWidth { row, width: p.len(), expected });
    }
    if let Some((column, &value)) = p.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
        return Err(MetricError::InvalidProbability { row, column, value });
    }
    let sum: f64 = p.iter().map(|&v| f64::from(v)).sum();
    if (sum - 1.0).abs() > PROB_SUM_TOLERANCE {
        return Err(MetricError::NotNormalised { row, sum });
    }
    Ok(())
}

fn argmax(row: &[f32]) -> usize {
    (1..row.len()).fold(0, |best, j| if row[j] > row[best] { j } else { best })
}

/// Fraction of examples whose prediction equals the label (sklearn `accuracy_score`).
pub fn top1(labels: &[usize], preds: &[usize]) -> f64 {
    debug_assert_eq!(labels.len(), preds.len());
    let hits = labels.iter().zip(preds).filter(|(y, p)| y == p).count();
    hits as f64 / labels.len() as f64
}

/// Fraction of examples whose label ranks among the `k` highest probabilities, with sklearn's
/// tie rule (equal scores: the higher class index ranks first); see the module doc.
pub fn top_k(labels: &[usize], probs: &[Vec<f32>], k: usize) -> f64 {
    debug_assert_eq!(labels.len(), probs.len());
    let hits = labels.iter().zip(probs).filter(|(&y, row)| sklearn_rank(row, y) < k).count();
    hits as f64 / labels.len() as f64
}

/// 0-based rank of `class` in `row` under sklearn's `argsort(kind="mergesort")[:, ::-1]`.
fn sklearn_rank(row: &[f32], class: usize) -> usize {
    let score = row[class];
    row.iter().enumerate().filter(|&(j, &p)| p > score || (p == score && j > class)).count()
}

/// Confusion counts of one class.
#[derive(Debug, Default, Clone, Copy)]
struct ClassCounts {
    true_positives: usize,
    n_true: usize,
    n_pred: usize,
}

/// Counts of every class present in `labels`, in class order.
fn present_class_counts(labels: &[usize], preds: &[usize]) -> BTreeMap<usize, ClassCounts> {
    let mut counts: BTreeMap<usize, ClassCounts> =
        labels.iter().map(|&y| (y, ClassCounts::default())).collect();
    for (&y, &p) in labels.iter().zip(preds) {
        let truth = counts.get_mut(&y).expect("every label is a key");
        truth.n_true += 1;
        truth.true_positives += usize::from(y == p);
        if let Some(predicted) = counts.get_mut(&p) {
            predicted.n_pred += 1;
        }
    }
    counts
}

fn macro_over_present(labels: &[usize], preds: &[usize], score: fn(&ClassCounts) -> f64) -> f64 {
    debug_assert_eq!(labels.len(), preds.len());
    let counts = present_class_counts(labels, preds);
    counts.values().map(score).sum::<f64>() / counts.len() as f64
}

/// sklearn `f1_score(y_true, y_pred, average='macro', labels=np.unique(y_true),
/// zero_division=0)`: mean F1 over the classes present in `labels` (WILDS iWildCam).
pub fn f1_macro_present(labels: &[usize], preds: &[usize]) -> f64 {
    macro_over_present(labels, preds, |c| 2.0 * c.true_positives as f64 / (c.n_true + c.n_pred) as f64)
}

/// sklearn `recall_score(y_true, y_pred, average='macro', labels=np.unique(y_true))`.
pub fn recall_macro_present(labels: &[usize], preds: &[usize]) -> f64 {
    macro_over_present(labels, preds, |c| c.true_positives as f64 / c.n_true as f64)
}

/// Accuracy and example count of every group that occurs in `groups`.
pub fn group_accuracies(
    labels: &[usize],
    preds: &[usize],
    groups: &[String],
) -> BTreeMap<String, (f64, usize)> {
    debug_assert_eq!(labels.len(), preds.len());
    debug_assert_eq!(labels.len(), groups.len());
    let mut tally: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for ((y, p), g) in labels.iter().zip(preds).zip(groups) {
        let (hits, count) = tally.entry(g.as_str()).or_default();
        *hits += usize::from(y == p);
        *count += 1;
    }
    tally.into_iter().map(|(g, (hits, count))| (g.to_owned(), (hits as f64 / count as f64, count))).collect()
}

/// Minimum per-group accuracy over the groups not named in `skip` (WILDS FMoW worst-region
/// accuracy: `skip = ["Other"]`); `None` when every group is skipped.
pub fn worst_group_accuracy(
    labels: &[usize],
    preds: &[usize],
    groups: &[String],
    skip: &[&str],
) -> Option<f64> {
    group_accuracies(labels, preds, groups)
        .into_iter()
        .filter(|(g, _)| !skip.contains(&g.as_str()))
        .map(|(_, (acc, _))| acc)
        .reduce(f64::min)
}

/// Running sums of one confidence bin.
#[derive(Debug, Default, Clone, Copy)]
struct Bin {
    count: usize,
    hits: usize,
    confidence_sum: f64,
}

/// Expected calibration error over `bins` equal-width bins (b/bins, (b+1)/bins], the first
/// closed at 0 (Guo et al. 2017); see the module doc for the edge convention.
pub fn expected_calibration_error(confidences: &[f32], correct: &[bool], bins: usize) -> f64 {
    debug_assert_eq!(confidences.len(), correct.len());
    let mut tally = vec![Bin::default(); bins];
    for (&c, &ok) in confidences.iter().zip(correct) {
        let c = f64::from(c);
        let bin = &mut tally[bin_index(c, bins)];
        bin.count += 1;
        bin.hits += usize::from(ok);
        bin.confidence_sum += c;
    }
    let n = confidences.len() as f64;
    tally.iter().filter(|b| b.count > 0).map(|b| calibration_gap(b, n)).sum()
}

/// The bin of confidence `c`: the number of interior edges b/bins strictly below it.
fn bin_index(c: f64, bins: usize) -> usize {
    (1..bins).filter(|&b| c > b as f64 / bins as f64).count()
}

/// |B|/n · |acc(B) − conf(B)| of a non-empty bin.
fn calibration_gap(bin: &Bin, n: f64) -> f64 {
    let count = bin.count as f64;
    count / n * (bin.hits as f64 / count - bin.confidence_sum / count).abs()
}

/// Every reported metric of one split. Accuracies are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    /// Top-1 accuracy of the arg-max prediction.
    pub top1: f64,
    /// Top-5 accuracy (sklearn tie rule; 1 when there are at most 5 classes).
    pub top5: f64,
    /// Macro-F1 over the classes present in the labels (iWildCam's headline metric).
    pub f1_macro: f64,
    /// Macro-recall over the classes present in the labels.
    pub recall_macro: f64,
    /// Worst-group accuracy; `None` without groups or when every group is skipped.
    pub worst_group_acc: Option<f64>,
    /// Expected calibration error with [`ECE_BINS`] bins.
    pub ece: f64,
    /// Number of examples.
    pub n: usize,
}

/// All metrics of a validated split; groups named in `skip_groups` are left out of the
/// worst-group accuracy (FMoW: `&["Other"]`).
pub fn split_metrics(p: &Predictions, skip_groups: &[&str]) -> SplitMetrics {
    let preds = p.preds();
    let correct: Vec<bool> = p.labels.iter().zip(&preds).map(|(y, q)| y == q).collect();
    let worst_group = |groups: &Vec<String>| worst_group_accuracy(&p.labels, &preds, groups, skip_groups);
    SplitMetrics {
        top1: top1(&p.labels, &preds),
        top5: top_k(&p.labels, &p.probs, TOP_K),
        f1_macro: f1_macro_present(&p.labels, &preds),
        recall_macro: recall_macro_present(&p.labels, &preds),
        worst_group_acc: p.groups.as_ref().and_then(worst_group),
        ece: expected_calibration_error(&p.confidences(), &correct, ECE_BINS),
        n: p.labels.len(),
    }
}

/// The line logit(ood) = slope · logit(id) + intercept fitted by least squares over a testbed
/// of models (Taori et al. 2020); accuracies clamped to [`ACC_CLAMP`, 1 − `ACC_CLAMP`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearFit {
    pub slope: f64,
    pub intercept: f64,
}

impl LinearFit {
    /// Least-squares fit in logit space (`np.polyfit(logit(id), logit(ood), 1)`). Needs equal
    /// lengths, accuracies in [0, 1] and at least 2 distinct clamped ID accuracies.
    pub fn fit(id_accs: &[f64], ood_accs: &[f64]) -> Result<Self, MetricError> {
        check_lengths("id_accs", id_accs.len(), "ood_accs", ood_accs.len())?;
        let x = logits("id_accs", id_accs)?;
        let y = logits("ood_accs", ood_accs)?;
        let distinct = count_distinct(&x);
        if distinct < 2 {
            return Err(MetricError::TooFewPoints { points: x.len(), distinct });
        }
        let (mean_x, mean_y) = (mean(&x), mean(&y));
        let sxx: f64 = x.iter().map(|xi| (xi - mean_x).powi(2)).sum();
        let sxy: f64 = x.iter().zip(&y).map(|(xi, yi)| (xi - mean_x) * (yi - mean_y)).sum();
        let slope = sxy / sxx;
        Ok(Self { slope, intercept: mean_y - slope * mean_x })
    }

    /// OOD accuracy the line predicts for ID accuracy `id_acc` (in [0, 1]).
    pub fn predicted_ood_accuracy(&self, id_acc: f64) -> f64 {
        sigmoid(self.slope * logit(id_acc) + self.intercept)
    }

    /// `ood_acc` minus the predicted OOD accuracy at `id_acc` (both in [0, 1]; `ood_acc` is
    /// used as given, only the logit argument is clamped).
    pub fn effective_robustness(&self, id_acc: f64, ood_acc: f64) -> f64 {
        ood_acc - self.predicted_ood_accuracy(id_acc)
    }
}

fn logits(what: &'static str, accs: &[f64]) -> Result<Vec<f64>, MetricError> {
    accs.iter()
        .enumerate()
        .map(|(index, &value)| {
            if (0.0..=1.0).contains(&value) {
                Ok(logit(value))
            } else {
                Err(MetricError::AccuracyOutOfRange { what, index, value })
            }
        })
        .collect()
}

/// ln(p / (1 − p)) of `p` clamped to [`ACC_CLAMP`, 1 − `ACC_CLAMP`].
fn logit(p: f64) -> f64 {
    let p = p.clamp(ACC_CLAMP, 1.0 - ACC_CLAMP);
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn count_distinct(v: &[f64]) -> usize {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    sorted.len()
}
