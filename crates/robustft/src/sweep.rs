//! Hyper-parameter sweeps with model selection on validation data (DomainBed's training-domain
//! validation; WILDS' ID validation): a recipe run over the product of a grid of `--set`
//! values, several seeds and optionally several settings one recipe must serve (`--across`,
//! e.g. the suites), each candidate scored by a validation metric (the mean over seeds and
//! `--across` values), and the selected candidate's test metrics reported beside those of the
//! candidate that looks best on the test splits — so the optimism of choosing on test data is
//! visible. Parameters that only change how a trained model predicts are selected without
//! retraining: every WiSE-FT point a run evaluates is a candidate of its own, and inference-only
//! keys (DRM's β, VRF's a and b) are evaluated on one trained model per training setting.
//! Finished runs and evaluations are read back instead of rerun; an interrupted run resumes
//! from its checkpoint.

use std::path::Path;

use candle_core::Device;

use crate::error::{Error, Result};
use crate::eval::evaluate::ResultRow;
use crate::experiment::{Event, Experiment, RunSettings};
use crate::recipe::Recipe;
use crate::train::run_dir::io_error;

/// One grid axis: a dotted recipe key and its values (TOML text, as `--set` takes them).
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

impl Axis {
    /// Parses `key=v1,v2,...`.
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::Invalid { what: format!("--grid {text}"), reason: reason.into() };
        let (key, values) = text.split_once('=').ok_or_else(|| invalid("expected KEY=V1,V2,..."))?;
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        if key.trim().is_empty() || values.iter().any(String::is_empty) {
            return Err(invalid("expected KEY=V1,V2,... with no empty value"));
        }
        Ok(Self { key: key.trim().to_string(), values })
    }
}

/// The validation split and metric candidates are chosen by (`id_val:top1`).
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    pub split: String,
    pub metric: String,
}

impl Selection {
    /// Parses `split:metric` (metric: `top1`, `top5`, `f1_macro`, `recall_macro`,
    /// `worst_group_acc`).
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason: String| Error::Invalid { what: format!("--select {text}"), reason };
        let (split, metric) = text.split_once(':').ok_or_else(|| invalid("expected SPLIT:METRIC".into()))?;
        if !METRICS.contains(&metric) {
            return Err(invalid(format!("unknown metric `{metric}` (known: {})", METRICS.join(", "))));
        }
        Ok(Self { split: split.to_string(), metric: metric.to_string() })
    }
}

/// The metrics a selection or a report can name.
pub const METRICS: [&str; 5] = ["top1", "top5", "f1_macro", "recall_macro", "worst_group_acc"];

/// A metric of a row by name.
pub fn metric(row: &ResultRow, name: &str) -> Option<f64> {
    let m = &row.metrics;
    match name {
        "top1" => Some(m.top1),
        "top5" => Some(m.top5),
        "f1_macro" => Some(m.f1_macro),
        "recall_macro" => Some(m.recall_macro),
        "worst_group_acc" => m.worst_group_acc,
        _ => None,
    }
}

/// One grid point: its settings and the runs that score it, one per `--across` value and
/// seed.
#[derive(Debug)]
pub struct Point {
    /// `key=value` settings of the grid (without the seed and the `--across` values).
    pub settings: Vec<String>,
    /// The point's name: the recipe's name and its values (`drm-lambda0.5-beta0.25`).
    pub name: String,
    pub runs: Vec<PointRun>,
}

/// One run of a point.
#[derive(Debug)]
pub struct PointRun {
    /// The recipe with every setting, named after the trained run it reads or writes.
    pub recipe: Recipe,
    /// Inference-only settings (`drm.beta=0.75`) evaluated on the trained run's model; empty
    /// for the run that trains it (with the first value of every inference-only axis).
    pub inference: Vec<String>,
}

impl PointRun {
    /// The trained run's name (its directory in the sweep's output): the recipe, the
    /// `--across` and training values and the seed.
    pub fn trained(&self) -> &str {
        &self.recipe.name
    }
}

/// Every grid point of `text` (a recipe read from `source`) over the `across` values and
/// `seeds`. Axes of inference-only keys (the plan's [`MethodPlan::inference_keys`]: DRM's β,
/// VRF's a and b) vary the point but not the trained run: their values are evaluated on one
/// trained model. A key the recipe does not know or does not use is refused, naming it.
///
/// [`MethodPlan::inference_keys`]: crate::methods::registry::MethodPlan::inference_keys
pub fn points(text: &str, source: &str, grid: &[Axis], across: &[Axis], seeds: &[u64]) -> Result<Vec<Point>> {
    let base = Recipe::parse(text, source, &[])?;
    let inference_keys = base.plan()?.inference_keys();
    let (inferred, trained): (Vec<&Axis>, Vec<&Axis>) =
        grid.iter().partition(|axis| inference_keys.contains(&axis.key.as_str()));
    let spreads = product(&across.iter().collect::<Vec<_>>());
    let mut points = Vec::new();
    for training in product(&trained) {
        for (k, inference) in product(&inferred).into_iter().enumerate() {
            let settings = [training.clone(), inference.clone()].concat();
            let mut runs = Vec::new();
            for spread in &spreads {
                let trained_point = point_name(&base.name, &[spread.clone(), training.clone()].concat());
                for &seed in seeds {
                    let mut sets = [spread.clone(), settings.clone()].concat();
                    sets.extend([format!("seed={seed}"), format!("name={trained_point}-s{seed}")]);
                    let recipe = Recipe::parse(text, source, &sets)?;
                    for axis in grid.iter().chain(across) {
                        check_used(&recipe, &axis.key)?;
                    }
                    let inference = if k == 0 { Vec::new() } else { inference.clone() };
                    runs.push(PointRun { recipe, inference });
                }
            }
            points.push(Point { name: point_name(&base.name, &settings), settings, runs });
        }
    }
    Ok(points)
}

/// Every combination of the axes' values, as `key=value` settings (the first axis varies
/// slowest).
fn product(axes: &[&Axis]) -> Vec<Vec<String>> {
    let mut combos: Vec<Vec<String>> = vec![Vec::new()];
    for axis in axes {
        combos = combos
            .into_iter()
            .flat_map(|combo| {
                axis.values
                    .iter()
                    .map(move |value| [combo.clone(), vec![format!("{}={value}", axis.key)]].concat())
            })
            .collect();
    }
    combos
}

/// `recipe-key1value1-key2value2`: the last segment of each key and its value, with
/// characters a run name cannot hold dropped.
fn point_name(recipe: &str, settings: &[String]) -> String {
    let mut name = recipe.to_string();
    for setting in settings {
        let (key, value) = setting.split_once('=').expect("built as key=value");
        let short = key.rsplit('.').next().unwrap_or(key);
        let value: String =
            value.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
        name.push_str(&format!("-{short}{value}"));
    }
    name
}

/// Refuses a grid key that the resolved recipe does not hold (misspelt, or a section the
/// recipe's method does not read).
fn check_used(recipe: &Recipe, key: &str) -> Result<()> {
    let table: toml::Table = recipe.to_toml().parse().expect("a recipe's TOML parses");
    let mut value = Some(&toml::Value::Table(table));
    for part in key.split('.') {
        value = value.and_then(|v| v.as_table()).and_then(|t| t.get(part));
    }
    match value {
        Some(_) => Ok(()),
        None => Err(Error::Invalid {
            what: format!("--grid {key}"),
            reason: format!(
                "recipe {} (method {}) has no key `{key}` in use; see its resolved recipe.toml for the keys",
                recipe.name, recipe.method.name
            ),
        }),
    }
}

/// Where a sweep writes and how it trains and reports.
pub struct Runner<'a> {
    /// The sweep's output directory: OUT/<trained run>/ for each trained run.
    pub out: &'a Path,
    pub device: &'a Device,
    /// Trains and evaluates a run (with the caller's progress display).
    pub train: &'a mut dyn FnMut(&Experiment, &RunSettings) -> Result<Vec<ResultRow>>,
    /// Reports what the sweep is doing.
    pub say: &'a mut dyn FnMut(String),
}

/// The rows of every run of `points`, each row's `recipe` naming its point. Finished runs
/// (their `results.jsonl`, written last) and finished evaluations of inference-only settings
/// (OUT/<trained run>/inference/<values>.jsonl) are read back; an interrupted run resumes
/// from its checkpoint.
pub fn run_points(points: &[Point], runner: &mut Runner) -> Result<Vec<ResultRow>> {
    let total: usize = points.iter().map(|p| p.runs.len()).sum();
    let mut rows = Vec::new();
    for (done, (point, run)) in points.iter().flat_map(|p| p.runs.iter().map(move |r| (p, r))).enumerate() {
        let what = match run.inference.is_empty() {
            true => run.trained().to_string(),
            false => format!("{} at {}", run.trained(), run.inference.join(", ")),
        };
        (runner.say)(format!("== [{}/{total}] {what}", done + 1));
        let run_rows = rows_of_run(run, runner)?;
        rows.extend(run_rows.into_iter().map(|row| ResultRow { recipe: Some(point.name.clone()), ..row }));
    }
    Ok(rows)
}

/// The rows of one run: read back, trained, or evaluated on the trained run's model.
fn rows_of_run(run: &PointRun, runner: &mut Runner) -> Result<Vec<ResultRow>> {
    let dir = runner.out.join(run.trained());
    let results = dir.join("results.jsonl");
    let saved = match run.inference.is_empty() {
        true => results.clone(),
        false => dir
            .join("inference")
            .join(format!("{}.jsonl", point_name("", &run.inference).trim_start_matches('-'))),
    };
    if saved.is_file() {
        (runner.say)(format!("finished, read from {}", saved.display()));
        return read_rows(&saved);
    }
    let experiment = Experiment::resolve(run.recipe.clone(), runner.device)?;
    if run.inference.is_empty() {
        let resume = dir.join("recipe.toml").is_file();
        let settings = RunSettings { out: runner.out.to_path_buf(), resume, force: false, stop_after: None };
        return (runner.train)(&experiment, &settings);
    }
    let diagnostics = read_rows(&results)?.first().map(|row| row.diagnostics.clone()).unwrap_or_default();
    let say = &mut *runner.say;
    let mut rows = experiment.rows_of_finished_run(&dir.join("model"), &mut |event| {
        if let Event::Stage(stage) = event {
            say(format!("[{}] {stage}", run.trained()))
        }
    })?;
    for row in &mut rows {
        row.diagnostics = diagnostics.clone();
    }
    write_rows(&saved, &rows)?;
    Ok(rows)
}

/// The result rows of a `results.jsonl` file.
pub fn read_rows(path: &Path) -> Result<Vec<ResultRow>> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().filter(|line| !line.trim().is_empty()).enumerate() {
        let row: ResultRow = serde_json::from_str(line).map_err(|e| Error::Invalid {
            what: format!("{}:{}", path.display(), n + 1),
            reason: format!("not a result row: {e}"),
        })?;
        rows.push(row);
    }
    Ok(rows)
}

/// Writes `rows` as JSON lines to `path`, whole or not at all.
fn write_rows(path: &Path, rows: &[ResultRow]) -> Result<()> {
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let lines: String =
        rows.iter().map(|row| serde_json::to_string(row).expect("serialisable") + "\n").collect();
    Ok(crate::clip::checkpoint::write_atomic(path, lines.as_bytes())?)
}

/// One candidate: a grid point at one WiSE-FT α (`None`: the fine-tuned model itself).
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub point: String,
    pub alpha: Option<f64>,
    /// Mean over seeds of the selection metric on the selection split.
    pub validation: f64,
    /// Mean over seeds of the metric on `id_test` and over the `ood_*` splits.
    pub id_test: Option<f64>,
    pub ood_test: Option<f64>,
}

impl Candidate {
    pub fn label(&self) -> String {
        match self.alpha {
            Some(alpha) => format!("{} + WiSE-FT {alpha}", self.point),
            None => self.point.clone(),
        }
    }
}

/// The candidates of a sweep's rows (each row's `recipe` names its point), scored on the clean
/// rows (selection never looks at rows measured under a perturbation).
pub fn candidates(rows: &[ResultRow], selection: &Selection) -> Result<Vec<Candidate>> {
    let rows: Vec<&ResultRow> = rows.iter().filter(|r| r.perturbation.is_none()).collect();
    let mut keys: Vec<(String, Option<f64>)> = Vec::new();
    for row in &rows {
        let key = (row.recipe.clone().unwrap_or_default(), row.wiseft_alpha);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|(point, alpha)| {
            let of = |split: &dyn Fn(&str) -> bool, name: &str| -> Option<f64> {
                let values: Vec<f64> = rows
                    .iter()
                    .filter(|r| r.recipe.as_deref() == Some(point.as_str()) && r.wiseft_alpha == alpha)
                    .filter(|r| split(&r.split))
                    .filter_map(|r| metric(r, name))
                    .collect();
                (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
            };
            let validation =
                of(&|s| s == selection.split, &selection.metric).ok_or_else(|| Error::Invalid {
                    what: format!("--select {}:{}", selection.split, selection.metric),
                    reason: format!("point {point} has no `{}` row with that metric", selection.split),
                })?;
            let id_test = of(&|s| s == "id_test", &selection.metric);
            let ood_test = of(&|s| s.starts_with("ood_"), &selection.metric);
            Ok(Candidate { point, alpha, validation, id_test, ood_test })
        })
        .collect()
}

/// The candidate with the best validation score (ties: the first), and the one with the best
/// OOD test score (the oracle a test-selected table would report).
pub fn select(candidates: &[Candidate]) -> (Option<&Candidate>, Option<&Candidate>) {
    let best = |score: fn(&Candidate) -> Option<f64>| {
        candidates.iter().filter(|c| score(c).is_some()).fold(
            None,
            |best: Option<&Candidate>, c| match best {
                Some(b) if score(b) >= score(c) => Some(b),
                _ => Some(c),
            },
        )
    };
    (best(|c| Some(c.validation)), best(|c| c.ood_test))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = "name = \"drm\"\n[data]\nsuite = \"spurious\"\n[method]\nname = \"drm\"\n";

    fn row(point: &str, alpha: Option<f64>, split: &str, seed: u64, top1: f64) -> ResultRow {
        crate::eval::evaluate::test_row(Some(point), alpha, split, seed, top1)
    }

    #[test]
    fn the_grid_is_the_product_of_its_axes_over_the_seeds() {
        let grid = [
            Axis::parse("drm.lambda=0.5,1").unwrap(),
            Axis::parse("drm.affinity=\"standardize\",\"center\"").unwrap(),
        ];
        let points = points(RECIPE, "test", &grid, &[], &[0, 1]).unwrap();
        let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "drm-lambda0.5-affinitystandardize",
                "drm-lambda0.5-affinitycenter",
                "drm-lambda1-affinitystandardize",
                "drm-lambda1-affinitycenter"
            ]
        );
        let run = &points[1].runs[1];
        assert_eq!((run.trained(), run.recipe.seed), ("drm-lambda0.5-affinitycenter-s1", 1));
        assert_eq!(run.recipe.sections["drm"]["lambda"].as_float(), Some(0.5));
        assert!(points.iter().flat_map(|p| &p.runs).all(|run| run.inference.is_empty()));
    }

    #[test]
    fn inference_only_axes_share_one_trained_run_and_across_values_share_one_point() {
        let grid = [Axis::parse("drm.beta=0.5,0.75").unwrap(), Axis::parse("drm.lambda=0.5,1").unwrap()];
        let across = [Axis::parse("data.suite=\"spurious\",\"domains\"").unwrap()];
        let points = points(RECIPE, "test", &grid, &across, &[0]).unwrap();
        let names: Vec<&str> = points.iter().map(|p| p.name.as_str()).collect();
        // β varies fastest: it does not change the trained run.
        assert_eq!(
            names,
            [
                "drm-lambda0.5-beta0.5",
                "drm-lambda0.5-beta0.75",
                "drm-lambda1-beta0.5",
                "drm-lambda1-beta0.75"
            ]
        );
        let runs = |k: usize| -> Vec<(&str, Vec<String>)> {
            points[k].runs.iter().map(|r| (r.trained(), r.inference.clone())).collect()
        };
        let trained = ["drm-suitespurious-lambda0.5-s0", "drm-suitedomains-lambda0.5-s0"];
        assert_eq!(runs(0), trained.map(|name| (name, Vec::new())));
        assert_eq!(runs(1), trained.map(|name| (name, vec!["drm.beta=0.75".to_string()])));
        let evaluated = &points[1].runs[1].recipe;
        assert_eq!(evaluated.sections["drm"]["beta"].as_float(), Some(0.75));
        assert_eq!(evaluated.data.suite.as_deref(), Some("domains"));

        // VRF's a and b are inference-only too; FT's learning rate is not.
        let vrf = "name = \"vrf\"\n[data]\nsuite = \"spurious\"\n[method]\nname = \"ft\"\n[eval]\npredictor = \"vrf\"\n";
        let grid = [Axis::parse("vrf.a=1,2").unwrap(), Axis::parse("train.lr=1e-4,3e-4").unwrap()];
        let points = super::points(vrf, "test", &grid, &[], &[0]).unwrap();
        let trained: Vec<(&str, usize)> =
            points.iter().map(|p| (p.runs[0].trained(), p.runs[0].inference.len())).collect();
        assert_eq!(
            trained,
            [("vrf-lr1e-4-s0", 0), ("vrf-lr1e-4-s0", 1), ("vrf-lr3e-4-s0", 0), ("vrf-lr3e-4-s0", 1)]
        );
    }

    #[test]
    fn unknown_and_unused_grid_keys_are_named() {
        let err = points(RECIPE, "test", &[Axis::parse("drm.lamda=1").unwrap()], &[], &[0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("drm.lamda"), "{err}");
        let err =
            points(RECIPE, "test", &[Axis::parse("vrf.a=1").unwrap()], &[], &[0]).unwrap_err().to_string();
        assert!(err.contains("--grid vrf.a") && err.contains("method drm"), "{err}");
        assert!(Axis::parse("drm.lambda").is_err() && Axis::parse("drm.lambda=1,").is_err());
        assert!(Selection::parse("id_val:accuracy").unwrap_err().to_string().contains("accuracy"));
    }

    #[test]
    fn selection_is_by_mean_validation_score_and_the_test_oracle_is_reported_beside_it() {
        // point a: val 0.8/0.6 (mean 0.7), OOD 0.5; point b: val 0.6 (0.6), OOD 0.9;
        // a at WiSE-FT 0.5: val 0.75, OOD 0.6.
        let rows = [
            row("a", None, "id_val", 0, 0.8),
            row("a", None, "id_val", 1, 0.6),
            row("a", None, "ood_x", 0, 0.5),
            row("a", None, "ood_x", 1, 0.5),
            row("b", None, "id_val", 0, 0.6),
            row("b", None, "ood_x", 0, 0.9),
            row("a", Some(0.5), "id_val", 0, 0.75),
            row("a", Some(0.5), "ood_x", 0, 0.6),
        ];
        let selection = Selection::parse("id_val:top1").unwrap();
        let candidates = candidates(&rows, &selection).unwrap();
        assert_eq!(candidates.len(), 3);
        assert!((candidates[0].validation - 0.7).abs() < 1e-12);
        let (selected, oracle) = select(&candidates);
        assert_eq!(selected.unwrap().label(), "a + WiSE-FT 0.5");
        assert_eq!(oracle.unwrap().label(), "b");
        let missing = Selection::parse("id_test:top1").unwrap();
        assert!(super::candidates(&rows, &missing).unwrap_err().to_string().contains("no `id_test` row"));
    }

    #[test]
    fn rows_measured_under_a_perturbation_are_left_out_of_selection() {
        let clean = [row("a", None, "id_val", 0, 0.7), row("b", None, "id_val", 0, 0.6)];
        let attacked = crate::eval::evaluate::perturbed(row("b", None, "id_val", 0, 0.6), "linf", 0.01, 0.99);
        let mut all = clean.to_vec();
        all.push(attacked);
        let selection = Selection::parse("id_val:top1").unwrap();
        assert_eq!(candidates(&all, &selection).unwrap(), candidates(&clean, &selection).unwrap());
    }
}
