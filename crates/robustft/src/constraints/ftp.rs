//! FTP — Fast Trainable Projection (Tian, Liu, Kira, Hoffman, "Fast Trainable Projection for
//! Robust Fine-Tuning", NeurIPS 2023; methods.md §3.2), with the behaviour of `util/FTP.py`
//! (`AdamP`) in GT-RIPL/FTP: after the ordinary AdamW step (its decoupled weight decay
//! included), every anchored tensor is projected into a ball around its pre-trained value θ₀
//! whose radius γ, one scalar per tensor, is learned on the fly.
//!
//! At optimiser step t, for each anchored tensor with AdamW candidate θ̃ and gradient g (after
//! clipping, as `p.grad` in PyTorch):
//!
//! * offset c_t = θ̃ − θ₀ and per-output-row L1 norms n_t = Σ_{all dims but 0} |c_t| + 1e-8 (a
//!   1-d tensor is one row, a 0-d one its own row, as PyTorch's `sum` over an empty `dim`
//!   tuple reduces everything);
//! * the radius: γ = 1e-8 the first time the tensor is seen (t = 1); afterwards the
//!   hyper-gradient g_γ = Σ g ⊙ c_{t−1} ⊙ (1 / n_{t−1}) (this step's gradient against the
//!   previous step's offset and norms), multiplied by `k` when positive, drives one Adam step
//!   γ ← γ − μ·m̂/(√v̂ + 1e-8) with β = (0.9, 0.999) and bias corrections 1 − βᵗ at the global
//!   step t (so γ's first Adam step is corrected with t = 2, as in FTP.py), and γ is clipped to
//!   [1e-8, max n_t];
//! * the projection θ = θ₀ + clamp(γ / n_t, 0, 1) ⊙ c_t, the ratio broadcast per row.
//!
//! Parameters without a pre-trained value (a new head) or matching `constraint.exclude` take
//! the plain AdamW step (FTP's `exclude_set`). The state — γ, its Adam moments, c_{t−1} and
//! 1 / n_{t−1} per tensor — is keyed by parameter name (FTP.py indexes its buffers by position)
//! and kept in float32, as FTP.py's tensors, so a checkpoint holds it exactly and a resumed run
//! continues bit for bit.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor};

use super::{
    check_positive, exclusions, is_anchored, read_section, Constraint, ConstraintEntry, ConstraintSpec,
    RecipeContext, StepContext,
};
use crate::error::{Error, Result};
use crate::sections::Sections;

/// The registry's entry: `[constraint] name = "ftp"`.
pub const ENTRY: ConstraintEntry = ConstraintEntry { name: "ftp", read };

/// `[constraint]` keys of FTP: it learns its radii, so `k` and `mu` are its knobs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FtpSection {
    /// Factor on positive hyper-gradients of the radii (the annealing factor).
    pub k: f64,
    /// The radii's learning rate (a scalar Adam per tensor).
    pub mu: f64,
    /// Regexes of parameter names left unconstrained.
    pub exclude: Vec<String>,
}

impl Default for FtpSection {
    fn default() -> Self {
        Self { k: 1.0, mu: 1e-2, exclude: Vec::new() }
    }
}

fn read(sections: &mut Sections, _: &RecipeContext) -> std::result::Result<Box<dyn ConstraintSpec>, String> {
    let section: FtpSection = read_section(sections, ENTRY.name)?;
    if !(section.k.is_finite() && section.k >= 0.0) {
        return Err(format!("constraint.k = {} must be a finite number ≥ 0", section.k));
    }
    check_positive("mu", section.mu, "the radii's learning rate")?;
    Ok(Box::new(section))
}

impl ConstraintSpec for FtpSection {
    fn build(&self) -> Result<Box<dyn Constraint>> {
        Ok(Box::new(Ftp::new(self.k, self.mu, exclusions(&self.exclude)?)))
    }
}

/// The radius of a tensor the first time it is projected, and γ's lower bound.
const MIN_RADIUS: f64 = 1e-8;
/// Added to the row norms.
const NORM_EPS: f64 = 1e-8;
/// γ's Adam: (β₁, β₂, ε).
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// The per-tensor state kinds, as saved by [`Constraint::state`] (`<kind>.<parameter>`).
const KINDS: [&str; 5] = ["gamma", "gamma_m", "gamma_v", "offset", "inv_norm"];

/// Fast Trainable Projection: `k` scales positive hyper-gradients, `mu` is γ's learning rate.
pub struct Ftp {
    k: f64,
    mu: f64,
    exclude: Vec<regex::Regex>,
    layers: BTreeMap<String, Layer>,
}

/// One tensor's learned radius and what the next hyper-gradient needs.
struct Layer {
    gamma: f32,
    m: f32,
    v: f32,
    /// c_{t−1}.
    offset: Tensor,
    /// 1 / n_{t−1}, shaped to broadcast over the rows.
    inv_norm: Tensor,
}

impl Ftp {
    pub fn new(k: f64, mu: f64, exclude: Vec<regex::Regex>) -> Self {
        Self { k, mu, exclude, layers: BTreeMap::new() }
    }

    /// γ for this step: 1e-8 for a new tensor, else one Adam step on the hyper-gradient,
    /// clipped to [1e-8, max n]; returns (γ, m, v).
    fn radius(&self, name: &str, grad: &Tensor, max_norm: f64, step: u64) -> Result<(f32, f32, f32)> {
        let Some(layer) = self.layers.get(name) else { return Ok((MIN_RADIUS as f32, 0.0, 0.0)) };
        let offset = layer.offset.to_device(grad.device())?;
        let inv_norm = layer.inv_norm.to_device(grad.device())?;
        let raw = (grad * offset)?.broadcast_mul(&inv_norm)?.sum_all()?.to_scalar::<f32>()? as f64;
        let hyper_grad = if raw > 0.0 { raw * self.k } else { raw };
        let m = BETA1 * layer.m as f64 + (1.0 - BETA1) * hyper_grad;
        let v = BETA2 * layer.v as f64 + (1.0 - BETA2) * hyper_grad * hyper_grad;
        let t = step as i32;
        let (m_hat, v_hat) = (m / (1.0 - BETA1.powi(t)), v / (1.0 - BETA2.powi(t)));
        let gamma = layer.gamma as f64 - self.mu * m_hat / (v_hat.sqrt() + ADAM_EPS);
        Ok((gamma.max(MIN_RADIUS).min(max_norm) as f32, m as f32, v as f32))
    }
}

impl Constraint for Ftp {
    fn after_step(&mut self, context: &StepContext<'_>) -> Result<()> {
        for (name, var, _) in context.params {
            let Some(anchor) = is_anchored(name, context.anchor, &self.exclude) else { continue };
            let Some(grad) = context.grads.get(var.as_tensor()) else { continue };
            let offset = (var.as_tensor() - anchor)?;
            let norms = row_l1_norms(&offset)?;
            let max_norm = norms.flatten_all()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let (gamma, m, v) = self.radius(name, grad, max_norm, context.step)?;
            let inv_norm = norms.recip()?;
            let ratio = (&inv_norm * gamma as f64)?.clamp(0f32, 1f32)?;
            var.set(&anchor.broadcast_add(&ratio.broadcast_mul(&offset)?)?)?;
            self.layers.insert(name.clone(), Layer { gamma, m, v, offset, inv_norm });
        }
        Ok(())
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(KINDS.len() * self.layers.len());
        for (name, layer) in &self.layers {
            let device = layer.offset.device();
            for (kind, value) in [("gamma", layer.gamma), ("gamma_m", layer.m), ("gamma_v", layer.v)] {
                out.push((format!("{kind}.{name}"), Tensor::new(value, device)?));
            }
            out.push((format!("offset.{name}"), layer.offset.clone()));
            out.push((format!("inv_norm.{name}"), layer.inv_norm.clone()));
        }
        Ok(out)
    }

    fn restore(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.layers.clear();
        for name in state.keys().filter_map(|key| key.strip_prefix("gamma.")) {
            let fetch = |kind: &str| {
                let key = format!("{kind}.{name}");
                state.get(&key).cloned().ok_or_else(|| Error::Invalid {
                    what: format!("constraint ftp state of `{name}`"),
                    reason: format!("lacks `{key}` (it needs {})", KINDS.join(", ")),
                })
            };
            let scalar = |kind: &str| -> Result<f32> { Ok(fetch(kind)?.to_scalar::<f32>()?) };
            let layer = Layer {
                gamma: scalar("gamma")?,
                m: scalar("gamma_m")?,
                v: scalar("gamma_v")?,
                offset: fetch("offset")?,
                inv_norm: fetch("inv_norm")?,
            };
            self.layers.insert(name.to_string(), layer);
        }
        Ok(())
    }
}

/// n = Σ_{all dims but 0} |c| + 1e-8 (see [`row_l1_sums`]).
fn row_l1_norms(offset: &Tensor) -> Result<Tensor> {
    Ok((row_l1_sums(offset)? + NORM_EPS)?)
}

/// Σ_{all dims but 0} |c|, keeping the reduced dimensions (shape `[rows, 1, ...]`); a 1-d
/// tensor gives `[1]`, a 0-d one `[]` (PyTorch's `sum` over an empty `dim` tuple reduces
/// everything).
pub(super) fn row_l1_sums(offset: &Tensor) -> Result<Tensor> {
    let magnitude = offset.abs()?;
    Ok(match offset.rank() {
        0 => magnitude,
        1 => magnitude.sum_keepdim(0)?,
        rank => magnitude.sum_keepdim((1..rank).collect::<Vec<_>>())?,
    })
}
