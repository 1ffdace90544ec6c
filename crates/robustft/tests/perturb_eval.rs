//! The perturbation study's evaluation path on the bundled model: the attacked predictor's
//! input gradient (through the CLIP normalisation, the fused image tower and the head or DRM's
//! mixture) agrees with finite differences; logit projections are differentiable and equal to
//! their row-wise definition; PGD raises the loss and ε = 0 leaves images untouched; a
//! perturbation's randomness depends on the example, not the batch; bad settings are refused.

use candle_core::{Device, Tensor};
use robustft::clip::preprocess::ClipPreprocess;
use robustft::clip::ClipModel;
use robustft::data::LogitProjection;
use robustft::eval::predictor::{project, Head, ImagePredictor, Predictor};
use robustft::perturb::pgd::{Norm, Pgd};
use robustft::perturb::threat::{Perturbation, Threat};
use robustft::perturb::{probe, AttackLoss, PixelClassifier, PixelSpace};
use robustft::rng::SplitMix64;
use robustft::shiftworld::{concept_descriptions, CLASSES};

/// A predictor of the bundled model as a classifier of pixels.
struct Attacked<'a> {
    model: &'a ClipModel,
    predictor: &'a dyn ImagePredictor,
    space: PixelSpace,
}

impl PixelClassifier for Attacked<'_> {
    fn logits(&self, pixels: &Tensor) -> robustft::Result<Tensor> {
        self.predictor.image_log_probabilities(self.model, &self.space.normalise(pixels)?, None)
    }
}

fn bundled() -> ClipModel {
    ClipModel::load("bundled", &Device::Cpu).unwrap().0
}

fn prompts() -> Vec<Vec<String>> {
    CLASSES.iter().map(|c| vec![format!("a photo of a {c}.")]).collect()
}

/// `n` images of the model's size with pixels uniform in [0.2, 0.8].
fn images(model: &ClipModel, n: usize, seed: u64) -> Tensor {
    let s = model.config.vision.image_size;
    let mut rng = SplitMix64::new(seed);
    let values: Vec<f32> = (0..n * 3 * s * s).map(|_| 0.2 + 0.6 * rng.uniform() as f32).collect();
    Tensor::from_vec(values, (n, 3, s, s), &Device::Cpu).unwrap()
}

fn space(model: &ClipModel) -> PixelSpace {
    PixelSpace::of(&ClipPreprocess::openai(model.config.vision.image_size))
}

/// `⟨∇L, v⟩` against `(L(x + hv) − L(x − hv)) / 2h` for a random direction `v`.
fn gradient_matches_finite_differences(classifier: &dyn PixelClassifier, x: &Tensor, labels: &Tensor) {
    let mut rng = SplitMix64::new(9);
    let v: Vec<f32> = (0..x.elem_count()).map(|_| rng.normal()).collect();
    let v = Tensor::from_vec(v, x.dims(), &Device::Cpu).unwrap();
    let loss = |x: &Tensor| -> f64 {
        let losses = probe(classifier, x, labels, AttackLoss::CrossEntropy).unwrap().losses;
        losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64
    };
    let gradient = probe(classifier, x, labels, AttackLoss::CrossEntropy).unwrap().gradient;
    let analytic = (gradient * &v).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let h = 1e-2;
    let plus = (x + (&v * h).unwrap()).unwrap();
    let minus = (x - (&v * h).unwrap()).unwrap();
    let numeric = (loss(&plus) - loss(&minus)) / (2.0 * h);
    // f32 forward passes: central differences at h = 1e-2 agree to about 1e-3 relative.
    let scale = analytic.abs().max(numeric.abs()).max(1e-3);
    assert!((analytic - numeric).abs() / scale < 2e-2, "analytic {analytic} vs numeric {numeric}");
}

#[test]
fn the_attacked_head_and_drm_mixture_have_the_input_gradient_of_their_loss() {
    let model = bundled();
    let (x, labels) = (images(&model, 4, 1), Tensor::new(&[0u32, 3, 5, 9], &Device::Cpu).unwrap());
    let head = Head::zero_shot(&model, &prompts()).unwrap();
    let single = Predictor::single(head.clone());
    gradient_matches_finite_differences(
        &Attacked { model: &model, predictor: &single, space: space(&model) },
        &x,
        &labels,
    );
    let cd = Head::zero_shot(&model, &concept_descriptions()).unwrap();
    let mixture = Predictor::mixture(head, cd, 0.5).unwrap();
    gradient_matches_finite_differences(
        &Attacked { model: &model, predictor: &mixture, space: space(&model) },
        &x,
        &labels,
    );
}

#[test]
fn log_probabilities_are_the_log_of_the_evaluated_probabilities() {
    let model = bundled();
    let x = space(&model).normalise(&images(&model, 3, 2)).unwrap();
    let head = Head::zero_shot(&model, &prompts()).unwrap();
    let cd = Head::zero_shot(&model, &concept_descriptions()).unwrap();
    for predictor in [Predictor::single(head.clone()), Predictor::mixture(head, cd, 0.25).unwrap()] {
        let p = predictor.image_probabilities(&model, &x, None).unwrap().to_vec2::<f32>().unwrap();
        let lp = predictor.image_log_probabilities(&model, &x, None).unwrap().to_vec2::<f32>().unwrap();
        for (p, lp) in p.iter().flatten().zip(lp.iter().flatten()) {
            assert!((p.max(1e-30).ln() - lp).abs() < 1e-4 * (1.0 + lp.abs()), "{p} {lp}");
        }
    }
}

#[test]
fn projections_equal_their_row_definition_and_pass_gradients_to_the_picked_columns() {
    let logits = Tensor::new(&[[0.5f32, 2.0, -1.0, 3.0], [1.0, 0.0, 4.0, -2.0]], &Device::Cpu).unwrap();
    let projections =
        [LogitProjection::Subset(vec![3, 0]), LogitProjection::MaxPool(vec![vec![0, 1], vec![2, 3], vec![]])];
    for projection in &projections {
        let projected = project(logits.clone(), Some(projection)).unwrap().to_vec2::<f32>().unwrap();
        for (row, got) in logits.to_vec2::<f32>().unwrap().iter().zip(&projected) {
            assert_eq!(*got, projection.apply(row));
        }
    }
    let var = candle_core::Var::from_tensor(&logits).unwrap();
    let pooled =
        project(var.as_tensor().clone(), Some(&LogitProjection::MaxPool(vec![vec![0, 1], vec![2, 3]])))
            .unwrap();
    let grads = pooled.sum_all().unwrap().backward().unwrap();
    let g = grads.get(var.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
    // torch: logits[:, [0,1]].max(1) + logits[:, [2,3]].max(1), summed -> ones at each argmax.
    assert_eq!(g, vec![vec![0.0, 1.0, 0.0, 1.0], vec![1.0, 0.0, 1.0, 0.0]]);
}

#[test]
fn pgd_raises_the_loss_and_a_zero_budget_changes_nothing() {
    let model = bundled();
    let head = Head::zero_shot(&model, &prompts()).unwrap();
    let predictor = Predictor::single(head);
    let classifier = Attacked { model: &model, predictor: &predictor, space: space(&model) };
    let (x, labels) = (images(&model, 6, 3), Tensor::new(&[0u32, 1, 2, 3, 4, 5], &Device::Cpu).unwrap());
    for norm in [Norm::Linf, Norm::L2, Norm::L1] {
        let eps = match norm {
            Norm::Linf => 4.0 / 255.0,
            Norm::L2 => 0.5,
            Norm::L1 => 8.0,
        };
        let mut trace = Vec::new();
        let adv = Pgd::new(norm, eps, 5).attack(&classifier, &x, &labels, None, Some(&mut trace)).unwrap();
        let after = probe(&classifier, &adv, &labels, AttackLoss::CrossEntropy).unwrap().losses;
        let after = after.iter().sum::<f32>() / after.len() as f32;
        assert!(after > trace[0] + 1e-3, "{norm:?}: loss {} -> {after}", trace[0]);
        let untouched = Pgd::new(norm, 0.0, 3).attack(&classifier, &x, &labels, None, None).unwrap();
        let same = (untouched - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(same, 0.0, "{norm:?}: ε = 0 moved the image");
    }
}

#[test]
fn a_perturbation_draws_per_example_so_batching_does_not_matter() {
    let model = bundled();
    let predictor = Predictor::single(Head::zero_shot(&model, &prompts()).unwrap());
    let classifier = Attacked { model: &model, predictor: &predictor, space: space(&model) };
    let (x, labels) = (images(&model, 3, 4), Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap());
    for threat in ["corruption:gaussian_noise", "linf"] {
        let eps = if threat == "linf" { 2.0 / 255.0 } else { 3.0 };
        let perturbation = Perturbation::new(Threat::parse(threat).unwrap(), eps, 2, 7).unwrap();
        let whole = perturbation.apply(&classifier, &x, &labels, &[10, 11, 12]).unwrap();
        let last = perturbation
            .apply(&classifier, &x.narrow(0, 2, 1).unwrap(), &labels.narrow(0, 2, 1).unwrap(), &[12])
            .unwrap();
        let a = whole.narrow(0, 2, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = last.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gap = a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(gap < 1e-6, "{threat}: example 12 differs alone and in a batch by {gap}");
        let other_key = perturbation
            .apply(&classifier, &x.narrow(0, 2, 1).unwrap(), &labels.narrow(0, 2, 1).unwrap(), &[13])
            .unwrap();
        assert_ne!(
            other_key.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b,
            "{threat}: the key must matter"
        );
    }
}

#[test]
fn bad_settings_are_refused_naming_the_value() {
    let linf = Threat::parse("linf").unwrap();
    assert!(Perturbation::new(linf, -0.1, 10, 0).unwrap_err().contains("-0.1"));
    assert!(Perturbation::new(linf, f64::NAN, 10, 0).is_err());
    assert!(Perturbation::new(linf, 0.1, 0, 0).unwrap_err().contains("steps"));
    let contrast = Threat::parse("corruption:contrast").unwrap();
    assert!(Perturbation::new(contrast, 6.0, 0, 0).unwrap_err().contains("severity"));
    assert!(Perturbation::new(contrast, 2.5, 0, 0).unwrap_err().contains("severity"));
    assert!(Threat::parse("rotate").unwrap_err().contains("unknown threat `rotate`"));
    assert!(Threat::parse("corruption:fog").unwrap_err().contains("fog"));
    assert_eq!(Threat::parse_list("corruptions,spatial").unwrap().len(), 10);
    assert!(robustft::perturb::parse_budget("x/255").unwrap_err().contains("not a number"));
    assert!(robustft::perturb::parse_budget("-2/255").unwrap_err().contains("negative"));
    assert!(robustft::perturb::parse_budget("1/0").unwrap_err().contains("zero"));
    assert_eq!(robustft::perturb::parse_budgets("0,1/255,0.5").unwrap(), vec![0.0, 1.0 / 255.0, 0.5]);
}

#[test]
fn without_a_random_start_pgd_ignores_the_seed_and_a_spec_sets_the_step() {
    let model = bundled();
    let predictor = Predictor::single(Head::zero_shot(&model, &prompts()).unwrap());
    let classifier = Attacked { model: &model, predictor: &predictor, space: space(&model) };
    let (x, labels) = (images(&model, 2, 5), Tensor::new(&[1u32, 2], &Device::Cpu).unwrap());
    let spec = |random_start: bool| robustft::eval::robustness::PerturbationSpec {
        threat: "linf".into(),
        eps: Some("4/255".into()),
        steps: 2,
        step_size: Some("1/255".into()),
        random_start,
        limit: None,
    };
    let attack = |random_start: bool, seed: u64| {
        let perturbation = spec(random_start).expand(seed).unwrap().remove(0);
        assert_eq!(perturbation.step_size, Some(1.0 / 255.0));
        let adv = perturbation.apply(&classifier, &x, &labels, &[0, 1]).unwrap();
        adv.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(attack(false, 1), attack(false, 2), "no random start: the seed must not matter");
    assert_ne!(attack(true, 1), attack(true, 2), "a random start depends on the seed");
    // Two ℓ∞ steps of 1/255 from the clean image move no pixel by more than 2/255.
    let moved = attack(false, 1)
        .iter()
        .zip(x.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved <= 2.0 / 255.0 + 1e-6 && moved > 0.0, "{moved}");
}
