//! Recipes with VRF's predictor and with the m²-mix and function-space objective terms run end
//! to end on a tiny on-disk manifest dataset with the bundled model:
//!
//! * every evaluated model predicts through VRF and the result rows say so, and VRF's weight
//!   sends the prediction to the right model (a weight of 1 everywhere predicts as FT, 0 as
//!   the zero-shot model); a recipe that cannot use VRF is refused before any work;
//! * FLYP + m²-mix, DRM (FLYP ERM) + m²-mix and FT + function-space regularisation (KL and L2)
//!   train to weights that differ from the plain method's, and a run killed after 3 steps and
//!   resumed reaches exactly the weights of an uninterrupted one (their randomness is seeded by
//!   the step);
//! * the adversarial losses (`[adversarial]`: FT + TRADES, FLYP + PGD-AT, DRM + TRADES, TeCoA,
//!   FARE, and PGD-AT under the `last:1` protocol) likewise, their attacks' random starts seeded
//!   by (seed, step, example); TeCoA and FARE predict through the zero-shot head;
//! * `[eval] perturbations` adds robustness rows for every evaluated model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use robustft::clip::ClipModel;
use robustft::eval::predictor::Head;
use robustft::experiment::{Event, Experiment, RunSettings};
use robustft::prompts::{class_prompts, template_set};
use robustft::recipe::Recipe;

#[path = "support/dataset.rs"]
mod dataset;
use dataset::SplitSpec;

#[path = "support/run_weights.rs"]
mod run_weights;
use run_weights::{assert_resumed_weights_equal, weights};

fn scratch(tag: &str) -> PathBuf {
    dataset::scratch("terms", tag)
}

/// Train (24), id_val, id_test and ood_test (9 each; the OOD images are darker and noisier).
fn write_dataset(dir: &Path) {
    let splits = [
        SplitSpec("train", 24, 1.0, 40.0),
        SplitSpec("id_val", 9, 1.0, 40.0),
        SplitSpec("id_test", 9, 1.0, 40.0),
        SplitSpec("ood_test", 9, 0.6, 70.0),
    ];
    dataset::write_dataset(dir, 5, &splits, false);
}

fn recipe(data: &Path, name: &str, method: &str, extra: &[&str]) -> Recipe {
    let text = format!(
        "name = \"{name}\"\nseed = 4\n[data]\nformat = \"manifest\"\nroot = \"{}\"\ntemplates = \"shiftworld\"\n\
         descriptions = \"{}\"\n[method]\nname = \"{method}\"\n[train]\nepochs = 2\nbatch_size = 8\nlr = 1e-3\nwarmup_steps = 2\n\
         checkpoint_every = 2\n[eval]\nwiseft = [0.5]\n",
        data.display(),
        data.join("cd.json").display()
    );
    let sets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    Recipe::parse(&text, "test", &sets).unwrap()
}

/// Runs a recipe; returns the stage messages and the result rows.
fn run(recipe: Recipe, out: &Path) -> (Vec<String>, Vec<serde_json::Value>) {
    run_with(recipe, RunSettings { out: out.to_path_buf(), resume: false, force: false, stop_after: None })
}

fn run_with(recipe: Recipe, settings: RunSettings) -> (Vec<String>, Vec<serde_json::Value>) {
    let (name, out, interrupted) = (recipe.name.clone(), settings.out.clone(), settings.stop_after.is_some());
    let experiment = Experiment::resolve(recipe, &Device::Cpu).unwrap();
    let mut stages = Vec::new();
    experiment
        .run(&settings, &mut |event| {
            if let Event::Stage(stage) = event {
                stages.push(stage)
            }
        })
        .unwrap();
    if interrupted {
        return (stages, Vec::new()); // an interrupted run evaluates nothing
    }
    let results = std::fs::read_to_string(out.join(name).join("results.jsonl")).unwrap();
    (stages, results.lines().map(|line| serde_json::from_str(line).unwrap()).collect())
}

/// `(split, wiseft α or -1) -> top1` of result rows.
fn top1s(rows: &[serde_json::Value]) -> HashMap<(String, i64), f64> {
    rows.iter()
        .map(|row| {
            let alpha = row["wiseft_alpha"].as_f64().map_or(-1, |a| (a * 100.0) as i64);
            ((row["split"].as_str().unwrap().to_string(), alpha), row["top1"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn vrf_evaluates_every_model_through_its_mixture() {
    let dir = scratch("vrf");
    write_dataset(&dir);
    let (stages, rows) = run(recipe(&dir, "vrf", "ft", &["eval.predictor=\"vrf\""]), &dir.join("runs"));
    assert_eq!(rows.len(), 6, "3 splits × (FT, WiSE-FT 0.5)");
    assert!(rows.iter().all(|row| row["method"] == "ft+vrf"), "{rows:?}");
    let fits: Vec<&String> = stages.iter().filter(|s| s.contains("zero-shot failures among 24")).collect();
    assert_eq!(fits.len(), 2, "one VRF fit per evaluated model: {stages:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn vrf_weight_selects_the_fine_tuned_or_the_zero_shot_model() {
    let dir = scratch("vrf-extremes");
    write_dataset(&dir);
    let out = dir.join("runs");
    let (_, ft) = run(recipe(&dir, "ft", "ft", &[]), &out);
    let (_, zeroshot) = run(recipe(&dir, "zeroshot", "zeroshot", &[]), &out);
    // a = ±1000: w = σ(−(d − a)/b) is 1 (a ≫ d ∈ [0, 4]) or 0 for every image; the
    // temperatures rescale logits and leave each model's argmax, hence top-1, unchanged.
    let vrf = |name: &str, a: &str| {
        let sets = ["eval.predictor=\"vrf\"".to_string(), format!("vrf.a={a}")];
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        run(recipe(&dir, name, "ft", &sets), &out).1
    };
    let (all_ft, all_zero_shot) = (top1s(&vrf("vrf-ft", "1000.0")), top1s(&vrf("vrf-zs", "-1000.0")));
    let (ft, zeroshot) = (top1s(&ft), top1s(&zeroshot));
    for ((split, alpha), top1) in &all_ft {
        assert_eq!(*top1, ft[&(split.clone(), *alpha)], "w = 1 on {split} (α {alpha}) must predict as FT");
        assert_eq!(
            all_zero_shot[&(split.clone(), *alpha)],
            zeroshot[&(split.clone(), -1)],
            "w = 0 on {split}"
        );
    }
    let differs = all_ft.iter().any(|(key, top1)| *top1 != all_zero_shot[key]);
    assert!(differs, "FT and zero-shot agree everywhere: the test cannot tell them apart");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn vrf_is_refused_for_a_method_without_a_trained_head() {
    let dir = scratch("vrf-refused");
    write_dataset(&dir);
    let text = recipe(&dir, "x", "flyp", &[]).to_toml();
    let err = Recipe::parse(&text, "test", &["eval.predictor=\"vrf\"".to_string()]).unwrap_err().to_string();
    assert!(err.contains("vrf") && err.contains("flyp"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Trains `method` with the term `sets` three ways — plain, with the term, and with the term
/// killed after 3 steps then resumed — and checks the term changes the weights and the resumed
/// run reaches the uninterrupted one's weights exactly; returns the term's result rows.
fn term_changes_training_and_resumes_exactly(
    tag: &str,
    method: &str,
    sets: &[&str],
) -> Vec<serde_json::Value> {
    let dir = scratch(tag);
    write_dataset(&dir);
    let out = dir.join("runs");
    let sets: Vec<&str> = ["eval.wiseft=[]"].iter().chain(sets).copied().collect();
    let sets = sets.as_slice();
    run(recipe(&dir, "plain", method, &sets[..1]), &out);
    let (_, rows) = run(recipe(&dir, "term", method, sets), &out);
    // 24 images in batches of 8: 3 steps per epoch, 6 in all; stop after 3 (the last
    // checkpoint is step 2), then resume.
    let killed =
        |resume, stop_after| RunSettings { out: dir.join("killed"), resume, force: !resume, stop_after };
    run_with(recipe(&dir, "term", method, sets), killed(false, Some(3)));
    run_with(recipe(&dir, "term", method, sets), killed(true, None));
    let (plain, term, resumed) =
        (weights(&out.join("plain")), weights(&out.join("term")), weights(&dir.join("killed/term")));
    assert_resumed_weights_equal(tag, &term, &resumed);
    assert!(plain.iter().zip(&term).any(|((_, x), (_, y))| x != y), "{tag}: the term changed no weight");
    std::fs::remove_dir_all(&dir).unwrap();
    rows
}

#[test]
fn flyp_with_m2mix_trains_differently_and_resumes_exactly() {
    let rows = term_changes_training_and_resumes_exactly("m2mix", "flyp", &["m2mix.weight=0.5"]);
    assert!(rows.iter().all(|row| row["method"] == "flyp+m2mix"), "{rows:?}");
}

#[test]
fn drm_with_m2mix_on_its_flyp_term_trains_differently_and_resumes_exactly() {
    let sets = ["m2mix.weight=0.5", "m2mix.schedule=\"inverse_epoch\"", "m2mix.tau_use=\"multiply\""];
    let rows = term_changes_training_and_resumes_exactly("drm-m2mix", "drm", &sets);
    assert!(rows.iter().all(|row| row["method"] == "drm+m2mix"), "{rows:?}");
}

#[test]
fn ft_with_function_space_regularisation_trains_differently_and_resumes_exactly() {
    let rows =
        term_changes_training_and_resumes_exactly("fsr", "ft", &["fsr.lambda1=1.0", "fsr.lambda2=0.5"]);
    assert!(rows.iter().all(|row| row["method"] == "ft+fsr"), "{rows:?}");
}

#[test]
fn lp_ft_with_feature_space_regularisation_trains_differently_and_resumes_exactly() {
    let sets = ["fsr.lambda1=1.0", "fsr.distance=\"l2\""];
    let rows = term_changes_training_and_resumes_exactly("fsr-l2", "lp_ft", &sets);
    assert!(rows.iter().all(|row| row["method"] == "lp_ft+fsr"), "{rows:?}");
}

#[test]
fn terms_are_refused_for_objectives_they_do_not_fit() {
    let dir = scratch("terms-refused");
    let text = recipe(&dir, "x", "ft", &[]).to_toml();
    let refuse = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Recipe::parse(&text, "test", &sets).unwrap_err().to_string()
    };
    let err = refuse(&["m2mix.weight=0.1"]);
    assert!(err.contains("m2mix") && err.contains("contrastive"), "{err}");
    let err = refuse(&["method.name=\"drm\"", "drm.erm=\"ce\"", "m2mix.weight=0.1"]);
    assert!(err.contains("drm"), "{err}");
    let err = refuse(&["method.name=\"flyp\"", "fsr.lambda1=1.0"]);
    assert!(err.contains("fsr") && err.contains("flyp"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `[adversarial]` settings of a quick attack (ℓ∞, ε = 4/255, 2 steps) with `loss`.
fn adversarial(loss: &str) -> [String; 3] {
    [format!("adversarial.loss=\"{loss}\""), "adversarial.eps=\"4/255\"".into(), "adversarial.steps=2".into()]
}

fn adversarial_run(tag: &str, method: &str, loss: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let sets = adversarial(loss);
    let sets: Vec<&str> = sets.iter().map(String::as_str).chain(extra.iter().copied()).collect();
    term_changes_training_and_resumes_exactly(tag, method, &sets)
}

#[test]
fn ft_with_trades_trains_differently_and_resumes_exactly() {
    let rows = adversarial_run("ft-trades", "ft", "trades", &["adversarial.beta=3.0"]);
    assert!(rows.iter().all(|row| row["method"] == "ft+trades"), "{rows:?}");
}

#[test]
fn flyp_with_pgd_at_trains_differently_and_resumes_exactly() {
    let rows = adversarial_run("flyp-pgd-at", "flyp", "pgd_at", &[]);
    assert!(rows.iter().all(|row| row["method"] == "flyp+pgd_at"), "{rows:?}");
}

#[test]
fn drm_with_trades_trains_differently_and_resumes_exactly() {
    let rows = adversarial_run("drm-trades", "drm", "trades", &[]);
    assert!(rows.iter().all(|row| row["method"] == "drm+trades"), "{rows:?}");
}

#[test]
fn pgd_at_in_the_l2_ball_under_the_last_block_protocol_resumes_exactly() {
    let sets = ["adversarial.threat=\"l2\"", "adversarial.eps=0.5", "train.trainable=\"last:1\""];
    let rows = adversarial_run("ft-pgd-at-last1", "ft", "pgd_at", &sets);
    assert!(rows.iter().all(|row| row["method"] == "ft+pgd_at@last:1"), "{rows:?}");
}

#[test]
fn tecoa_and_fare_train_the_image_tower_and_predict_through_the_zero_shot_head() {
    for loss in ["tecoa", "fare"] {
        let rows = adversarial_run(&format!("ft-{loss}"), "ft", loss, &[]);
        assert!(rows.iter().all(|row| row["method"] == format!("ft+{loss}")), "{rows:?}");
    }
    let dir = scratch("tecoa-head");
    write_dataset(&dir);
    let sets = adversarial("tecoa");
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    run(recipe(&dir, "tecoa", "ft", &sets), &dir.join("runs"));
    // The saved head is the pre-trained zero-shot head: TeCoA never trains a head.
    let (model, _) = ClipModel::load("bundled", &Device::Cpu).unwrap();
    let classes: Vec<String> = dataset::CLASSES.iter().map(|c| c.to_string()).collect();
    let prompts = class_prompts(&classes, template_set("shiftworld").unwrap());
    let zero_shot = Head::zero_shot(&model, &prompts).unwrap();
    let saved = Head::load(&dir.join("runs/tecoa/model/head.safetensors"), &Device::Cpu).unwrap();
    let (a, b) = (
        zero_shot.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        saved.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert_eq!(a, b, "TeCoA's predictor must be the pre-trained zero-shot head");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn adversarial_settings_are_checked_before_any_work() {
    let dir = scratch("adversarial-refused");
    write_dataset(&dir);
    let text = recipe(&dir, "x", "ft", &[]).to_toml();
    let refused = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Recipe::parse(&text, "test", &sets).unwrap_err().to_string()
    };
    let cases: [(&[&str], &str); 6] = [
        (&["adversarial.loss=\"tecoa\"", "method.name=\"flyp\""], "flyp"),
        (&["adversarial.loss=\"pgd_at\"", "method.name=\"zeroshot\""], "zeroshot"),
        (&["adversarial.loss=\"pgd_at\"", "adversarial.steps=0"], "adversarial.steps"),
        (&["adversarial.loss=\"pgd_at\"", "adversarial.eps=-0.1"], "negative"),
        (&["adversarial.loss=\"pgd_at\"", "adversarial.eps=\"four\""], "not a number"),
        (&["adversarial.loss=\"pgd\""], "pgd"),
    ];
    for (sets, needle) in cases {
        let err = refused(sets);
        assert!(err.contains(needle), "{sets:?}: {err}");
    }
    let err = refused(&["eval.perturbations=[{ threat = \"linf\", steps = 0 }]"]);
    assert!(err.contains("steps"), "{err}");
    let err = refused(&["eval.perturbations=[{ threat = \"rotate\" }]"]);
    assert!(err.contains("unknown threat `rotate`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_perturbations_add_robustness_rows_for_every_evaluated_model() {
    let dir = scratch("perturbation-rows");
    write_dataset(&dir);
    let sets = [
        "eval.perturbations=[{ threat = \"linf\", eps = \"0,8/255\", steps = 3 }, { threat = \"corruption:contrast\", eps = \"5\" }]",
    ];
    let (_, rows) = run(recipe(&dir, "ft", "ft", &sets), &dir.join("runs"));
    let clean: Vec<&serde_json::Value> = rows.iter().filter(|r| r.get("threat").is_none()).collect();
    let perturbed: Vec<&serde_json::Value> = rows.iter().filter(|r| r.get("threat").is_some()).collect();
    assert_eq!(clean.len(), 6, "3 splits × (FT, WiSE-FT 0.5)");
    assert_eq!(perturbed.len(), 18, "3 perturbations × 3 splits × 2 models");
    for row in &perturbed {
        let twin = clean
            .iter()
            .find(|c| c["split"] == row["split"] && c["wiseft_alpha"] == row["wiseft_alpha"])
            .expect("a clean row of the same split and model");
        assert_eq!(row["clean_top1"], twin["top1"], "{row}");
        assert_eq!(row["robust_top1"], row["top1"], "{row}");
        if row["eps"] == 0.0 {
            assert_eq!(row["robust_top1"], row["clean_top1"], "ε = 0 is the clean image: {row}");
        }
    }
    let attacked: f64 = perturbed
        .iter()
        .filter(|r| r["eps"].as_f64() == Some(8.0 / 255.0))
        .map(|r| r["top1"].as_f64().unwrap())
        .sum();
    let clean_sum: f64 = clean.iter().map(|r| r["top1"].as_f64().unwrap()).sum();
    assert!(attacked < clean_sum, "PGD at 8/255 must lower top-1 somewhere ({attacked} vs {clean_sum})");
    std::fs::remove_dir_all(&dir).unwrap();
}
