//! DiGraP — Directional Gradient Projection (Huang, Tian, Maneechotesuwan, Chopra, Kira;
//! ICLR 2025; arXiv 2502.15895; methods.md §3.6): per layer, the task gradient is projected
//! toward the plane orthogonal to the gradient of the regulariser ½‖θ − θ₀‖² when the two
//! conflict, with a strength ω ∈ [0, 1] that each layer learns by a hyper-gradient.
//!
//! Sources: the paper's Figure 1 caption and its Algorithm 1 ("Adam with Trainable
//! Directional Gradient Projection", as quoted by public digests of the paper), and the
//! behaviour of the authors' research optimiser (github.com/chengyuehuang511/vlm_robustness,
//! `optimizer/spcg.py`: `SPCG` with its `TPCGrad` strength learner). The paper's own repository
//! could not be read, so this is the project's reconstruction, not a verified copy of the
//! released recipe. At optimiser step t = 1, 2, … and for every parameter tensor ("layer") with
//! a pre-trained value θ₀ and a gradient g, matching no exclusion pattern:
//!
//! * r = θ − θ₀ (the regulariser's gradient), d = ⟨g, r⟩ and q = ‖r‖² over the whole tensor;
//! * ω: 0 at t = 1; afterwards the hyper-gradient
//!   h = Σ unit(g + λr) ⊙ unit(p_{t−1}) — `unit` normalises along dim 1 for tensors of rank
//!   ≥ 2 (`torch.nn.functional.normalize(x, dim=1)`, eps 1e-12, as the research code does) and
//!   the whole tensor for rank ≤ 1 (where `normalize(x, dim=1)` is undefined) — feeds a scalar
//!   Adam (β = (0.9, 0.999), eps 1e-8 added to √v̂, bias corrections with the global step t,
//!   learning rate μ), and ω is clamped to [0, 1]. This is gradient descent on ω of the loss at
//!   θ_t = θ_{t−1} − α(g_{t−1} − ω p_{t−1}), whose exact derivative α⟨g_t, p_{t−1}⟩ the paper
//!   and the code normalise ("Normalization(α_{t−1} g_{t,1} · g^proj_{t−1,1})");
//! * p_t = d / (q + 1e-8) · r, the projection of g on r, kept for the next step whether or not
//!   the layer conflicted (as the research code does);
//! * on conflict g' = g − ω (d / q) r, otherwise g' = g; then g' += λr.
//!
//! Options (defaults named in README.md):
//!
//! * [`Conflict`]: which sign of d is a conflict. Default [`Conflict::Opposed`], d < 0: the
//!   research code's test and the two-gradient reading of Figure 1 (descending along g moves
//!   away from θ₀ to first order). Algorithm 1, as quoted, reads "if g_{t,1}·g_{t,2} < 0 then
//!   unconstrained", the reverse; [`Conflict::Aligned`] (d > 0) implements that reading.
//! * λ (`constraint.lambda`): also add the regulariser's gradient λr after the projection (the
//!   authors' earlier `PCGrad` variant); default 0, off, as in `SPCG`. With λ > 0 the
//!   hyper-gradient sees the gradient of the regularised objective, g + λr, as that variant's.
//! * μ (`constraint.mu`): ω's learning rate (the research code uses 5e-2).
//!
//! In the training loop the projection comes before gradient clipping, while the authors'
//! optimiser sees clipped gradients: the conflict test and ω's update are invariant to that
//! scale; only the clipping factor, computed on the projected gradients, can differ. The
//! authors' optimiser has no decoupled weight decay (`recipes/shiftworld/digrap.toml` sets
//! `train.weight_decay = 0`). A parameter without θ₀ (a new head) or excluded keeps its
//! gradient; one without a gradient is skipped. The state — the step, each layer's ω with its
//! Adam moments (kept in float32, what checkpoints store), and its last projection — is saved
//! with every checkpoint, so a resumed run is bit-exact.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{exclusions, read_section, Constraint, ConstraintEntry, ConstraintSpec, Params, RecipeContext};
use crate::error::{Error, Result};
use crate::sections::Sections;

/// The registry's entry: `[constraint] name = "digrap"`.
pub const ENTRY: ConstraintEntry = ConstraintEntry { name: "digrap", read };

/// `[constraint]` keys of DiGraP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DigrapSection {
    /// ω's learning rate.
    pub mu: f64,
    /// Weight of the regulariser gradient λ(θ − θ₀) added after the projection (0: off).
    pub lambda: f64,
    /// Which sign of ⟨g, θ − θ₀⟩ is a conflict.
    pub conflict: Conflict,
    /// Regexes of parameter names left unconstrained.
    pub exclude: Vec<String>,
}

impl Default for DigrapSection {
    fn default() -> Self {
        Self { mu: 1e-2, lambda: 0.0, conflict: Conflict::Opposed, exclude: Vec::new() }
    }
}

fn read(sections: &mut Sections, _: &RecipeContext) -> std::result::Result<Box<dyn ConstraintSpec>, String> {
    let section: DigrapSection = read_section(sections, ENTRY.name)?;
    if !(section.mu.is_finite() && section.mu > 0.0) {
        return Err(format!(
            "constraint digrap needs constraint.mu > 0 (ω's learning rate), not {}",
            section.mu
        ));
    }
    if !(section.lambda.is_finite() && section.lambda >= 0.0) {
        return Err(format!(
            "constraint digrap needs constraint.lambda ≥ 0 (the regulariser gradient's weight), not {}",
            section.lambda
        ));
    }
    Ok(Box::new(section))
}

impl ConstraintSpec for DigrapSection {
    fn build(&self) -> Result<Box<dyn Constraint>> {
        Ok(Box::new(Digrap::new(DigrapOptions {
            mu: self.mu,
            lambda: self.lambda,
            conflict: self.conflict,
            exclude: exclusions(&self.exclude)?,
        })))
    }
}

/// Adam's moment decays and epsilon for ω (the research code's `TPCGrad`).
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;
/// Added to ‖r‖² in the projection kept for the hyper-gradient.
const PROJECTION_EPS: f64 = 1e-8;
/// Floor of a slice's norm in `unit` (`F.normalize`'s eps).
const UNIT_EPS: f64 = 1e-12;

/// State-tensor names: the step, and per layer `[ω, Adam m, Adam v]` and the last projection.
const STEP_KEY: &str = "step";
/// Checkpoints store float32: the step is saved as `[step / 2²⁴, step mod 2²⁴]`, both exact.
const STEP_RADIX: u64 = 1 << 24;
const OMEGA_PREFIX: &str = "omega.";
const PROJECTION_PREFIX: &str = "projection.";

/// Which sign of ⟨g, θ − θ₀⟩ counts as a conflict between the task and the regulariser.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    /// ⟨g, θ − θ₀⟩ < 0: a descent step along g moves away from θ₀ (the default).
    #[default]
    Opposed,
    /// ⟨g, θ − θ₀⟩ > 0: Algorithm 1's condition as quoted.
    Aligned,
}

impl Conflict {
    fn holds(self, dot: f64) -> bool {
        match self {
            Self::Opposed => dot < 0.0,
            Self::Aligned => dot > 0.0,
        }
    }
}

/// DiGraP's hyper-parameters.
#[derive(Clone, Debug)]
pub struct DigrapOptions {
    /// Learning rate of each layer's ω.
    pub mu: f64,
    /// Weight of the regulariser's gradient added after the projection (0: off).
    pub lambda: f64,
    pub conflict: Conflict,
    /// Parameters matching one of these are left alone.
    pub exclude: Vec<regex::Regex>,
}

/// One layer's learned strength and what its next hyper-gradient needs. ω and its moments are
/// updated in float64 and kept in float32, what checkpoints store, so a resumed run continues
/// from exactly the values an uninterrupted one holds.
#[derive(Clone, Debug, Default)]
struct LayerState {
    omega: f32,
    m: f32,
    v: f32,
    /// p of the previous step (none before the layer's first step: taken as zero).
    projection: Option<Tensor>,
}

impl LayerState {
    /// One Adam step of ω on the hyper-gradient `h` at global step `t`, clamped to [0, 1].
    fn update_omega(&mut self, h: f64, t: u64, mu: f64) {
        let m = BETA1 * self.m as f64 + (1.0 - BETA1) * h;
        let v = BETA2 * self.v as f64 + (1.0 - BETA2) * h * h;
        let m_hat = m / (1.0 - BETA1.powf(t as f64));
        let v_hat = v / (1.0 - BETA2.powf(t as f64));
        let omega = (self.omega as f64 - mu * m_hat / (v_hat.sqrt() + ADAM_EPS)).clamp(0.0, 1.0);
        (self.omega, self.m, self.v) = (omega as f32, m as f32, v as f32);
    }
}

/// A constrained layer's tensors at this step.
struct LayerStep<'a> {
    name: &'a str,
    param: &'a Tensor,
    grad: Tensor,
    offset: Tensor,
}

/// ⟨g, r⟩, ‖r‖² and ω's hyper-gradient of one layer.
struct LayerStatistics {
    dot: f64,
    squared_offset: f64,
    hyper_gradient: f64,
}

/// DiGraP with learned per-layer strengths.
pub struct Digrap {
    options: DigrapOptions,
    step: u64,
    layers: BTreeMap<String, LayerState>,
}

impl Digrap {
    pub fn new(options: DigrapOptions) -> Self {
        Self { options, step: 0, layers: BTreeMap::new() }
    }

    /// The current strength ω of a layer (none before its first step).
    pub fn omega(&self, name: &str) -> Option<f32> {
        self.layers.get(name).map(|layer| layer.omega)
    }

    /// The anchored, non-excluded parameters that have a gradient, with r = θ − θ₀.
    fn constrained_layers<'a>(
        &self,
        grads: &GradStore,
        params: &'a Params,
        anchor: &'a HashMap<String, Tensor>,
    ) -> Result<Vec<LayerStep<'a>>> {
        let mut layers = Vec::new();
        for (name, var, _) in params {
            let Some(reference) = super::is_anchored(name, anchor, &self.options.exclude) else { continue };
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let offset = (var.as_tensor() - reference)?;
            layers.push(LayerStep { name, param: var.as_tensor(), grad: grad.clone(), offset });
        }
        Ok(layers)
    }

    /// Every layer's statistics, read back from the device in one transfer.
    fn statistics(&self, layers: &[LayerStep<'_>]) -> Result<Vec<LayerStatistics>> {
        let mut scalars = Vec::with_capacity(3 * layers.len());
        for layer in layers {
            scalars.push((&layer.grad * &layer.offset)?.sum_all()?);
            scalars.push(layer.offset.sqr()?.sum_all()?);
            scalars.push(self.hyper_gradient(layer)?);
        }
        let values = Tensor::stack(&scalars, 0)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        Ok(values
            .chunks(3)
            .map(|v| LayerStatistics { dot: v[0], squared_offset: v[1], hyper_gradient: v[2] })
            .collect())
    }

    /// h = Σ unit(g + λr) ⊙ unit(p_{t−1}), as a scalar tensor (zero without a previous p).
    fn hyper_gradient(&self, layer: &LayerStep<'_>) -> Result<Tensor> {
        let previous = self.layers.get(layer.name).and_then(|state| state.projection.as_ref());
        let Some(previous) = previous else {
            return Ok(Tensor::zeros((), layer.grad.dtype(), layer.grad.device())?);
        };
        let lambda = self.options.lambda;
        let objective =
            if lambda == 0.0 { layer.grad.clone() } else { (&layer.grad + (&layer.offset * lambda)?)? };
        let previous = previous.to_device(layer.grad.device())?;
        Ok((unit(&objective)? * unit(&previous)?)?.sum_all()?)
    }
}

/// `x` with unit L2 slices along dim 1 (rank ≥ 2) or as a unit tensor (rank ≤ 1); a slice's
/// norm is floored at 1e-12, as `F.normalize`.
fn unit(x: &Tensor) -> Result<Tensor> {
    let norm = if x.rank() >= 2 { x.sqr()?.sum_keepdim(1)?.sqrt()? } else { x.sqr()?.sum_all()?.sqrt()? };
    Ok(x.broadcast_div(&norm.maximum(UNIT_EPS)?)?)
}

impl Constraint for Digrap {
    fn adjust_gradients(
        &mut self,
        grads: &mut GradStore,
        params: &Params,
        anchor: &HashMap<String, Tensor>,
    ) -> Result<()> {
        self.step += 1;
        let layers = self.constrained_layers(grads, params, anchor)?;
        if layers.is_empty() {
            return Ok(());
        }
        let statistics = self.statistics(&layers)?;
        let DigrapOptions { mu, lambda, conflict, .. } = self.options;
        for (layer, stats) in layers.iter().zip(statistics) {
            let state = self.layers.entry(layer.name.to_string()).or_default();
            if self.step >= 2 {
                state.update_omega(stats.hyper_gradient, self.step, mu);
            }
            let (dot, squared) = (stats.dot, stats.squared_offset);
            state.projection = Some((&layer.offset * (dot / (squared + PROJECTION_EPS)))?);
            let projected = if conflict.holds(dot) { state.omega as f64 * dot / squared } else { 0.0 };
            let pull = lambda - projected;
            if pull != 0.0 {
                grads.insert(layer.param, (&layer.grad + (&layer.offset * pull)?)?);
            }
        }
        Ok(())
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let step = [(self.step / STEP_RADIX) as f32, (self.step % STEP_RADIX) as f32];
        let mut state = vec![(STEP_KEY.to_string(), Tensor::new(&step, &Device::Cpu)?)];
        for (name, layer) in &self.layers {
            let omega = Tensor::new(&[layer.omega, layer.m, layer.v], &Device::Cpu)?;
            state.push((format!("{OMEGA_PREFIX}{name}"), omega));
            if let Some(projection) = &layer.projection {
                state.push((format!("{PROJECTION_PREFIX}{name}"), projection.clone()));
            }
        }
        Ok(state)
    }

    fn restore(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let invalid =
            |reason: String| Error::Invalid { what: "DiGraP state in the checkpoint".into(), reason };
        let step = state.get(STEP_KEY).ok_or_else(|| invalid(format!("lacks `{STEP_KEY}`")))?;
        let [high, low] = step.to_dtype(DType::F32)?.to_vec1::<f32>()?[..] else {
            return Err(invalid(format!("`{STEP_KEY}` is not [step / 2²⁴, step mod 2²⁴]")));
        };
        self.step = high as u64 * STEP_RADIX + low as u64;
        self.layers.clear();
        for (key, tensor) in state {
            if let Some(name) = key.strip_prefix(OMEGA_PREFIX) {
                let values = tensor.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let [omega, m, v] = values[..] else {
                    return Err(invalid(format!("`{key}` holds {} values, not [ω, m, v]", values.len())));
                };
                let layer = self.layers.entry(name.to_string()).or_default();
                (layer.omega, layer.m, layer.v) = (omega, m, v);
            } else if let Some(name) = key.strip_prefix(PROJECTION_PREFIX) {
                self.layers.entry(name.to_string()).or_default().projection = Some(tensor.clone());
            }
        }
        Ok(())
    }
}
