//! Dual Risk Minimization (Li et al., NeurIPS 2024; methods.md §1 and §1b). The official
//! training code was never published; this is the reconstruction of methods.md §1b, with
//! every unconfirmed choice an option:
//!
//! 1. **Core-based zero-shot prediction** `p_c(·|x)`, fixed, from the frozen pre-trained model
//!    θ₀: affinities `a_k(x) = cos(f_θ₀(x), ḡ_θ₀(cd_k))` with the concept-description (CD)
//!    class embeddings ḡ; *affinity normalisation* [`AffinityNorm`] (`none`, `center` — the
//!    default: subtract each class's mean affinity over the training set —, `standardize`:
//!    also divide by the class's standard deviation (population, ddof 0) and multiply by the
//!    mean of those deviations); then `p_c = softmax_k(exp(s₀) · a'_k(x))`. Without
//!    augmentation the student sees the same view every epoch, so `p_c` is computed once for
//!    the whole training set and indexed by example.
//! 2. **WRM term** on the CD head of the *current* towers,
//!    `p^cd_θ(k|x) = softmax_k(exp(s) · cos(f_θ(x), ḡ_θ(cd_k)))`: [`Wrm::Soft`] (default)
//!    `L = E_x[−Σ_k p_c(k|x) log p^cd_θ(k|x)]`, or [`Wrm::Reweighted`]
//!    `L = E[w · CE(p^cd_θ, y)]` with `w = p_c(y|x)` normalised to mean 1 in the batch.
//! 3. **ERM term** [`Erm`]: FLYP's contrastive loss over (image, default-prompt caption) pairs
//!    (default), or CE through the default-prompt head of the current towers (`ce`).
//! 4. `L = L_erm + λ · L_wrm`; both towers and the logit scale are trained; the CD texts of all
//!    classes are re-encoded by the current text tower once per step (each distinct text once).
//! 5. **Inference** (confirmed by the released code): `β · softmax(z_df) + (1 − β) ·
//!    softmax(z_cd)` with both heads rebuilt from the fine-tuned towers
//!    ([`crate::eval::predictor::Predictor::mixture`]); WiSE-FT interpolates the towers and
//!    rebuilds both heads.

use candle_core::{Tensor, D};

use super::flyp::Flyp;
use super::m2mix::M2mixSection;
use super::registry::{Context, Method, MethodEntry, Outcome, Prepared};
use super::{cosine_logits, ClassTexts};
use crate::clip::ClipModel;
use crate::error::{Error, Result};
use crate::losses::{cross_entropy, log_softmax};
use crate::sections::Sections;
use crate::train::contrastive::clamp_logit_scale;
use crate::train::encode::for_each_encoded;
use crate::train::supervised::{Objective, TrainBatch, TrainSource};
use crate::zeroshot::tokenizer_for;

/// How the pre-trained model's image–CD affinities are normalised before the softmax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AffinityNorm {
    None,
    Center,
    Standardize,
}

/// The WRM estimator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wrm {
    Soft,
    Reweighted,
}

/// Which ERM term a recipe chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErmKind {
    Flyp,
    Ce,
}

/// The ERM term.
pub enum Erm {
    /// FLYP's contrastive loss with default-prompt captions.
    Flyp(Box<Flyp>),
    /// CE through the default-prompt head of the current towers.
    Ce(ClassTexts),
}

/// `p_c` from affinities `[n, classes]` (row-major): normalisation, then a softmax at
/// temperature `exp(s₀)` = `scale`.
pub fn core_distribution(affinities: &[f32], classes: usize, scale: f32, norm: AffinityNorm) -> Vec<f32> {
    let n = affinities.len() / classes;
    let column = |k: usize| (0..n).map(move |i| affinities[i * classes + k] as f64);
    let means: Vec<f64> = (0..classes).map(|k| column(k).sum::<f64>() / n as f64).collect();
    let stds: Vec<f64> = (0..classes)
        .map(|k| (column(k).map(|a| (a - means[k]).powi(2)).sum::<f64>() / n as f64).sqrt())
        .collect();
    let mean_std = stds.iter().sum::<f64>() / classes as f64;
    let normalised = |i: usize, k: usize| -> f64 {
        let a = affinities[i * classes + k] as f64;
        match norm {
            AffinityNorm::None => a,
            AffinityNorm::Center => a - means[k],
            AffinityNorm::Standardize => (a - means[k]) / stds[k].max(1e-12) * mean_std,
        }
    };
    let mut out = Vec::with_capacity(affinities.len());
    for i in 0..n {
        let logits: Vec<f64> = (0..classes).map(|k| scale as f64 * normalised(i, k)).collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = logits.iter().map(|z| (z - max).exp()).sum();
        out.extend(logits.iter().map(|z| ((z - max).exp() / total) as f32));
    }
    out
}

/// The WRM loss of CD-head logits `[n, classes]` against `p_c` rows `[n, classes]`.
pub fn wrm_loss(cd_logits: &Tensor, core: &Tensor, labels: &Tensor, kind: Wrm) -> Result<Tensor> {
    Ok(match kind {
        Wrm::Soft => (core * log_softmax(cd_logits)?)?.sum(D::Minus1)?.mean_all()?.neg()?,
        Wrm::Reweighted => {
            let weights = core.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
            let weights = weights.broadcast_div(&weights.mean_all()?)?;
            let per_example = log_softmax(cd_logits)?.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
            (weights * per_example)?.mean_all()?
        }
    })
}

/// The fixed `p_c` of every training example, from the frozen pre-trained model (an
/// unreadable image, which no batch will hold, gets the uniform distribution and no say in the
/// normalisation statistics).
pub fn core_predictions(
    pretrained: &ClipModel,
    source: &dyn TrainSource,
    descriptions: &ClassTexts,
    norm: AffinityNorm,
) -> Result<Vec<f32>> {
    let classes = descriptions.embed_frozen(pretrained)?;
    let k = classes.dim(0)?;
    let (mut affinities, mut readable) = (Vec::with_capacity(source.len() * k), Vec::new());
    for_each_encoded(pretrained, source, &mut |kept, features| {
        let features = crate::clip::layers::l2_normalize(features)?;
        affinities.extend(features.matmul(&classes.t()?)?.flatten_all()?.to_vec1::<f32>()?);
        readable.extend_from_slice(kept);
        Ok(())
    })?;
    if readable.is_empty() {
        return Err(Error::Invalid {
            what: "DRM's core predictions".into(),
            reason: "no training image could be read".into(),
        });
    }
    let scale = pretrained.logit_scale().exp()?.to_scalar::<f32>()?;
    let rows = core_distribution(&affinities, k, scale, norm);
    let mut core = vec![1.0 / k as f32; source.len() * k];
    for (row, &i) in rows.chunks(k).zip(&readable) {
        core[i * k..(i + 1) * k].copy_from_slice(row);
    }
    Ok(core)
}

/// DRM's training objective.
pub struct Drm {
    pub erm: Erm,
    pub descriptions: ClassTexts,
    /// `p_c`, `[examples, classes]` row-major, indexed by training example.
    pub core: Vec<f32>,
    pub classes: usize,
    pub lambda: f64,
    pub wrm: Wrm,
}

impl Drm {
    fn core_rows(&self, batch: &TrainBatch) -> Result<Tensor> {
        let rows: Vec<f32> = batch
            .indices
            .iter()
            .flat_map(|&i| self.core[i * self.classes..(i + 1) * self.classes].iter().copied())
            .collect();
        Ok(Tensor::from_vec(rows, (batch.indices.len(), self.classes), batch.images.device())?)
    }
}

impl Objective for Drm {
    fn trains(&self, _name: &str) -> bool {
        true
    }

    fn loss(&self, model: &ClipModel, batch: &TrainBatch) -> Result<Tensor> {
        let features = model.encode_image(&batch.images)?;
        let erm = match &self.erm {
            Erm::Flyp(flyp) => flyp.loss_from_features(model, &features, batch)?,
            Erm::Ce(defaults) => {
                cross_entropy(&cosine_logits(model, &features, &defaults.embed(model)?)?, &batch.labels)?
            }
        };
        let cd_logits = cosine_logits(model, &features, &self.descriptions.embed(model)?)?;
        let wrm = wrm_loss(&cd_logits, &self.core_rows(batch)?, &batch.labels, self.wrm)?;
        Ok((erm + (wrm * self.lambda)?)?)
    }

    fn after_step(&self, model: &ClipModel) -> Result<()> {
        clamp_logit_scale(model)
    }
}

/// The registry's entry: `[method] name = "drm"`, with `[drm]` and (with the FLYP ERM term)
/// `[m2mix]`.
pub const ENTRY: MethodEntry = MethodEntry { name: "drm", sections: &[SECTION], read };

const SECTION: &str = "drm";

/// `[drm]`: DRM's options (methods.md §1b).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrmSection {
    /// λ, the WRM term's weight.
    pub lambda: f64,
    pub wrm: Wrm,
    pub erm: ErmKind,
    pub affinity: AffinityNorm,
    /// Weight of the default-prompt head in the inference mixture.
    pub beta: f64,
}

impl Default for DrmSection {
    fn default() -> Self {
        Self { lambda: 1.0, wrm: Wrm::Soft, erm: ErmKind::Flyp, affinity: AffinityNorm::Center, beta: 0.5 }
    }
}

/// DRM as a method: its section, and m²-mix's term on its FLYP ERM term when turned on.
struct DrmMethod {
    section: DrmSection,
    m2mix: Option<M2mixSection>,
}

fn read(sections: &mut Sections) -> std::result::Result<Box<dyn Method>, String> {
    let section: DrmSection = sections.read(SECTION)?;
    if !(0.0..=1.0).contains(&section.beta) {
        return Err(format!("drm.beta = {} is outside [0, 1]", section.beta));
    }
    let m2mix = match section.erm {
        ErmKind::Flyp => M2mixSection::read(sections)?,
        ErmKind::Ce => None,
    };
    Ok(Box::new(DrmMethod { section, m2mix }))
}

impl Method for DrmMethod {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn terms(&self) -> Vec<&'static str> {
        self.m2mix.iter().map(|_| super::m2mix::TERM.section).collect()
    }

    fn uses_descriptions(&self) -> bool {
        true
    }

    fn prepare(&self, context: &mut Context<'_>) -> Result<Prepared> {
        let model = context.model;
        let tokenizer = tokenizer_for(model)?;
        (context.stage)("core predictions p_c of the pre-trained model".into());
        let per_class = context.descriptions.ok_or_else(|| Error::Invalid {
            what: "method drm".into(),
            reason: "needs data.descriptions (a concept-description file)".into(),
        })?;
        let descriptions = ClassTexts::new(model, &tokenizer, per_class)?;
        let core = core_predictions(model, context.train, &descriptions, self.section.affinity)?;
        let erm = match self.section.erm {
            ErmKind::Flyp => Erm::Flyp(Box::new(Flyp::new(context, self.m2mix.as_ref())?)),
            ErmKind::Ce => Erm::Ce(ClassTexts::new(model, &tokenizer, context.prompts)?),
        };
        let objective = Box::new(Drm {
            erm,
            descriptions,
            core,
            classes: context.zero_shot.num_classes(),
            lambda: self.section.lambda,
            wrm: self.section.wrm,
        });
        Ok(Prepared::Train { objective, outcome: Some(Outcome::Mixture { beta: self.section.beta }) })
    }
}
