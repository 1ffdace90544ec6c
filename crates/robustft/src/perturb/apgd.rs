//! APGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
//! ensemble of diverse parameter-free attacks"): the difference-of-logits-ratio loss.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Per-example DLR loss `−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)` of `logits` `[n, k]`
/// (π sorts the logits in decreasing order; torchattacks `APGD.dlr_loss`), differentiable
/// through the picked logits. Needs at least three classes.
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
    for (row, &y) in rows.iter().zip(&targets) {
        let mut order: Vec<u32> = (0..row.len() as u32).collect();
        order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        other.push(if order[0] == y { order[1] } else { order[0] });
        first.push(order[0]);
        third.push(order[2]);
    }
    let pick = |indices: Vec<u32>| -> Result<Tensor> {
        let n = indices.len();
        let index = Tensor::from_vec(indices, (n, 1), logits.device())?;
        Ok(logits.gather(&index, 1)?.squeeze(1)?)
    };
    let true_logit = logits.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    let margin = (true_logit - pick(other)?)?;
    let spread = ((pick(first)? - pick(third)?)? + 1e-12)?;
    Ok(margin.div(&spread)?.neg()?)
}

use super::pgd::Norm;
use super::{AttackLoss, PixelClassifier};

/// APGD's settings.
pub struct Apgd {
    pub norm: Norm,
    pub eps: f32,
    pub steps: usize,
    pub loss: AttackLoss,
    pub rho: f32,
}

impl Apgd {
    pub fn new(norm: Norm, eps: f32, steps: usize, loss: AttackLoss) -> Self {
        Self { norm, eps, steps, loss, rho: 0.75 }
    }

    pub fn attack(
        &self,
        _classifier: &dyn PixelClassifier,
        _images: &Tensor,
        _labels: &Tensor,
        _start: &Tensor,
        _trace: Option<&mut Vec<f32>>,
    ) -> Result<Tensor> {
        Err(Error::Invalid { what: "APGD".into(), reason: "pending".into() })
    }
}

pub fn random_start(
    norm: Norm,
    eps: f32,
    shape: &[usize],
    seeds: &[u64],
    device: &candle_core::Device,
) -> Result<Tensor> {
    super::pgd::random_start(norm, eps, shape, seeds, device)
}
