//! Recipes run end to end on a tiny on-disk manifest dataset with the bundled model: a killed
//! run resumed from its checkpoint reaches exactly the weights of an uninterrupted run (FT, DRM,
//! and both under the DiGraP constraint, whose learned state must be restored; FLYP + FTP,
//! DRM + SPD, FT + TPGM, which also differ from their plain methods), a corrupt
//! training image is skipped and reported, and bad input — a missing split, a
//! concept-description file for other classes, an unknown recipe key, TPGM without a validation
//! split, more trainable blocks (`train.trainable = "last:K"`) than the image tower has — is
//! refused before any work with an error naming it.

use std::path::{Path, PathBuf};

use candle_core::Device;
use robustft::clip::ClipModel;
use robustft::experiment::{Event, Experiment, RunSettings};
use robustft::recipe::Recipe;

#[path = "support/dataset.rs"]
mod dataset;
use dataset::SplitSpec;

#[path = "support/run_weights.rs"]
mod run_weights;
use run_weights::{assert_resumed_weights_equal, weights};

fn scratch(tag: &str) -> PathBuf {
    dataset::scratch("experiment", tag)
}

/// Train (12, plus one corrupt file), id_val, id_test and ood_test (6 each).
fn write_dataset(dir: &Path) {
    write_dataset_with_seed(dir, 3);
}

fn write_dataset_with_seed(dir: &Path, seed: u64) {
    let splits = [
        SplitSpec("train", 12, 1.0, 40.0),
        SplitSpec("id_val", 6, 1.0, 40.0),
        SplitSpec("id_test", 6, 1.0, 40.0),
        SplitSpec("ood_test", 6, 1.0, 40.0),
    ];
    dataset::write_dataset(dir, seed, &splits, true);
}

fn recipe(data: &Path, method: &str, extra: &[&str]) -> Recipe {
    let text = format!(
        "name = \"{method}\"\nseed = 4\n[data]\nformat = \"manifest\"\nroot = \"{}\"\ntemplates = \"shiftworld\"\n\
         descriptions = \"{}\"\n[method]\nname = \"{method}\"\n[train]\nepochs = 2\nbatch_size = 4\nlr = 1e-3\n\
         warmup_steps = 2\ncheckpoint_every = 2\n[eval]\nwiseft = [0.5]\n",
        data.display(),
        data.join("cd.json").display()
    );
    let sets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    Recipe::parse(&text, "test", &sets).unwrap()
}

/// Runs a recipe (a fresh start replaces an earlier run); returns the stage messages.
fn run(recipe: Recipe, out: &Path, resume: bool, stop_after: Option<u64>) -> robustft::Result<Vec<String>> {
    run_with(recipe, RunSettings { out: out.to_path_buf(), resume, force: !resume, stop_after })
}

fn run_with(recipe: Recipe, settings: RunSettings) -> robustft::Result<Vec<String>> {
    let experiment = Experiment::resolve(recipe, &Device::Cpu)?;
    let mut stages = Vec::new();
    experiment.run(&settings, &mut |event| {
        if let Event::Stage(stage) = event {
            stages.push(stage)
        }
    })?;
    Ok(stages)
}

fn resume_matches_uninterrupted(method: &str) {
    let (dir, _) = resumed_run_matches(method, method, &[]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `method` with `extra` overrides as run `name`, uninterrupted and killed then resumed,
/// and checks both reach the same, trained weights; returns the scratch directory (for the
/// caller to remove) and the uninterrupted run's directory.
fn resumed_run_matches(name: &str, method: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let dir = scratch(name);
    write_dataset(&dir);
    let (whole, killed) = (dir.join("whole"), dir.join("killed"));
    let name_set = format!("name=\"{name}\"");
    let sets: Vec<&str> = extra.iter().copied().chain([name_set.as_str()]).collect();
    run(recipe(&dir, method, &sets), &whole, false, None).unwrap();
    // 13 images (one unreadable) in batches of 4: 4 steps per epoch, 8 in all; stop after 3
    // (the last checkpoint is step 2), then resume.
    run(recipe(&dir, method, &sets), &killed, false, Some(3)).unwrap();
    run(recipe(&dir, method, &sets), &killed, true, None).unwrap();
    let (a, b) = (weights(&whole.join(name)), weights(&killed.join(name)));
    assert_resumed_weights_equal(name, &a, &b);
    let (bundled, _) = ClipModel::load("bundled", &Device::Cpu).unwrap();
    let moved = bundled.tensors().iter().any(|(tensor, t)| {
        let before: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        a.iter().any(|(n, after)| n == tensor && *after != before)
    });
    assert!(moved, "{name}: training changed no weight");
    (dir, whole.join(name))
}

#[test]
fn ft_resumed_after_a_kill_reaches_the_uninterrupted_weights() {
    resume_matches_uninterrupted("ft");
}

#[test]
fn drm_resumed_after_a_kill_reaches_the_uninterrupted_weights() {
    resume_matches_uninterrupted("drm");
}

/// DiGraP's largest learned strength ω in a run's checkpoint.
fn largest_digrap_omega(run_dir: &Path) -> f32 {
    let extra =
        candle_core::safetensors::load(run_dir.join("checkpoint/extra.safetensors"), &Device::Cpu).unwrap();
    let omegas = extra.iter().filter(|(name, _)| name.starts_with("constraint.omega."));
    omegas
        .map(|(_, t)| t.to_dtype(candle_core::DType::F32).unwrap().to_vec1::<f32>().unwrap()[0])
        .fold(0.0, f32::max)
}

#[test]
fn ft_with_digrap_resumed_after_a_kill_reaches_the_uninterrupted_weights() {
    // checkpoints every 3 steps: the run resumes from step 3, after ω's first update (ω, its
    // moments, the last projections and the step must all be restored)
    let digrap = ["constraint.name=\"digrap\"", "constraint.mu=0.5", "train.checkpoint_every=3"];
    let (dir, run_dir) = resumed_run_matches("ft_digrap", "ft", &digrap);
    assert!(largest_digrap_omega(&run_dir) > 0.0, "DiGraP learned no strength");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `method` under the constraint set by `constraint` (recipe overrides): a killed and resumed
/// run reaches the uninterrupted weights (FTP's radii and previous offsets go through the
/// checkpoint), the weights move, and differently from the same recipe without the constraint;
/// the result rows name the combination.
fn constrained_run_resumes_and_differs_from_the_plain_method(
    method: &str,
    constraint: &[&str],
    plain: &[&str],
) {
    let dir = scratch(&format!("{method}-constrained"));
    write_dataset(&dir);
    let (whole, killed, unconstrained) = (dir.join("whole"), dir.join("killed"), dir.join("plain"));
    run(recipe(&dir, method, constraint), &whole, false, None).unwrap();
    run(recipe(&dir, method, constraint), &killed, false, Some(3)).unwrap();
    run(recipe(&dir, method, constraint), &killed, true, None).unwrap();
    run(recipe(&dir, method, plain), &unconstrained, false, None).unwrap();
    let trained = weights(&whole.join(method));
    assert_resumed_weights_equal(method, &trained, &weights(&killed.join(method)));
    let (bundled, _) = ClipModel::load("bundled", &Device::Cpu).unwrap();
    let moved = bundled.tensors().iter().any(|(name, t)| {
        let before: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        trained.iter().any(|(n, after)| n == name && *after != before)
    });
    assert!(moved, "{method}: training changed no weight");
    assert_ne!(trained, weights(&unconstrained.join(method)), "{method}: the constraint changed nothing");
    let results = std::fs::read_to_string(whole.join(method).join("results.jsonl")).unwrap();
    let label = constraint.iter().find_map(|s| s.strip_prefix("constraint.name=")).unwrap().trim_matches('"');
    assert!(results.contains(&format!("\"method\":\"{method}+{label}\"")), "{results}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn drm_with_digrap_resumed_after_a_kill_reaches_the_uninterrupted_weights() {
    let digrap = [
        "constraint.name=\"digrap\"",
        "constraint.mu=0.5",
        "constraint.lambda=0.1",
        "train.checkpoint_every=3",
    ];
    let (dir, run_dir) = resumed_run_matches("drm_digrap", "drm", &digrap);
    assert!(largest_digrap_omega(&run_dir) > 0.0, "DiGraP learned no strength");
    let results = std::fs::read_to_string(run_dir.join("results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 6, "3 splits × (DRM + DiGraP, WiSE-FT 0.5)");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flyp_with_ftp_resumes_exactly_and_differs_from_flyp() {
    constrained_run_resumes_and_differs_from_the_plain_method("flyp", &["constraint.name=\"ftp\""], &[]);
}

#[test]
fn drm_with_spd_resumes_exactly_and_differs_from_drm_without_weight_decay() {
    let spd = ["constraint.name=\"spd\"", "constraint.lambda=1.0", "train.weight_decay=0.0"];
    constrained_run_resumes_and_differs_from_the_plain_method("drm", &spd, &["train.weight_decay=0.0"]);
}

#[test]
fn ft_with_tpgm_resumes_exactly_and_differs_from_ft() {
    // radii updated at steps 1, 4 and 7, two Adam steps each on batches of 4 of the 6 id_val
    // images: the resumed run (from step 2) must draw the same batches and restore γ's moments
    let tpgm = [
        "constraint.name=\"tpgm\"",
        "constraint.every=3",
        "constraint.proj_steps=2",
        "constraint.val_batch_size=4",
        "constraint.mu=0.05",
    ];
    constrained_run_resumes_and_differs_from_the_plain_method("ft", &tpgm, &[]);
}

#[test]
fn tpgm_without_a_validation_split_is_refused_naming_it() {
    let dir = scratch("tpgm-no-val");
    write_dataset(&dir);
    let sets = ["constraint.name=\"tpgm\"", "data.val_split=\"held_out\""];
    let err = Experiment::resolve(recipe(&dir, "ft", &sets), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("tpgm") && err.contains("`held_out`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn more_trainable_blocks_than_the_image_tower_has_are_refused_before_any_work() {
    let dir = scratch("trainable-too-deep");
    write_dataset(&dir);
    let err = Experiment::resolve(recipe(&dir, "ft", &["train.trainable=\"last:5\""]), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("train.trainable = \"last:5\"") && err.contains("image tower's 4"), "{err}");
    assert!(Experiment::resolve(recipe(&dir, "ft", &["train.trainable=\"last:4\""]), &Device::Cpu).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_training_image_is_skipped_and_reported() {
    let dir = scratch("corrupt");
    write_dataset(&dir);
    let stages = run(recipe(&dir, "ft", &["train.epochs=1"]), &dir.join("runs"), false, None).unwrap();
    assert!(stages.iter().any(|s| s.contains("skipped unreadable image broken.png")), "{stages:?}");
    let results = std::fs::read_to_string(dir.join("runs/ft/results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 6, "3 splits × (FT, WiSE-FT 0.5)");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_resolved_recipe_is_written_before_training() {
    let dir = scratch("recipe");
    write_dataset(&dir);
    let recipe = recipe(&dir, "flyp", &["train.epochs=1"]);
    run(recipe.clone(), &dir.join("runs"), false, Some(0)).unwrap();
    let written = std::fs::read_to_string(dir.join("runs/flyp/recipe.toml")).unwrap();
    assert_eq!(Recipe::parse(&written, "written", &[]).unwrap(), recipe);
    let other = Recipe::parse(&written, "written", &["train.lr=0.5".to_string()]).unwrap();
    let err = run(other, &dir.join("runs"), true, None).unwrap_err().to_string();
    assert!(err.contains("another recipe (differing: train.lr)"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_earlier_run_is_kept_unless_resumed_or_forced_and_a_fresh_start_clears_it() {
    let dir = scratch("rundir");
    write_dataset(&dir);
    let runs = dir.join("runs");
    let settings = |resume, force, stop_after| RunSettings { out: runs.clone(), resume, force, stop_after };
    let ft = recipe(&dir, "ft", &[]);
    run_with(ft.clone(), settings(false, false, Some(2))).unwrap();
    let checkpoint = runs.join("ft/checkpoint");
    assert!(checkpoint.is_dir(), "a checkpoint at step 2");
    let err = run_with(ft.clone(), settings(false, false, None)).unwrap_err().to_string();
    assert!(
        err.contains("an interrupted run") && err.contains("--resume") && err.contains("--force"),
        "{err}"
    );
    assert!(
        checkpoint.is_dir() && runs.join("ft/metrics.jsonl").is_file(),
        "the refused start deleted nothing"
    );
    // Another recipe under the same name, forced and killed before its first checkpoint: the old
    // checkpoint is gone, so a later --resume cannot continue the other run's weights.
    let lr = recipe(&dir, "ft", &["train.lr=0.5"]);
    run_with(lr.clone(), settings(false, true, Some(1))).unwrap();
    assert!(!checkpoint.exists(), "the earlier run's checkpoint was cleared");
    let err = run_with(recipe(&dir, "ft", &[]), settings(true, false, None)).unwrap_err().to_string();
    assert!(err.contains("differing: train.lr"), "{err}");
    let missing = dir.join("none");
    let err = run(ft, &missing, true, None).unwrap_err().to_string();
    assert!(err.contains("no run to --resume"), "{err}");
    assert!(!missing.join("ft").exists(), "a refused resume creates no directory");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_split_is_named_with_the_available_ones() {
    let dir = scratch("split");
    write_dataset(&dir);
    let err = Experiment::resolve(recipe(&dir, "ft", &["data.eval_splits=[\"ood_tset\"]"]), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("ood_tset") && err.contains("ood_test"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn descriptions_for_other_classes_are_refused() {
    let dir = scratch("classes");
    write_dataset(&dir);
    std::fs::write(dir.join("cd.json"), r#"{"circle": "round", "square": "four equal sides"}"#).unwrap();
    let err = Experiment::resolve(recipe(&dir, "drm", &[]), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("cd.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_committed_recipe_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    let files = files_under(&root);
    let failures: Vec<String> = files
        .iter()
        .filter_map(|path| Recipe::load(path, &[]).err().map(|e| format!("{}: {e}", path.display())))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} recipes fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    // Every file under recipes/ is a recipe (a `.tml` or stray file would be skipped by tools).
    let recipes = files.iter().filter(|p| p.extension().is_some_and(|e| e == "toml")).count();
    assert_eq!(recipes, files.len(), "non-recipe files under {}: {files:?}", root.display());
    assert!(recipes > 0, "no recipes under {}", root.display());
}

/// Every file below `dir`, at any depth, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => files.extend(files_under(&path)),
            false => files.push(path),
        }
    }
    files.sort();
    files
}

#[test]
fn linear_probe_features_are_cached_and_reused() {
    let dir = scratch("cache");
    write_dataset(&dir);
    let out = dir.join("runs");
    let lp = |name: &str| recipe(&dir, "lp", &[&format!("name={name}")]);
    run(lp("first"), &out, false, None).unwrap();
    let cached: Vec<_> = std::fs::read_dir(out.join("cache")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(cached.len(), 2, "train and id_val features: {cached:?}");
    let stamps: Vec<_> = cached.iter().map(|p| std::fs::metadata(p).unwrap().modified().unwrap()).collect();
    run(lp("second"), &out, false, None).unwrap();
    let again: Vec<_> = cached.iter().map(|p| std::fs::metadata(p).unwrap().modified().unwrap()).collect();
    assert_eq!(stamps, again, "the second run read the cache instead of rewriting it");
    let results = |name: &str| std::fs::read_to_string(out.join(name).join("results.jsonl")).unwrap();
    assert_eq!(results("first"), results("second"));
    // The dataset regenerated in place (same paths and count, other pixels): not the cached features.
    write_dataset_with_seed(&dir, 11);
    run(lp("third"), &out, false, None).unwrap();
    let entries = std::fs::read_dir(out.join("cache")).unwrap().count();
    assert_eq!(entries, 4, "new train and id_val features were computed");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_dataset_with_nothing_to_evaluate_or_no_readable_image_is_refused_before_training() {
    let dir = scratch("empty");
    dataset::write_dataset(&dir, 3, &[SplitSpec("train", 6, 1.0, 40.0)], false);
    let err = Experiment::resolve(recipe(&dir, "ft", &[]), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("no split to evaluate") && err.contains("train"), "{err}");
    write_dataset(&dir);
    for i in 0..6 {
        std::fs::write(dir.join(format!("ood_test_{i}.png")), b"not a png").unwrap();
    }
    let err = Experiment::resolve(recipe(&dir, "ft", &[]), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("split `ood_test`: has no readable image (6 listed: "), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_drm_model_keeps_its_mixture_and_predicts_as_its_run_did() {
    use robustft::eval::dataset::evaluate_split;
    use robustft::eval::metrics::split_metrics;
    use robustft::eval::predictor::TextPredictor;
    let dir = scratch("saved_mixture");
    write_dataset(&dir);
    let out = dir.join("runs");
    run(recipe(&dir, "drm", &["train.epochs=1", "drm.beta=0.7"]), &out, false, None).unwrap();
    let model_dir = out.join("drm/model");
    let saved = TextPredictor::load(&model_dir).unwrap().expect("predictor.json beside the weights");
    assert_eq!((saved.beta, saved.descriptions.as_ref().map(Vec::len)), (0.7, Some(3)));
    let (model, _) = ClipModel::load(model_dir.to_str().unwrap(), &Device::Cpu).unwrap();
    let split = std::sync::Arc::new(robustft::data::load_manifest_split(&dir, "id_test").unwrap());
    let evaluation = evaluate_split(&model, split, &saved.build(&model).unwrap()).unwrap();
    let metrics = split_metrics(&evaluation.predictions, &[]);
    let results = std::fs::read_to_string(out.join("drm/results.jsonl")).unwrap();
    let row: serde_json::Value = results
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|row| row["split"] == "id_test" && row.get("wiseft_alpha").is_none())
        .unwrap();
    let top1 = row["diagnostics"]["pc_top1"].as_f64().expect("p_c's top-1 in the run's rows");
    assert!((0.0..=1.0).contains(&top1) && row["diagnostics"]["pc_entropy"].as_f64().unwrap() > 0.0, "{row}");
    // ECE reads the probabilities themselves: a predictor without the mixture would differ.
    let run_metrics = (row["top1"].as_f64().unwrap(), row["ece"].as_f64().unwrap());
    assert_eq!((metrics.top1, metrics.ece), run_metrics, "the saved mixture reproduces the run's id_test");
    std::fs::remove_dir_all(&dir).unwrap();
}
