//! `robustft::sweep` end to end on a tiny manifest dataset: inference-only settings (DRM's β,
//! VRF's a) evaluated on one trained model give the rows a run trained with them writes, the
//! trained runs are shared between those points, and a half-done sweep resumes to the same
//! rows, training only what was missing.

use std::path::Path;

use candle_core::Device;
use robustft::eval::evaluate::ResultRow;
use robustft::experiment::{Experiment, RunSettings};
use robustft::recipe::Recipe;
use robustft::sweep::{points, read_rows, run_points, Axis, Runner};

#[path = "support/dataset.rs"]
mod dataset;
use dataset::SplitSpec;

fn recipe_text(data: &Path) -> String {
    format!(
        "name = \"drm\"\nseed = 4\n[data]\nformat = \"manifest\"\nroot = \"{}\"\ntemplates = \"shiftworld\"\n\
         descriptions = \"{}\"\n[method]\nname = \"drm\"\n[train]\nepochs = 1\nbatch_size = 4\nlr = 1e-3\n\
         warmup_steps = 1\n[eval]\nwiseft = [0.5]\n",
        data.display(),
        data.join("cd.json").display()
    )
}

/// Runs the sweep of `text` over λ ∈ {0.5, 1} × β ∈ {0.5, 0.8}; returns its rows and the names
/// of the runs it trained.
fn sweep(text: &str, out: &Path) -> (Vec<ResultRow>, Vec<String>) {
    sweep_grid(text, out, &["drm.lambda=0.5,1", "drm.beta=0.5,0.8"])
}

/// Runs the sweep of `text` over `grid`; returns its rows and the names of the runs it trained.
fn sweep_grid(text: &str, out: &Path, grid: &[&str]) -> (Vec<ResultRow>, Vec<String>) {
    let grid: Vec<Axis> = grid.iter().map(|axis| Axis::parse(axis).unwrap()).collect();
    let points = points(text, "test", &grid, &[], &[0]).unwrap();
    let mut trained = Vec::new();
    let mut runner = Runner {
        out,
        device: &Device::Cpu,
        train: &mut |experiment: &Experiment, settings: &RunSettings| {
            trained.push(experiment.recipe.name.clone());
            experiment.run(settings, &mut |_| {})
        },
        say: &mut |_| {},
    };
    let rows = run_points(&points, &mut runner).unwrap();
    (rows, trained)
}

/// Rows as JSON values (what `results.jsonl` holds), to compare.
fn json(rows: &[ResultRow]) -> Vec<serde_json::Value> {
    rows.iter().map(|row| serde_json::to_value(row).unwrap()).collect()
}

/// The rows of `point` without the field that names the point.
fn rows_of(rows: &[ResultRow], point: &str) -> Vec<serde_json::Value> {
    let rows: Vec<ResultRow> = rows
        .iter()
        .filter(|row| row.recipe.as_deref() == Some(point))
        .map(|row| ResultRow { recipe: None, ..row.clone() })
        .collect();
    json(&rows)
}

/// A fresh directory with the tiny dataset: train (12), id_val, id_test and ood_test (6 each).
fn dataset_dir(tag: &str) -> std::path::PathBuf {
    let dir = dataset::scratch("sweep", tag);
    let splits = [
        SplitSpec("train", 12, 1.0, 40.0),
        SplitSpec("id_val", 6, 1.0, 40.0),
        SplitSpec("id_test", 6, 1.0, 40.0),
        SplitSpec("ood_test", 6, 1.0, 40.0),
    ];
    dataset::write_dataset(&dir, 3, &splits, false);
    dir
}

/// The rows of `text` with `sets` trained and evaluated by a run of its own.
fn run_alone(text: &str, sets: &[&str], out: &Path) -> Vec<ResultRow> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let recipe = Recipe::parse(text, "test", &sets).unwrap();
    let settings = RunSettings { out: out.to_path_buf(), resume: false, force: false, stop_after: None };
    Experiment::resolve(recipe, &Device::Cpu).unwrap().run(&settings, &mut |_| {}).unwrap()
}

#[test]
fn vrf_settings_are_evaluated_on_one_fine_tuned_model_as_a_run_of_their_own_would() {
    let dir = dataset_dir("vrf");
    let text = recipe_text(&dir)
        .replace("name = \"drm\"", "name = \"ft\"")
        .replace("[eval]", "[eval]\npredictor = \"vrf\"");
    let (rows, trained) = sweep_grid(&text, &dir.join("sweep"), &["vrf.a=1.5,0"]);
    assert_eq!(trained, ["ft-s0"]);
    let direct = run_alone(&text, &["vrf.a=0", "seed=0"], &dir.join("alone"));
    assert_eq!(rows_of(&rows, "ft-a0"), json(&direct));
    assert_ne!(rows_of(&rows, "ft-a1.5"), json(&direct), "a changes VRF's mixture");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inference_only_settings_are_evaluated_without_retraining_and_a_half_done_sweep_resumes() {
    let dir = dataset_dir("beta");
    let text = recipe_text(&dir);
    let out = dir.join("sweep");
    let (rows, trained) = sweep(&text, &out);
    assert_eq!(trained, ["drm-lambda0.5-s0", "drm-lambda1-s0"], "β does not retrain");
    assert_eq!(rows.len(), 4 * 3 * 2, "four points × three splits × (model, WiSE-FT 0.5)");

    // A run trained with β = 0.8 writes exactly the rows evaluated at β = 0.8 on the β = 0.5
    // model (β changes nothing in training), its p_c diagnostics included.
    let direct = run_alone(&text, &["drm.lambda=1", "drm.beta=0.8", "seed=0"], &dir.join("alone"));
    let evaluated = rows_of(&rows, "drm-lambda1-beta0.8");
    assert_eq!(evaluated, json(&direct));
    assert!(evaluated[0]["diagnostics"]["pc_top1"].is_f64(), "{}", evaluated[0]);
    assert_ne!(rows_of(&rows, "drm-lambda1-beta0.5"), evaluated, "β changes the predictions");

    // Half done: one trained run and one evaluation lost. The rerun trains only that run and
    // reads the rest back, to the same rows.
    std::fs::remove_file(out.join("drm-lambda1-s0/results.jsonl")).unwrap();
    std::fs::remove_file(out.join("drm-lambda0.5-s0/inference/beta0.8.jsonl")).unwrap();
    let (resumed, retrained) = sweep(&text, &out);
    assert_eq!(retrained, ["drm-lambda1-s0"]);
    assert_eq!(json(&resumed), json(&rows));
    assert_eq!(read_rows(&out.join("drm-lambda0.5-s0/inference/beta0.8.jsonl")).unwrap().len(), 6);
    std::fs::remove_dir_all(&dir).unwrap();
}
