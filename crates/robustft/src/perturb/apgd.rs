//! APGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
//! ensemble of diverse parameter-free attacks", Algorithm 1) under ℓ∞ and ℓ2, and its
//! difference-of-logits-ratio loss, as torchattacks 3.5.1 `APGD` runs them (`perturb` with one
//! restart, one EOT sample, `attack_single_run`):
//!
//! * only the examples the model classifies correctly at the clean images are attacked;
//! * the iterate starts at `clamp(x₀ + δ₀, 0, 1)` with step size `2ε`; every step moves by the
//!   gradient's sign (ℓ∞) or its normalised direction (ℓ2), projects, then mixes with the
//!   previous move (momentum `0.75`; none at the first step) and projects again;
//! * at the checkpoints (first after `⌊0.22·steps⌋` steps, then ever closer, by
//!   `⌊0.03·steps⌋` down to `⌊0.06·steps⌋`) an example whose loss rose in at most `ρ` of the
//!   last steps, or whose best loss stagnated since the last checkpoint without a reduction
//!   there, halves its step size and restarts from its best point and that point's gradient;
//! * the result is, for an example misclassified at some iterate, the last such iterate, and
//!   the clean image otherwise (torchattacks `perturb` without `best_loss`).
//!
//! Losses are per example and each example ascends the gradient of its own loss (torchattacks
//! differentiates their sum). Arithmetic follows torchattacks' expressions term by term in f32,
//! including the look-back of its oscillation check, which at the first checkpoint compares
//! the first loss with the not yet written last row of its loss table (zeros).

use candle_core::{Device, Tensor};

use super::pgd::{l2, sign, Norm};
use super::{argmax_rows, probe, AttackLoss, PixelClassifier};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Division guard of torchattacks' ℓ2 normalisations and of the DLR denominator.
const GUARD: f32 = 1e-12;
/// Weight of the new move against the previous one after the first step (Algorithm 1's α).
const MOMENTUM: f32 = 0.75;

/// An APGD attack's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Apgd {
    /// ℓ∞ or ℓ2 (ℓ1 is refused: APGD's ℓ1 variant is a different algorithm).
    pub norm: Norm,
    /// Radius of the ball in pixel units.
    pub eps: f32,
    pub steps: usize,
    pub loss: AttackLoss,
    /// Fraction of the last steps with a rising loss below which the step size halves.
    pub rho: f32,
}

impl Apgd {
    /// An attack with torchattacks' `rho = 0.75`.
    pub fn new(norm: Norm, eps: f32, steps: usize, loss: AttackLoss) -> Self {
        Self { norm, eps, steps, loss, rho: 0.75 }
    }

    /// Adversarial images for `images` `[n, 3, s, s]` (pixels) of `labels`, starting at
    /// `clamp(images + start, 0, 1)` (not projected: draw `start` inside the ball, as
    /// [`random_start`] does). A start at `images` itself (`start = 0`) is not torchattacks'
    /// attack, which always starts on the sphere. `trace` receives, at the start and after
    /// every step, the mean loss of the attacked examples (those classified correctly at
    /// `images`; nothing when there are none).
    pub fn attack(
        &self,
        classifier: &dyn PixelClassifier,
        images: &Tensor,
        labels: &Tensor,
        start: &Tensor,
        trace: Option<&mut Vec<f32>>,
    ) -> Result<Tensor> {
        if self.norm == Norm::L1 {
            return Err(Error::Invalid {
                what: "APGD".into(),
                reason: "supports the ℓ∞ and ℓ2 threats only; use PGD for ℓ1".into(),
            });
        }
        let shape = images.dims().to_vec();
        let clean = images.flatten_from(1)?.to_vec2::<f32>()?;
        let targets = labels.to_vec1::<u32>()?;
        let attacked = correctly_classified(classifier, images, &targets)?;
        let mut result = clean.clone();
        if !attacked.is_empty() {
            let delta = start.flatten_from(1)?.to_vec2::<f32>()?;
            let pick = |rows: &[Vec<f32>]| attacked.iter().map(|&i| rows[i].clone()).collect::<Vec<_>>();
            let sub_labels: Vec<u32> = attacked.iter().map(|&i| targets[i]).collect();
            let sub_labels = Tensor::from_vec(sub_labels, attacked.len(), labels.device())?;
            let mut sub_shape = shape.clone();
            sub_shape[0] = attacked.len();
            let run = Run {
                apgd: self,
                classifier,
                labels: &sub_labels,
                shape: &sub_shape,
                device: images.device(),
            };
            let outcome = run.single(&pick(&clean), &pick(&delta), trace)?;
            for (&i, adversarial) in attacked.iter().zip(outcome) {
                if let Some(x) = adversarial {
                    result[i] = x;
                }
            }
        }
        Ok(Tensor::from_vec(result.concat(), shape.as_slice(), images.device())?)
    }
}

/// The indices of the examples that `classifier` classifies correctly at `images`.
fn correctly_classified(
    classifier: &dyn PixelClassifier,
    images: &Tensor,
    targets: &[u32],
) -> Result<Vec<usize>> {
    let logits = classifier.logits(&images.detach())?.detach().to_vec2::<f32>()?;
    let predictions = argmax_rows(&logits);
    Ok((0..targets.len()).filter(|&i| predictions[i] == targets[i] as usize).collect())
}

/// The step-size schedule's constants of torchattacks: first checkpoint after `n_iter_2`
/// steps, later intervals shrinking by `size_decr` down to `n_iter_min`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checkpoints {
    first: usize,
    min: usize,
    decrease: usize,
}

impl Checkpoints {
    fn of(steps: usize) -> Self {
        let fraction = |p: f64| ((p * steps as f64) as usize).max(1);
        Self { first: fraction(0.22), min: fraction(0.06), decrease: fraction(0.03) }
    }
}

/// Per-example losses, correctness and gradients (of each example's own loss) at a batch.
struct Evaluation {
    losses: Vec<f32>,
    correct: Vec<bool>,
    gradients: Vec<Vec<f32>>,
}

/// One example's state in a run.
struct Example {
    clean: Vec<f32>,
    x: Vec<f32>,
    previous: Vec<f32>,
    gradient: Vec<f32>,
    best: Vec<f32>,
    best_gradient: Vec<f32>,
    best_loss: f32,
    last_adversarial: Option<Vec<f32>>,
    step_size: f32,
}

/// One `attack_single_run` on the attacked examples.
struct Run<'a> {
    apgd: &'a Apgd,
    classifier: &'a dyn PixelClassifier,
    labels: &'a Tensor,
    shape: &'a [usize],
    device: &'a Device,
}

impl Run<'_> {
    /// The last misclassified iterate of every example, `None` where none was.
    fn single(
        &self,
        clean: &[Vec<f32>],
        start: &[Vec<f32>],
        mut trace: Option<&mut Vec<f32>>,
    ) -> Result<Vec<Option<Vec<f32>>>> {
        let apgd = self.apgd;
        let starts: Vec<Vec<f32>> = clean
            .iter()
            .zip(start)
            .map(|(x0, d)| x0.iter().zip(d).map(|(x, d)| (x + d).clamp(0.0, 1.0)).collect())
            .collect();
        let first = self.evaluate(&starts, trace.as_deref_mut())?;
        let mut examples: Vec<Example> = clean
            .iter()
            .zip(starts)
            .zip(first.gradients)
            .enumerate()
            .map(|(j, ((x0, x), gradient))| Example {
                clean: x0.clone(),
                previous: x.clone(),
                best: x.clone(),
                last_adversarial: (!first.correct[j]).then(|| x.clone()),
                x,
                best_gradient: gradient.clone(),
                gradient,
                best_loss: first.losses[j],
                step_size: 2.0 * apgd.eps,
            })
            .collect();
        let mut schedule = Schedule::new(apgd.steps, &first.losses, apgd.rho);
        for i in 0..apgd.steps {
            let momentum = if i > 0 { MOMENTUM } else { 1.0 };
            for example in &mut examples {
                let next = apgd.step(example, momentum);
                example.previous = std::mem::replace(&mut example.x, next);
            }
            let rows: Vec<Vec<f32>> = examples.iter().map(|e| e.x.clone()).collect();
            let evaluation = self.evaluate(&rows, trace.as_deref_mut())?;
            for (j, (example, gradient)) in examples.iter_mut().zip(evaluation.gradients).enumerate() {
                if !evaluation.correct[j] {
                    example.last_adversarial = Some(example.x.clone());
                }
                example.gradient = gradient;
                if evaluation.losses[j] > example.best_loss {
                    example.best = example.x.clone();
                    example.best_gradient = example.gradient.clone();
                    example.best_loss = evaluation.losses[j];
                }
            }
            let best_losses: Vec<f32> = examples.iter().map(|e| e.best_loss).collect();
            for (example, halve) in
                examples.iter_mut().zip(schedule.after_step(i, &evaluation.losses, &best_losses))
            {
                if halve {
                    example.step_size /= 2.0;
                    example.x = example.best.clone();
                    example.gradient = example.best_gradient.clone();
                }
            }
        }
        Ok(examples.into_iter().map(|e| e.last_adversarial).collect())
    }

    fn evaluate(&self, rows: &[Vec<f32>], trace: Option<&mut Vec<f32>>) -> Result<Evaluation> {
        let n = rows.len();
        let pixels = Tensor::from_vec(rows.concat(), self.shape, self.device)?;
        let probe = probe(self.classifier, &pixels, self.labels, self.apgd.loss)?;
        if let Some(trace) = trace {
            trace.push(probe.losses.iter().sum::<f32>() / n as f32);
        }
        // The probe differentiates the batch mean; each example's own loss has n times that.
        let gradients = (probe.gradient * n as f64)?.flatten_from(1)?.to_vec2::<f32>()?;
        let targets = self.labels.to_vec1::<u32>()?;
        let correct =
            argmax_rows(&probe.logits).iter().zip(&targets).map(|(p, y)| *p == *y as usize).collect();
        Ok(Evaluation { losses: probe.losses, correct, gradients })
    }
}

impl Apgd {
    /// The next iterate of `example`: a step of its step size, projected, mixed with the
    /// previous move by `momentum`, projected again.
    fn step(&self, example: &Example, momentum: f32) -> Vec<f32> {
        let Example { clean, x, previous, gradient, step_size, .. } = example;
        let moved: Vec<f32> = match self.norm {
            Norm::Linf => x.iter().zip(gradient).map(|(x, g)| x + step_size * sign(*g)).collect(),
            // ℓ2 (`attack` refuses ℓ1).
            _ => {
                let norm = l2(gradient) + GUARD;
                x.iter().zip(gradient).map(|(x, g)| x + step_size * g / norm).collect()
            }
        };
        let projected = self.project(clean, &moved, 0.0);
        let mixed: Vec<f32> = x
            .iter()
            .zip(&projected)
            .zip(previous)
            .map(|((x, z), p)| x + (z - x) * momentum + (x - p) * (1.0 - momentum))
            .collect();
        self.project(clean, &mixed, GUARD)
    }

    /// `x` into the ball around `x0`, then into `[0, 1]`, as torchattacks writes it: ℓ∞
    /// clamps to `[x0 − ε, x0 + ε]`; ℓ2 rescales δ to `min(ε, ‖δ‖ + slack)/(‖δ‖ + 1e-12)`
    /// (torchattacks' first projection has no slack, its second 1e-12).
    fn project(&self, x0: &[f32], x: &[f32], slack: f32) -> Vec<f32> {
        let eps = self.eps;
        match self.norm {
            Norm::Linf => {
                x0.iter().zip(x).map(|(x0, x)| x.max(x0 - eps).min(x0 + eps).clamp(0.0, 1.0)).collect()
            }
            // ℓ2 (`attack` refuses ℓ1).
            _ => {
                let delta: Vec<f32> = x.iter().zip(x0).map(|(x, x0)| x - x0).collect();
                let norm = l2(&delta);
                let length = eps.min(norm + slack);
                x0.iter()
                    .zip(&delta)
                    .map(|(x0, d)| (x0 + d / (norm + GUARD) * length).clamp(0.0, 1.0))
                    .collect()
            }
        }
    }
}

/// The step-size checkpoints of one run (torchattacks' `counter3`, `k`, `loss_steps`,
/// `reduced_last_check`, `loss_best_last_check`).
struct Schedule {
    checkpoints: Checkpoints,
    rho: f32,
    interval: usize,
    since_check: usize,
    /// `[steps][n]` losses after every step, zeros where not yet written.
    losses: Vec<Vec<f32>>,
    reduced_last: Vec<bool>,
    best_at_last: Vec<f32>,
}

impl Schedule {
    fn new(steps: usize, initial_losses: &[f32], rho: f32) -> Self {
        let checkpoints = Checkpoints::of(steps);
        let n = initial_losses.len();
        Self {
            checkpoints,
            rho,
            interval: checkpoints.first,
            since_check: 0,
            losses: vec![vec![0.0; n]; steps],
            reduced_last: vec![true; n],
            best_at_last: initial_losses.to_vec(),
        }
    }

    /// Records step `i`'s losses; at a checkpoint, which examples halve their step size and
    /// restart from their best point (oscillating, or stagnating without a reduction at the
    /// previous checkpoint).
    fn after_step(&mut self, i: usize, losses: &[f32], best: &[f32]) -> Vec<bool> {
        self.losses[i] = losses.to_vec();
        self.since_check += 1;
        if self.since_check != self.interval {
            return vec![false; losses.len()];
        }
        let threshold = self.interval as f64 * f64::from(self.rho);
        let halve: Vec<bool> = (0..losses.len())
            .map(|j| {
                let oscillating = self.rising_steps(i, j) as f64 <= threshold;
                let stagnating = !self.reduced_last[j] && self.best_at_last[j] >= best[j];
                oscillating || stagnating
            })
            .collect();
        self.reduced_last = halve.clone();
        self.best_at_last = best.to_vec();
        self.since_check = 0;
        self.interval = self.interval.saturating_sub(self.checkpoints.decrease).max(self.checkpoints.min);
        halve
    }

    /// How many of the last `interval` steps up to `i` raised example `j`'s loss; rows before
    /// the first wrap around to the end of the table, as NumPy's negative indices do.
    fn rising_steps(&self, i: usize, j: usize) -> usize {
        let rows = self.losses.len() as isize;
        let row = |t: isize| &self.losses[t.rem_euclid(rows) as usize];
        (0..self.interval as isize).filter(|&c| row(i as isize - c)[j] > row(i as isize - c - 1)[j]).count()
    }
}

/// APGD's random start `[n, 3, s, s]` for `shape` as torchattacks draws it, example `i` from
/// `SplitMix64(seeds[i])`: ℓ∞ `ε·t/max|t|` with `t ~ U[−1, 1]` per coordinate (a point on the
/// ball's surface); ℓ2 `ε·t/(‖t‖₂ + 1e-12)` with `t ~ N(0, 1)` (on the sphere).
pub fn random_start(norm: Norm, eps: f32, shape: &[usize], seeds: &[u64], device: &Device) -> Result<Tensor> {
    let size: usize = shape[1..].iter().product();
    let mut values = Vec::with_capacity(shape[0] * size);
    for &seed in seeds {
        let mut rng = SplitMix64::new(seed);
        let (draw, scale): (Vec<f32>, f32) = match norm {
            Norm::Linf => {
                let t: Vec<f32> = (0..size).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect();
                let max = t.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                (t, max)
            }
            Norm::L2 => {
                let t: Vec<f32> = (0..size).map(|_| rng.normal()).collect();
                let norm = l2(&t) + GUARD;
                (t, norm)
            }
            Norm::L1 => {
                return Err(Error::Invalid {
                    what: "APGD's random start".into(),
                    reason: "exists for the ℓ∞ and ℓ2 threats only".into(),
                })
            }
        };
        values.extend(draw.iter().map(|t| eps * t / scale));
    }
    Ok(Tensor::from_vec(values, shape, device)?)
}

/// Per-example DLR loss `−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)` of `logits` `[n, k]`
/// (π sorts the logits in decreasing order; torchattacks `APGD.dlr_loss`), differentiable
/// through the picked logits. Needs at least three classes.
///
/// Where `y` is the third-largest logit the loss is 1 whatever the logits and its gradient
/// vanishes; torch's autograd of torchattacks' expression returns exactly zero there (its two
/// terms cancel bit for bit), so these rows are the constant 1 here, not a rounding residue
/// whose sign would steer an attack.
pub fn dlr_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let rows = logits.detach().to_vec2::<f32>()?;
    let targets = labels.to_vec1::<u32>()?;
    if rows.first().is_some_and(|row| row.len() < 3) {
        return Err(Error::Invalid {
            what: "the DLR loss".into(),
            reason: "needs at least 3 classes".into(),
        });
    }
    let (mut other, mut first, mut third) = (Vec::new(), Vec::new(), Vec::new());
    let mut plateau = Vec::new();
    for (row, &y) in rows.iter().zip(&targets) {
        let mut order: Vec<u32> = (0..row.len() as u32).collect();
        order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        other.push(if order[0] == y { order[1] } else { order[0] });
        first.push(order[0]);
        third.push(order[2]);
        plateau.push(u8::from(order[2] == y));
    }
    let pick = |indices: Vec<u32>| -> Result<Tensor> {
        let n = indices.len();
        let index = Tensor::from_vec(indices, (n, 1), logits.device())?;
        Ok(logits.gather(&index, 1)?.squeeze(1)?)
    };
    let true_logit = logits.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    let margin = (true_logit - pick(other)?)?;
    let spread = ((pick(first)? - pick(third)?)? + 1e-12)?;
    let ratio = margin.div(&spread)?.neg()?;
    let plateau = Tensor::from_vec(plateau, ratio.dims(), logits.device())?;
    Ok(plateau.where_cond(&ratio.ones_like()?, &ratio)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_follow_torchattacks_fractions() {
        // torchattacks: max(int(0.22·steps), 1), max(int(0.06·steps), 1), max(int(0.03·steps), 1).
        assert_eq!(Checkpoints::of(10), Checkpoints { first: 2, min: 1, decrease: 1 });
        assert_eq!(Checkpoints::of(100), Checkpoints { first: 22, min: 6, decrease: 3 });
    }

    #[test]
    fn first_checkpoint_compares_the_first_loss_with_the_unwritten_last_row() {
        // steps = 10: the first check is after step 1 (k = 2) and looks at rows 1 > 0 and
        // 0 > 9 (still zero). Example 0: rising, then 0.5 > 0 -> 2 rises > 1.5: no halving.
        // Example 1 (negative losses, as DLR's): only -0.2 > -0.3 rises -> 1 ≤ 1.5, halves.
        let mut schedule = Schedule::new(10, &[0.0, -1.0], 0.75);
        assert_eq!(schedule.after_step(0, &[0.5, -0.3], &[0.5, -0.3]), vec![false, false]);
        assert_eq!(schedule.after_step(1, &[0.6, -0.2], &[0.6, -0.2]), vec![false, true]);
        // The next interval is 1; example 0 oscillates (0.55 < 0.6), example 1 rose.
        assert_eq!(schedule.after_step(2, &[0.55, -0.1], &[0.6, -0.1]), vec![true, false]);
    }

    #[test]
    fn stagnation_without_a_reduction_halves_the_step() {
        let mut schedule = Schedule::new(10, &[2.0], 0.75);
        schedule.after_step(0, &[0.5], &[2.0]);
        assert_eq!(schedule.after_step(1, &[1.0], &[2.0]), vec![false]);
        // Rising (1.5 > 1.0), but the best loss has not moved past 2.0 since the last check.
        assert_eq!(schedule.after_step(2, &[1.5], &[2.0]), vec![true]);
    }

    #[test]
    fn random_starts_lie_on_the_sphere() {
        let device = Device::Cpu;
        let linf = random_start(Norm::Linf, 0.1, &[2, 3, 2, 2], &[1, 2], &device).unwrap();
        for row in linf.flatten_from(1).unwrap().to_vec2::<f32>().unwrap() {
            let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!((max - 0.1).abs() < 1e-7, "{row:?}");
        }
        let l2_start = random_start(Norm::L2, 0.5, &[2, 3, 2, 2], &[1, 2], &device).unwrap();
        for row in l2_start.flatten_from(1).unwrap().to_vec2::<f32>().unwrap() {
            assert!((l2(&row) - 0.5).abs() < 1e-6, "{row:?}");
        }
        assert!(random_start(Norm::L1, 0.5, &[1, 3, 2, 2], &[1], &device).is_err());
    }
}
