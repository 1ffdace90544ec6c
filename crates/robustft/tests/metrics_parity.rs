//! Evaluation metrics against scikit-learn / NumPy (fixture `fixtures/metrics/cases.json` by
//! `scripts/fixtures/metrics.py`): 40 splits of 1 to 500 examples and 2 to 30 classes with
//! absent classes, tied probabilities and region groups, plus logit-space fits over testbeds.
//!
//! Tolerance: 1e-12 everywhere. The counts behind accuracies, F1 and recall are integers, so
//! those values agree to the last bit or within the few ULPs of NumPy's pairwise summation of
//! the per-class terms; ECE sums float64 confidences (pairwise in NumPy, sequential here);
//! `np.polyfit` solves the least squares by SVD where Rust uses the centred closed form. Each
//! of those differences is a few ULPs of values below ~20, far below 1e-12.

use std::collections::BTreeMap;

use robustft::eval::metrics::{
    expected_calibration_error, f1_macro_present, group_accuracies, recall_macro_present, split_metrics,
    top1, top_k, worst_group_accuracy, LinearFit, MetricError, Predictions, SplitMetrics,
};
use serde::Deserialize;

const TOL: f64 = 1e-12;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
    fits: Vec<Fit>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    n_classes: usize,
    labels: Vec<usize>,
    probs: Vec<Vec<f32>>,
    groups: Option<Vec<String>>,
    expected: Expected,
}

#[derive(Deserialize)]
struct Expected {
    preds: Vec<usize>,
    accuracy: f64,
    top_k: Vec<(usize, f64)>,
    f1_macro: f64,
    recall_macro: f64,
    group_acc: Option<BTreeMap<String, (f64, usize)>>,
    worst_group_acc: Option<f64>,
    ece_15: f64,
    ece_4: f64,
}

#[derive(Deserialize)]
struct Fit {
    name: String,
    id_accs: Vec<f64>,
    ood_accs: Vec<f64>,
    slope: f64,
    intercept: f64,
    points: Vec<(f64, f64)>,
    effective_robustness: Vec<f64>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/metrics/cases.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn predictions(case: &Case) -> Predictions {
    Predictions::new(case.labels.clone(), case.probs.clone(), case.groups.clone())
        .unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

fn assert_close(case: &str, what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= TOL, "{case}: {what} = {got}, reference {want}");
}

fn has_tied_max(row: &[f32]) -> bool {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter().filter(|&&p| p == max).count() > 1
}

/// The fixture still holds the situations the parity tests are meant to exercise.
#[test]
fn fixture_covers_the_edge_cases() {
    let f = fixture();
    assert_eq!(f.cases.len(), 40);
    let sizes: Vec<usize> = f.cases.iter().map(|c| c.labels.len()).collect();
    assert_eq!((sizes.iter().min(), sizes.iter().max()), (Some(&1), Some(&500)));
    let classes: Vec<usize> = f.cases.iter().map(|c| c.n_classes).collect();
    assert_eq!((classes.iter().min(), classes.iter().max()), (Some(&2), Some(&30)));
    let absent = |c: &Case| (0..c.n_classes).any(|k| !c.labels.contains(&k));
    assert!(f.cases.iter().any(absent), "a class absent from the labels");
    let predicted_absent = |c: &Case| c.expected.preds.iter().any(|p| !c.labels.contains(p));
    assert!(f.cases.iter().any(predicted_absent), "a predicted class absent from the labels");
    assert!(f.cases.iter().flat_map(|c| &c.probs).any(|row| has_tied_max(row)), "a tie at the maximum");
    let group_sizes = f.cases.iter().flat_map(|c| c.expected.group_acc.iter().flatten());
    assert!(group_sizes.clone().any(|(_, &(_, n))| n == 1), "a group with one example");
    assert!(group_sizes.clone().any(|(g, _)| g == "Other"), "a group named Other");
    let only_other = |c: &Case| c.groups.is_some() && c.expected.worst_group_acc.is_none();
    assert!(f.cases.iter().any(only_other), "a grouped split with nothing but Other");
    assert!(f.cases.iter().any(|c| c.groups.is_none()), "an ungrouped split");
    let on_edge = |row: &Vec<f32>| [0.25f32, 0.5, 0.75].contains(&row.iter().copied().fold(0.0, f32::max));
    assert!(f.cases.iter().flat_map(|c| &c.probs).any(on_edge), "a confidence on a 4-bin edge");
    assert!(!f.fits.is_empty());
}

#[test]
fn preds_and_confidences_match_numpy() {
    for case in fixture().cases {
        let p = predictions(&case);
        // Python: np.argmax(probs, axis=1)  (ties -> lowest index)
        assert_eq!(p.preds(), case.expected.preds, "{}", case.name);
        // Python: probs.max(axis=1)
        let want: Vec<f32> = case.probs.iter().zip(&case.expected.preds).map(|(row, &k)| row[k]).collect();
        assert_eq!(p.confidences(), want, "{}", case.name);
    }
}

#[test]
fn top1_matches_accuracy_score() {
    for case in fixture().cases {
        let got = top1(&case.labels, &predictions(&case).preds());
        // Python: accuracy_score(labels, np.argmax(probs, axis=1))
        assert_close(&case.name, "top1", got, case.expected.accuracy);
    }
}

#[test]
fn top_k_matches_sklearn_tie_rule() {
    for case in fixture().cases {
        for &(k, want) in &case.expected.top_k {
            let got = top_k(&case.labels, &case.probs, k);
            // Python: top_k_accuracy_score(labels, probs, k=k, labels=np.arange(K))
            //         (K == 2: probs[:, 1] as the binary score)
            assert_close(&case.name, &format!("top_{k}"), got, want);
        }
    }
}

#[test]
fn macro_f1_and_recall_match_sklearn_on_present_classes() {
    for case in fixture().cases {
        let preds = predictions(&case).preds();
        let f1 = f1_macro_present(&case.labels, &preds);
        // Python: f1_score(labels, preds, average="macro", labels=np.unique(labels), zero_division=0)
        assert_close(&case.name, "f1_macro", f1, case.expected.f1_macro);
        let recall = recall_macro_present(&case.labels, &preds);
        // Python: recall_score(labels, preds, average="macro", labels=np.unique(labels), zero_division=0)
        assert_close(&case.name, "recall_macro", recall, case.expected.recall_macro);
    }
}

#[test]
fn group_accuracies_and_worst_group_match_numpy() {
    for case in fixture().cases.iter().filter(|c| c.groups.is_some()) {
        let (groups, preds) = (case.groups.as_ref().unwrap(), predictions(case).preds());
        let got = group_accuracies(&case.labels, &preds, groups);
        let want = case.expected.group_acc.as_ref().unwrap();
        // Python: {g: [accuracy_score(labels[groups == g], preds[groups == g]), (groups == g).sum()]}
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{}", case.name);
        for (g, (&(acc, n), &(want_acc, want_n))) in want.keys().zip(got.values().zip(want.values())) {
            assert_eq!(n, want_n, "{}: count of {g}", case.name);
            assert_close(&case.name, &format!("accuracy of {g}"), acc, want_acc);
        }
        let worst = worst_group_accuracy(&case.labels, &preds, groups, &["Other"]);
        // Python: min(acc for g, (acc, _) in group_acc.items() if g != "Other"), None if empty
        match (worst, case.expected.worst_group_acc) {
            (Some(got), Some(want)) => assert_close(&case.name, "worst group", got, want),
            (got, want) => assert_eq!(got, want, "{}: worst group", case.name),
        }
    }
}

#[test]
fn ece_matches_numpy_reference_with_15_and_4_bins() {
    for case in fixture().cases {
        let p = predictions(&case);
        let correct: Vec<bool> = case.labels.iter().zip(p.preds()).map(|(&y, q)| y == q).collect();
        for (bins, want) in [(15, case.expected.ece_15), (4, case.expected.ece_4)] {
            let got = expected_calibration_error(&p.confidences(), &correct, bins);
            // Python: ece(probs.max(axis=1), preds == labels, bins)  with bins (b/B, (b+1)/B],
            //         the first closed at 0 (scripts/fixtures/metrics.py)
            assert_close(&case.name, &format!("ece_{bins}"), got, want);
        }
    }
}

#[test]
fn split_metrics_gathers_every_reference() {
    for case in fixture().cases {
        let m = split_metrics(&predictions(&case), &["Other"]);
        let e = &case.expected;
        let top5 = e.top_k.iter().find(|(k, _)| *k == 5).unwrap().1;
        // Python: accuracy_score, top_k_accuracy_score(k=5), f1_score / recall_score (macro over
        //         np.unique(labels)), ece(.., 15) as in the tests above
        for (what, got, want) in [
            ("top1", m.top1, e.accuracy),
            ("top5", m.top5, top5),
            ("f1_macro", m.f1_macro, e.f1_macro),
            ("recall_macro", m.recall_macro, e.recall_macro),
            ("ece", m.ece, e.ece_15),
        ] {
            assert_close(&case.name, what, got, want);
        }
        assert_eq!(m.worst_group_acc.is_some(), e.worst_group_acc.is_some(), "{}", case.name);
        if let (Some(got), Some(want)) = (m.worst_group_acc, e.worst_group_acc) {
            assert_close(&case.name, "worst_group_acc", got, want);
        }
        assert_eq!(m.n, case.labels.len(), "{}", case.name);
    }
}

#[test]
fn linear_fit_and_effective_robustness_match_polyfit() {
    for fit in fixture().fits {
        let line =
            LinearFit::fit(&fit.id_accs, &fit.ood_accs).unwrap_or_else(|e| panic!("{}: {e}", fit.name));
        // Python: slope, intercept = np.polyfit(logit(clip(id)), logit(clip(ood)), 1)
        assert_close(&fit.name, "slope", line.slope, fit.slope);
        assert_close(&fit.name, "intercept", line.intercept, fit.intercept);
        for (&(id, ood), &want) in fit.points.iter().zip(&fit.effective_robustness) {
            // Python: ood - expit(slope * logit(clip(id)) + intercept)
            let got = line.effective_robustness(id, ood);
            assert_close(&fit.name, &format!("effective robustness at ({id}, {ood})"), got, want);
        }
    }
}

/// sklearn ranks tied scores by the higher class index first; the arg-max takes the lowest.
#[test]
fn top_k_ties_rank_the_higher_index_first() {
    let probs = vec![vec![0.4f32, 0.4, 0.2]; 2];
    let labels = [0, 1];
    // Python: top_k_accuracy_score([0, 1], probs, k=1, labels=[0, 1, 2]) == 0.5 (only label 1 hits)
    assert_eq!(top_k(&labels, &probs, 1), 0.5);
    let p = Predictions::new(labels.to_vec(), probs, None).unwrap();
    // Python: np.argmax(probs, axis=1) == [0, 0]
    assert_eq!(p.preds(), [0, 0]);
    // Python: accuracy_score([0, 1], [0, 0]) == 0.5, but now label 0 is the hit
    assert_eq!(top1(&labels, &p.preds()), 0.5);
    // Python: top_k_accuracy_score([0], [[0.4, 0.4, 0.2]], k=2, labels=[0, 1, 2]) == 1.0
    assert_eq!(top_k(&[0], &[vec![0.4, 0.4, 0.2]], 2), 1.0);
}

/// A predicted class absent from the labels adds no zero-F1 term (WILDS iWildCam).
#[test]
fn macro_scores_ignore_predicted_but_absent_classes() {
    let (labels, preds) = ([0, 0, 1, 1], [0, 2, 1, 1]);
    // Python: f1_score([0,0,1,1], [0,2,1,1], average="macro", labels=[0, 1]) == 5/6
    //         (0.5555… == 5/9 without `labels`)
    assert!((f1_macro_present(&labels, &preds) - 5.0 / 6.0).abs() <= TOL);
    // Python: recall_score([0,0,1,1], [0,2,1,1], average="macro", labels=[0, 1]) == 0.75
    assert_eq!(recall_macro_present(&labels, &preds), 0.75);
}

/// Bins are (lo, hi]: 0.5 falls in (0.25, 0.5], not with 0.6 in (0.5, 0.75].
#[test]
fn ece_puts_a_confidence_on_an_edge_in_the_lower_bin() {
    let got = expected_calibration_error(&[0.5, 0.6], &[true, false], 4);
    // Python: ece([0.5, np.float32(0.6)], [True, False], 4) == 0.5 * |1 - 0.5| + 0.5 * |0 - 0.6|
    let want = 0.5 * 0.5 + 0.5 * f64::from(0.6f32);
    assert!((got - want).abs() <= TOL, "{got} != {want} ([lo, hi) bins would give 0.05)");
    // Confidence 1 is in the last bin and 0 in the first: perfectly calibrated here.
    assert_eq!(expected_calibration_error(&[0.0, 1.0], &[false, true], 15), 0.0);
}

#[test]
fn predictions_new_rejects_bad_input_naming_the_index() {
    let row = || vec![0.5f32, 0.5];
    let err = Predictions::new(vec![], vec![], None).unwrap_err();
    assert!(matches!(err, MetricError::Empty { what: "labels" }), "{err}");
    let err = Predictions::new(vec![0, 1], vec![row()], None).unwrap_err();
    assert!(matches!(err, MetricError::LengthMismatch { left_len: 2, right_len: 1, .. }), "{err}");
    assert_eq!(err.to_string(), "length mismatch: labels has 2 elements but probs has 1");
    let err = Predictions::new(vec![0], vec![row()], Some(vec![])).unwrap_err();
    assert!(matches!(err, MetricError::LengthMismatch { right: "groups", right_len: 0, .. }), "{err}");
    let err = Predictions::new(vec![0, 0, 0], vec![row(), row(), vec![1.0]], None).unwrap_err();
    assert!(matches!(err, MetricError::RowWidth { row: 2, width: 1, expected: 2 }), "{err}");
    let err = Predictions::new(vec![0, 1], vec![row(), vec![f32::NAN, 1.0]], None).unwrap_err();
    assert!(matches!(err, MetricError::InvalidProbability { row: 1, column: 0, .. }), "{err}");
    let err = Predictions::new(vec![0, 1], vec![row(), vec![0.5, 0.4]], None).unwrap_err();
    assert!(matches!(err, MetricError::NotNormalised { row: 1, .. }), "{err}");
    let err = Predictions::new(vec![0, 2], vec![row(), row()], None).unwrap_err();
    assert!(matches!(err, MetricError::LabelOutOfRange { index: 1, label: 2, classes: 2 }), "{err}");
    assert!(Predictions::new(vec![1], vec![row()], Some(vec!["Asia".into()])).is_ok());
}

#[test]
fn linear_fit_rejects_degenerate_testbeds() {
    let err = LinearFit::fit(&[0.5], &[0.4]).unwrap_err();
    assert!(matches!(err, MetricError::TooFewPoints { points: 1, distinct: 1 }), "{err}");
    // 1 and 1 - 1e-9 clamp to the same 1 - 1e-6.
    let err = LinearFit::fit(&[1.0, 1.0 - 1e-9], &[0.4, 0.5]).unwrap_err();
    assert!(matches!(err, MetricError::TooFewPoints { points: 2, distinct: 1 }), "{err}");
    let err = LinearFit::fit(&[0.5, 0.6], &[0.4]).unwrap_err();
    assert!(matches!(err, MetricError::LengthMismatch { left_len: 2, right_len: 1, .. }), "{err}");
    let err = LinearFit::fit(&[0.5, 75.9], &[0.4, 0.5]).unwrap_err();
    assert!(matches!(err, MetricError::AccuracyOutOfRange { what: "id_accs", index: 1, .. }), "{err}");
}

#[test]
fn split_metrics_serialise_with_explicit_names() {
    let m = SplitMetrics {
        top1: 0.5,
        top5: 1.0,
        f1_macro: 0.25,
        recall_macro: 0.5,
        worst_group_acc: None,
        ece: 0.125,
        n: 4,
    };
    let value = serde_json::to_value(&m).unwrap();
    let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    let mut want = ["top1", "top5", "f1_macro", "recall_macro", "worst_group_acc", "ece", "n"];
    want.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(value["worst_group_acc"], serde_json::Value::Null);
    assert_eq!(serde_json::from_value::<SplitMetrics>(value).unwrap(), m);
}
