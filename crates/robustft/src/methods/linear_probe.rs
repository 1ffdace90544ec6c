//! The linear probe (LP): multinomial logistic regression on cached, frozen-encoder image
//! features (L2-normalised by the caller), fit with L-BFGS, with the inverse regularisation
//! strength C chosen by top-1 accuracy on an ID validation split. This is the LP of the
//! robust fine-tuning literature (FLYP's `src/models/linear_lbfgs.py`, which sweeps
//! scikit-learn's `LogisticRegression`) and matches scikit-learn's
//! `LogisticRegression(C=c, solver="lbfgs", fit_intercept=True)`.
//!
//! Objective. scikit-learn documents `C · Σᵢ CE(softmax(W xᵢ + b), yᵢ) + ½‖W‖²_F` (the
//! intercept b is not penalised); its lbfgs path (`_logistic.py`, `_linear_loss.py`)
//! minimises that divided by `C·n`: `mean CE + ‖W‖²_F / (2Cn)`, the same minimiser. We
//! minimise the scaled form too, so [`LbfgsOptions::tol`] means what sklearn's `tol` means
//! (the largest gradient entry of the scaled objective) and [`FitReport::objective`] is the
//! value scipy reports. With two classes sklearn fits one binomial vector `w`; the
//! multinomial form at `C/2` has the same decision function (`w = W₁ − W₀`, `b = b₁ − b₀`,
//! as the penalty makes `W₀ = −W₁` at the optimum) and the same objective value, so we fit
//! that. Softmax ignores a common shift of the intercepts; starting from zero, every step
//! keeps them summing to zero, as in sklearn. Every class must have a training example (the
//! intercept of an absent class would run to −∞; sklearn drops such classes instead), and the
//! features are used as given: the caller L2-normalises them, as the reference pipelines do.
//!
//! Solver: L-BFGS (Nocedal & Wright, *Numerical Optimization*, 2nd ed., Alg. 7.4 two-loop
//! recursion, history 10 as scipy's `maxcor`) with a strong-Wolfe line search (Alg. 3.5/3.6,
//! c₁ = 1e-4, c₂ = 0.9, cubic interpolation, ×4 extrapolation as Moré–Thuente's, at most 50
//! evaluations as sklearn's `maxls`; the first step is `1/‖d‖` as in L-BFGS-B). It
//! stops, like scipy's L-BFGS-B under sklearn, when the gradient's max-abs is ≤ `tol` or the
//! relative decrease `(f_k − f_{k+1}) / max(|f_k|, |f_{k+1}|, 1)` is ≤ 64·ε (sklearn's
//! `ftol`). Loss and gradient are analytic with a stable log-sum-exp, in f64, summed over a
//! fixed split of the examples so results do not depend on the thread count.

use std::collections::VecDeque;
use std::ops::Range;

use rayon::prelude::*;

use candle_core::Tensor;

use super::registry::{Context, Method, MethodEntry, Outcome, Prepared, SplitRole};
use crate::error::{Error, Result};
use crate::eval::predictor::Head;
use crate::sections::Sections;

/// The C sweep: `np.logspace(-3, 3, 13)`, half-decade steps covering FLYP's LP sweep
/// (`np.logspace(-1, 2, 100)`) with room on both sides; CLIP's LP sweep (Radford et al.,
/// 2021, App. A.3) spans 1e-6..1e6 in 96 steps, far wider than normalised features need.
pub const DEFAULT_C_GRID: &[f64] = &[
    0.001,
    0.0031622776601683794,
    0.01,
    0.03162277660168379,
    0.1,
    0.31622776601683794,
    1.0,
    3.1622776601683795,
    10.0,
    31.622776601683793,
    100.0,
    316.2277660168379,
    1000.0,
];

const RELATIVE_DECREASE_TOL: f64 = 64.0 * f64::EPSILON;
const ARMIJO: f64 = 1e-4;
const CURVATURE: f64 = 0.9;
const MAX_LINE_EVALUATIONS: usize = 50;
const PARTS: usize = 64;

/// A fitted linear head: `logits = weight · x + bias`.
#[derive(Clone, Debug, PartialEq)]
pub struct LogisticRegression {
    /// `classes × dim`, row-major.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub classes: usize,
    pub dim: usize,
}

/// When L-BFGS stops. The default tolerance is far below sklearn's `tol=1e-4`: with
/// L2-normalised features the gradient entries start near `1/(classes·√dim)` (3e-5 for 1000
/// classes in 1024 dimensions), so a looser one can stop well short of the minimiser.
#[derive(Clone, Debug, PartialEq)]
pub struct LbfgsOptions {
    pub max_iter: usize,
    /// Largest allowed gradient entry of the scaled objective.
    pub tol: f64,
    /// Number of correction pairs kept.
    pub history: usize,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        Self { max_iter: 1000, tol: 1e-8, history: 10 }
    }
}

/// How a fit ended; `objective` is `mean CE + ‖W‖²/(2Cn)` at the returned head, and
/// `converged` says that a stopping test (gradient or relative decrease) rather than
/// `max_iter` or a failed line search ended it.
#[derive(Clone, Debug, PartialEq)]
pub struct FitReport {
    pub iterations: usize,
    pub objective: f64,
    pub grad_max_abs: f64,
    pub converged: bool,
}

/// The outcome of a C sweep: the chosen C, its head, and `(C, validation top-1)` per C.
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub c: f64,
    pub model: LogisticRegression,
    pub sweep: Vec<(f64, f64)>,
}

fn invalid(what: &str, reason: String) -> Error {
    Error::Invalid { what: what.to_string(), reason }
}

/// Fits the probe on `features` (`labels.len() × dim`, row-major) with inverse strength `c`.
pub fn fit(
    features: &[f32],
    labels: &[u32],
    classes: usize,
    c: f64,
    options: &LbfgsOptions,
) -> Result<(LogisticRegression, FitReport)> {
    if options.history == 0 || options.tol.is_nan() || options.tol < 0.0 {
        return Err(invalid("L-BFGS options", format!("{options:?}: need history ≥ 1 and tol ≥ 0")));
    }
    let problem = Problem::new(features, labels, classes, c)?;
    let (theta, report) = minimize(&problem, options);
    Ok((problem.model(&theta), report))
}

/// Fits one probe per C of `grid` and keeps the best validation top-1 (ties: the smaller C).
pub fn select_c(
    train: (&[f32], &[u32]),
    val: (&[f32], &[u32]),
    classes: usize,
    grid: &[f64],
    options: &LbfgsOptions,
) -> Result<Selection> {
    let mut best: Option<(f64, LogisticRegression, f64)> = None;
    let mut sweep = Vec::with_capacity(grid.len());
    for &c in grid {
        let (model, _) = fit(train.0, train.1, classes, c, options)?;
        let accuracy = model.accuracy(val.0, val.1)?;
        sweep.push((c, accuracy));
        let better = match &best {
            None => true,
            Some((best_c, _, best_acc)) => accuracy > *best_acc || (accuracy == *best_acc && c < *best_c),
        };
        if better {
            best = Some((c, model, accuracy));
        }
    }
    let (c, model, _) = best.ok_or_else(|| invalid("C grid", "is empty".to_string()))?;
    Ok(Selection { c, model, sweep })
}

impl LogisticRegression {
    /// `n × classes` logits, row-major, of `n × dim` features.
    pub fn logits(&self, features: &[f32]) -> Result<Vec<f32>> {
        Ok(self.logits_f64(features)?.into_iter().map(|z| z as f32).collect())
    }

    /// The arg-max class of each row (ties: the lowest index, as NumPy's `argmax`).
    pub fn predict(&self, features: &[f32]) -> Result<Vec<usize>> {
        let logits = self.logits_f64(features)?;
        Ok(logits.chunks(self.classes).map(argmax).collect())
    }

    /// Top-1 accuracy against `labels`.
    pub fn accuracy(&self, features: &[f32], labels: &[u32]) -> Result<f64> {
        let predictions = self.predict(features)?;
        if predictions.len() != labels.len() || labels.is_empty() {
            return Err(invalid(
                "evaluation labels",
                format!("{} labels for {} feature rows", labels.len(), predictions.len()),
            ));
        }
        if let Some(y) = labels.iter().find(|&&y| y as usize >= self.classes) {
            return Err(invalid(
                "evaluation labels",
                format!("label {y} is not below {} classes", self.classes),
            ));
        }
        let correct = predictions.iter().zip(labels).filter(|(p, &y)| **p == y as usize).count();
        Ok(correct as f64 / labels.len() as f64)
    }

    fn logits_f64(&self, features: &[f32]) -> Result<Vec<f64>> {
        if self.dim == 0 || !features.len().is_multiple_of(self.dim) {
            return Err(invalid("features", format!("{} values, not rows of {}", features.len(), self.dim)));
        }
        let weight = self.weight.chunks(self.dim);
        Ok(features
            .chunks(self.dim)
            .flat_map(|x| weight.clone().zip(&self.bias).map(move |(w, &b)| b as f64 + dot_f32(w, x)))
            .collect())
    }
}

fn argmax(row: &[f64]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &z)| if z > row[best] { i } else { best })
}

fn dot_f32(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&a, &b)| a as f64 * b as f64).sum()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// The scaled objective over validated data; parameters are `[W (classes × dim), b]`.
struct Problem {
    x: Vec<f64>,
    y: Vec<usize>,
    dim: usize,
    classes: usize,
    /// `1 / (C n)`, with C halved for two classes (see the module doc).
    l2: f64,
}

impl Problem {
    fn new(features: &[f32], labels: &[u32], classes: usize, c: f64) -> Result<Self> {
        let n = labels.len();
        if n == 0 || features.is_empty() || !features.len().is_multiple_of(n) {
            return Err(invalid(
                "training data",
                format!("{} feature values for {n} labels", features.len()),
            ));
        }
        if !(c.is_finite() && c > 0.0) {
            return Err(invalid("C", format!("{c} is not a positive finite number")));
        }
        if classes < 2 {
            return Err(invalid("classes", format!("{classes}: a probe needs at least 2")));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(invalid("training features", format!("value {i} is {}", features[i])));
        }
        let mut counts = vec![0usize; classes];
        for (i, &y) in labels.iter().enumerate() {
            let count = counts.get_mut(y as usize).ok_or_else(|| {
                invalid("training labels", format!("label {y} of example {i} is not below {classes} classes"))
            })?;
            *count += 1;
        }
        if let Some(k) = counts.iter().position(|&count| count == 0) {
            let reason = format!("class {k} has no example: its unpenalised intercept has no minimiser");
            return Err(invalid("training labels", reason));
        }
        let c = if classes == 2 { c / 2.0 } else { c };
        Ok(Self {
            x: features.iter().map(|&v| v as f64).collect(),
            y: labels.iter().map(|&y| y as usize).collect(),
            dim: features.len() / n,
            classes,
            l2: 1.0 / (c * n as f64),
        })
    }

    fn len(&self) -> usize {
        self.classes * (self.dim + 1)
    }

    /// The objective and its gradient at `theta`.
    fn evaluate(&self, theta: &[f64]) -> (f64, Vec<f64>) {
        let n = self.y.len();
        let rows = n.div_ceil(PARTS);
        let parts: Vec<(f64, Vec<f64>)> = (0..n.div_ceil(rows))
            .into_par_iter()
            .map(|p| self.cross_entropy_sum(theta, p * rows..((p + 1) * rows).min(n)))
            .collect();
        let mut grad = vec![0.0; theta.len()];
        let mut loss = 0.0;
        for (part_loss, part_grad) in parts {
            loss += part_loss;
            grad.iter_mut().zip(part_grad).for_each(|(g, p)| *g += p);
        }
        let weights = self.classes * self.dim;
        grad.iter_mut().for_each(|g| *g /= n as f64);
        grad[..weights].iter_mut().zip(&theta[..weights]).for_each(|(g, w)| *g += self.l2 * w);
        let penalty = 0.5 * self.l2 * dot(&theta[..weights], &theta[..weights]);
        (loss / n as f64 + penalty, grad)
    }

    /// Σ CE over `rows` and its gradient: `(softmax(z) − onehot(y)) xᵀ` and `… − onehot(y)`.
    fn cross_entropy_sum(&self, theta: &[f64], rows: Range<usize>) -> (f64, Vec<f64>) {
        let (d, k) = (self.dim, self.classes);
        let (weight, bias) = theta.split_at(k * d);
        let mut grad = vec![0.0; theta.len()];
        let mut z = vec![0.0; k];
        let mut loss = 0.0;
        for i in rows {
            let x = &self.x[i * d..(i + 1) * d];
            z.iter_mut().enumerate().for_each(|(c, z)| *z = bias[c] + dot(&weight[c * d..(c + 1) * d], x));
            let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            loss += lse - z[self.y[i]];
            for (c, &zc) in z.iter().enumerate() {
                let residual = (zc - lse).exp() - if c == self.y[i] { 1.0 } else { 0.0 };
                grad[c * d..(c + 1) * d].iter_mut().zip(x).for_each(|(g, x)| *g += residual * x);
                grad[k * d + c] += residual;
            }
        }
        (loss, grad)
    }

    fn model(&self, theta: &[f64]) -> LogisticRegression {
        let (weight, bias) = theta.split_at(self.classes * self.dim);
        LogisticRegression {
            weight: weight.iter().map(|&v| v as f32).collect(),
            bias: bias.iter().map(|&v| v as f32).collect(),
            classes: self.classes,
            dim: self.dim,
        }
    }
}

struct Point {
    x: Vec<f64>,
    f: f64,
    g: Vec<f64>,
}

/// A line-search trial: step length, objective and directional derivative.
#[derive(Clone, Copy)]
struct Trial {
    step: f64,
    f: f64,
    slope: f64,
}

fn minimize(problem: &Problem, options: &LbfgsOptions) -> (Vec<f64>, FitReport) {
    let x = vec![0.0; problem.len()];
    let (f, g) = problem.evaluate(&x);
    let mut at = Point { x, f, g };
    let mut pairs: VecDeque<(Vec<f64>, Vec<f64>)> = VecDeque::new();
    let mut iterations = 0;
    let mut converged = max_abs(&at.g) <= options.tol;
    while !converged && iterations < options.max_iter {
        let direction = two_loop(&at.g, &pairs);
        let first_step = if pairs.is_empty() { 1.0 / dot(&direction, &direction).sqrt() } else { 1.0 };
        let Some(next) = line_search(problem, &at, &direction, first_step) else {
            if pairs.is_empty() {
                break;
            }
            pairs.clear();
            continue;
        };
        let s: Vec<f64> = next.x.iter().zip(&at.x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = next.g.iter().zip(&at.g).map(|(a, b)| a - b).collect();
        if dot(&s, &y) > f64::EPSILON * dot(&y, &y) {
            if pairs.len() == options.history {
                pairs.pop_front();
            }
            pairs.push_back((s, y));
        }
        iterations += 1;
        let decrease = (at.f - next.f) / at.f.abs().max(next.f.abs()).max(1.0);
        at = next;
        converged = max_abs(&at.g) <= options.tol || decrease <= RELATIVE_DECREASE_TOL;
    }
    let report = FitReport { iterations, objective: at.f, grad_max_abs: max_abs(&at.g), converged };
    (at.x, report)
}

/// `−H g` with H the L-BFGS inverse-Hessian estimate from the `(s, y)` pairs.
fn two_loop(g: &[f64], pairs: &VecDeque<(Vec<f64>, Vec<f64>)>) -> Vec<f64> {
    let mut q = g.to_vec();
    let mut alphas = Vec::with_capacity(pairs.len());
    for (s, y) in pairs.iter().rev() {
        let alpha = dot(s, &q) / dot(s, y);
        q.iter_mut().zip(y).for_each(|(q, y)| *q -= alpha * y);
        alphas.push(alpha);
    }
    let gamma = pairs.back().map_or(1.0, |(s, y)| dot(s, y) / dot(y, y));
    q.iter_mut().for_each(|q| *q *= gamma);
    for ((s, y), alpha) in pairs.iter().zip(alphas.into_iter().rev()) {
        let beta = dot(y, &q) / dot(s, y);
        q.iter_mut().zip(s).for_each(|(q, s)| *q += (alpha - beta) * s);
    }
    q.iter_mut().for_each(|q| *q = -*q);
    q
}

/// A step along `direction` meeting the strong Wolfe conditions; failing that within the
/// evaluation budget, the best step with sufficient decrease; `None` if there is none.
fn line_search(problem: &Problem, at: &Point, direction: &[f64], mut step: f64) -> Option<Point> {
    let slope0 = dot(&at.g, direction);
    let mut lo = (Trial { step: 0.0, f: at.f, slope: slope0 }, None);
    let mut hi: Option<Trial> = None;
    for _ in 0..MAX_LINE_EVALUATIONS {
        let x: Vec<f64> = at.x.iter().zip(direction).map(|(x, d)| x + step * d).collect();
        let (f, g) = problem.evaluate(&x);
        let trial = Trial { step, f, slope: dot(&g, direction) };
        if !f.is_finite() || f > at.f + ARMIJO * step * slope0 || f >= lo.0.f {
            hi = Some(trial);
        } else if trial.slope.abs() <= -CURVATURE * slope0 {
            return Some(Point { x, f, g });
        } else {
            let beyond = hi.map_or(f64::INFINITY, |h| h.step - trial.step);
            if trial.slope * beyond >= 0.0 {
                hi = Some(lo.0);
            }
            lo = (trial, Some(Point { x, f, g }));
        }
        step = match hi {
            None => 4.0 * step,
            Some(h) if (h.step - lo.0.step).abs() > 1e-12 * h.step.abs() => cubic_minimizer(lo.0, h),
            Some(_) => break,
        };
    }
    lo.1
}

/// The minimiser of the cubic through two trials, kept 10 % inside their interval.
fn cubic_minimizer(a: Trial, b: Trial) -> f64 {
    let d1 = a.slope + b.slope - 3.0 * (a.f - b.f) / (a.step - b.step);
    let d2 = (b.step - a.step).signum() * (d1 * d1 - a.slope * b.slope).sqrt();
    let t = b.step - (b.step - a.step) * (b.slope + d2 - d1) / (b.slope - a.slope + 2.0 * d2);
    let (lo, hi) = (a.step.min(b.step), a.step.max(b.step));
    let margin = 0.1 * (hi - lo);
    if t.is_finite() {
        t.clamp(lo + margin, hi - margin)
    } else {
        0.5 * (lo + hi)
    }
}

/// The registry's entry: `[method] name = "lp"`, with `[lp]`.
pub const ENTRY: MethodEntry = MethodEntry { name: "lp", sections: &[SECTION], read };

/// The section of the linear probe's settings (LP, and LP-FT's first stage).
pub const SECTION: &str = "lp";

/// `[lp]`: the linear probe's settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LpSection {
    /// Inverse regularisation strengths tried; the best on ID validation is kept.
    pub c_grid: Vec<f64>,
    pub max_iter: usize,
}

impl Default for LpSection {
    fn default() -> Self {
        Self { c_grid: DEFAULT_C_GRID.to_vec(), max_iter: 1000 }
    }
}

impl LpSection {
    /// Reads and checks `[lp]`.
    pub fn read(sections: &mut Sections) -> std::result::Result<Self, String> {
        let section: Self = sections.read(SECTION)?;
        if section.c_grid.is_empty() || section.c_grid.iter().any(|c| c.is_nan() || *c <= 0.0) {
            return Err("lp.c_grid must hold positive values".into());
        }
        Ok(section)
    }

    /// The linear probe on the run's frozen, normalised features, C chosen on ID validation.
    pub fn fit_head(&self, context: &mut Context<'_>) -> Result<Head> {
        (context.stage)("features for the linear probe".into());
        let (train_x, train_y) = (context.features)(SplitRole::Train)?;
        let (val_x, val_y) = (context.features)(SplitRole::Validation)?;
        (context.stage)("fitting the linear probe (L-BFGS)".into());
        let options = LbfgsOptions { max_iter: self.max_iter, ..LbfgsOptions::default() };
        let classes = context.zero_shot.num_classes();
        let selection = select_c((&train_x, &train_y), (&val_x, &val_y), classes, &self.c_grid, &options)?;
        let c = selection.c;
        let accuracy = selection.sweep.iter().find(|(grid_c, _)| *grid_c == c).map_or(f64::NAN, |s| s.1);
        (context.stage)(format!("linear probe: C = {c} (ID validation top-1 {accuracy:.3})"));
        let fit = selection.model;
        let device = context.model.device();
        Ok(Head {
            weight: Tensor::from_vec(fit.weight, (fit.classes, fit.dim), device)?,
            bias: Some(Tensor::from_vec(fit.bias, fit.classes, device)?),
        })
    }
}

/// LP: the linear probe on frozen features; the towers stay pre-trained.
struct LinearProbe(LpSection);

fn read(sections: &mut Sections) -> std::result::Result<Box<dyn Method>, String> {
    Ok(Box::new(LinearProbe(LpSection::read(sections)?)))
}

impl Method for LinearProbe {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn trains(&self) -> bool {
        false
    }

    fn validation_user(&self) -> Option<&'static str> {
        Some("the linear probe")
    }

    fn prepare(&self, context: &mut Context<'_>) -> Result<Prepared> {
        Ok(Prepared::Fitted(Outcome::Head(self.0.fit_head(context)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences of the objective agree with the analytic gradient in every entry.
    #[test]
    fn gradient_matches_finite_differences() {
        let (n, d, k) = (9, 4, 3);
        let features: Vec<f32> = (0..n * d).map(|i| ((i * 37 % 23) as f32 / 11.0 - 1.0).sin()).collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % k as u32).collect();
        let problem = Problem::new(&features, &labels, k, 0.7).unwrap();
        let theta: Vec<f64> = (0..problem.len()).map(|i| ((i * 13 % 7) as f64 - 3.0) / 4.0).collect();
        let (_, grad) = problem.evaluate(&theta);
        let h = 1e-6;
        for i in 0..theta.len() {
            let mut plus = theta.clone();
            let mut minus = theta.clone();
            plus[i] += h;
            minus[i] -= h;
            let numeric = (problem.evaluate(&plus).0 - problem.evaluate(&minus).0) / (2.0 * h);
            assert!((numeric - grad[i]).abs() < 1e-8, "entry {i}: {numeric} vs {}", grad[i]);
        }
    }
}
