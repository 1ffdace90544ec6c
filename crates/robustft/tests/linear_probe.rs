//! The linear probe against scikit-learn's `LogisticRegression(solver="lbfgs")` (fixture
//! `fixtures/linear_probe/cases.json` by `scripts/fixtures/linear_probe.py`): four fits on
//! L2-normalised Gaussian blobs (3, 5, 4 and 2 classes; C = 1, 0.01, 100, 1) and a C sweep
//! over `np.logspace(-3, 3, 13)` scored on a validation split.
//!
//! Both solvers are run to `tol=1e-10`; both stop earlier on the relative decrease test
//! (64·ε), with gradient entries up to ~1e-8 (`grad_max_abs` in the fixture). The objective is
//! flat to second order around the minimiser, so the objectives agree to a few ULPs (measured:
//! ≤ 7e-15 relative; asserted: 1e-10, and at most 1e-13 above sklearn's), while a coefficient
//! can differ by up to `gradient / curvature`. The penalty's curvature `1/(Cn)` is 6.7e-5 for
//! C = 100 and n = 150 against 8e-3 for C = 1 and n = 120, hence a looser allowance for C = 100
//! (4.5e-4 against ~2e-6; measured: 2.7e-6 against ≤ 1.2e-7; see `coefficient_tolerance`).

use robustft::methods::linear_probe::{fit, select_c, LbfgsOptions, LogisticRegression, DEFAULT_C_GRID};
use robustft::Error;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    fits: Vec<FitCase>,
    select: SelectCase,
}

#[derive(Deserialize)]
struct FitCase {
    name: String,
    classes: usize,
    c: f64,
    features: Vec<f32>,
    labels: Vec<u32>,
    heldout: Vec<f32>,
    coef: Vec<f64>,
    intercept: Vec<f64>,
    objective: f64,
    grad_max_abs: f64,
    heldout_preds: Vec<usize>,
}

#[derive(Deserialize)]
struct SelectCase {
    classes: usize,
    grid: Vec<f64>,
    features: Vec<f32>,
    labels: Vec<u32>,
    val_features: Vec<f32>,
    val_labels: Vec<u32>,
    val_accs: Vec<f64>,
    best_c: f64,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/linear_probe/cases.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// The options the fixture gave sklearn: `tol=1e-10, max_iter=10000` (history 10 = scipy's).
fn tight() -> LbfgsOptions {
    LbfgsOptions { max_iter: 10_000, tol: 1e-10, history: 10 }
}

fn fit_case(case: &FitCase) -> LogisticRegression {
    let (model, report) = fit(&case.features, &case.labels, case.classes, case.c, &tight()).unwrap();
    assert!(report.converged, "{}: {report:?}", case.name);
    model
}

/// sklearn's parameters in our layout: for two classes its single row is `W₁ − W₀`, `b₁ − b₀`.
fn comparable(model: &LogisticRegression) -> (Vec<f64>, Vec<f64>) {
    let weight: Vec<f64> = model.weight.iter().map(|&w| w as f64).collect();
    let bias: Vec<f64> = model.bias.iter().map(|&b| b as f64).collect();
    if model.classes == 2 {
        let (w0, w1) = weight.split_at(model.dim);
        (w1.iter().zip(w0).map(|(a, b)| a - b).collect(), vec![bias[1] - bias[0]])
    } else {
        (weight, bias)
    }
}

/// `grad_max_abs · √(parameters) / (penalty curvature 1/(Cn))`, a bound on how far sklearn's
/// stopping point can sit from the exact minimiser, plus float32 rounding of the result. The
/// unpenalised intercepts get the same allowance: the data's curvature along them (the softmax
/// variance, ~0.1 here) is far above the penalty's.
fn coefficient_tolerance(case: &FitCase) -> f64 {
    let n = case.labels.len() as f64;
    let params = (case.coef.len() + case.intercept.len()) as f64;
    case.grad_max_abs * params.sqrt() * case.c * n + 1e-6
}

#[test]
fn objective_matches_sklearn_at_its_solution() {
    for case in fixture().fits {
        let (_, report) = fit(&case.features, &case.labels, case.classes, case.c, &tight()).unwrap();
        // Python: z = clf.decision_function(X)  ([0, z] for two classes)
        //         logsumexp(z, 1) - z[arange(n), y]).mean() + (clf.coef_**2).sum() / (2 * C * n)
        let rel = (report.objective - case.objective) / case.objective;
        assert!(
            rel.abs() <= 1e-10,
            "{}: {} vs sklearn {} ({rel:e})",
            case.name,
            report.objective,
            case.objective
        );
        assert!(rel <= 1e-13, "{}: {rel:e} above sklearn's objective", case.name);
        // Python: np.abs(LinearModelLoss(...).loss_gradient(w, X, y, l2_reg_strength=1 / (C * n))[1]).max()
        let stopped_as_close = report.grad_max_abs <= 10.0 * case.grad_max_abs;
        assert!(report.converged && stopped_as_close, "{}: {report:?}", case.name);
    }
}

#[test]
fn coefficients_match_sklearn() {
    for case in fixture().fits {
        let (weight, bias) = comparable(&fit_case(&case));
        let tol = coefficient_tolerance(&case);
        // Python: clf.coef_.ravel(), clf.intercept_
        for (what, got, want) in [("coef", &weight, &case.coef), ("intercept", &bias, &case.intercept)] {
            let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(worst <= tol, "{}: {what} differs by {worst:e} > {tol:e}", case.name);
        }
    }
}

#[test]
fn heldout_predictions_match_sklearn() {
    for case in fixture().fits {
        // Python: clf.predict(X_heldout)  (no point within 1e-3 relative of a tie)
        let got = fit_case(&case).predict(&case.heldout).unwrap();
        assert_eq!(got, case.heldout_preds, "{}", case.name);
    }
}

#[test]
fn select_c_picks_sklearns_best_c() {
    let s = fixture().select;
    // Python: np.logspace(-3, 3, 13)
    assert_eq!(s.grid, DEFAULT_C_GRID);
    let selection =
        select_c((&s.features, &s.labels), (&s.val_features, &s.val_labels), s.classes, &s.grid, &tight())
            .unwrap();
    // Python: [(LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(X, y).predict(Xv) == yv).mean()
    //          for c in grid]
    let accs: Vec<f64> = selection.sweep.iter().map(|&(_, acc)| acc).collect();
    let cs: Vec<f64> = selection.sweep.iter().map(|&(c, _)| c).collect();
    assert_eq!((cs, accs), (s.grid.clone(), s.val_accs.clone()));
    // Python: grid[np.argmax(val_accs)]  (the first, i.e. smallest, of three tied C values)
    assert_eq!(selection.c, s.best_c);
    let (refit, _) = fit(&s.features, &s.labels, s.classes, s.best_c, &tight()).unwrap();
    assert_eq!(selection.model, refit);
}

#[test]
fn select_c_breaks_ties_towards_the_smaller_c_in_any_grid_order() {
    let s = fixture().select;
    let reversed: Vec<f64> = s.grid.iter().rev().copied().collect();
    let selection =
        select_c((&s.features, &s.labels), (&s.val_features, &s.val_labels), s.classes, &reversed, &tight())
            .unwrap();
    assert_eq!(selection.c, s.best_c);
}

fn assert_invalid(result: Result<impl std::fmt::Debug, Error>, what: &str) {
    match result {
        Err(Error::Invalid { what: got, .. }) => assert_eq!(got, what),
        other => panic!("expected an invalid {what}, got {other:?}"),
    }
}

#[test]
fn bad_inputs_are_rejected() {
    let features = [0.6f32, 0.8, 1.0, 0.0, 0.0, 1.0];
    let labels = [0u32, 1, 2];
    let opts = LbfgsOptions::default();
    assert!(fit(&features, &labels, 3, 1.0, &opts).is_ok());
    assert_invalid(fit(&[], &[], 3, 1.0, &opts), "training data");
    assert_invalid(fit(&features[..5], &labels, 3, 1.0, &opts), "training data");
    assert_invalid(fit(&features, &[0, 1, 3], 3, 1.0, &opts), "training labels");
    assert_invalid(fit(&features, &[0, 1, 1], 3, 1.0, &opts), "training labels");
    assert_invalid(fit(&features, &[0, 0, 0], 1, 1.0, &opts), "classes");
    assert_invalid(fit(&[0.6, f32::NAN, 1.0, 0.0, 0.0, 1.0], &labels, 3, 1.0, &opts), "training features");
    assert_invalid(fit(&features, &labels, 3, 0.0, &opts), "C");
    assert_invalid(fit(&features, &labels, 3, f64::INFINITY, &opts), "C");
    let no_history = LbfgsOptions { history: 0, ..LbfgsOptions::default() };
    assert_invalid(fit(&features, &labels, 3, 1.0, &no_history), "L-BFGS options");
    let train = (&features[..], &labels[..]);
    assert_invalid(select_c(train, train, 3, &[], &opts), "C grid");
    assert_invalid(select_c(train, (&features[..3], &labels[..1]), 3, &[1.0], &opts), "features");
    assert_invalid(select_c(train, (&features[..], &[0, 1, 3]), 3, &[1.0], &opts), "evaluation labels");
    assert_invalid(select_c(train, (&features[..4], &labels[..]), 3, &[1.0], &opts), "evaluation labels");
}
