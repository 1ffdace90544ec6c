//! AdamW (Loshchilov & Hutter, 2019) exactly as PyTorch's `torch.optim.AdamW` (single-tensor
//! path): decoupled decay `θ ← θ(1 − lr·wd)`, moments `m ← β₁m + (1−β₁)g`,
//! `v ← β₂v + (1−β₂)g²`, and `θ ← θ − (lr/bc₁)·m / (√v/√bc₂ + ε)` with bias corrections
//! `bc_i = 1 − β_iᵗ`.
//!
//! On the CPU the update runs in place on the parameters' own storage (a candle in-place op),
//! with the moments in host vectors and the work split over all cores: candle-nn's AdamW builds
//! several temporary tensors per parameter per step, which dominated a ViT-B/32 step. Other
//! devices use the same formula through tensor ops.
//!
//! Parameter groups: weight decay is skipped for parameters named as biases, LayerNorms,
//! embeddings and the logit scale (the usual CLIP fine-tuning convention; see
//! [`decays_by_default`]).

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Device, Layout, Result, Tensor, Var};
use rayon::prelude::*;

/// AdamW hyper-parameters (PyTorch's defaults except the learning rate).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// Whether a parameter gets weight decay under the usual CLIP convention: not biases,
/// LayerNorms, embeddings (class, token, position) or the logit scale.
pub fn decays_by_default(name: &str) -> bool {
    let exempt = name.ends_with(".bias")
        || name.contains("norm")
        || name.contains("layrnorm")
        || name.contains("embedding")
        || name == "logit_scale";
    !exempt
}

/// Parameters with the default weight-decay grouping of [`decays_by_default`].
pub fn default_groups<'a>(params: impl IntoIterator<Item = (&'a str, &'a Var)>) -> Vec<(String, Var, bool)> {
    params.into_iter().map(|(name, var)| (name.to_string(), var.clone(), decays_by_default(name))).collect()
}

enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    moments: Moments,
}

/// AdamW over a fixed, ordered list of named parameters.
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    /// `params`: `(name, var, apply_weight_decay)` in a stable order.
    pub fn new(params: Vec<(String, Var, bool)>, config: AdamWConfig) -> Result<Self> {
        let slots = params
            .into_iter()
            .map(|(name, var, decay)| {
                let moments = if var.device().is_cpu() {
                    Moments::Host { m: vec![0.0; var.elem_count()], v: vec![0.0; var.elem_count()] }
                } else {
                    Moments::Device { m: var.zeros_like()?, v: var.zeros_like()? }
                };
                Ok(Slot { name, var, decay, moments })
            })
            .collect::<Result<_>>()?;
        Ok(Self { config, slots, step: 0 })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update from the gradients in `grads`; parameters without a gradient are left
    /// untouched (as PyTorch skips `p.grad is None`).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let hyper = StepHyper::new(&self.config, self.step);
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else { continue };
            let weight_decay = if slot.decay { self.config.weight_decay } else { 0.0 };
            match &mut slot.moments {
                Moments::Host { m, v } => {
                    let op = HostUpdate { hyper, weight_decay, m: RefCell::new(m), v: RefCell::new(v) };
                    slot.var.as_tensor().inplace_op2(grad, &op)?;
                }
                Moments::Device { m, v } => device_update(&slot.var, grad, m, v, hyper, weight_decay)?,
            }
        }
        Ok(())
    }

    /// Names of the parameters this optimiser updates, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`), for the trainer state file.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for slot in &self.slots {
            let (m, v) = match &slot.moments {
                Moments::Host { m, v } => {
                    let shape = slot.var.shape();
                    (Tensor::from_slice(m, shape, &Device::Cpu)?, Tensor::from_slice(v, shape, &Device::Cpu)?)
                }
                Moments::Device { m, v } => (m.clone(), v.clone()),
            };
            out.push((format!("m.{}", slot.name), m));
            out.push((format!("v.{}", slot.name), v));
        }
        Ok(out)
    }

    /// Restores the moments saved by [`AdamW::state_tensors`] and the step count, so the
    /// next update is exactly the one an uninterrupted run would make.
    pub fn restore(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for slot in &mut self.slots {
            let fetch = |kind: &str| -> Result<Tensor> {
                let key = format!("{kind}.{}", slot.name);
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks `{key}`")))?;
                if t.shape() != slot.var.shape() {
                    candle_core::bail!(
                        "optimizer state `{key}` has shape {:?}, the parameter {:?}",
                        t.dims(),
                        slot.var.dims()
                    );
                }
                Ok(t.clone())
            };
            let (m, v) = (fetch("m")?, fetch("v")?);
            slot.moments = match slot.moments {
                Moments::Host { .. } => {
                    Moments::Host { m: m.flatten_all()?.to_vec1()?, v: v.flatten_all()?.to_vec1()? }
                }
                Moments::Device { .. } => {
                    Moments::Device { m: m.to_device(slot.var.device())?, v: v.to_device(slot.var.device())? }
                }
            };
        }
        self.step = steps;
        Ok(())
    }
}

/// Per-step constants shared by every parameter.
#[derive(Clone, Copy, Debug)]
struct StepHyper {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    bias_correction1: f64,
    sqrt_bias_correction2: f64,
}

impl StepHyper {
    fn new(config: &AdamWConfig, step: u64) -> Self {
        let t = step as i32;
        Self {
            lr: config.lr,
            beta1: config.beta1,
            beta2: config.beta2,
            eps: config.eps,
            bias_correction1: 1.0 - config.beta1.powi(t),
            sqrt_bias_correction2: (1.0 - config.beta2.powi(t)).sqrt(),
        }
    }
}

/// Elements per parallel work item of the host update.
const CHUNK: usize = 1 << 14;

struct HostUpdate<'a> {
    hyper: StepHyper,
    weight_decay: f64,
    m: RefCell<&'a mut Vec<f32>>,
    v: RefCell<&'a mut Vec<f32>>,
}

impl candle_core::InplaceOp2 for HostUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        param: &mut CpuStorage,
        param_l: &Layout,
        grad: &CpuStorage,
        grad_l: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(param), CpuStorage::F32(grad)) = (param, grad) else {
            candle_core::bail!("adamw-update expects f32 parameters and gradients");
        };
        let (Some((p0, p1)), Some((g0, g1))) = (param_l.contiguous_offsets(), grad_l.contiguous_offsets())
        else {
            candle_core::bail!("adamw-update expects contiguous parameters and gradients");
        };
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        let h = self.hyper;
        let decay = (1.0 - h.lr * self.weight_decay) as f32;
        let (b1, b2) = (h.beta1 as f32, h.beta2 as f32);
        // 1 − β in f64, as PyTorch passes it (0.001, not 1 − 0.999f32 = 0.00099998713).
        let (c1, c2) = ((1.0 - h.beta1) as f32, (1.0 - h.beta2) as f32);
        let step_size = (h.lr / h.bias_correction1) as f32;
        let (sqrt_bc2, eps) = (h.sqrt_bias_correction2 as f32, h.eps as f32);
        param[p0..p1]
            .par_chunks_mut(CHUNK)
            .zip(grad[g0..g1].par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| {
                for i in 0..p.len() {
                    let gi = g[i];
                    m[i] = b1 * m[i] + c1 * gi;
                    v[i] = b2 * v[i] + c2 * gi * gi;
                    let denom = v[i].sqrt() / sqrt_bc2 + eps;
                    p[i] = p[i] * decay - step_size * (m[i] / denom);
                }
            });
        Ok(())
    }
}

/// The same update through tensor ops (GPU path).
fn device_update(
    var: &Var,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    h: StepHyper,
    wd: f64,
) -> Result<()> {
    *m = ((&*m * h.beta1)? + (grad * (1.0 - h.beta1))?)?;
    *v = ((&*v * h.beta2)? + (grad.sqr()? * (1.0 - h.beta2))?)?;
    let denom = ((v.sqrt()? / h.sqrt_bias_correction2)? + h.eps)?;
    let update = (m.div(&denom)? * (h.lr / h.bias_correction1))?;
    let decayed = (var.as_tensor() * (1.0 - h.lr * wd))?;
    var.set(&(decayed - update)?)
}
