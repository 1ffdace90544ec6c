//! Parity of VRF, m²-mix and function-space regularisation with NumPy / PyTorch on fixed tiny
//! inputs (fixture `fixtures/methods_extra/cases.json` by `scripts/fixtures/methods_extra.py`;
//! methods.md §3.4, §3.1, §3.3): VRF's k-th-neighbour squared distances, neighbour count,
//! temperature search, zero-shot-failure set and per-sample mixture; m²-mix's loss and its
//! gradients w.r.t. the embeddings and the logit scale; the two function-space terms (KL and
//! L2) and their gradients.
//!
//! The references are float64 computations on the float32 inputs; robustft computes in
//! float32 (bounds 1e-5 for distances and for m²-mix, whose logits reach 100, 1e-6 elsewhere)
//! except the confidences and temperatures (float64, 1e-9). Measured maxima are noted beside
//! each bound.

use candle_core::{Device, Tensor};
use robustft::data::LogitProjection;
use robustft::methods::fsr::{function_space_penalty, FsrDistance};
use robustft::methods::m2mix::{m2mix_loss, NegativeScale, TauUse};
use robustft::methods::vrf::{
    accuracy, calibrate_temperature, correct, kth_neighbour_distances, mean_confidence, neighbour_count,
    zero_shot_failures, VrfFit, CONFIDENCE_TOLERANCE,
};
use serde::Deserialize;

#[path = "support/nested.rs"]
mod nested;
use nested::{max_diff, scalar, Nested};

#[derive(Deserialize)]
struct Fixture {
    vrf_knn: Vec<KnnCase>,
    vrf_neighbour_count: Vec<CountCase>,
    vrf_temperature: Vec<TemperatureCase>,
    vrf_failures: FailuresCase,
    vrf_fit: Vec<FitCase>,
    m2mix: Vec<M2mixCase>,
    fsr: Vec<FsrCase>,
}

#[derive(Deserialize)]
struct M2mixCase {
    name: String,
    image_features: Nested,
    text_features: Nested,
    logit_scale: Nested,
    lambda: f64,
    tau: f64,
    tau_use: TauUse,
    loss: f64,
    grad_image: Nested,
    grad_text: Nested,
    grad_logit_scale: f64,
}

#[derive(Deserialize)]
struct FsrCase {
    name: String,
    distance: FsrDistance,
    lambda1: f64,
    lambda2: f64,
    view: Nested,
    teacher: Nested,
    clean: Nested,
    penalty: f64,
    grad_view: Nested,
    grad_clean: Nested,
}

#[derive(Deserialize)]
struct KnnCase {
    name: String,
    queries: Nested,
    bank: Nested,
    k: usize,
    expected: Nested,
}

#[derive(Deserialize)]
struct CountCase {
    failures: usize,
    examples: usize,
    expected: usize,
}

#[derive(Deserialize)]
struct TemperatureCase {
    name: String,
    logits: Nested,
    labels: Vec<u32>,
    accuracy: f64,
    temperature: f64,
}

#[derive(Deserialize)]
struct FailuresCase {
    labels: Vec<u32>,
    fine_tuned_logits: Nested,
    zero_shot_logits: Nested,
    fine_tuned_correct: Vec<bool>,
    zero_shot_correct: Vec<bool>,
    failures: Vec<usize>,
}

#[derive(Deserialize)]
struct FitCase {
    name: String,
    bank: Nested,
    examples: usize,
    k: usize,
    temperatures: (f64, f64),
    a: f64,
    b: f64,
    subset: Option<Vec<usize>>,
    features: Nested,
    fine_tuned_logits: Nested,
    zero_shot_logits: Nested,
    weights: Nested,
    probabilities: Nested,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/methods_extra/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture readable")).expect("fixture parses")
}

#[test]
fn vrf_kth_neighbour_distances_match_brute_force_numpy() {
    for case in fixture().vrf_knn {
        let got = kth_neighbour_distances(&case.queries.tensor(), &case.bank.tensor(), case.k).unwrap();
        let got = Tensor::new(got, &Device::Cpu).unwrap();
        // Python: d = ((q[:, None] - b[None]) ** 2).sum(-1); np.sort(d, axis=1)[:, k - 1]  (float64)
        let err = max_diff(&got, &case.expected);
        // measured: 2.4e-7 (distances up to 4)
        assert!(err < 1e-5, "{}: max-abs error {err:e}", case.name);
    }
}

#[test]
fn vrf_neighbour_count_rounds_half_to_even_and_is_capped() {
    for case in fixture().vrf_neighbour_count {
        // Python: min(max(1, round(failures / examples * 1000)), max(failures, 1))
        assert_eq!(
            neighbour_count(case.failures, case.examples),
            case.expected,
            "{} failures among {}",
            case.failures,
            case.examples
        );
    }
}

#[test]
fn vrf_temperature_matches_the_numpy_bisection() {
    for case in fixture().vrf_temperature {
        let logits = case.logits.f32s();
        let classes = case.logits.shape()[1];
        let got_accuracy = accuracy(&correct(&logits, classes, &case.labels));
        // Python: accuracy = np.mean(np.argmax(logits, 1) == labels)
        assert_eq!(got_accuracy, case.accuracy, "{}", case.name);
        let t = calibrate_temperature(&logits, classes, got_accuracy);
        // Python: bisection on ln T in [ln 0.1, ln 10] until |mean(1 / sum(exp((z - max z) / T)))
        //   - accuracy| <= 1e-3 (the same float64 steps)
        let t_err = (t - case.temperature).abs();
        // measured: 4.4e-16 (the same float64 steps)
        assert!(t_err < 1e-9, "{}: T {t} vs {}", case.name, case.temperature);
        let gap = (mean_confidence(&logits, classes, t) - case.accuracy).abs();
        assert!(gap <= CONFIDENCE_TOLERANCE, "{}: confidence gap {gap}", case.name);
    }
}

#[test]
fn vrf_failures_are_fine_tuned_right_and_zero_shot_wrong() {
    let case = fixture().vrf_failures;
    let classes = case.fine_tuned_logits.shape()[1];
    let ft = correct(&case.fine_tuned_logits.f32s(), classes, &case.labels);
    let zs = correct(&case.zero_shot_logits.f32s(), classes, &case.labels);
    // Python: ft_correct = np.argmax(ft, 1) == labels (row 0 is a tie, first maximum wins);
    //   failures = np.nonzero(ft_correct & ~zs_correct)[0]
    assert_eq!(ft, case.fine_tuned_correct);
    assert_eq!(zs, case.zero_shot_correct);
    assert_eq!(zero_shot_failures(&ft, &zs), case.failures);
}

#[test]
fn vrf_weights_and_probabilities_match_numpy() {
    for case in fixture().vrf_fit {
        let fit = VrfFit::new(case.bank.tensor(), case.examples, case.temperatures, case.a, case.b).unwrap();
        assert_eq!(fit.k, case.k, "{}", case.name);
        let features = case.features.tensor();
        let weights = Tensor::new(fit.weights(&features).unwrap(), &Device::Cpu).unwrap();
        // Python: u = f / norm(f, axis=1); d = k-th smallest ((u[:, None] - bank[None]) ** 2).sum(-1)
        //   w = 1 / (1 + exp((d - a) / b))
        let weight_err = max_diff(&weights, &case.weights);
        // measured: 3.8e-8
        assert!(weight_err < 1e-6, "{}: weight error {weight_err:e}", case.name);
        let projection = case.subset.clone().map(LogitProjection::Subset);
        let p = fit
            .probabilities(
                &features,
                &case.fine_tuned_logits.tensor(),
                &case.zero_shot_logits.tensor(),
                projection.as_ref(),
            )
            .unwrap();
        // Python: p = w[:, None] * softmax(project(z_ft / T_ft)) + (1 - w[:, None]) * softmax(project(z_zs / T_zs))
        let err = max_diff(&p, &case.probabilities);
        // measured: 8.4e-8
        assert!(err < 1e-6, "{}: probability error {err:e}", case.name);
    }
}

#[test]
fn m2mix_loss_and_gradients_match_pytorch() {
    let cases = fixture().m2mix;
    assert!(
        cases.iter().any(|c| c.tau_use == TauUse::Divide)
            && cases.iter().any(|c| c.tau_use == TauUse::Multiply)
    );
    for case in cases {
        let (image, text, scale) =
            (case.image_features.var(), case.text_features.var(), case.logit_scale.var());
        let negatives = NegativeScale { tau: case.tau, tau_use: case.tau_use };
        let loss = m2mix_loss(image.as_tensor(), text.as_tensor(), scale.as_tensor(), case.lambda, negatives)
            .unwrap();
        let grads = loss.backward().unwrap();
        // Python: i, t = F.normalize(I), F.normalize(T); c = (i * t).sum(1).clamp(-1 + 1e-6, 1 - 1e-6)
        //   th = acos(c); m = (sin(lam th) i + sin((1 - lam) th) t) / sin(th); g = c / tau | tau c
        //   img = exp(s) i t^T * eye + g(i m^T) * (1 - eye); txt = exp(s) t i^T * eye + g(t m^T) * (1 - eye)
        //   loss = (F.cross_entropy(img, arange) + F.cross_entropy(txt, arange)) / 2; loss.backward()
        let errors = [
            ("loss", (scalar(&loss) - case.loss).abs()),
            ("d/dI", max_diff(grads.get(image.as_tensor()).unwrap(), &case.grad_image)),
            ("d/dT", max_diff(grads.get(text.as_tensor()).unwrap(), &case.grad_text)),
            ("d/ds", (scalar(grads.get(scale.as_tensor()).unwrap()) - case.grad_logit_scale).abs()),
        ];
        for (what, err) in errors {
            // measured: 2.5e-6 (losses up to 22, logits up to 100)
            assert!(err < 1e-5, "{}: {what} error {err:e}", case.name);
        }
    }
}

#[test]
fn function_space_terms_and_gradients_match_pytorch() {
    for case in fixture().fsr {
        let (view, clean) = (case.view.var(), case.clean.var());
        let teacher = case.teacher.tensor();
        let teacher = (case.lambda1 > 0.0).then_some(&teacher);
        let penalty = function_space_penalty(
            view.as_tensor(),
            teacher,
            clean.as_tensor(),
            (case.lambda1, case.lambda2),
            case.distance,
        )
        .unwrap();
        let grads = penalty.backward().unwrap();
        // Python: d = F.kl_div(log_softmax(v), log_softmax(target), log_target=True, reduction="batchmean")
        //   (kl) | ((normalize(v) - normalize(target)) ** 2).sum(-1).mean() (l2)
        //   penalty = lambda1 * d(v, teacher) + lambda2 * d(v, clean.detach()); penalty.backward()
        let penalty_err = (scalar(&penalty) - case.penalty).abs();
        let view_err = max_diff(grads.get(view.as_tensor()).unwrap(), &case.grad_view);
        // measured: penalty 1.9e-7, gradient 1.7e-8
        assert!(penalty_err < 1e-6, "{}: penalty error {penalty_err:e}", case.name);
        assert!(view_err < 1e-6, "{}: d/dview error {view_err:e}", case.name);
        // the clean outputs are a stop-gradient target: no gradient reaches them
        assert!(case.grad_clean.values().iter().all(|&g| g == 0.0), "{}: reference", case.name);
        assert!(
            grads.get(clean.as_tensor()).is_none(),
            "{}: a gradient reached the clean outputs",
            case.name
        );
    }
}
