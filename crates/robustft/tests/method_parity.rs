//! Parity of the fine-tuning methods' losses and updates with PyTorch, open_clip and NumPy on
//! fixed tiny batches (fixture `fixtures/methods/cases.json` by `scripts/fixtures/methods.py`;
//! methods.md §0.1, §0.2, §1b, §2.7): FLYP's contrastive loss and its gradients, DRM's core
//! distribution, WRM term and β-mixture, gradient clipping, L2-SP and the class-text averaging.
//!
//! The references are float64 computations on the float32 inputs, so each difference is the
//! float32 rounding of robustft's computation. Tolerances: 1e-5 for FLYP (logits up to
//! exp(s) = 100, a loss of 25), 1e-6 elsewhere; the class embeddings go through the tiny
//! open_clip text tower, whose raw features are first compared with open_clip's at 1e-4 (the
//! bound of `model_parity`). Measured maxima are noted beside each bound. The losses (FLYP,
//! WRM) run on the device `ROBUSTFT_TEST_DEVICE` names (`support/device.rs`), the rest on the CPU.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use robustft::clip::ClipModel;
use robustft::constraints::l2sp::add_l2sp;
use robustft::data::LogitProjection;
use robustft::eval::predictor::{Head, Predictor};
use robustft::losses::clip_contrastive_loss;
use robustft::methods::drm::{
    core_distribution, statistics_weights, wrm_loss, AffinityNorm, Statistics, Wrm,
};
use robustft::methods::ClassTexts;
use robustft::train::supervised::clip_gradients;
use robustft::zeroshot::tokenizer_for;
use serde::Deserialize;

#[path = "support/nested.rs"]
mod nested;
use nested::{max_diff, scalar, Nested};
#[path = "support/device.rs"]
mod device;
use device::{test_device, tolerance};

#[derive(Deserialize)]
struct Fixture {
    flyp: Vec<FlypCase>,
    core_distribution: Vec<CoreCase>,
    wrm: Vec<WrmCase>,
    mixture: Vec<MixtureCase>,
    clip_gradients: Vec<ClipCase>,
    l2sp: Vec<L2spCase>,
    class_texts: ClassTextsCase,
}

#[derive(Deserialize)]
struct FlypCase {
    name: String,
    image_features: Nested,
    text_features: Nested,
    logit_scale: Nested,
    loss: f64,
    grad_image: Nested,
    grad_text: Nested,
    grad_logit_scale: f64,
}

#[derive(Deserialize)]
struct CoreCase {
    name: String,
    affinities: Vec<Vec<f32>>,
    scale: f32,
    norm: AffinityNorm,
    /// The class statistics' examples (absent: all, as in cases.json).
    #[serde(default)]
    statistics: Option<Statistics>,
    #[serde(default)]
    labels: Option<Vec<u32>>,
    expected: Nested,
}

impl CoreCase {
    /// `p_c` of the case's affinities under its normalisation and statistics, `[n, classes]`.
    fn core_distribution(&self) -> Tensor {
        let (n, classes) = (self.affinities.len(), self.affinities[0].len());
        let labels = self.labels.clone().unwrap_or_else(|| vec![0; n]);
        let weights = statistics_weights(&labels, self.statistics.unwrap_or(Statistics::All));
        let flat: Vec<f32> = self.affinities.iter().flatten().copied().collect();
        let got = core_distribution(&flat, classes, self.scale, self.norm, &weights);
        Tensor::from_vec(got, (n, classes), &Device::Cpu).unwrap()
    }
}

#[derive(Deserialize)]
struct WrmCase {
    name: String,
    logits: Nested,
    core: Nested,
    labels: Vec<u32>,
    kind: Wrm,
    loss: f64,
    grad_logits: Nested,
}

#[derive(Deserialize)]
struct MixtureCase {
    name: String,
    features: Nested,
    df_weight: Nested,
    cd_weight: Nested,
    beta: f64,
    subset: Option<Vec<usize>>,
    max_pool: Option<Vec<Vec<usize>>>,
    expected: Nested,
}

#[derive(Deserialize)]
struct ClipCase {
    name: String,
    grads: BTreeMap<String, Nested>,
    shapes: BTreeMap<String, Vec<usize>>,
    max_norm: Option<f64>,
    norm: f64,
    clipped: BTreeMap<String, Nested>,
}

#[derive(Deserialize)]
struct L2spCase {
    name: String,
    lambda: f64,
    params: BTreeMap<String, L2spParam>,
}

#[derive(Deserialize)]
struct L2spParam {
    theta: Nested,
    theta0: Option<Nested>,
    base_grad: Option<Nested>,
    expected_grad: Nested,
}

#[derive(Deserialize)]
struct ClassTextsCase {
    texts: Vec<Vec<String>>,
    text_features_raw: Nested,
    expected: Nested,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/methods/cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture readable")).expect("fixture parses")
}

/// Gradients `grads[name]` for the variables `vars`: the backward pass of `Σ ⟨var, grad⟩`
/// (a variable without an entry gets no gradient).
fn gradient_store(vars: &[(String, Var, bool)], grads: &BTreeMap<&str, &Nested>) -> GradStore {
    let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    for (name, var, _) in vars {
        if let Some(grad) = grads.get(name.as_str()) {
            loss = (loss + (var.as_tensor() * grad.tensor()).unwrap().sum_all().unwrap()).unwrap();
        }
    }
    loss.backward().unwrap()
}

#[test]
fn flyp_loss_and_gradients_match_open_clip() {
    for case in fixture().flyp {
        let device = test_device();
        let (image, text, scale) = (
            case.image_features.var_on(&device),
            case.text_features.var_on(&device),
            case.logit_scale.var_on(&device),
        );
        let loss = clip_contrastive_loss(image.as_tensor(), text.as_tensor(), scale.as_tensor()).unwrap();
        let grads = loss.backward().unwrap();
        // Python: I, T, s float64 leaves; loss = open_clip.loss.ClipLoss()(F.normalize(I, dim=-1),
        //   F.normalize(T, dim=-1), s.exp()); loss.backward()  (diagonal targets, also in "shared_class")
        let errors = [
            ("loss", (scalar(&loss) - case.loss).abs()),
            ("d/dI", max_diff(grads.get(image.as_tensor()).unwrap(), &case.grad_image)),
            ("d/dT", max_diff(grads.get(text.as_tensor()).unwrap(), &case.grad_text)),
            ("d/ds", (scalar(grads.get(scale.as_tensor()).unwrap()) - case.grad_logit_scale).abs()),
        ];
        for (what, err) in errors {
            // measured: loss 1.3e-6 (scale_100: loss 25.2), gradients 2.4e-6 (d/ds of scale_100)
            assert!(err < tolerance(1e-5), "{}: {what} error {err:e}", case.name);
        }
    }
}

#[derive(Deserialize)]
struct AffinityFixture {
    cases: Vec<CoreCase>,
}

#[test]
fn drm_core_distribution_matches_numpy_for_the_max_min_normalisations() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/methods/drm_affinity.json");
    let fixture: AffinityFixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let norms: Vec<AffinityNorm> = fixture.cases.iter().map(|c| c.norm).collect();
    assert!([AffinityNorm::MinmaxImage, AffinityNorm::MinmaxClass].iter().all(|n| norms.contains(n)));
    for case in fixture.cases.into_iter().filter(|c| c.statistics.is_none()) {
        let got = case.core_distribution();
        // Python (scripts/fixtures/drm_affinity.py): p = softmax(scale * a, axis=1)
        //   minmax_image: (p - p.min(1)) / (p.max(1) - p.min(1)), rows renormalised
        //   minmax_class: (p - p.min(0)) / (p.max(0) - p.min(0)) (constant column: 0), rows
        //   renormalised (all-zero row: uniform); none/center/standardize as in cases.json
        let err = max_diff(&got, &case.expected);
        // measured: 2.9e-8 (float32 output of float64 arithmetic)
        assert!(err < 1e-6, "{}: max-abs error {err:e}", case.name);
    }
}

#[test]
fn drm_class_balanced_statistics_match_numpy() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/methods/drm_affinity.json");
    let fixture: AffinityFixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let balanced: Vec<CoreCase> =
        fixture.cases.into_iter().filter(|c| c.statistics == Some(Statistics::Balanced)).collect();
    let norms: Vec<AffinityNorm> = balanced.iter().map(|c| c.norm).collect();
    assert!([AffinityNorm::Center, AffinityNorm::Standardize].iter().all(|n| norms.contains(n)));
    for case in balanced {
        let got = case.core_distribution();
        // Python (scripts/fixtures/drm_affinity.py), a float64, y the labels:
        //   groups = [a[y == c] for c in np.unique(y)]
        //   mu = np.mean([g.mean(0) for g in groups], 0)
        //   sigma = np.sqrt(np.mean([((g - mu) ** 2).mean(0) for g in groups], 0))
        //   center: a - mu; standardize: (a - mu) / sigma * sigma.mean()
        //   expected = softmax(scale * a', axis=1)
        let err = max_diff(&got, &case.expected);
        // measured: 2.9e-8 (frequent_class_standardize_balanced); "all" statistics would be off by
        // 0.036 to 0.24 on these cases
        assert!(err < 1e-6, "{}: max-abs error {err:e}", case.name);
    }
}

#[test]
fn drm_core_distribution_matches_numpy_for_every_normalisation() {
    let fixture = fixture();
    let norms: Vec<AffinityNorm> = fixture.core_distribution.iter().map(|c| c.norm).collect();
    assert!([AffinityNorm::None, AffinityNorm::Center, AffinityNorm::Standardize]
        .iter()
        .all(|n| norms.contains(n)));
    for case in fixture.core_distribution {
        let got = case.core_distribution();
        // Python: a = affinities (float64); mu = a.mean(0); sigma = a.std(0, ddof=0)
        //   center: a - mu; standardize: (a - mu) / sigma * sigma.mean(); none: a
        //   expected = softmax(scale * a', axis=1)
        let err = max_diff(&got, &case.expected);
        // measured: 1.4e-8
        assert!(err < 1e-6, "{}: max-abs error {err:e}", case.name);
    }
}

#[test]
fn drm_wrm_loss_and_gradient_match_pytorch() {
    for case in fixture().wrm {
        let device = test_device();
        let logits = case.logits.var_on(&device);
        let labels = Tensor::new(case.labels.as_slice(), &device).unwrap();
        let loss = wrm_loss(logits.as_tensor(), &case.core.tensor_on(&device), &labels, case.kind).unwrap();
        let grads = loss.backward().unwrap();
        // Python: z float64 leaf; log_p = torch.log_softmax(z, -1)
        //   soft:       loss = -(p_c * log_p).sum(-1).mean()
        //   reweighted: w = p_c[arange(n), y]; w = w / w.mean()
        //               loss = (w * F.cross_entropy(z, y, reduction="none")).mean()
        //   loss.backward(); grad_logits = z.grad
        let loss_err = (scalar(&loss) - case.loss).abs();
        let grad_err = max_diff(grads.get(logits.as_tensor()).unwrap(), &case.grad_logits);
        // measured: loss 8.9e-8, gradient 2.7e-8
        assert!(loss_err < tolerance(1e-6), "{}: loss error {loss_err:e}", case.name);
        assert!(grad_err < tolerance(1e-6), "{}: gradient error {grad_err:e}", case.name);
    }
}

#[test]
fn drm_mixture_matches_numpy_with_and_without_a_projection() {
    for case in fixture().mixture {
        let head = |weight: &Nested| Head { weight: weight.tensor(), bias: None };
        let predictor = Predictor::mixture(head(&case.df_weight), head(&case.cd_weight), case.beta).unwrap();
        let projection = match (case.subset, case.max_pool) {
            (Some(indices), None) => Some(LogitProjection::Subset(indices)),
            (None, Some(groups)) => Some(LogitProjection::MaxPool(groups)),
            (None, None) => None,
            (Some(_), Some(_)) => panic!("{}: two projections", case.name),
        };
        let got = predictor.probabilities(&case.features.tensor(), projection.as_ref()).unwrap();
        // Python: f = features / np.linalg.norm(features, axis=1, keepdims=True)
        //   project = z[:, subset] | np.stack([z[:, g].max(1) for g in max_pool], 1) | z
        //   expected = beta * softmax(project(f @ df.T)) + (1 - beta) * softmax(project(f @ cd.T))
        let err = max_diff(&got, &case.expected);
        // measured: 1.4e-7
        assert!(err < 1e-6, "{}: max-abs error {err:e}", case.name);
    }
}

#[test]
fn gradient_clipping_matches_clip_grad_norm() {
    for case in fixture().clip_gradients {
        let params: Vec<(String, Var, bool)> = case
            .shapes
            .iter()
            .map(|(name, shape)| {
                (name.clone(), Var::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap(), true)
            })
            .collect();
        let given: BTreeMap<&str, &Nested> = case.grads.iter().map(|(name, g)| (name.as_str(), g)).collect();
        let mut grads = gradient_store(&params, &given);
        let norm = clip_gradients(&mut grads, &params, case.max_norm).unwrap();
        // Python: p.grad = grads[name] (float64; "no_grad" keeps None)
        //   norm = torch.nn.utils.clip_grad_norm_(params, max_norm or inf, foreach=False)
        //   clipped[name] = p.grad
        let norm_err = (norm - case.norm).abs();
        // measured: 1.1e-8 (norm 6.55)
        assert!(norm_err < 1e-6, "{}: norm error {norm_err:e}", case.name);
        for (name, var, _) in &params {
            match case.clipped.get(name) {
                Some(want) => {
                    let err = max_diff(grads.get(var.as_tensor()).unwrap(), want);
                    // measured: 1.5e-7
                    assert!(err < 1e-6, "{}: {name} error {err:e}", case.name);
                }
                None => assert!(grads.get(var.as_tensor()).is_none(), "{}: {name} got a gradient", case.name),
            }
        }
    }
}

#[test]
fn l2sp_adds_the_gradient_of_the_squared_distance_to_the_anchor() {
    for case in fixture().l2sp {
        let params: Vec<(String, Var, bool)> =
            case.params.iter().map(|(name, p)| (name.clone(), p.theta.var(), true)).collect();
        let base: BTreeMap<&str, &Nested> = case
            .params
            .iter()
            .filter_map(|(name, p)| p.base_grad.as_ref().map(|g| (name.as_str(), g)))
            .collect();
        let mut grads = gradient_store(&params, &base);
        let anchors: Vec<(String, Tensor)> = case
            .params
            .iter()
            .filter_map(|(name, p)| p.theta0.as_ref().map(|t| (name.clone(), t.tensor())))
            .collect();
        let anchor: HashMap<String, Tensor> = anchors.iter().cloned().collect();
        add_l2sp(&mut grads, &params, &anchor, case.lambda).unwrap();
        for (name, var, _) in &params {
            // Python: theta float64 leaves; loss = sum_p (theta_p * base_grad_p).sum()
            //   + lam / 2 * sum_{anchored p} ((theta_p - theta0_p) ** 2).sum(); loss.backward()
            let err = max_diff(grads.get(var.as_tensor()).unwrap(), &case.params[name].expected_grad);
            // measured: 4.8e-7, one float32 ULP of a gradient in [4, 8)
            assert!(err < 1e-6, "{}: {name} error {err:e}", case.name);
        }
    }
}

#[test]
fn class_texts_average_normalised_embeddings_per_class_as_numpy() {
    let case = fixture().class_texts;
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/clip_openclip"));
    let (model, _) = ClipModel::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
    let tokenizer = tokenizer_for(&model).unwrap();
    let flat: Vec<String> = case.texts.iter().flatten().cloned().collect();
    let ids = tokenizer.tokenize_batch(&flat, model.config.text.context_length).unwrap();
    let raw = model.no_grad().encode_text(&Tensor::new(ids, &Device::Cpu).unwrap()).unwrap();
    // Python: raw = open_clip.create_model("local-dir:fixtures/models/clip_openclip").encode_text(
    //   SimpleTokenizer(bpe_simple_vocab_1000.txt.gz)(flat))  (a stale fixture fails here)
    let raw_err = max_diff(&raw, &case.text_features_raw);
    // measured: 1.2e-6; 1e-4 is model_parity's bound
    assert!(raw_err < 1e-4, "text features max-abs error {raw_err:e}");
    let texts = ClassTexts::new(&model, &tokenizer, &case.texts).unwrap();
    for (how, got) in
        [("embed", texts.embed(&model).unwrap()), ("embed_frozen", texts.embed_frozen(&model).unwrap())]
    {
        // Python: u = raw / norm(raw, axis=1); w_k = mean(u[class k's rows]); w_k /= norm(w_k)
        let err = max_diff(&got, &case.expected);
        // measured: 1.1e-7
        assert!(err < 1e-6, "{how}: max-abs error {err:e}");
    }
}
