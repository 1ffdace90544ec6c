//! Function-space regularisation, after "Feed Two Birds with One Scone" (Yuan, Shu, Meng, Xu;
//! arXiv 2509.05328; methods.md §3.3). Only the abstract was available, so this is a
//! reconstruction with every unconfirmed choice an option; it is not the paper's exact recipe.
//!
//! `L = L_task + λ₁ · E d(f_θ(x̃), f_θ₀(x̃)) + λ₂ · E d(f_θ(x̃), sg f_θ(x))`
//!
//! * `x̃ = S(x)`, the simulated-OOD view ([`OodSimulator`]): in normalised pixel space, a
//!   per-image contrast change `μ + c·(x − μ)` (μ the image's per-channel mean,
//!   `c ~ U[contrast]`), Gaussian noise `σ·ε`, then with probability `erase_prob` one
//!   rectangle set to 0 (the dataset mean colour) of area `~ U[erase_area]` of the image and
//!   aspect ratio log-uniform in [0.3, 1/0.3] (torchvision's `RandomErasing` range). Every
//!   draw comes from a stream seeded by (seed, step, example index), so a resumed run and any
//!   batch composition see the same view of an example at a step. Defaults (this project's
//!   choice): σ = 0.2, contrast [0.5, 1.5], erase_prob 0.5, erase_area [0.02, 0.25].
//! * `f_θ₀` is the frozen pre-trained image tower (built from the pre-trained tensors, no
//!   graph); outputs pass through the **current** head, and the targets `f_θ₀(x̃)` and
//!   `f_θ(x)` are stop-gradient (`sg`), so the first term pulls the fine-tuned features
//!   toward the pre-trained ones on x̃ as the head reads them, and the second makes the
//!   prediction on x̃ follow the one on x.
//! * `d` ([`FsrDistance`]): `kl` (default) `Σ_k p_t log(p_t / p)` of the head's softmax
//!   outputs, target first, averaged over the batch; or `l2`: the squared L2 distance of the
//!   L2-normalised image features (head-independent).
//!
//! It wraps any [`HeadObjective`] (the CE objective of FT, LP-FT and L2-SP) without changing
//! it: the clean and simulated views go through the image tower in one call, the inner
//! objective's loss is computed from the clean features.

use candle_core::{Tensor, Var, D};
use rayon::prelude::*;

use super::ce::CrossEntropy;
use super::registry::{Context, TermEntry};
use crate::clip::layers::l2_normalize;
use crate::clip::ClipModel;
use crate::error::Result;
use crate::losses::log_softmax;
use crate::rng::SplitMix64;
use crate::sections::Sections;
use crate::train::supervised::{Objective, TrainBatch};

/// Aspect-ratio range of the erased rectangle.
const ERASE_RATIO: (f64, f64) = (0.3, 1.0 / 0.3);

/// The distance of function-space regularisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsrDistance {
    /// KL divergence of the head's softmax outputs.
    Kl,
    /// Squared L2 distance of the L2-normalised image features.
    L2,
}

/// The registry's entry of the term `[fsr]` (taken by FT, LP-FT and L2-SP).
pub const TERM: TermEntry = TermEntry { section: "fsr", refuse };

/// `[fsr]`: both strengths 0 turn the regulariser off.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsrSection {
    /// λ₁: distance between the fine-tuned and the pre-trained model on the simulated-OOD view.
    pub lambda1: f64,
    /// λ₂: distance between the model's outputs on the simulated-OOD view and on the clean one.
    pub lambda2: f64,
    pub distance: FsrDistance,
    /// Standard deviation of the Gaussian pixel noise (in normalised pixel units).
    pub noise_std: f64,
    /// Range of the per-image contrast factor.
    pub contrast: [f64; 2],
    /// Probability that an image gets an erased rectangle.
    pub erase_prob: f64,
    /// Range of the erased rectangle's area, as a fraction of the image.
    pub erase_area: [f64; 2],
}

impl Default for FsrSection {
    fn default() -> Self {
        Self {
            lambda1: 0.0,
            lambda2: 0.0,
            distance: FsrDistance::Kl,
            noise_std: 0.2,
            contrast: [0.5, 1.5],
            erase_prob: 0.5,
            erase_area: [0.02, 0.25],
        }
    }
}

impl FsrSection {
    /// Reads and checks `[fsr]` for a method that takes it: the regulariser, when it is on.
    pub fn read(sections: &mut Sections) -> std::result::Result<Option<Self>, String> {
        let section: Self = sections.read(TERM.section)?;
        section.check_strengths()?;
        if !section.enabled() {
            return Ok(None);
        }
        section.check_view()?;
        Ok(Some(section))
    }

    /// Whether the regulariser is on.
    fn enabled(&self) -> bool {
        self.lambda1 > 0.0 || self.lambda2 > 0.0
    }

    fn check_strengths(&self) -> std::result::Result<(), String> {
        let non_negative = |x: f64| x >= 0.0 && x.is_finite();
        if !non_negative(self.lambda1) || !non_negative(self.lambda2) {
            return Err(format!(
                "fsr.lambda1 and fsr.lambda2 must be ≥ 0 ({}, {})",
                self.lambda1, self.lambda2
            ));
        }
        Ok(())
    }

    fn check_view(&self) -> std::result::Result<(), String> {
        let [c0, c1] = self.contrast;
        let [e0, e1] = self.erase_area;
        if !(self.noise_std >= 0.0 && self.noise_std.is_finite()) {
            return Err(format!("fsr.noise_std = {} must be ≥ 0", self.noise_std));
        }
        if !(c0 > 0.0 && c0 <= c1 && c1.is_finite()) {
            return Err(format!("fsr.contrast = [{c0}, {c1}] must be an interval of positive factors"));
        }
        if !(0.0..=1.0).contains(&self.erase_prob) {
            return Err(format!("fsr.erase_prob = {} is outside [0, 1]", self.erase_prob));
        }
        if !(e0 > 0.0 && e0 <= e1 && e1 <= 1.0) {
            return Err(format!("fsr.erase_area = [{e0}, {e1}] must be an interval within (0, 1]"));
        }
        Ok(())
    }

    /// `objective` wrapped in the regulariser, toward the pre-trained model of `context`.
    pub fn wrap<O: HeadObjective + 'static>(
        &self,
        objective: O,
        context: &Context<'_>,
    ) -> Result<Box<dyn Objective>> {
        let model = context.model;
        let reference =
            ClipModel::from_tensors(model.config.clone(), context.pretrained.to_vec(), model.device())?;
        let simulator = OodSimulator {
            noise_std: self.noise_std,
            contrast: self.contrast,
            erase_prob: self.erase_prob,
            erase_area: self.erase_area,
            seed: context.seed,
        };
        Ok(Box::new(FunctionSpace {
            inner: objective,
            reference,
            simulator,
            lambda1: self.lambda1,
            lambda2: self.lambda2,
            distance: self.distance,
        }))
    }
}

/// `[fsr]` on a method that does not take it: an error when it turns the regulariser on.
fn refuse(sections: &Sections, method: &str) -> std::result::Result<(), String> {
    let section: FsrSection = sections.peek(TERM.section)?;
    section.check_strengths()?;
    match section.enabled() {
        true => Err(format!("fsr needs a cross-entropy method with a head (ft, lp_ft, l2sp), not {method}")),
        false => Ok(()),
    }
}

/// The simulated-OOD view `S(x)`: a deterministic, seeded pixel-space perturbation.
#[derive(Clone, Debug, PartialEq)]
pub struct OodSimulator {
    /// σ of the Gaussian noise, in normalised pixel units.
    pub noise_std: f64,
    /// Range of the contrast factor.
    pub contrast: [f64; 2],
    /// Probability of an erased rectangle.
    pub erase_prob: f64,
    /// Range of the erased area, as a fraction of the image.
    pub erase_area: [f64; 2],
    pub seed: u64,
}

/// The random draws of one image's view.
struct ViewDraws {
    contrast: f32,
    /// `[3, s, s]` standard normals.
    noise: Vec<f32>,
    /// `[s, s]`: 0 inside the erased rectangle, 1 elsewhere.
    keep: Vec<f32>,
}

impl OodSimulator {
    /// The simulated view of `images` `[n, 3, s, s]` (normalised pixels) of examples
    /// `indices` at optimiser step `step`.
    pub fn perturb(&self, images: &Tensor, indices: &[usize], step: u64) -> Result<Tensor> {
        let (n, _, size, _) = images.dims4()?;
        let draws: Vec<ViewDraws> = indices.par_iter().map(|&i| self.draw(step, i, size)).collect();
        let device = images.device();
        let contrast = Tensor::from_vec(draws.iter().map(|d| d.contrast).collect(), (n, 1, 1, 1), device)?;
        let noise = draws.iter().flat_map(|d| d.noise.iter().copied()).collect();
        let noise = Tensor::from_vec(noise, (n, 3, size, size), device)?;
        let keep = draws.iter().flat_map(|d| d.keep.iter().copied()).collect();
        let keep = Tensor::from_vec(keep, (n, 1, size, size), device)?;
        let mean = images.mean_keepdim(3)?.mean_keepdim(2)?;
        let contrasted = images.broadcast_sub(&mean)?.broadcast_mul(&contrast)?.broadcast_add(&mean)?;
        Ok((contrasted + (noise * self.noise_std)?)?.broadcast_mul(&keep)?)
    }

    /// The draws of example `index` at `step`, from their own stream.
    fn draw(&self, step: u64, index: usize, size: usize) -> ViewDraws {
        let mut rng = SplitMix64::new(
            self.seed
                ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (index as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
        );
        let uniform_in = |rng: &mut SplitMix64, [lo, hi]: [f64; 2]| lo + (hi - lo) * rng.uniform();
        let contrast = uniform_in(&mut rng, self.contrast) as f32;
        let noise = (0..3 * size * size).map(|_| rng.normal()).collect();
        let mut keep = vec![1f32; size * size];
        if rng.uniform() < self.erase_prob {
            let area = uniform_in(&mut rng, self.erase_area) * (size * size) as f64;
            let ratio = uniform_in(&mut rng, [ERASE_RATIO.0.ln(), ERASE_RATIO.1.ln()]).exp();
            let side = |x: f64| (x.sqrt().round() as usize).clamp(1, size);
            let (height, width) = (side(area * ratio), side(area / ratio));
            let top = (rng.uniform() * (size - height + 1) as f64) as usize;
            let left = (rng.uniform() * (size - width + 1) as f64) as usize;
            for row in top..top + height {
                keep[row * size + left..row * size + left + width].fill(0.0);
            }
        }
        ViewDraws { contrast, noise, keep }
    }
}

/// `d(student, sg target)` averaged over the batch: for [`FsrDistance::Kl`] the inputs are
/// logits `[n, classes]` and `d = Σ_k p_t (log p_t − log p)`; for [`FsrDistance::L2`] they are
/// image features `[n, d]` and `d = ‖normalize(student) − normalize(target)‖²`.
pub fn output_distance(student: &Tensor, target: &Tensor, distance: FsrDistance) -> Result<Tensor> {
    let target = target.detach();
    Ok(match distance {
        FsrDistance::Kl => {
            let log_target = log_softmax(&target)?;
            let gap = (&log_target - log_softmax(student)?)?;
            (log_target.exp()? * gap)?.sum(D::Minus1)?.mean_all()?
        }
        FsrDistance::L2 => {
            (l2_normalize(student)? - l2_normalize(&target)?)?.sqr()?.sum(D::Minus1)?.mean_all()?
        }
    })
}

/// `λ₁ · d(view, sg teacher) + λ₂ · d(view, sg clean)`; the first term needs the teacher's
/// outputs and is left out without them, the second is left out when λ₂ = 0.
pub fn function_space_penalty(
    view: &Tensor,
    teacher: Option<&Tensor>,
    clean: &Tensor,
    (lambda1, lambda2): (f64, f64),
    distance: FsrDistance,
) -> Result<Tensor> {
    let mut penalty = Tensor::zeros((), view.dtype(), view.device())?;
    if let Some(teacher) = teacher {
        penalty = (penalty + (output_distance(view, teacher, distance)? * lambda1)?)?;
    }
    if lambda2 > 0.0 {
        penalty = (penalty + (output_distance(view, clean, distance)? * lambda2)?)?;
    }
    Ok(penalty)
}

/// An objective through a classification head over image features.
pub trait HeadObjective: Objective {
    /// The loss of the batch from its (clean) image features.
    fn loss_from_features(&self, model: &ClipModel, features: &Tensor, batch: &TrainBatch) -> Result<Tensor>;
    /// The current head's logits of `features`.
    fn head_logits(&self, features: &Tensor) -> Result<Tensor>;
}

impl HeadObjective for CrossEntropy {
    fn loss_from_features(
        &self,
        _model: &ClipModel,
        features: &Tensor,
        batch: &TrainBatch,
    ) -> Result<Tensor> {
        CrossEntropy::loss_from_features(self, features, &batch.labels)
    }

    fn head_logits(&self, features: &Tensor) -> Result<Tensor> {
        self.head.logits(features)
    }
}

/// A head objective plus function-space regularisation toward the frozen pre-trained model.
pub struct FunctionSpace<O> {
    pub inner: O,
    /// The pre-trained model (only its image tower, without a graph, is used).
    pub reference: ClipModel,
    pub simulator: OodSimulator,
    pub lambda1: f64,
    pub lambda2: f64,
    pub distance: FsrDistance,
}

impl<O: HeadObjective> FunctionSpace<O> {
    /// What `d` compares: the head's logits (KL) or the features themselves (L2).
    fn outputs(&self, features: &Tensor) -> Result<Tensor> {
        match self.distance {
            FsrDistance::Kl => self.inner.head_logits(features),
            FsrDistance::L2 => Ok(features.clone()),
        }
    }
}

impl<O: HeadObjective> Objective for FunctionSpace<O> {
    fn trains(&self, name: &str) -> bool {
        self.inner.trains(name)
    }

    fn extra_params(&self) -> Vec<(String, Var, bool)> {
        self.inner.extra_params()
    }

    fn loss(&self, model: &ClipModel, batch: &TrainBatch) -> Result<Tensor> {
        let n = batch.images.dim(0)?;
        let view = self.simulator.perturb(&batch.images, &batch.indices, batch.step)?;
        let features = model.encode_image(&Tensor::cat(&[&batch.images, &view], 0)?)?;
        let (clean, perturbed) = (features.narrow(0, 0, n)?, features.narrow(0, n, n)?);
        let task = self.inner.loss_from_features(model, &clean, batch)?;
        let teacher = (self.lambda1 > 0.0)
            .then(|| self.outputs(&self.reference.no_grad().encode_image(&view)?))
            .transpose()?;
        let penalty = function_space_penalty(
            &self.outputs(&perturbed)?,
            teacher.as_ref(),
            &self.outputs(&clean)?,
            (self.lambda1, self.lambda2),
            self.distance,
        )?;
        Ok((task + penalty)?)
    }

    fn after_step(&self, model: &ClipModel) -> Result<()> {
        self.inner.after_step(model)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn images(n: usize, size: usize, seed: u64) -> Tensor {
        let mut rng = SplitMix64::new(seed);
        let values: Vec<f32> = (0..n * 3 * size * size).map(|_| rng.normal()).collect();
        Tensor::from_vec(values, (n, 3, size, size), &Device::Cpu).unwrap()
    }

    fn simulator() -> OodSimulator {
        OodSimulator {
            noise_std: 0.2,
            contrast: [0.5, 1.5],
            erase_prob: 0.5,
            erase_area: [0.02, 0.25],
            seed: 9,
        }
    }

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        (0..t.dim(0).unwrap()).map(|i| t.get(i).unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect()
    }

    #[test]
    fn an_example_gets_the_same_view_in_any_batch_and_a_new_one_each_step() {
        let batch = images(3, 8, 1);
        let sim = simulator();
        let together = rows(&sim.perturb(&batch, &[4, 9, 2], 7).unwrap());
        let alone = rows(&sim.perturb(&batch.narrow(0, 1, 1).unwrap(), &[9], 7).unwrap());
        assert_eq!(together[1], alone[0]);
        let next_step = rows(&sim.perturb(&batch, &[4, 9, 2], 8).unwrap());
        assert_ne!(together[1], next_step[1]);
        assert_ne!(together[1], rows(&batch)[1]);
    }

    #[test]
    fn contrast_scales_deviations_from_the_channel_means() {
        let batch = images(2, 6, 2);
        let sim = OodSimulator { noise_std: 0.0, contrast: [0.25, 0.25], erase_prob: 0.0, ..simulator() };
        let view = sim.perturb(&batch, &[0, 1], 0).unwrap();
        let mean = batch.mean_keepdim(3).unwrap().mean_keepdim(2).unwrap();
        let expected = ((batch.broadcast_sub(&mean).unwrap() * 0.25).unwrap().broadcast_add(&mean)).unwrap();
        let diff = (view - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn erasing_zeroes_one_rectangle_of_the_requested_area() {
        let size = 20;
        let batch = (images(16, size, 3).abs().unwrap() + 1.0).unwrap(); // no pixel is 0 before
        let sim = OodSimulator {
            noise_std: 0.0,
            contrast: [1.0, 1.0],
            erase_prob: 1.0,
            erase_area: [0.1, 0.2],
            seed: 4,
        };
        let view = sim.perturb(&batch, &(0..16).collect::<Vec<_>>(), 3).unwrap();
        for (i, row) in rows(&view).iter().enumerate() {
            let zero: Vec<usize> = (0..size * size).filter(|&p| row[p] == 0.0).collect();
            let (rows_hit, cols_hit): (Vec<usize>, Vec<usize>) =
                zero.iter().map(|p| (p / size, p % size)).unzip();
            let height = rows_hit.iter().max().unwrap() - rows_hit.iter().min().unwrap() + 1;
            let width = cols_hit.iter().max().unwrap() - cols_hit.iter().min().unwrap() + 1;
            assert_eq!(zero.len(), height * width, "image {i}: the erased pixels form a rectangle");
            let fraction = zero.len() as f64 / (size * size) as f64;
            assert!((0.05..=0.3).contains(&fraction), "image {i}: erased {fraction} of the image");
            for channel in 1..3 {
                assert!(
                    zero.iter().all(|p| row[channel * size * size + p] == 0.0),
                    "image {i}: channel {channel}"
                );
            }
        }
    }

    #[test]
    fn the_noise_has_the_requested_deviation() {
        let batch = images(4, 16, 5);
        let sim = OodSimulator { noise_std: 0.3, contrast: [1.0, 1.0], erase_prob: 0.0, ..simulator() };
        let noise = (sim.perturb(&batch, &[0, 1, 2, 3], 1).unwrap() - &batch).unwrap();
        let values: Vec<f32> = noise.flatten_all().unwrap().to_vec1().unwrap();
        let var = values.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / values.len() as f64;
        assert!((var.sqrt() - 0.3).abs() < 0.015, "std {}", var.sqrt());
    }
}
