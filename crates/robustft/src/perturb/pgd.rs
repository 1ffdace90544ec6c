//! Projected gradient descent (Madry et al., ICLR 2018) under ℓ∞, ℓ2 and ℓ1, as torchattacks
//! 3.5 `PGD` and `PGDL2` step (ℓ1 follows SLIDE, Tramèr & Boneh 2019, which torchattacks
//! lacks):
//!
//! * ℓ∞: `x ← Π(x + α·sign(∇))`;
//! * ℓ2: `x ← Π(x + α·∇/(‖∇‖₂ + 1e-10))`, the projection scaling δ by `min(1, ε/‖δ‖₂)`;
//! * ℓ1: the step moves only the coordinates whose `|∇|` is in the top `l1_sparsity` fraction
//!   of the image, by `sign(∇)` scaled to ℓ1 length α; the projection is the exact Euclidean
//!   projection onto the ℓ1 ball (Duchi et al. 2008).
//!
//! `Π` projects δ = x − x₀ onto the ball and then clamps x to `[0, 1]`. The loss is the batch
//! mean of the attack loss (torchattacks differentiates the mean); the result is the last
//! iterate (torchattacks returns it too). Random starts are drawn per example from a stream
//! seeded by the caller (`random_start`), so training runs are reproducible and resumable.

use candle_core::Tensor;

use super::{probe, AttackLoss, PixelClassifier};
use crate::error::Result;
use crate::rng::SplitMix64;

/// The ℓp ball of a threat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    Linf,
    L2,
    L1,
}

/// Division guard of torchattacks' ℓ2 step.
const L2_GRAD_EPS: f32 = 1e-10;

/// A PGD attack's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Pgd {
    pub norm: Norm,
    /// Radius of the ball in pixel units.
    pub eps: f32,
    /// Step size α.
    pub step_size: f32,
    pub steps: usize,
    pub loss: AttackLoss,
    /// Fraction of the coordinates an ℓ1 step moves (SLIDE's sparsity; default 1%).
    pub l1_sparsity: f32,
}

/// The default step size `2.5·ε/steps` (Madry et al.).
pub fn default_step_size(eps: f32, steps: usize) -> f32 {
    2.5 * eps / steps.max(1) as f32
}

impl Pgd {
    /// An attack with the default step size and cross-entropy.
    pub fn new(norm: Norm, eps: f32, steps: usize) -> Self {
        Self {
            norm,
            eps,
            step_size: default_step_size(eps, steps),
            steps,
            loss: AttackLoss::CrossEntropy,
            l1_sparsity: 0.01,
        }
    }

    /// Adversarial images for `images` `[n, 3, s, s]` (pixels) of `labels`, starting at
    /// `images + start` (projected); `trace` receives the mean loss at every step's iterate
    /// before the step.
    pub fn attack(
        &self,
        classifier: &dyn PixelClassifier,
        images: &Tensor,
        labels: &Tensor,
        start: Option<&Tensor>,
        mut trace: Option<&mut Vec<f32>>,
    ) -> Result<Tensor> {
        let shape = images.dims().to_vec();
        let n = shape[0];
        let clean = images.flatten_from(1)?.to_vec2::<f32>()?;
        let mut adv = match start {
            Some(delta) => {
                let delta = delta.flatten_from(1)?.to_vec2::<f32>()?;
                clean.iter().zip(&delta).map(|(x0, d)| self.project(x0, &add(x0, d))).collect()
            }
            None => clean.clone(),
        };
        for _ in 0..self.steps {
            let current = Tensor::from_vec(adv.concat(), shape.as_slice(), images.device())?;
            let probe = probe(classifier, &current, labels, self.loss)?;
            if let Some(trace) = trace.as_deref_mut() {
                trace.push(probe.losses.iter().sum::<f32>() / n as f32);
            }
            let gradient = probe.gradient.flatten_from(1)?.to_vec2::<f32>()?;
            adv = clean
                .iter()
                .zip(adv.iter().zip(&gradient))
                .map(|(x0, (x, g))| self.project(x0, &add(x, &self.step(g))))
                .collect();
        }
        Ok(Tensor::from_vec(adv.concat(), shape.as_slice(), images.device())?)
    }

    /// The ascent direction of one example's gradient, scaled by α.
    fn step(&self, gradient: &[f32]) -> Vec<f32> {
        let alpha = self.step_size;
        match self.norm {
            Norm::Linf => gradient.iter().map(|g| alpha * sign(*g)).collect(),
            Norm::L2 => {
                let norm = l2(gradient) + L2_GRAD_EPS;
                gradient.iter().map(|g| alpha * (g / norm)).collect()
            }
            Norm::L1 => l1_step(gradient, alpha, self.l1_sparsity),
        }
    }

    /// `x` moved back into the ball around `x0`, then into `[0, 1]`.
    fn project(&self, x0: &[f32], x: &[f32]) -> Vec<f32> {
        let mut delta: Vec<f32> = x.iter().zip(x0).map(|(x, x0)| x - x0).collect();
        match self.norm {
            Norm::Linf => delta.iter_mut().for_each(|d| *d = d.clamp(-self.eps, self.eps)),
            Norm::L2 => {
                let factor = (self.eps / l2(&delta)).min(1.0);
                delta.iter_mut().for_each(|d| *d *= factor);
            }
            Norm::L1 => project_l1_ball(&mut delta, self.eps),
        }
        x0.iter().zip(&delta).map(|(x0, d)| (x0 + d).clamp(0.0, 1.0)).collect()
    }
}

/// A random start `[n, 3, s, s]` for `shape`, example `i` drawn from `SplitMix64(seeds[i])`:
/// ℓ∞ uniform in `[−ε, ε]` (torchattacks `PGD`); ℓ2 and ℓ1 a Gaussian direction scaled to
/// length `r·ε`, `r ~ U[0, 1]` (torchattacks `PGDL2`; the same for ℓ1 in its norm).
pub fn random_start(
    norm: Norm,
    eps: f32,
    shape: &[usize],
    seeds: &[u64],
    device: &candle_core::Device,
) -> Result<Tensor> {
    let size: usize = shape[1..].iter().product();
    let mut values = Vec::with_capacity(shape[0] * size);
    for &seed in seeds {
        let mut rng = SplitMix64::new(seed);
        let draw: Vec<f32> = match norm {
            Norm::Linf => (0..size).map(|_| ((2.0 * rng.uniform() - 1.0) * eps as f64) as f32).collect(),
            Norm::L2 | Norm::L1 => {
                let direction: Vec<f32> = (0..size).map(|_| rng.normal()).collect();
                let length = match norm {
                    Norm::L2 => l2(&direction),
                    _ => direction.iter().map(|d| d.abs()).sum(),
                };
                let scale = rng.uniform() as f32 * eps / length.max(f32::MIN_POSITIVE);
                direction.iter().map(|d| d * scale).collect()
            }
        };
        values.extend(draw);
    }
    Ok(Tensor::from_vec(values, shape, device)?)
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(a, b)| a + b).collect()
}

pub(super) fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

pub(super) fn l2(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// SLIDE's step: `sign(g)` on the `⌈sparsity·d⌉` coordinates of largest `|g|` (ties broken
/// by index), scaled to ℓ1 length `alpha`.
fn l1_step(gradient: &[f32], alpha: f32, sparsity: f32) -> Vec<f32> {
    let k = ((sparsity * gradient.len() as f32).ceil() as usize).clamp(1, gradient.len());
    let mut order: Vec<usize> = (0..gradient.len()).collect();
    order.sort_by(|&a, &b| gradient[b].abs().total_cmp(&gradient[a].abs()).then(a.cmp(&b)));
    let mut step = vec![0.0; gradient.len()];
    let moved: Vec<usize> = order[..k].iter().copied().filter(|&i| gradient[i] != 0.0).collect();
    for &i in &moved {
        step[i] = alpha * sign(gradient[i]) / moved.len() as f32;
    }
    step
}

/// Euclidean projection of `v` onto the ℓ1 ball of radius `radius` (Duchi et al. 2008,
/// Figure 1: soft-thresholding at θ found by sorting `|v|`).
pub fn project_l1_ball(v: &mut [f32], radius: f32) {
    let total: f32 = v.iter().map(|x| x.abs()).sum();
    if total <= radius {
        return;
    }
    let mut sorted: Vec<f32> = v.iter().map(|x| x.abs()).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let (mut cumulative, mut theta) = (0.0f32, 0.0f32);
    for (j, &u) in sorted.iter().enumerate() {
        cumulative += u;
        let candidate = (cumulative - radius) / (j + 1) as f32;
        if u - candidate > 0.0 {
            theta = candidate;
        } else {
            break;
        }
    }
    v.iter_mut().for_each(|x| *x = sign(*x) * (x.abs() - theta).max(0.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_projection_lands_on_the_ball_and_keeps_inner_points() {
        // NumPy (Duchi et al. 2008): v = [3, -1, 0.5], r = 2 -> θ = 1, [2, 0, 0].
        let mut v = vec![3.0, -1.0, 0.5];
        project_l1_ball(&mut v, 2.0);
        assert_eq!(v, vec![2.0, 0.0, 0.0]);
        let mut w = vec![1.0, -1.0, 1.0];
        project_l1_ball(&mut w, 2.0);
        // θ = 1/3: [2/3, -2/3, 2/3].
        for (a, b) in w.iter().zip([2.0 / 3.0, -2.0 / 3.0, 2.0 / 3.0]) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        let mut inner = vec![0.5, -0.5];
        project_l1_ball(&mut inner, 2.0);
        assert_eq!(inner, vec![0.5, -0.5]);
    }

    #[test]
    fn l1_step_moves_the_largest_coordinates_by_alpha_in_total() {
        let step = l1_step(&[0.1, -3.0, 2.0, 0.0], 0.5, 0.5);
        assert_eq!(step, vec![0.0, -0.25, 0.25, 0.0]);
    }
}
