//! A corpus of hostile inputs, generated in a temporary directory, each run through the
//! `robustft` binary under a timeout: every case exits non-zero with a message naming the
//! offending file, key, line or class (or succeeds correctly), none panics or hangs, and a
//! refused `train` leaves no half-written run (no `results.jsonl`, no `model/`).
//!
//! Covered: concept-description keys that are neither class names nor indices; `[train]`
//! options that are NaN, negative, out of order or overflow the step count; malformed recipes
//! and manifests; a FIFO and an unreadable image in a manifest (skipped and reported as plain
//! stderr lines, stderr being a pipe here); a byte-order mark in `classes.txt`; `report` with
//! an unknown suite, and with a perturbed row (its own table, the clean one unchanged); `--results` after a row without a final newline; write targets in a
//! missing directory; one inline class; URL credentials in `describe` errors; a trained head
//! whose classes differ from the dataset's; the ImageNet layout in `eval`; `train` into a
//! directory holding a run (refused without `--resume` or `--force`), `--resume` of a directory
//! without one; `train` of a bare weights file whose width OpenAI's conventions cannot split
//! (refused without `--config`, a bad `model_config` or `--config` named, trained with one); `robustness` with an unknown threat or corruption, a negative or non-numeric ε,
//! zero steps, a severity out of range, and `--run` of a directory that is no (finished) run.

#[path = "../../robustft/tests/support/dataset.rs"]
mod dataset;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use dataset::SplitSpec;
use robustft::clip::{Activation, ClipConfig, ClipModel, TextConfig, VisionConfig};
use robustft::eval::predictor::Head;

/// Longest any case may run.
const TIMEOUT: Duration = Duration::from_secs(180);

/// What a case printed and how it ended.
struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` in `dir`; panics if it runs past [`TIMEOUT`] (after killing it).
fn robustft(dir: &Path, args: &[&str]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_robustft"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let (stdout, stderr) =
        (drain(Box::new(child.stdout.take().unwrap())), drain(Box::new(child.stderr.take().unwrap())));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            child.kill().unwrap();
            panic!("robustft {args:?} hung (killed after {TIMEOUT:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let outcome =
        Outcome { success: status.success(), stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() };
    assert!(!outcome.stderr.contains("panicked"), "robustft {args:?} panicked:\n{}", outcome.stderr);
    outcome
}

/// Runs a case that must fail with a message holding every one of `needles`.
fn fails_naming(dir: &Path, args: &[&str], needles: &[&str]) -> String {
    let outcome = robustft(dir, args);
    assert!(!outcome.success, "robustft {args:?} succeeded:\n{}", outcome.stderr);
    for needle in needles {
        assert!(outcome.stderr.contains(needle), "robustft {args:?}: no `{needle}` in:\n{}", outcome.stderr);
    }
    outcome.stderr
}

/// Runs a case that must succeed.
fn succeeds(dir: &Path, args: &[&str]) -> Outcome {
    let outcome = robustft(dir, args);
    assert!(outcome.success, "robustft {args:?} failed:\n{}", outcome.stderr);
    outcome
}

/// A scratch directory holding a tiny manifest dataset in `data/` (3 classes; train 6 images
/// plus an unreadable one, id_test and ood_test 3 each).
fn corpus(tag: &str) -> PathBuf {
    let dir = dataset::scratch("bad-inputs", tag);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let splits = [
        SplitSpec("train", 6, 1.0, 30.0),
        SplitSpec("id_test", 3, 1.0, 30.0),
        SplitSpec("ood_test", 3, 0.6, 30.0),
    ];
    dataset::write_dataset(&data, 1, &splits, true);
    dir
}

/// A one-epoch recipe on `data/` with `extra` lines appended to its tables (`[train]` last).
fn write_recipe(dir: &Path, file: &str, method: &str, train_extra: &str) -> String {
    let text = format!(
        "name = \"{method}\"\nseed = 1\n[data]\nformat = \"manifest\"\nroot = \"data\"\ntemplates = \"shiftworld\"\n\
         descriptions = \"data/cd.json\"\n[method]\nname = \"{method}\"\n[train]\nepochs = 1\nbatch_size = 4\n\
         lr = 1e-3\nwarmup_steps = 1\n{train_extra}\n"
    );
    std::fs::write(dir.join(file), text).unwrap();
    file.to_string()
}

/// A refused run left nothing a user could take for results.
fn assert_no_half_written_run(run: &Path) {
    assert!(!run.join("results.jsonl").exists(), "{} has results", run.display());
    assert!(!run.join("model").exists(), "{} has a model", run.display());
}

#[test]
fn bad_recipes_and_train_options_are_refused_before_any_work() {
    let dir = corpus("recipes");
    // (file, extra `[train]` line, --set override, words the error must hold)
    let cases: [(&str, &str, &str, &[&str]); 8] = [
        ("nan_decay.toml", "weight_decay = nan", "", &["train.weight_decay", "NaN"]),
        ("negative_decay.toml", "weight_decay = -0.1", "", &["train.weight_decay"]),
        ("min_lr.toml", "min_lr = 0.5", "", &["train.min_lr", "train.lr"]),
        ("inf_clip.toml", "grad_clip = inf", "", &["train.grad_clip"]),
        ("unknown_key.toml", "lr_max = 1", "", &["lr_max"]),
        ("nan_lr.toml", "", "train.lr=nan", &["train.lr"]),
        ("huge_epochs.toml", "", "train.epochs=9007199254740993", &["train.epochs"]),
        ("huge_warmup.toml", "", "train.warmup_steps=9007199254740993", &["train.warmup_steps"]),
    ];
    for (file, extra, set, needles) in cases {
        let recipe = write_recipe(&dir, file, "ft", extra);
        let mut args = vec!["train", "--recipe", &recipe, "--out", "runs"];
        if !set.is_empty() {
            args.extend(["--set", set]);
        }
        fails_naming(&dir, &args, needles);
        assert_no_half_written_run(&dir.join("runs/ft"));
    }
    // Malformed recipe files: bad TOML (the file is named), a missing table, an α out of range.
    std::fs::write(dir.join("syntax.toml"), "name = \"x\"\n[data\n").unwrap();
    fails_naming(&dir, &["train", "--recipe", "syntax.toml"], &["syntax.toml"]);
    std::fs::write(dir.join("nodata.toml"), "name = \"x\"\n[method]\nname = \"ft\"\n").unwrap();
    fails_naming(&dir, &["train", "--recipe", "nodata.toml"], &["nodata.toml", "data"]);
    let recipe = write_recipe(&dir, "alpha.toml", "ft", "[eval]\nwiseft = [2.0]");
    fails_naming(&dir, &["train", "--recipe", &recipe], &["eval.wiseft", "2"]);
    fails_naming(&dir, &["train", "--recipe", "missing.toml"], &["missing.toml"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn concept_description_keys_that_are_not_indices_are_refused() {
    let dir = corpus("cd");
    for (key, file) in [("05", "cd_05.json"), ("-1", "cd_minus.json"), ("Felis catus", "cd_latin.json")] {
        let text = format!(
            "{{\"0\": \"a round outline\", \"{key}\": \"four equal sides\", \"2\": \"three corners\"}}"
        );
        std::fs::write(dir.join("data").join(file), text).unwrap();
        let recipe = write_recipe(&dir, "drm.toml", "drm", "");
        let descriptions = format!("data.descriptions=\"data/{file}\"");
        let args = ["train", "--recipe", &recipe, "--set", &descriptions, "--out", "runs"];
        fails_naming(&dir, &args, &[file, &format!("\"{key}\"")]);
        assert_no_half_written_run(&dir.join("runs/drm"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_training_run_reports_skipped_images_on_a_piped_stderr() {
    let dir = corpus("train");
    let recipe = write_recipe(&dir, "ft.toml", "ft", "");
    let outcome = succeeds(&dir, &["train", "--recipe", &recipe, "--out", "runs"]);
    assert!(outcome.stderr.contains("skipped unreadable image"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("broken.png"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("[ft] training"), "stage lines reach a pipe too:\n{}", outcome.stderr);
    let run = dir.join("runs/ft");
    assert!(run.join("results.jsonl").is_file() && run.join("model").is_dir());
    // The same command again: the finished run is kept, and the message names both ways on.
    fails_naming(&dir, &["train", "--recipe", &recipe, "--out", "runs"], &["runs/ft", "--resume", "--force"]);
    assert!(
        run.join("results.jsonl").is_file() && run.join("model").is_dir(),
        "the refused start kept the run"
    );
    fails_naming(
        &dir,
        &["train", "--recipe", &recipe, "--out", "elsewhere", "--resume"],
        &["no run to --resume"],
    );
    assert!(!dir.join("elsewhere/ft").exists(), "a refused resume creates no directory");
    succeeds(&dir, &["train", "--recipe", &recipe, "--out", "runs", "--force"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_skips_a_fifo_and_reads_a_class_list_with_a_byte_order_mark() {
    let dir = corpus("fifo");
    let data = dir.join("data");
    let fifo = data.join("fifo.png");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // Name labels, so a BOM left on the first class would make `circle` unknown.
    let manifest = "path,label,split\nid_test_0.png,circle,id_test\nid_test_1.png,square,id_test\n\
                    fifo.png,triangle,id_test\nood_test_0.png,circle,ood_test\n";
    std::fs::write(data.join("manifest.csv"), manifest).unwrap();
    std::fs::write(data.join("classes.txt"), "\u{feff}circle\nsquare\ntriangle\n").unwrap();
    let outcome = succeeds(&dir, &["eval", "--dataset", "data", "--json"]);
    assert!(outcome.stderr.contains("fifo.png") && outcome.stderr.contains("FIFO"), "{}", outcome.stderr);
    let rows: Vec<serde_json::Value> =
        outcome.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows[0]["split"], "id_test");
    assert_eq!(rows[0]["n"], 2, "the FIFO is skipped and not counted");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn write_targets_are_checked_first_and_rows_are_never_glued() {
    let dir = corpus("write");
    let started = Instant::now();
    fails_naming(
        &dir,
        &["eval", "--dataset", "data", "--results", "missing/results.jsonl"],
        &["cannot write", "missing/results.jsonl"],
    );
    fails_naming(
        &dir,
        &["eval", "--dataset", "data", "--save-predictions", "missing/p.csv"],
        &["cannot write", "missing/p.csv"],
    );
    assert!(!dir.join("missing").exists());
    eprintln!("two refused write targets in {:?}", started.elapsed());
    // A results file whose last row lacks its newline (edited by hand).
    let eval = ["eval", "--dataset", "data", "--results", "results.jsonl"];
    succeeds(&dir, &eval);
    let first = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    std::fs::write(dir.join("results.jsonl"), first.trim_end()).unwrap();
    succeeds(&dir, &eval);
    let text = std::fs::read_to_string(dir.join("results.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 2 * first.lines().count(), "{text}");
    assert!(text.lines().all(|line| serde_json::from_str::<serde_json::Value>(line).is_ok()), "{text}");
    // report: an unknown suite is refused before anything is written.
    fails_naming(
        &dir,
        &["report", "--results", "results.jsonl", "--suites", "bogus", "--out", "report"],
        &["bogus"],
    );
    assert!(!dir.join("report").exists());
    // A dataset on disk is reported as ShiftWorld suites are.
    let outcome = succeeds(&dir, &["report", "--results", "results.jsonl", "--out", "report"]);
    assert!(outcome.stdout.lines().any(|l| l.starts_with("| data | zeroshot |")), "{}", outcome.stdout);
    assert!(dir.join("report/report.html").is_file());
    // A row measured under a perturbation leaves the clean table as it was and adds its own.
    let mut attacked: serde_json::Value = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|row| row["split"] == "id_test")
        .unwrap();
    let fields = [
        ("threat", "linf".into()),
        ("eps", (4.0 / 255.0).into()),
        ("steps", 10.into()),
        ("robust_top1", 0.25.into()),
    ];
    attacked["clean_top1"] = attacked["top1"].clone();
    attacked["top1"] = 0.25.into();
    fields.into_iter().for_each(|(key, value): (&str, serde_json::Value)| attacked[key] = value);
    std::fs::write(dir.join("attacked.jsonl"), format!("{text}{attacked}\n")).unwrap();
    let both = succeeds(&dir, &["report", "--results", "attacked.jsonl", "--out", "attacked"]);
    assert!(both.stdout.starts_with(&outcome.stdout), "{}", both.stdout);
    assert!(both.stdout.contains("| data | zeroshot | ℓ∞ | 4/255 | 25.0 |"), "{}", both.stdout);
    let html = std::fs::read_to_string(dir.join("attacked/report.html")).unwrap();
    assert!(html.contains("data: robust top-1 vs ε, ℓ∞"), "{html}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_manifests_name_the_file_and_line() {
    let dir = corpus("manifests");
    let data = dir.join("data");
    let cases: [(&str, &[&str]); 4] = [
        ("path,split\nid_test_0.png,id_test\n", &["manifest.csv", "label"]),
        ("path,label,split\nid_test_0.png,zebra,id_test\n", &["manifest.csv:2", "zebra"]),
        ("path,label,split\nid_test_0.png,7,id_test\n", &["manifest.csv:2", "7"]),
        ("", &["manifest.csv", "empty"]),
    ];
    for (text, needles) in cases {
        std::fs::write(data.join("manifest.csv"), text).unwrap();
        fails_naming(&dir, &["eval", "--dataset", "data"], needles);
    }
    std::fs::write(data.join("manifest.csv"), "path,label,split\nid_test_0.png,0,id_test\n").unwrap();
    fails_naming(&dir, &["eval", "--dataset", "data", "--splits", "ood"], &["ood", "id_test"]);
    fails_naming(&dir, &["eval", "--dataset", "data", "--format", "wilds"], &["wilds", "iwildcam"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_inline_class_and_redacted_credentials() {
    let dir = corpus("inline");
    let image = "data/id_test_0.png";
    let outcome = succeeds(&dir, &["zeroshot", "--classes", "circle", image]);
    assert!(outcome.stdout.contains("\"circle\""), "{}", outcome.stdout);
    fails_naming(&dir, &["zeroshot", "--classes", "classes.txt", image], &["classes.txt"]);
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://alice:hunter2-secret@127.0.0.1:{closed_port}/v1");
    let args = [
        "describe",
        "--classes",
        "circle,square",
        "--out",
        "cd.json",
        "--endpoint",
        &endpoint,
        "--timeout-s",
        "5",
    ];
    let stderr = fails_naming(&dir, &args, &["***@127.0.0.1"]);
    assert!(!stderr.contains("hunter2-secret"), "{stderr}");
    assert!(!dir.join("cd.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_trained_head_for_other_classes_is_refused_naming_the_class() {
    let dir = corpus("head");
    let (model, _) = ClipModel::load("bundled", &Device::Cpu).unwrap();
    let embed = model.config.embed_dim;
    let head = |rows: usize| Head {
        weight: Tensor::zeros((rows, embed), candle_core::DType::F32, &Device::Cpu).unwrap(),
        bias: None,
    };
    let model_dir = dir.join("model");
    model.save_hf(&model_dir, &HashMap::new()).unwrap();
    let head_path = model_dir.join("head.safetensors");
    let reordered: Vec<String> = ["square", "circle", "triangle"].map(String::from).to_vec();
    head(3).save_with_classes(&head_path, HashMap::new(), &reordered).unwrap();
    fails_naming(
        &dir,
        &["eval", "--model", "model", "--dataset", "data"],
        &["head.safetensors", "\"square\"", "\"circle\""],
    );
    // A head without class names: its row count is still checked.
    head(2).save(&head_path, HashMap::new()).unwrap();
    fails_naming(
        &dir,
        &["eval", "--model", "model", "--dataset", "data"],
        &["head.safetensors", "2 classes", "3"],
    );
    let classes: Vec<String> = dataset::CLASSES.map(String::from).to_vec();
    head(3).save_with_classes(&head_path, HashMap::new(), &classes).unwrap();
    succeeds(&dir, &["eval", "--model", "model", "--dataset", "data"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A one-layer CLIP whose 96-wide vision tower has two 48-wide heads, which OpenAI's 64-wide
/// convention cannot split; its text side reads the bundled vocabulary.
fn width_96_config() -> ClipConfig {
    ClipConfig {
        vision: VisionConfig { image_size: 32, patch_size: 8, width: 96, layers: 1, heads: 2, mlp_dim: 192 },
        text: TextConfig {
            vocab_size: 1514,
            context_length: 24,
            width: 64,
            layers: 1,
            heads: 1,
            mlp_dim: 128,
        },
        embed_dim: 32,
        activation: Activation::Gelu,
        layer_norm_eps: 1e-5,
    }
}

#[test]
fn train_takes_the_config_a_bare_weights_file_needs() {
    let dir = corpus("config");
    let recipe = write_recipe(&dir, "ft.toml", "ft", "");
    let model = ClipModel::random(width_96_config(), 7, &Device::Cpu).unwrap();
    let openclip = robustft::clip::keymap::hf_to_openclip(&model.tensors()).unwrap();
    let weights = dir.join("weights/open_clip_model.safetensors");
    std::fs::create_dir_all(weights.parent().unwrap()).unwrap();
    robustft::clip::checkpoint::write_safetensors(&weights, &openclip, HashMap::new()).unwrap();
    model.save_hf(&dir.join("hf"), &HashMap::new()).unwrap();
    let set_model = "model=\"weights/open_clip_model.safetensors\"";
    let args = ["train", "--recipe", &recipe, "--set", set_model, "--out", "runs", "--json"];

    fails_naming(&dir, &args, &["weights/open_clip_model.safetensors", "96 wide", "--config"]);
    assert_no_half_written_run(&dir.join("runs/ft"));
    let bad_key = [&args[..], &["--set", "model_config=\"ViT-Q-99\""]].concat();
    fails_naming(&dir, &bad_key, &["model_config", "ViT-Q-99", "neither a file nor a preset name"]);
    fails_naming(&dir, &[&args[..], &["--config", "ViT-Q-99"]].concat(), &["--config", "ViT-Q-99"]);

    let outcome = succeeds(&dir, &[&args[..], &["--config", "hf/config.json"]].concat());
    assert!(!outcome.stderr.contains("note:"), "{}", outcome.stderr);
    assert!(outcome.stdout.lines().any(|row| row.contains("\"split\":\"id_test\"")), "{}", outcome.stdout);
    let resolved = std::fs::read_to_string(dir.join("runs/ft/recipe.toml")).unwrap();
    assert!(resolved.contains("model_config = \"hf/config.json\""), "{resolved}");
    let (trained, _) = ClipModel::load(dir.join("runs/ft/model").to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(trained.config, width_96_config());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_reads_the_imagenet_layout() {
    let dir = dataset::scratch("bad-inputs", "imagenet");
    for (folder, colour) in [("0", [200u8, 40, 40]), ("999", [40, 40, 200])] {
        let class_dir = dir.join("imagenet-v2").join(folder);
        std::fs::create_dir_all(&class_dir).unwrap();
        image::RgbImage::from_pixel(32, 32, image::Rgb(colour)).save(class_dir.join("a.png")).unwrap();
    }
    let outcome = succeeds(
        &dir,
        &["eval", "--dataset", ".", "--format", "imagenet", "--templates", "simple", "--json"],
    );
    let rows: Vec<serde_json::Value> =
        outcome.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0]["split"].as_str(), rows[0]["n"].as_u64()), (Some("imagenet-v2"), Some(2)));
    fails_naming(
        &dir,
        &["eval", "--dataset", "imagenet-v2", "--format", "imagenet"],
        &["imagenet-v2", "variant"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn robustness_refuses_bad_threats_budgets_steps_and_runs() {
    let dir = corpus("robustness");
    let base = ["robustness", "--dataset", "data"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> { base.iter().chain(extra).copied().collect() };
    fails_naming(&dir, &with(&["--threat", "rotate"]), &["unknown threat `rotate`", "linf"]);
    fails_naming(&dir, &with(&["--threat", "corruption:fog"]), &["fog", "gaussian_noise"]);
    fails_naming(&dir, &with(&["--eps", "-2/255"]), &["-2/255", "negative"]);
    fails_naming(&dir, &with(&["--eps", "two"]), &["two", "not a number"]);
    fails_naming(&dir, &with(&["--steps", "0"]), &["--steps", "0"]);
    fails_naming(&dir, &with(&["--step-size", "0"]), &["step size 0", "> 0"]);
    fails_naming(&dir, &with(&["--step-size", "1/255,2/255"]), &["not a number"]);
    fails_naming(&dir, &with(&["--threat", "corruptions", "--eps", "7"]), &["severity", "7"]);
    std::fs::create_dir_all(dir.join("not-a-run")).unwrap();
    fails_naming(&dir, &with(&["--run", "not-a-run"]), &["not-a-run", "not a run directory"]);
    // An interrupted run: its resolved recipe, no final model.
    std::fs::create_dir_all(dir.join("runs/ft")).unwrap();
    std::fs::write(dir.join("runs/ft/recipe.toml"), "name = \"ft\"\n").unwrap();
    fails_naming(&dir, &with(&["--run", "runs/ft"]), &["runs/ft", "no finished run"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `robustness --dataset data --run runs/ft --eps 0,8/255 FLAGS --json` in `dir`: the outcome
/// and its JSON rows.
fn robustness_of_run_ft(dir: &Path, flags: &[&str]) -> (Outcome, Vec<serde_json::Value>) {
    let mut args = vec!["robustness", "--dataset", "data", "--run", "runs/ft", "--eps", "0,8/255"];
    args.extend(flags);
    args.push("--json");
    let outcome = succeeds(dir, &args);
    let rows = outcome.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (outcome, rows)
}

#[test]
fn robustness_of_a_finished_run_prints_clean_and_robust_rows() {
    let dir = corpus("robustness-run");
    let recipe = write_recipe(&dir, "ft.toml", "ft", "");
    succeeds(&dir, &["train", "--recipe", &recipe, "--out", "runs"]);
    let (outcome, rows) = robustness_of_run_ft(&dir, &["--threat", "linf,spatial", "--steps", "3"]);
    assert_eq!(rows.len(), 2 * 2 * 3, "2 threats × 2 budgets × 3 splits: {}", outcome.stdout);
    for row in &rows {
        assert_eq!(row["method"], "trained_head", "{row}");
        for key in ["threat", "eps", "steps", "clean_top1", "robust_top1"] {
            assert!(row.get(key).is_some(), "{key} missing: {row}");
        }
        if row["eps"] == 0.0 {
            assert_eq!(row["robust_top1"], row["clean_top1"], "{row}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn robustness_of_a_vrf_run_refits_vrf_on_the_recipes_data() {
    let dir = corpus("robustness-vrf");
    // VRF needs a validation split: the manifest's id_test serves as one here.
    let recipe = write_recipe(&dir, "vrf.toml", "ft", "[eval]\npredictor = \"vrf\"\nwiseft = []\n");
    let text = std::fs::read_to_string(dir.join(&recipe))
        .unwrap()
        .replace("[data]\n", "[data]\nval_split = \"id_test\"\n");
    std::fs::write(dir.join(&recipe), text).unwrap();
    succeeds(&dir, &["train", "--recipe", &recipe, "--out", "runs"]);
    let (outcome, rows) = robustness_of_run_ft(&dir, &["--steps", "2"]);
    assert!(outcome.stderr.contains("predicts through VRF"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("zero-shot failures"), "VRF must be refitted: {}", outcome.stderr);
    assert!(!rows.is_empty() && rows.iter().all(|row| row["method"] == "ft+vrf"), "{}", outcome.stdout);
    for row in rows.iter().filter(|row| row["eps"] == 0.0) {
        assert_eq!(row["robust_top1"], row["clean_top1"], "{row}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
