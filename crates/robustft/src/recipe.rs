//! Recipes: one TOML file describes a whole run — the model, the data, the method and its
//! hyper-parameters, the optimisation and the evaluation (docs/design.md, "raw vs resolved
//! config"). Parsing is strict (a misspelt key is an error naming it); `--set key=value`
//! overrides edit the parsed TOML before it is read into a [`Recipe`]; [`crate::experiment`]
//! then resolves it against the data on disk and writes the resolved recipe into the run
//! directory before any work.
//!
//! This module reads the tables every run shares (`name`, `seed`, `model`, `model_config`,
//! `[data]`, `[method] name`, `[train]`, `[eval]`); the method sections (`[constraint]`,
//! `[drm]`, `[lp]`, `[fsr]`, `[m2mix]`, `[vrf]`, …) are data it does not interpret: the method
//! registry ([`crate::methods::registry`]) hands each to the module that owns it.

use std::path::{Path, PathBuf};

use crate::eval::robustness::PerturbationSpec;
use serde::{Deserialize, Serialize};

use crate::data::Layout;
use crate::error::{Error, Result};
use crate::methods::registry::{Method, MethodEntry, MethodPlan, Shared, METHODS};
use crate::prompts::AlignmentPolicy;
use crate::sections::Sections;
use crate::train::supervised::TrainOptions;
use crate::train::trainable::Trainable;

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// The run's name: its directory is `<out>/<name>`.
    pub name: String,
    /// Seeds the training order (and a ShiftWorld suite's world).
    #[serde(default)]
    pub seed: u64,
    /// The pre-trained checkpoint (`bundled`, a path, a cached hub id, or `random:PRESET`: a
    /// randomly initialised preset such as `random:ViT-B-32`).
    #[serde(default = "bundled")]
    pub model: String,
    /// The architecture facts `model`'s weights cannot tell (attention heads, activation): an
    /// `open_clip_config.json`, an HF `config.json` or a preset name; without it, the config
    /// beside the weights, else OpenAI's conventions (`robustft train --config` sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_config: Option<String>,
    pub data: DataRecipe,
    pub method: MethodRecipe,
    #[serde(default)]
    pub train: TrainOptions,
    #[serde(default)]
    pub eval: EvalRecipe,
    /// The method sections, as their owners read them (defaults filled in).
    #[serde(flatten)]
    pub sections: toml::Table,
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
    pub format: Option<Layout>,
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
    /// How the file's entries pair with the classes ([`AlignmentPolicy`]): `auto` (default:
    /// by name, else by index keys), `name`, or `position` (file order, as DRM's evaluation
    /// code pairs them; needed where the class list repeats a name, as OpenAI's ImageNet class
    /// names repeat "missile" and "sunglasses"). Left out of a resolved recipe when `auto`.
    #[serde(default, skip_serializing_if = "AlignmentPolicy::is_auto")]
    pub descriptions_alignment: AlignmentPolicy,
}

fn train_split() -> String {
    "train".into()
}

fn val_split() -> String {
    "id_val".into()
}

/// Which method runs: a name in [`crate::methods::registry::METHODS`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodRecipe {
    pub name: String,
}

/// Evaluation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalRecipe {
    /// WiSE-FT mixing weights evaluated after training (1 is the fine-tuned model itself,
    /// always evaluated).
    pub wiseft: Vec<f64>,
    /// How the trained model predicts: its method's own predictor (`method`), or a name in
    /// [`crate::methods::registry::PREDICTORS`] (`vrf`).
    pub predictor: String,
    /// Input perturbations every evaluated model (and WiSE-FT point) is also measured under:
    /// robustness rows in `results.jsonl` (`crate::eval::robustness`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub perturbations: Vec<PerturbationSpec>,
}

impl Default for EvalRecipe {
    fn default() -> Self {
        Self { wiseft: vec![0.5], predictor: "method".into(), perturbations: Vec::new() }
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

    /// Parses recipe text (`source` names it in errors); the method sections are read by their
    /// owners and kept as they read them.
    pub fn parse(text: &str, source: &str, overrides: &[String]) -> Result<Self> {
        let bad = |reason: String| Error::Invalid { what: format!("recipe {source}"), reason };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| bad(e.to_string()))?;
        for assignment in overrides {
            apply_override(&mut table, assignment)
                .map_err(|reason| Error::Invalid { what: format!("--set {assignment}"), reason })?;
        }
        let mut recipe: Recipe = table.try_into().map_err(|e: toml::de::Error| bad(e.to_string()))?;
        recipe.check().map_err(bad)?;
        let plan = recipe.read_plan().map_err(bad)?;
        check_trainable(recipe.train.trainable, plan.method.as_ref()).map_err(bad)?;
        recipe.sections = plan.sections;
        Ok(recipe)
    }

    /// The recipe's method, constraint and predictor.
    pub fn plan(&self) -> Result<MethodPlan> {
        self.read_plan().map_err(|reason| Error::Invalid { what: format!("recipe {}", self.name), reason })
    }

    /// The method as result rows name it ([`MethodPlan::label`]).
    pub fn label(&self) -> String {
        self.plan().expect("a parsed recipe's sections read").label()
    }

    /// The recipe as TOML text (what the run directory keeps).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a recipe serialises")
    }

    fn read_plan(&self) -> std::result::Result<MethodPlan, String> {
        let shared = Shared {
            method: &self.method.name,
            predictor: &self.eval.predictor,
            weight_decay: self.train.weight_decay,
            epochs: self.train.epochs,
        };
        MethodPlan::read(&self.sections, &shared)
    }

    /// Checks of the shared tables that need no files.
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
        if !self.data.descriptions_alignment.is_auto() && self.data.descriptions.is_none() {
            return Err("data.descriptions_alignment needs data.descriptions".into());
        }
        if let Some(alpha) = self.eval.wiseft.iter().find(|a| !(0.0..=1.0).contains(*a)) {
            return Err(format!("eval.wiseft: α = {alpha} is outside [0, 1]"));
        }
        for spec in &self.eval.perturbations {
            spec.expand(self.seed).map_err(|e| format!("eval.perturbations ({}): {e}", spec.threat))?;
        }
        self.train.check()
    }
}

/// Refuses `train.trainable = "head"` for a method without a head of its own to train.
fn check_trainable(trainable: Trainable, method: &dyn Method) -> std::result::Result<(), String> {
    if trainable != Trainable::Head || method.fine_tunes_a_head() {
        return Ok(());
    }
    Err(format!(
        "train.trainable = \"head\" needs a method that trains a head ({}), not {}",
        head_methods().join(", "),
        method.name()
    ))
}

/// The names of the methods that fine-tune a head, as their default sections configure them.
fn head_methods() -> Vec<&'static str> {
    let fine_tunes_a_head =
        |entry: &&MethodEntry| (entry.read)(&mut Sections::default()).is_ok_and(|m| m.fine_tunes_a_head());
    METHODS.iter().filter(fine_tunes_a_head).map(|entry| entry.name).collect()
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

    /// The resolved value of `section.key` (what the run directory's recipe keeps).
    fn value<'a>(recipe: &'a Recipe, key: &str) -> &'a toml::Value {
        let (section, key) = key.split_once('.').unwrap();
        recipe.sections[section].get(key).unwrap_or_else(|| panic!("{section}.{key} missing"))
    }

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
        assert_eq!((recipe.train.lr, recipe.method.name.as_str(), recipe.seed), (0.5, "flyp", 7));
        let err = Recipe::parse(MINIMAL, "test", &["train.nonsense=1".to_string()]).unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }

    #[test]
    fn round_trips_through_toml() {
        let sets = ["method.name=\"drm\"", "drm.wrm=\"reweighted\""].map(String::from);
        let recipe = Recipe::parse(MINIMAL, "test", &sets).unwrap();
        assert_eq!(value(&recipe, "drm.wrm").as_str(), Some("reweighted"));
        assert_eq!(value(&recipe, "drm.beta").as_float(), Some(0.5));
        assert_eq!(Recipe::parse(&recipe.to_toml(), "again", &[]).unwrap(), recipe);
    }

    #[test]
    fn descriptions_alignment_is_auto_unless_set_written_only_when_set_and_needs_descriptions() {
        let auto = Recipe::parse(MINIMAL, "test", &[]).unwrap();
        assert!(auto.data.descriptions_alignment.is_auto());
        assert!(!auto.to_toml().contains("descriptions_alignment"), "{}", auto.to_toml());
        let sets =
            ["data.descriptions=\"cd.json\"", "data.descriptions_alignment=\"position\""].map(String::from);
        let position = Recipe::parse(MINIMAL, "test", &sets).unwrap();
        assert_eq!(position.data.descriptions_alignment, AlignmentPolicy::Position);
        assert_eq!(Recipe::parse(&position.to_toml(), "again", &[]).unwrap(), position);
        let err = Recipe::parse(MINIMAL, "test", &sets[1..]).unwrap_err();
        assert!(err.to_string().contains("data.descriptions_alignment needs data.descriptions"), "{err}");
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
    fn trainable_is_resolved_and_checked_against_the_method() {
        let all = Recipe::parse(MINIMAL, "test", &[]).unwrap();
        assert!(!all.to_toml().contains("trainable"), "{}", all.to_toml());
        let last = Recipe::parse(MINIMAL, "test", &["train.trainable=\"last:2\"".to_string()]).unwrap();
        assert_eq!(last.train.trainable, Trainable::Last(2));
        assert!(last.to_toml().contains("trainable = \"last:2\""), "{}", last.to_toml());
        assert_eq!(Recipe::parse(&last.to_toml(), "again", &[]).unwrap(), last);
        for bad in ["last:0", "last:x", "top"] {
            let err = Recipe::parse(MINIMAL, "test", &[format!("train.trainable=\"{bad}\"")]).unwrap_err();
            assert!(
                err.to_string().contains(&format!(
                    "train.trainable must be \"all\", \"head\" or \"last:K\" (K ≥ 1), not \"{bad}\""
                )),
                "{err}"
            );
        }
        let head = |method: &str| {
            let sets = [format!("method.name=\"{method}\""), "train.trainable=\"head\"".to_string()];
            Recipe::parse(MINIMAL, "test", &sets)
        };
        assert_eq!(head("lp_ft").unwrap().train.trainable, Trainable::Head);
        let err = head("flyp").unwrap_err().to_string();
        assert!(
            err.contains(
                "train.trainable = \"head\" needs a method that trains a head (ft, lp_ft, l2sp), not flyp"
            ),
            "{err}"
        );
    }

    #[test]
    fn digrap_options_are_read_and_checked() {
        let sets = |extra: &[&str]| {
            let mut all = vec!["constraint.name=\"digrap\"".to_string()];
            all.extend(extra.iter().map(|s| s.to_string()));
            Recipe::parse(MINIMAL, "test", &all)
        };
        let recipe = sets(&["constraint.mu=0.05", "constraint.conflict=\"aligned\""]).unwrap();
        assert_eq!(value(&recipe, "constraint.mu").as_float(), Some(0.05));
        assert_eq!(value(&recipe, "constraint.conflict").as_str(), Some("aligned"));
        assert_eq!(value(&sets(&[]).unwrap(), "constraint.conflict").as_str(), Some("opposed"));
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
        assert_eq!(value(&recipe, "constraint.name").as_str(), Some("spd"));
        assert_eq!(value(&recipe, "constraint.lambda").as_float(), Some(1.0));
    }

    #[test]
    fn ftp_defaults_to_k_1_and_mu_1e_2_and_refuses_a_lambda() {
        let recipe = Recipe::parse(MINIMAL, "test", &["constraint.name=\"ftp\"".to_string()]).unwrap();
        let knobs = (value(&recipe, "constraint.k").as_float(), value(&recipe, "constraint.mu").as_float());
        assert_eq!(knobs, (Some(1.0), Some(1e-2)));
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
        let defaults = sets(&[]).unwrap();
        let read = |recipe: &Recipe, key: &str| value(recipe, &format!("constraint.{key}")).to_string();
        let keys = ["every", "proj_steps", "norm"];
        assert_eq!(keys.map(|key| read(&defaults, key)), ["1", "1", "\"mars\""]);
        assert!(defaults.sections["constraint"].get("val_batch_size").is_none());
        let keys = [
            "constraint.every=10",
            "constraint.proj_steps=2",
            "constraint.norm=\"l2\"",
            "constraint.val_batch_size=8",
        ];
        let recipe = sets(&keys).unwrap();
        let keys = ["every", "proj_steps", "norm", "val_batch_size"];
        assert_eq!(keys.map(|key| read(&recipe, key)), ["10", "2", "\"l2\"", "8"]);
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
        assert_eq!(
            (recipe.label().as_str(), value(&recipe, "m2mix.tau_use").as_str()),
            ("flyp+m2mix", Some("multiply"))
        );
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

    #[test]
    fn unknown_sections_methods_and_constraints_are_named() {
        let parse = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Recipe::parse(MINIMAL, "test", &sets).unwrap_err().to_string()
        };
        let err = Recipe::parse(&format!("{MINIMAL}[trian]\nlr = 1.0\n"), "test", &[]).unwrap_err();
        assert!(err.to_string().contains("`trian` is not a recipe key or section"), "{err}");
        let err = parse(&["method.name=\"fft\""]);
        assert!(err.contains("method.name = \"fft\" is unknown (known: zeroshot, lp, ft"), "{err}");
        let err = parse(&["constraint.name=\"sdp\""]);
        assert!(err.contains("\"sdp\"") && err.contains("spd"), "{err}");
        let err = parse(&["eval.predictor=\"knn\""]);
        assert!(err.contains("eval.predictor = \"knn\""), "{err}");
        let err = parse(&["method.name=\"l2sp\""]);
        assert!(err.contains("method l2sp needs constraint.name = \"l2sp\""), "{err}");
    }

    #[test]
    fn the_resolved_recipe_keeps_the_sections_the_run_reads() {
        let names = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            let recipe = Recipe::parse(MINIMAL, "test", &sets).unwrap();
            recipe.sections.keys().cloned().collect::<Vec<_>>()
        };
        assert_eq!(names(&[]), ["constraint", "fsr"]);
        assert_eq!(names(&["drm.beta=0.7"]), ["constraint", "fsr"]);
        assert_eq!(names(&["method.name=\"drm\""]), ["constraint", "drm", "m2mix"]);
        assert_eq!(
            names(&["method.name=\"lp_ft\"", "eval.predictor=\"vrf\""]),
            ["constraint", "lp", "fsr", "vrf"]
        );
        assert_eq!(names(&["method.name=\"drm\"", "drm.erm=\"ce\""]), ["constraint", "drm"]);
        assert_eq!(names(&["adversarial.loss=\"trades\""]), ["constraint", "fsr", "adversarial"]);
    }
}
