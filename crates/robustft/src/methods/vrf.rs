//! VRF, Variance Reduction Fine-tuning (Zhu, Cui, Zhang; NeurIPS 2024; methods.md §3.4;
//! checked against the behaviour of BeierZhu/VRF `src/knn_distance.py`, `src/main.py` and
//! `src/models/calibration.py`): an output-space ensemble of the zero-shot and the fine-tuned
//! model whose weight is chosen per sample.
//!
//! 1. **Zero-shot failures (ZSF).** On the training split, the examples the fine-tuned model
//!    classifies correctly and the zero-shot model does not; their L2-normalised *fine-tuned*
//!    image features form the ZSF set.
//! 2. `k = round(|ZSF| / |train| · 1000)` (Python's `round`: half to even), at least 1.
//! 3. For a test image, `d(x)` = the **squared** L2 distance from its normalised fine-tuned
//!    feature to its k-th nearest ZSF feature (exact brute force, as faiss `IndexFlatL2`).
//! 4. `w(x) = σ(−(d(x) − a)/b)`, defaults `a = 1.5`, `b = 0.6` (the released ImageNet
//!    ViT-B/16 values).
//! 5. Each model's logits are divided by a temperature `T` such that the mean max-softmax
//!    confidence matches that model's accuracy (tolerance 1e-3).
//! 6. `p(x) = w · softmax(z_ft/T_ft) + (1 − w) · softmax(z_zs/T_zs)`, a split's logit projection
//!    (ImageNet-R/-A subsets, ObjectNet max-pooling) applied before each softmax.
//!
//! The zero-shot side is the pre-trained towers with the zero-shot head (§0.1); the fine-tuned
//! side is a head-based fine-tuning (FT, LP-FT, L2-SP) with its trained head.
//!
//! Differences from the released code, all deliberate:
//! * the temperatures are calibrated on the **ID validation split**, not on the evaluation
//!   set's own logits and accuracy (which leaks the test labels);
//! * the temperature search is bisection in `ln T` restricted to `[0.1, 10]` (the mean
//!   max-softmax confidence falls monotonically with `T`), stopping within 1e-3 of the
//!   accuracy; an accuracy the interval cannot reach gives the nearer end. The released search
//!   is a false-position rule that can leave the interval;
//! * `k` is capped at `|ZSF|` (for training sets smaller than 1000, `round(·1000)` can exceed
//!   it; faiss would then report missing neighbours at distance `f32::MAX`, weight 0);
//! * an empty ZSF set (e.g. WiSE-FT's α = 0, the pre-trained model itself) gives `w = 0`:
//!   the distance to a failure is infinite.
//!
//! A recipe chooses it with `eval.predictor = "vrf"` and `[vrf]` (`a`, `b`), over any method
//! that fine-tunes a head; every evaluated model (the trained one and each WiSE-FT point)
//! then predicts through VRF.
//!
//! **Memory per training example.** One flag (whether the zero-shot model gets it right): 1
//! byte, 1.3 MB for ImageNet's 1.28M images. The ZSF bank holds each failure's feature,
//! `d × 4` bytes on the model's device: 2 KB at d = 512 (ViT-B/16), 3 KB at d = 768
//! (ViT-L/14); at most the whole training set, 2.6 GB or 3.9 GB on ImageNet, held twice for a
//! moment while its chunks are concatenated. Evaluation adds `[batch, |ZSF|]` `f32` distances
//! per batch, and the temperature calibration the validation split's logits (`examples ×
//! classes × 4` bytes: 200 MB for 50,000 ImageNet images). Nothing is compressed: the bank
//! grows with the failures only, and the exact k-NN distance needs every one of them.

use candle_core::{DType, Tensor, D};

use super::registry::{Method, ModelPredictors, Outcome, PredictorContext, PredictorEntry, PredictorSpec};
use crate::clip::layers::{l2_normalize, softmax_last_dim};
use crate::clip::ClipModel;
use crate::data::LogitProjection;
use crate::error::{Error, Result};
use crate::eval::predictor::{mixture_log, project, Head, ImagePredictor, Predictor};
use crate::sections::Sections;
use crate::train::encode::for_each_encoded;
use crate::train::supervised::TrainSource;

/// Lower and upper end of the temperature search.
pub const TEMPERATURE_RANGE: (f64, f64) = (0.1, 10.0);

/// Largest allowed |mean confidence − accuracy| at the chosen temperature.
pub const CONFIDENCE_TOLERANCE: f64 = 1e-3;

/// Bisection steps before the search gives up and returns its last midpoint.
const MAX_BISECTIONS: usize = 200;

/// `k = max(1, round_half_even(failures / examples · 1000))`, capped at `failures`.
pub fn neighbour_count(failures: usize, examples: usize) -> usize {
    let ratio = failures as f64 / examples as f64;
    ((ratio * 1000.0).round_ties_even() as usize).max(1).min(failures.max(1))
}

/// Squared L2 distance from each row of `queries` `[n, d]` to its k-th nearest row of `bank`
/// `[m, d]` (k from 1; exact, brute force; `‖q‖² + ‖b‖² − 2⟨q, b⟩`, clamped at 0).
pub fn kth_neighbour_distances(queries: &Tensor, bank: &Tensor, k: usize) -> Result<Vec<f32>> {
    let m = bank.dim(0)?;
    if k == 0 || k > m {
        return Err(Error::Invalid {
            what: format!("the {k}-th nearest neighbour"),
            reason: format!("the bank holds {m} vectors"),
        });
    }
    let query_norms = queries.sqr()?.sum_keepdim(D::Minus1)?;
    let bank_norms = bank.sqr()?.sum_keepdim(D::Minus1)?.t()?;
    let distances = query_norms
        .broadcast_add(&bank_norms)?
        .sub(&(queries.matmul(&bank.t()?)? * 2.0)?)?
        .relu()?
        .to_vec2::<f32>()?;
    Ok(distances.into_iter().map(|mut row| *row.select_nth_unstable_by(k - 1, f32::total_cmp).1).collect())
}

/// `σ(−(d − a)/b)`: the weight of the fine-tuned model at squared distance `d`.
pub fn failure_weight(distance: f64, a: f64, b: f64) -> f64 {
    1.0 / (1.0 + ((distance - a) / b).exp())
}

/// Whether each row of `logits` (`[n, classes]`, row-major) ranks its label first (the first
/// maximum wins a tie, as `argmax`).
pub fn correct(logits: &[f32], classes: usize, labels: &[u32]) -> Vec<bool> {
    logits.chunks(classes).zip(labels).map(|(row, &label)| argmax(row) == label as usize).collect()
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (j, &z)| if z > row[best] { j } else { best })
}

/// The fraction of true entries.
pub fn accuracy(correct: &[bool]) -> f64 {
    correct.iter().filter(|&&c| c).count() as f64 / correct.len().max(1) as f64
}

/// Indices of the zero-shot failures: fine-tuned correct and zero-shot wrong.
pub fn zero_shot_failures(fine_tuned_correct: &[bool], zero_shot_correct: &[bool]) -> Vec<usize> {
    fine_tuned_correct
        .iter()
        .zip(zero_shot_correct)
        .enumerate()
        .filter(|(_, (&ft, &zs))| ft && !zs)
        .map(|(i, _)| i)
        .collect()
}

/// Mean over rows of the max-softmax probability of `logits / temperature`
/// (`1 / Σ_j exp((z_j − max z)/T)` per row), in f64.
pub fn mean_confidence(logits: &[f32], classes: usize, temperature: f64) -> f64 {
    let rows = logits.len() / classes;
    let total: f64 = logits
        .chunks(classes)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            1.0 / row.iter().map(|&z| ((z as f64 - max) / temperature).exp()).sum::<f64>()
        })
        .sum();
    total / rows as f64
}

/// The temperature in [`TEMPERATURE_RANGE`] whose mean confidence is within
/// [`CONFIDENCE_TOLERANCE`] of `accuracy`: bisection in `ln T` (confidence falls with `T`);
/// an accuracy above the confidence at `T = 0.1` gives 0.1, one below that at `T = 10` gives 10.
pub fn calibrate_temperature(logits: &[f32], classes: usize, accuracy: f64) -> f64 {
    let (low, high) = TEMPERATURE_RANGE;
    let confidence = |t: f64| mean_confidence(logits, classes, t);
    if confidence(low) <= accuracy {
        return low;
    }
    if confidence(high) >= accuracy {
        return high;
    }
    let (mut lo, mut hi) = (low.ln(), high.ln());
    let mut mid = 0.5 * (lo + hi);
    for _ in 0..MAX_BISECTIONS {
        mid = 0.5 * (lo + hi);
        let gap = confidence(mid.exp()) - accuracy;
        if gap.abs() <= CONFIDENCE_TOLERANCE {
            break;
        }
        if gap > 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    mid.exp()
}

/// `w · softmax(project(z_ft / T_ft)) + (1 − w) · softmax(project(z_zs / T_zs))` for logits
/// `[n, classes]` and weights `w` `[n]`.
pub fn mix_probabilities(
    fine_tuned_logits: &Tensor,
    zero_shot_logits: &Tensor,
    weights: &Tensor,
    temperatures: (f64, f64),
    projection: Option<&LogitProjection>,
) -> Result<Tensor> {
    let calibrated = |logits: &Tensor, t: f64| -> Result<Tensor> {
        Ok(softmax_last_dim(&project((logits / t)?, projection)?)?)
    };
    let w = weights.to_dtype(DType::F32)?.unsqueeze(1)?;
    let fine_tuned = calibrated(fine_tuned_logits, temperatures.0)?.broadcast_mul(&w)?;
    let zero_shot = calibrated(zero_shot_logits, temperatures.1)?.broadcast_mul(&w.affine(-1.0, 1.0)?)?;
    Ok((fine_tuned + zero_shot)?)
}

/// What VRF learns from the training and validation splits.
#[derive(Clone, Debug)]
pub struct VrfFit {
    /// `[|ZSF|, d]` unit fine-tuned features of the zero-shot failures (`None`: no failure).
    bank: Option<Tensor>,
    /// The neighbour whose distance counts.
    pub k: usize,
    /// `|ZSF|` and `|train|`.
    pub failures: usize,
    pub examples: usize,
    pub a: f64,
    pub b: f64,
    /// `(T_ft, T_zs)`.
    pub temperatures: (f64, f64),
}

impl VrfFit {
    /// From the unit fine-tuned features of the failures `[|ZSF|, d]` among `examples`
    /// training examples.
    pub fn new(bank: Tensor, examples: usize, temperatures: (f64, f64), a: f64, b: f64) -> Result<Self> {
        let failures = bank.dim(0)?;
        let k = neighbour_count(failures, examples);
        Ok(Self { bank: (failures > 0).then_some(bank), k, failures, examples, a, b, temperatures })
    }

    /// The fine-tuned model's weight for each row of `fine_tuned_features` `[n, d]`
    /// (unnormalised): `[n]` f64.
    pub fn weights(&self, fine_tuned_features: &Tensor) -> Result<Vec<f64>> {
        let Some(bank) = &self.bank else { return Ok(vec![0.0; fine_tuned_features.dim(0)?]) };
        let distances = kth_neighbour_distances(&l2_normalize(fine_tuned_features)?, bank, self.k)?;
        Ok(distances.iter().map(|&d| failure_weight(d as f64, self.a, self.b)).collect())
    }

    /// VRF's probabilities from the fine-tuned features (for the weights) and both models'
    /// logits.
    pub fn probabilities(
        &self,
        fine_tuned_features: &Tensor,
        fine_tuned_logits: &Tensor,
        zero_shot_logits: &Tensor,
        projection: Option<&LogitProjection>,
    ) -> Result<Tensor> {
        let weights = self.weights(fine_tuned_features)?;
        let weights = Tensor::from_vec(weights, fine_tuned_features.dim(0)?, fine_tuned_features.device())?;
        mix_probabilities(fine_tuned_logits, zero_shot_logits, &weights, self.temperatures, projection)
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        format!(
            "VRF: {} zero-shot failures among {} training examples, k = {}; T_ft = {:.3}, T_zs = {:.3}",
            self.failures, self.examples, self.k, self.temperatures.0, self.temperatures.1
        )
    }
}

/// The zero-shot side of VRF, shared by every fine-tuned model it is paired with: the
/// pre-trained model and its zero-shot head, which training examples it gets right, and its
/// temperature on ID validation.
pub struct ZeroShotSide {
    pub model: ClipModel,
    pub head: Head,
    /// Per training example (an unreadable one counts as wrong; no batch holds it).
    correct: Vec<bool>,
    pub temperature: f64,
}

impl ZeroShotSide {
    pub fn new(model: ClipModel, head: Head, train: &dyn TrainSource, val: &dyn TrainSource) -> Result<Self> {
        let mut correct_on_train = vec![false; train.len()];
        for_each_encoded(&model, train, &mut |kept, features| {
            for (&i, ok) in kept.iter().zip(labelled_correct(&head, features, train, kept)?) {
                correct_on_train[i] = ok;
            }
            Ok(())
        })?;
        let temperature = calibrated_temperature(&model, &head, val)?;
        Ok(Self { model, head, correct: correct_on_train, temperature })
    }
}

/// VRF over a fine-tuned model with a head: an [`ImagePredictor`].
pub struct Vrf<'a> {
    zero_shot: &'a ZeroShotSide,
    head: Head,
    pub fit: VrfFit,
}

impl<'a> Vrf<'a> {
    /// Finds the zero-shot failures of `model` + `head` on `train` and its temperature on `val`.
    pub fn fit(
        zero_shot: &'a ZeroShotSide,
        model: &ClipModel,
        head: Head,
        train: &dyn TrainSource,
        val: &dyn TrainSource,
        a: f64,
        b: f64,
    ) -> Result<Self> {
        let mut bank = Vec::new();
        for_each_encoded(model, train, &mut |kept, features| {
            let fine_tuned = labelled_correct(&head, features, train, kept)?;
            let zero_shot: Vec<bool> = kept.iter().map(|&i| zero_shot.correct[i]).collect();
            let rows: Vec<u32> =
                zero_shot_failures(&fine_tuned, &zero_shot).iter().map(|&r| r as u32).collect();
            if !rows.is_empty() {
                let rows = Tensor::new(rows, features.device())?;
                bank.push(l2_normalize(features)?.index_select(&rows, 0)?);
            }
            Ok(())
        })?;
        let dim = head.weight.dim(1)?;
        let bank = match bank.is_empty() {
            true => Tensor::zeros((0, dim), DType::F32, model.device())?,
            false => Tensor::cat(&bank, 0)?,
        };
        let temperatures = (calibrated_temperature(model, &head, val)?, zero_shot.temperature);
        let fit = VrfFit::new(bank, train.len(), temperatures, a, b)?;
        Ok(Self { zero_shot, head, fit })
    }
}

impl ImagePredictor for Vrf<'_> {
    fn image_probabilities(
        &self,
        model: &ClipModel,
        pixels: &Tensor,
        projection: Option<&LogitProjection>,
    ) -> Result<Tensor> {
        let fine_tuned = model.no_grad().encode_image(pixels)?;
        let zero_shot = self.zero_shot.model.no_grad().encode_image(pixels)?;
        let (z_ft, z_zs) = (self.head.logits(&fine_tuned)?, self.zero_shot.head.logits(&zero_shot)?);
        self.fit.probabilities(&fine_tuned, &z_ft, &z_zs, projection)
    }

    /// The log of the mixture; the weight `w(x)` enters as a constant (its k-NN distance is
    /// computed off the graph), so an attack differentiates through both models' logits only.
    fn image_log_probabilities(
        &self,
        model: &ClipModel,
        pixels: &Tensor,
        projection: Option<&LogitProjection>,
    ) -> Result<Tensor> {
        mixture_log(&self.image_probabilities(model, pixels, projection)?)
    }
}

/// The registry's entry: `eval.predictor = "vrf"`, with `[vrf]`.
pub const PREDICTOR: PredictorEntry = PredictorEntry { name: "vrf", sections: &[SECTION], read };

const SECTION: &str = "vrf";

/// What VRF needs the validation split for.
const VALIDATION_USER: &str = "VRF's temperature calibration";

/// `[vrf]`: the sample weight `w = σ(−(d − a)/b)` over the squared distance `d` to the k-th
/// nearest zero-shot failure (the defaults are the released ImageNet ViT-B/16 values).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VrfSection {
    pub a: f64,
    pub b: f64,
}

impl Default for VrfSection {
    fn default() -> Self {
        Self { a: 1.5, b: 0.6 }
    }
}

fn read(sections: &mut Sections, method: &dyn Method) -> std::result::Result<Box<dyn PredictorSpec>, String> {
    let section: VrfSection = sections.read(SECTION)?;
    if !(method.trains() && method.fine_tunes_a_head()) {
        return Err(format!(
            "eval.predictor = \"vrf\" needs a head-based fine-tuning method (ft, lp_ft, l2sp), not {}",
            method.name()
        ));
    }
    if !(section.a.is_finite() && section.b > 0.0 && section.b.is_finite()) {
        return Err(format!(
            "vrf.a must be finite and vrf.b positive (a = {}, b = {})",
            section.a, section.b
        ));
    }
    Ok(Box::new(section))
}

impl PredictorSpec for VrfSection {
    fn label(&self) -> Option<&'static str> {
        Some(PREDICTOR.name)
    }

    fn validation_user(&self) -> Option<&'static str> {
        Some(VALIDATION_USER)
    }

    fn inference_keys(&self) -> &'static [&'static str] {
        &["vrf.a", "vrf.b"]
    }

    fn prepare<'a>(
        &'a self,
        context: &PredictorContext<'a>,
        stage: &mut dyn FnMut(String),
    ) -> Result<Box<dyn ModelPredictors + 'a>> {
        stage("VRF: the zero-shot model on the training and validation splits".into());
        let model = context.model;
        let pretrained =
            ClipModel::from_tensors(model.config.clone(), context.pretrained.to_vec(), model.device())?;
        let val = context.val.ok_or_else(|| Error::Invalid {
            what: "eval.predictor = \"vrf\"".into(),
            reason: format!("{VALIDATION_USER} needs the validation split"),
        })?;
        let zero_shot = ZeroShotSide::new(pretrained, context.zero_shot.clone(), context.train, val)?;
        Ok(Box::new(VrfPredictors { zero_shot, train: context.train, val, section: self }))
    }
}

/// VRF's zero-shot side and the splits it fits each evaluated model on.
struct VrfPredictors<'a> {
    zero_shot: ZeroShotSide,
    train: &'a dyn TrainSource,
    val: &'a dyn TrainSource,
    section: &'a VrfSection,
}

impl ModelPredictors for VrfPredictors<'_> {
    fn predictor<'b>(
        &'b self,
        model: &ClipModel,
        outcome: &Outcome,
        own: Predictor,
        stage: &mut dyn FnMut(String),
    ) -> Result<Box<dyn ImagePredictor + 'b>> {
        let Outcome::Head(head) = outcome else { return Ok(Box::new(own)) };
        let (a, b) = (self.section.a, self.section.b);
        let vrf = Vrf::fit(&self.zero_shot, model, head.clone(), self.train, self.val, a, b)?;
        stage(vrf.fit.summary());
        Ok(Box::new(vrf))
    }
}

/// Whether `head` classifies the examples `kept` of `source` correctly from their `features`.
fn labelled_correct(
    head: &Head,
    features: &Tensor,
    source: &dyn TrainSource,
    kept: &[usize],
) -> Result<Vec<bool>> {
    let logits = head.logits(features)?;
    let labels: Vec<u32> = kept.iter().map(|&i| source.label(i)).collect();
    Ok(correct(&logits.flatten_all()?.to_vec1::<f32>()?, head.num_classes(), &labels))
}

/// The temperature of `model` + `head` calibrated on the split `val`.
fn calibrated_temperature(model: &ClipModel, head: &Head, val: &dyn TrainSource) -> Result<f64> {
    let (mut logits, mut labels) = (Vec::new(), Vec::new());
    for_each_encoded(model, val, &mut |kept, features| {
        logits.extend(head.logits(features)?.flatten_all()?.to_vec1::<f32>()?);
        labels.extend(kept.iter().map(|&i| val.label(i)));
        Ok(())
    })?;
    if labels.is_empty() {
        return Err(Error::Invalid {
            what: "VRF's temperature calibration".into(),
            reason: "no image of the validation split could be read".into(),
        });
    }
    let classes = head.num_classes();
    Ok(calibrate_temperature(&logits, classes, accuracy(&correct(&logits, classes, &labels))))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn the_weight_is_one_half_at_distance_a_and_falls_with_distance() {
        assert!((failure_weight(1.5, 1.5, 0.6) - 0.5).abs() < 1e-15);
        assert!(failure_weight(0.2, 1.5, 0.6) > 0.85 && failure_weight(3.0, 1.5, 0.6) < 0.1);
    }

    #[test]
    fn no_failures_give_the_zero_shot_model_everything() {
        let fit =
            VrfFit::new(Tensor::zeros((0, 2), DType::F32, &Device::Cpu).unwrap(), 10, (1.0, 1.0), 1.5, 0.6)
                .unwrap();
        let features = Tensor::new(&[[1.0f32, 0.0], [0.0, 2.0]], &Device::Cpu).unwrap();
        assert_eq!(fit.weights(&features).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn an_unreachable_accuracy_gives_the_nearer_end_of_the_range() {
        let logits = [3.0f32, 0.0, 0.0, 0.0, 2.5, 0.0];
        assert_eq!(calibrate_temperature(&logits, 3, 1.0), TEMPERATURE_RANGE.0);
        assert_eq!(calibrate_temperature(&logits, 3, 0.0), TEMPERATURE_RANGE.1);
    }

    #[test]
    fn a_neighbour_beyond_the_bank_is_refused() {
        let bank = Tensor::new(&[[1.0f32, 0.0]], &Device::Cpu).unwrap();
        assert!(kth_neighbour_distances(&bank, &bank, 2).is_err());
    }
}
