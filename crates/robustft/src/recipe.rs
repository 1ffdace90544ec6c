//! Recipes: one TOML file describes a whole run — the model, the data, the method and its
//! hyper-parameters, the optimisation and the evaluation (docs/design.md, "raw vs resolved
//! config"). Parsing is strict (`deny_unknown_fields`: a misspelt key is an error naming it);
//! `--set key=value` overrides edit the parsed TOML before it is read into a [`Recipe`];
//! [`crate::experiment`] then resolves it against the data on disk and writes the resolved
//! recipe into the run directory before any work.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::constraints::digrap::Conflict;
use crate::constraints::tpgm::TpgmNorm;
use crate::error::{Error, Result};
use crate::methods::drm::{AffinityNorm, Wrm};
use crate::methods::fsr::FsrDistance;
use crate::methods::m2mix::{MixSchedule, TauUse};
use crate::train::supervised::TrainOptions;

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The run's name: its directory is `<out>/<name>`.
    pub name: String,
    /// Seeds the training order (and a ShiftWorld suite's world).
    #[serde(default)]
    pub seed: u64,
    /// The pre-trained checkpoint (`bundled`, a path or a cached hub id).
    #[serde(default = "bundled")]
    pub model: String,
    pub data: DataRecipe,
    pub method: MethodRecipe,
    #[serde(default)]
    pub train: TrainOptions,
    #[serde(default)]
    pub constraint: ConstraintRecipe,
    #[serde(default)]
    pub lp: LpRecipe,
    #[serde(default)]
    pub drm: DrmRecipe,
    #[serde(default)]
    pub eval: EvalRecipe,
    #[serde(default)]
    pub vrf: VrfRecipe,
    #[serde(default)]
    pub m2mix: M2mixRecipe,
    #[serde(default)]
    pub fsr: FsrRecipe,
}

fn bundled() -> String {
    "bundled".into()
}

/// Where the examples come from: a ShiftWorld suite (rendered in memory) or a dataset on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataRecipe {
    /// A ShiftWorld suite: spurious, rendition, corruption or domains.
    pub suite: Option<String>,
    /// A dataset on disk: `manifest` (a directory with manifest.csv + classes.txt),
    /// `iwildcam`, `fmow` (WILDS root holding iwildcam_v2.0/ or fmow_v1.1/) or `imagenet`
    /// (a root holding `train/` and one directory per variant: `imagenet` (val),
    /// `imagenet-v2`, `imagenet-sketch`, `imagenet-r`, `imagenet-a`, `objectnet`).
    pub format: Option<DiskFormat>,
    /// The dataset's directory (with `format`).
    pub root: Option<PathBuf>,
    #[serde(default = "train_split")]
    pub train_split: String,
    /// The ID validation split (linear-probe regularisation; model selection).
    #[serde(default = "val_split")]
    pub val_split: String,
    /// Splits to evaluate (default: every split but the training split).
    #[serde(default)]
    pub eval_splits: Vec<String>,
    /// Default prompts: a bundled template set or a file of templates (default: `shiftworld`
    /// for suites, `openai_imagenet` otherwise).
    pub templates: Option<String>,
    /// Concept descriptions: a DRM-format JSON file, or `shiftworld` (the suites' own).
    pub descriptions: Option<String>,
}

fn train_split() -> String {
    "train".into()
}

fn val_split() -> String {
    "id_val".into()
}

/// On-disk dataset formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    Manifest,
    Iwildcam,
    Fmow,
    Imagenet,
}

/// Which method runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodRecipe {
    pub name: MethodName,
}

/// The methods a recipe can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodName {
    Zeroshot,
    Lp,
    Ft,
    LpFt,
    Flyp,
    L2sp,
    Drm,
}

impl MethodName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zeroshot => "zeroshot",
            Self::Lp => "lp",
            Self::Ft => "ft",
            Self::LpFt => "lp_ft",
            Self::Flyp => "flyp",
            Self::L2sp => "l2sp",
            Self::Drm => "drm",
        }
    }
}

/// The optimiser-side constraint toward the pre-trained weights (`crate::constraints`); any
/// method can take one (method `l2sp` is FT with the `l2sp` constraint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConstraintRecipe {
    pub name: ConstraintName,
    /// Strength: L2-SP's λ; SPD's λ (1 projects the candidate back onto the previous distance);
    /// DiGraP's weight of the regulariser gradient λ(θ − θ₀) added after the projection (0: off).
    pub lambda: f64,
    /// Regexes of parameter names left unconstrained (a new head is never anchored).
    pub exclude: Vec<String>,
    /// FTP: factor on positive hyper-gradients of the radii (the annealing factor).
    pub k: f64,
    /// Learning rate of a constraint's own learned per-layer quantities, each by a scalar Adam
    /// (FTP's and TPGM's radii, DiGraP's projection strength ω).
    pub mu: f64,
    /// DiGraP: which sign of ⟨g, θ − θ₀⟩ is a conflict.
    pub conflict: Conflict,
    /// TPGM: optimiser steps between updates of the radii on validation batches.
    pub every: u64,
    /// TPGM: Adam steps on the radii per update, each on its own validation batch.
    pub proj_steps: u64,
    /// TPGM: the distance from θ₀, per output row (`mars`) or per tensor (`l2`).
    pub norm: TpgmNorm,
    /// TPGM: examples per validation batch (default: `train.batch_size`).
    pub val_batch_size: Option<usize>,
}

impl Default for ConstraintRecipe {
    fn default() -> Self {
        Self {
            name: ConstraintName::None,
            lambda: 0.0,
            exclude: Vec::new(),
            k: 1.0,
            mu: 1e-2,
            conflict: Conflict::Opposed,
            every: 1,
            proj_steps: 1,
            norm: TpgmNorm::Mars,
            val_batch_size: None,
        }
    }
}

/// The constraints a recipe can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintName {
    None,
    L2sp,
    Spd,
    Ftp,
    Tpgm,
    Digrap,
}

impl ConstraintName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::L2sp => "l2sp",
            Self::Spd => "spd",
            Self::Ftp => "ftp",
            Self::Tpgm => "tpgm",
            Self::Digrap => "digrap",
        }
    }
}

/// Linear-probe settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LpRecipe {
    /// Inverse regularisation strengths tried; the best on ID validation is kept.
    pub c_grid: Vec<f64>,
    pub max_iter: usize,
}

impl Default for LpRecipe {
    fn default() -> Self {
        Self { c_grid: crate::methods::linear_probe::DEFAULT_C_GRID.to_vec(), max_iter: 1000 }
    }
}

/// DRM's options (methods.md §1b).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrmRecipe {
    pub lambda: f64,
    pub wrm: Wrm,
    pub erm: ErmKind,
    pub affinity: AffinityNorm,
    /// Weight of the default-prompt head in the inference mixture.
    pub beta: f64,
}

impl Default for DrmRecipe {
    fn default() -> Self {
        Self { lambda: 1.0, wrm: Wrm::Soft, erm: ErmKind::Flyp, affinity: AffinityNorm::Center, beta: 0.5 }
    }
}

/// DRM's ERM term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErmKind {
    Flyp,
    Ce,
}

/// Evaluation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalRecipe {
    /// WiSE-FT mixing weights evaluated after training (1 is the fine-tuned model itself,
    /// always evaluated).
    pub wiseft: Vec<f64>,
    /// How the trained model predicts: its method's own predictor, or VRF's per-sample mixture
    /// of the fine-tuned and zero-shot models (head-based methods; `[vrf]`).
    pub predictor: PredictorKind,
}

impl Default for EvalRecipe {
    fn default() -> Self {
        Self { wiseft: vec![0.5], predictor: PredictorKind::Method }
    }
}

/// The predictors a recipe can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictorKind {
    /// The method's own head (or DRM's mixture).
    Method,
    /// Variance Reduction Fine-tuning ([`crate::methods::vrf`]).
    Vrf,
}

/// VRF's sample weight `w = σ(−(d − a)/b)` over the squared distance `d` to the k-th nearest
/// zero-shot failure (methods.md §3.4; the defaults are the released ImageNet ViT-B/16 values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VrfRecipe {
    pub a: f64,
    pub b: f64,
}

impl Default for VrfRecipe {
    fn default() -> Self {
        Self { a: 1.5, b: 0.6 }
    }
}

impl VrfRecipe {
    fn check(&self, predictor: PredictorKind, method: MethodName) -> std::result::Result<(), String> {
        if predictor != PredictorKind::Vrf {
            return Ok(());
        }
        if !matches!(method, MethodName::Ft | MethodName::LpFt | MethodName::L2sp) {
            return Err(format!(
                "eval.predictor = \"vrf\" needs a head-based fine-tuning method (ft, lp_ft, l2sp), not {}",
                method.as_str()
            ));
        }
        if !(self.a.is_finite() && self.b > 0.0 && self.b.is_finite()) {
            return Err(format!("vrf.a must be finite and vrf.b positive (a = {}, b = {})", self.a, self.b));
        }
        Ok(())
    }
}

/// m²-mix's extra contrastive term ([`crate::methods::m2mix`]; methods.md §3.1); a weight of 0
/// turns it off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct M2mixRecipe {
    /// w_mix: the term's weight.
    pub weight: f64,
    /// β_m: the mixing ratio λ ~ Beta(β_m, β_m), one draw per step.
    pub beta: f64,
    /// τ_m of the mixed negatives' logits.
    pub tau: f64,
    /// Whether the negatives' cosines are divided by τ_m (default) or multiplied by it.
    pub tau_use: TauUse,
    /// The term's weight over training: constant, or divided by (epoch + 1).
    pub schedule: MixSchedule,
}

impl Default for M2mixRecipe {
    fn default() -> Self {
        Self { weight: 0.0, beta: 0.5, tau: 0.01, tau_use: TauUse::Divide, schedule: MixSchedule::Constant }
    }
}

impl M2mixRecipe {
    fn check(&self, method: MethodName, erm: ErmKind) -> std::result::Result<(), String> {
        if !(self.weight >= 0.0 && self.weight.is_finite()) {
            return Err(format!("m2mix.weight = {} must be a finite number ≥ 0", self.weight));
        }
        if self.weight == 0.0 {
            return Ok(());
        }
        if !(method == MethodName::Flyp || (method == MethodName::Drm && erm == ErmKind::Flyp)) {
            return Err(format!(
                "m2mix needs a contrastive objective (method flyp, or drm with drm.erm = \"flyp\"), not {}",
                method.as_str()
            ));
        }
        let positive = |x: f64| x > 0.0 && x.is_finite();
        if !(positive(self.beta) && positive(self.tau)) {
            return Err(format!("m2mix.beta and m2mix.tau must be positive ({}, {})", self.beta, self.tau));
        }
        Ok(())
    }
}

/// Function-space regularisation ([`crate::methods::fsr`]; methods.md §3.3): both strengths 0
/// turn it off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsrRecipe {
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

impl Default for FsrRecipe {
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

impl FsrRecipe {
    /// Whether the regulariser is on.
    pub fn enabled(&self) -> bool {
        self.lambda1 > 0.0 || self.lambda2 > 0.0
    }

    fn check(&self, method: MethodName) -> std::result::Result<(), String> {
        let non_negative = |x: f64| x >= 0.0 && x.is_finite();
        if !non_negative(self.lambda1) || !non_negative(self.lambda2) {
            return Err(format!(
                "fsr.lambda1 and fsr.lambda2 must be ≥ 0 ({}, {})",
                self.lambda1, self.lambda2
            ));
        }
        if !self.enabled() {
            return Ok(());
        }
        if !matches!(method, MethodName::Ft | MethodName::LpFt | MethodName::L2sp) {
            return Err(format!(
                "fsr needs a cross-entropy method with a head (ft, lp_ft, l2sp), not {}",
                method.as_str()
            ));
        }
        let [c0, c1] = self.contrast;
        let [e0, e1] = self.erase_area;
        if !non_negative(self.noise_std) {
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
}

impl Recipe {
    /// Reads a recipe file and applies `key=value` overrides (dotted keys, TOML values; a value
    /// that is not valid TOML is taken as a string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Invalid {
            what: format!("recipe {}", path.display()),
            reason: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    /// Parses recipe text (`source` names it in errors).
    pub fn parse(text: &str, source: &str, overrides: &[String]) -> Result<Self> {
        let bad = |reason: String| Error::Invalid { what: format!("recipe {source}"), reason };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| bad(e.to_string()))?;
        for assignment in overrides {
            apply_override(&mut table, assignment)
                .map_err(|reason| Error::Invalid { what: format!("--set {assignment}"), reason })?;
        }
        let recipe: Recipe = table.try_into().map_err(|e: toml::de::Error| bad(e.to_string()))?;
        recipe.check().map_err(bad)?;
        Ok(recipe)
    }

    /// The method as result rows name it: the method, its objective terms and predictor
    /// (`ft+fsr`, `flyp+m2mix`, `ft+vrf`), and its constraint when it has one beyond what the
    /// method implies (`flyp+ftp`, `drm+spd`; zero-shot and LP train nothing to constrain).
    pub fn label(&self) -> String {
        let (method, constraint) = (self.method.name, self.constraint.name);
        match (method, constraint) {
            (_, ConstraintName::None)
            | (MethodName::Zeroshot | MethodName::Lp, _)
            | (MethodName::L2sp, ConstraintName::L2sp) => self.method_terms(),
            _ => format!("{}+{}", self.method_terms(), constraint.as_str()),
        }
    }

    /// The recipe as TOML text (what the run directory keeps).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a recipe serialises")
    }

    /// Checks that need no files.
    fn check(&self) -> std::result::Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !self.name.starts_with('.');
        if !name_ok {
            return Err(format!("name `{}` must be non-empty letters, digits, `-`, `_` or `.`", self.name));
        }
        match (&self.data.suite, &self.data.format, &self.data.root) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            _ => return Err("[data] needs either `suite` or both `format` and `root`".into()),
        }
        if let Some(alpha) = self.eval.wiseft.iter().find(|a| !(0.0..=1.0).contains(*a)) {
            return Err(format!("eval.wiseft: α = {alpha} is outside [0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.drm.beta) {
            return Err(format!("drm.beta = {} is outside [0, 1]", self.drm.beta));
        }
        if self.lp.c_grid.is_empty() || self.lp.c_grid.iter().any(|c| c.is_nan() || *c <= 0.0) {
            return Err("lp.c_grid must hold positive values".into());
        }
        if self.train.epochs == 0 && !matches!(self.method.name, MethodName::Zeroshot | MethodName::Lp) {
            return Err("train.epochs must be at least 1".into());
        }
        if self.method.name == MethodName::L2sp && self.constraint.name != ConstraintName::L2sp {
            return Err("method l2sp needs constraint.name = \"l2sp\" (and constraint.lambda > 0)".into());
        }
        if self.constraint.name == ConstraintName::L2sp
            && (self.constraint.lambda.is_nan() || self.constraint.lambda <= 0.0)
        {
            return Err("constraint l2sp needs constraint.lambda > 0 (the strength λ)".into());
        }
        self.vrf.check(self.eval.predictor, self.method.name)?;
        self.m2mix.check(self.method.name, self.drm.erm)?;
        self.fsr.check(self.method.name)?;
        match self.constraint.name {
            ConstraintName::Spd => self.check_spd(),
            ConstraintName::Ftp => self.check_ftp(),
            ConstraintName::Tpgm => check_tpgm(&self.constraint),
            ConstraintName::Digrap => check_digrap(&self.constraint),
            ConstraintName::None | ConstraintName::L2sp => Ok(()),
        }
    }

    /// The method with the objective terms and predictor that change it (`ft+fsr`,
    /// `flyp+m2mix`, `ft+vrf`).
    fn method_terms(&self) -> String {
        let mut label = self.method.name.as_str().to_string();
        if self.fsr.enabled() {
            label.push_str("+fsr");
        }
        if self.m2mix.weight > 0.0 {
            label.push_str("+m2mix");
        }
        if self.eval.predictor == PredictorKind::Vrf {
            label.push_str("+vrf");
        }
        label
    }

    /// SPD replaces AdamW's weight decay by its selective decay toward θ₀.
    fn check_spd(&self) -> std::result::Result<(), String> {
        let lambda = self.constraint.lambda;
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(format!(
                "constraint spd needs constraint.lambda > 0 (the decay strength λ; 1 is a full projection), \
                 not {lambda}"
            ));
        }
        if self.train.weight_decay != 0.0 {
            return Err(format!(
                "constraint spd replaces AdamW's weight decay by its selective decay toward the \
                 pre-trained weights (strength constraint.lambda): set train.weight_decay = 0, not {}",
                self.train.weight_decay
            ));
        }
        Ok(())
    }

    /// FTP learns its radii: `k` and `mu` are its knobs, `lambda` is not used.
    fn check_ftp(&self) -> std::result::Result<(), String> {
        let c = &self.constraint;
        if !(c.k.is_finite() && c.k >= 0.0) {
            return Err(format!("constraint.k = {} must be a finite number ≥ 0", c.k));
        }
        if !(c.mu.is_finite() && c.mu > 0.0) {
            return Err(format!("constraint.mu = {} must be a finite number > 0", c.mu));
        }
        if c.lambda != 0.0 {
            return Err(format!(
                "constraint ftp learns its radii and takes no constraint.lambda (= {}); its knobs are \
                 constraint.k and constraint.mu",
                c.lambda
            ));
        }
        Ok(())
    }
}

/// TPGM learns its radii on validation batches: `mu`, `every`, `proj_steps` and the batch size
/// must be positive; it takes no `lambda`.
fn check_tpgm(c: &ConstraintRecipe) -> std::result::Result<(), String> {
    if !(c.mu.is_finite() && c.mu > 0.0) {
        return Err(format!(
            "constraint tpgm needs constraint.mu > 0 (the radii's learning rate), not {}",
            c.mu
        ));
    }
    if c.every == 0 || c.proj_steps == 0 || c.val_batch_size == Some(0) {
        return Err("constraint tpgm needs constraint.every, constraint.proj_steps and \
                    constraint.val_batch_size of at least 1"
            .into());
    }
    if c.lambda != 0.0 {
        return Err(format!(
            "constraint tpgm learns its radii and takes no constraint.lambda (= {}); its knobs are \
             constraint.mu, every, proj_steps, norm and val_batch_size",
            c.lambda
        ));
    }
    Ok(())
}

/// DiGraP needs a positive learning rate μ for ω and a regulariser weight λ ≥ 0.
fn check_digrap(constraint: &ConstraintRecipe) -> std::result::Result<(), String> {
    if !(constraint.mu.is_finite() && constraint.mu > 0.0) {
        return Err(format!(
            "constraint digrap needs constraint.mu > 0 (ω's learning rate), not {}",
            constraint.mu
        ));
    }
    if !(constraint.lambda.is_finite() && constraint.lambda >= 0.0) {
        return Err(format!(
            "constraint digrap needs constraint.lambda ≥ 0 (the regulariser gradient's weight), not {}",
            constraint.lambda
        ));
    }
    Ok(())
}

/// Sets `a.b.c = value` in a TOML table.
fn apply_override(table: &mut toml::Table, assignment: &str) -> std::result::Result<(), String> {
    let (key, raw) = assignment.split_once('=').ok_or("expected key=value")?;
    let value: toml::Value = match format!("value = {}", raw.trim()).parse::<toml::Table>() {
        Ok(mut parsed) => parsed.remove("value").expect("just parsed"),
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, parents) = parts.split_last().ok_or("empty key")?;
    let mut current = table;
    for part in parents {
        current = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table"))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::MatmulPrecision;

    const MINIMAL: &str = "name = \"t\"\n[data]\nsuite = \"spurious\"\n[method]\nname = \"ft\"\n";

    #[test]
    fn defaults_fill_a_minimal_recipe() {
        let recipe = Recipe::parse(MINIMAL, "test", &[]).unwrap();
        assert_eq!(recipe.model, "bundled");
        assert_eq!(recipe.train, TrainOptions::default());
        assert_eq!(recipe.data.val_split, "id_val");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err =
            Recipe::parse(&format!("{MINIMAL}[train]\nlearning_rate = 1.0\n"), "test", &[]).unwrap_err();
        assert!(err.to_string().contains("learning_rate"), "{err}");
    }

    #[test]
    fn overrides_set_nested_values_and_strings() {
        let sets = ["train.lr=0.5".to_string(), "method.name=flyp".to_string(), "seed = 7".to_string()];
        let recipe = Recipe::parse(MINIMAL, "test", &sets).unwrap();
        assert_eq!((recipe.train.lr, recipe.method.name, recipe.seed), (0.5, MethodName::Flyp, 7));
        let err = Recipe::parse(MINIMAL, "test", &["train.nonsense=1".to_string()]).unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }

    #[test]
    fn round_trips_through_toml() {
        let recipe = Recipe::parse(MINIMAL, "test", &["drm.wrm=\"reweighted\"".to_string()]).unwrap();
        assert_eq!(Recipe::parse(&recipe.to_toml(), "again", &[]).unwrap(), recipe);
    }

    #[test]
    fn matmul_precision_is_fp32_unless_set_and_written_only_when_bf16() {
        let fp32 = Recipe::parse(MINIMAL, "test", &[]).unwrap();
        assert_eq!(fp32.train.matmul_precision, MatmulPrecision::Fp32);
        assert!(!fp32.to_toml().contains("matmul_precision"), "{}", fp32.to_toml());
        let bf16 = Recipe::parse(MINIMAL, "test", &["train.matmul_precision=\"bf16\"".to_string()]).unwrap();
        assert_eq!(bf16.train.matmul_precision, MatmulPrecision::Bf16);
        assert_eq!(Recipe::parse(&bf16.to_toml(), "again", &[]).unwrap(), bf16);
        let err =
            Recipe::parse(MINIMAL, "test", &["train.matmul_precision=\"fp16\"".to_string()]).unwrap_err();
        assert!(err.to_string().contains("fp16"), "{err}");
    }

    #[test]
    fn digrap_options_are_read_and_checked() {
        let sets = |extra: &[&str]| {
            let mut all = vec!["constraint.name=\"digrap\"".to_string()];
            all.extend(extra.iter().map(|s| s.to_string()));
            Recipe::parse(MINIMAL, "test", &all)
        };
        let recipe = sets(&["constraint.mu=0.05", "constraint.conflict=\"aligned\""]).unwrap();
        assert_eq!((recipe.constraint.mu, recipe.constraint.conflict), (0.05, Conflict::Aligned));
        assert_eq!(sets(&[]).unwrap().constraint.conflict, Conflict::Opposed);
        let err = sets(&["constraint.mu=0.0"]).unwrap_err().to_string();
        assert!(err.contains("constraint.mu > 0"), "{err}");
        let err = sets(&["constraint.lambda=-1.0"]).unwrap_err().to_string();
        assert!(err.contains("constraint.lambda ≥ 0"), "{err}");
        let err = sets(&["constraint.conflict=\"sideways\""]).unwrap_err().to_string();
        assert!(err.contains("sideways"), "{err}");
    }

    #[test]
    fn spd_refuses_a_weight_decay_it_would_double() {
        let sets =
            |wd: &str| ["constraint.name=\"spd\"", "constraint.lambda=1.0", wd].map(String::from).to_vec();
        let err = Recipe::parse(MINIMAL, "test", &sets("train.weight_decay=0.1")).unwrap_err();
        assert!(err.to_string().contains("train.weight_decay = 0"), "{err}");
        let recipe = Recipe::parse(MINIMAL, "test", &sets("train.weight_decay=0.0")).unwrap();
        assert_eq!((recipe.constraint.name, recipe.constraint.lambda), (ConstraintName::Spd, 1.0));
    }

    #[test]
    fn ftp_defaults_to_k_1_and_mu_1e_2_and_refuses_a_lambda() {
        let recipe = Recipe::parse(MINIMAL, "test", &["constraint.name=\"ftp\"".to_string()]).unwrap();
        assert_eq!((recipe.constraint.k, recipe.constraint.mu), (1.0, 1e-2));
        let sets = ["constraint.name=\"ftp\"", "constraint.lambda=0.5"].map(String::from);
        let err = Recipe::parse(MINIMAL, "test", &sets).unwrap_err();
        assert!(err.to_string().contains("constraint.lambda"), "{err}");
        let sets = ["constraint.name=\"ftp\"", "constraint.mu=0"].map(String::from);
        assert!(Recipe::parse(MINIMAL, "test", &sets).unwrap_err().to_string().contains("constraint.mu"));
    }

    #[test]
    fn tpgm_reads_its_keys_and_refuses_zero_counts_and_a_lambda() {
        let sets = |extra: &[&str]| {
            let mut all = vec!["constraint.name=\"tpgm\"".to_string()];
            all.extend(extra.iter().map(|s| s.to_string()));
            Recipe::parse(MINIMAL, "test", &all)
        };
        let defaults = sets(&[]).unwrap().constraint;
        assert_eq!((defaults.every, defaults.proj_steps, defaults.norm), (1, 1, TpgmNorm::Mars));
        let keys = [
            "constraint.every=10",
            "constraint.proj_steps=2",
            "constraint.norm=\"l2\"",
            "constraint.val_batch_size=8",
        ];
        let recipe = sets(&keys).unwrap();
        let c = &recipe.constraint;
        assert_eq!((c.every, c.proj_steps, c.norm, c.val_batch_size), (10, 2, TpgmNorm::L2, Some(8)));
        assert_eq!(Recipe::parse(&recipe.to_toml(), "again", &[]).unwrap(), recipe);
        assert_eq!(recipe.label(), "ft+tpgm");
        for bad in ["constraint.every=0", "constraint.proj_steps=0", "constraint.val_batch_size=0"] {
            let err = sets(&[bad]).unwrap_err().to_string();
            assert!(err.contains(bad.split('=').next().unwrap()), "{bad}: {err}");
        }
        assert!(sets(&["constraint.lambda=0.1"]).unwrap_err().to_string().contains("constraint.lambda"));
        assert!(sets(&["constraint.norm=\"l1\""]).unwrap_err().to_string().contains("l1"));
    }

    #[test]
    fn data_needs_exactly_one_source() {
        let both = "name = \"t\"\n[data]\nsuite = \"spurious\"\nformat = \"manifest\"\nroot = \"x\"\n[method]\nname = \"ft\"\n";
        assert!(Recipe::parse(both, "test", &[]).unwrap_err().to_string().contains("either"));
    }

    #[test]
    fn method_terms_round_trip_and_name_the_rows() {
        let sets = ["fsr.lambda1=0.5", "fsr.distance=\"l2\"", "eval.predictor=\"vrf\"", "vrf.a=1.0"]
            .map(String::from);
        let recipe = Recipe::parse(MINIMAL, "test", &sets).unwrap();
        assert_eq!(Recipe::parse(&recipe.to_toml(), "again", &[]).unwrap(), recipe);
        assert_eq!(recipe.label(), "ft+fsr+vrf");
        let flyp =
            ["method.name=\"flyp\"", "m2mix.weight=0.01", "m2mix.tau_use=\"multiply\""].map(String::from);
        let recipe = Recipe::parse(MINIMAL, "test", &flyp).unwrap();
        assert_eq!((recipe.label().as_str(), recipe.m2mix.tau_use), ("flyp+m2mix", TauUse::Multiply));
    }

    #[test]
    fn out_of_range_term_settings_are_refused_naming_the_key() {
        let cases = [
            (vec!["eval.predictor=\"vrf\"", "vrf.b=0.0"], "vrf.b"),
            (vec!["method.name=\"flyp\"", "m2mix.weight=0.1", "m2mix.tau=-1.0"], "m2mix.tau"),
            (vec!["m2mix.weight=-0.1"], "m2mix.weight"),
            (vec!["fsr.lambda2=-1.0"], "fsr.lambda2"),
            (vec!["fsr.lambda1=1.0", "fsr.contrast=[1.5, 0.5]"], "fsr.contrast"),
            (vec!["fsr.lambda1=1.0", "fsr.erase_area=[0.1, 1.5]"], "fsr.erase_area"),
            (vec!["fsr.lambda1=1.0", "fsr.erase_prob=2.0"], "fsr.erase_prob"),
        ];
        for (sets, key) in cases {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            let err = Recipe::parse(MINIMAL, "test", &sets).unwrap_err().to_string();
            assert!(err.contains(key), "{sets:?}: {err}");
        }
    }
}
