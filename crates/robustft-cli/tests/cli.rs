//! End-to-end tests of the `robustft` binary on the committed fixtures: `embed` reproduces the
//! reference embeddings of real-format checkpoint directories from PNG files, `tokenize` the
//! reference token ids, `zeroshot` ranks classes, `describe` writes concept descriptions
//! through a mock chat endpoint, `zeroshot --background-swap` reads description files and
//! reports its groups, `wiseft` interpolates checkpoints (and their heads) into models
//! that evaluate as their ends do at α = 0 and 1, and bad input gives clear errors.

#[path = "../../robustft/tests/support/mock_chat.rs"]
mod mock_chat;
#[path = "../../robustft/tests/support/run_weights.rs"]
mod run_weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use robustft::clip::{ClipConfig, ClipModel};
use robustft::eval::predictor::{Head, Predictor};
use robustft::eval::suite::{evaluate_suite, shiftworld_head, PromptKind};
use robustft::kernels::KernelChoice;
use robustft::shiftworld::build_suite;
use serde_json::Value;

/// Where this test binary's scratch files go: Cargo's per-target temporary directory (under
/// `target/`, so reruns replace them instead of piling up in the system's temporary directory).
fn scratch_root() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn fixture(path: &str) -> PathBuf {
    root().join("fixtures/models").join(path)
}

fn robustft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_robustft")).args(args).current_dir(root()).output().expect("binary runs")
}

fn stdout_json(output: &Output) -> Value {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON value")
}

fn rows(value: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(value.clone()).unwrap()
}

fn assert_rows_close(got: &[Vec<f32>], want: &Tensor, tolerance: f32) {
    let want: Vec<Vec<f32>> = want.to_vec2().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        let err = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err <= tolerance, "max-abs error {err}");
    }
}

fn png_paths() -> Vec<String> {
    ["img_32x60.png", "img_45x37.png", "img_64x64.png"]
        .iter()
        .map(|f| fixture("images").join(f).to_string_lossy().into_owned())
        .collect()
}

const CAPTIONS: [&str; 4] =
    ["a photo of a cat.", "a red triangle on a striped background", "An outline drawing of a star!", "x"];

fn embed_args<'a>(model: &'a str, images: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["embed", "--model", model];
    for image in images {
        args.extend(["--image", image.as_str()]);
    }
    for caption in CAPTIONS {
        args.extend(["--text", caption]);
    }
    args
}

#[test]
fn embed_reproduces_reference_embeddings_for_both_layouts() {
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixture("expected_png_embeds.safetensors"), &Device::Cpu).unwrap();
    let images = png_paths();
    for (layout, dir) in [("hf", "clip_hf"), ("openclip", "clip_openclip")] {
        let model = fixture(dir).to_string_lossy().into_owned();
        let out = stdout_json(&robustft(&embed_args(&model, &images)));
        // Python: F.normalize(model.encode_image(image_transform(32, is_train=False)(Image.open(p))[None]), dim=-1)
        assert_rows_close(&rows(&out["image_embeds"]), &reference[&format!("{layout}.image_embeds")], 1e-4);
        // Python: F.normalize(model.encode_text(tokenizer(CAPTIONS)), dim=-1)
        assert_rows_close(&rows(&out["text_embeds"]), &reference[&format!("{layout}.text_embeds")], 1e-4);
        // Python: model.logit_scale.exp().item() == exp(2.9592599868774414)
        let scale = out["logit_scale"].as_f64().unwrap();
        assert!((scale - 2.9592599868774414f64.exp()).abs() < 1e-3, "logit scale {scale}");
        assert_eq!(out["preprocess"], "clip-bicubic32-crop32-openai");
    }
}

#[test]
fn tokenize_prints_reference_ids() {
    let out = robustft(&["tokenize", "--merges", "1000", CAPTIONS[0], CAPTIONS[3]]);
    assert!(out.status.success());
    let lines: Vec<Vec<u32>> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Python: SimpleTokenizer(bpe_path=<first 1000 merges>)(CAPTIONS) rows, without padding
    assert_eq!(lines, vec![vec![1512, 320, 1125, 539, 320, 66, 536, 269, 1513], vec![1512, 343, 1513]]);
}

#[test]
fn zeroshot_prints_top_k_per_image_with_probabilities() {
    let images = png_paths();
    let mut args =
        vec!["zeroshot", "--model", "fixtures/models/clip_hf", "--classes", "cat,dog,star", "--top-k", "3"];
    args.extend(images.iter().map(String::as_str));
    let out = robustft(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), images.len());
    for line in &lines {
        let top = line["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let probs: Vec<f64> = top.iter().map(|t| t["prob"].as_f64().unwrap()).collect();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5, "all classes shown: probabilities sum to 1");
        assert!(probs.windows(2).all(|w| w[0] >= w[1]), "sorted: {probs:?}");
    }
}

fn stderr_of(args: &[&str]) -> String {
    let out = robustft(args);
    assert!(!out.status.success(), "expected failure for {args:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn unreadable_image_is_a_clear_error() {
    let corrupt = scratch_root().join("robustft-corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
    let corrupt_path = corrupt.to_string_lossy().into_owned();
    let err = stderr_of(&["embed", "--model", "fixtures/models/clip_hf", "--image", &corrupt_path]);
    assert!(err.contains(&corrupt_path), "names the file: {err}");
    let err = stderr_of(&["embed", "--model", "fixtures/models/clip_hf", "--image", "missing.png"]);
    assert!(err.contains("missing.png"), "names the file: {err}");
    std::fs::remove_file(corrupt).unwrap();
}

#[test]
fn bad_model_and_class_inputs_are_clear_errors() {
    let err = stderr_of(&["embed", "--model", "no/such-model-here", "--text", "x"]);
    assert!(err.contains("no/such-model-here") && err.contains("cache"), "{err}");
    let err = stderr_of(&["embed", "--model", "does-not-exist", "--text", "x"]);
    assert!(err.contains("does-not-exist"), "{err}");
    let err = stderr_of(&["zeroshot", "--model", "fixtures/models/clip_hf", "--classes", "cat,cat", "x.png"]);
    assert!(err.contains("cat"), "{err}");
}

/// Lays out `fixtures/models/clip_hf` as the Hugging Face cache does for `org/name`:
/// `hub/models--org--name/refs/main` holding a revision and `snapshots/<revision>/<files>`.
fn fake_hf_cache(tag: &str) -> PathBuf {
    let home = scratch_root().join(format!("robustft-hfhome-{tag}"));
    let repo = home.join("hub/models--tiny-org--tiny-clip");
    let revision = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), revision).unwrap();
    let snapshot = repo.join("snapshots").join(revision);
    std::fs::create_dir_all(&snapshot).unwrap();
    for file in ["model.safetensors", "config.json"] {
        std::fs::copy(fixture("clip_hf").join(file), snapshot.join(file)).unwrap();
    }
    home
}

#[test]
fn hub_id_resolves_offline_from_the_local_cache() {
    let home = fake_hf_cache("hub");
    let from_cache = Command::new(env!("CARGO_BIN_EXE_robustft"))
        .args(["embed", "--model", "tiny-org/tiny-clip", "--text", CAPTIONS[0]])
        .env("HF_HOME", &home)
        .current_dir(root())
        .output()
        .unwrap();
    let from_dir = robustft(&["embed", "--model", "fixtures/models/clip_hf", "--text", CAPTIONS[0]]);
    // The same weights through the cache give the same embedding as the directory.
    assert_eq!(stdout_json(&from_cache)["text_embeds"], stdout_json(&from_dir)["text_embeds"]);
    std::fs::remove_dir_all(home).unwrap();
}

fn json_lines(output: &Output) -> Vec<Value> {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn eval_on_a_generated_suite_matches_the_in_memory_suite_and_survives_a_corrupt_image() {
    let dir = scratch_root().join("robustft-eval-suite");
    let _ = std::fs::remove_dir_all(&dir);
    let dir_str = dir.to_string_lossy().into_owned();
    assert!(robustft(&["shiftworld", "generate", "--suite", "spurious", "--out", &dir_str]).status.success());
    let corrupt = dir.join("id_test/circle/id_test_00000.png");
    std::fs::write(&corrupt, b"not a png").unwrap();
    let predictions = dir.join("predictions.csv");
    let on_disk = robustft(&[
        "eval",
        "--dataset",
        &dir_str,
        "--templates",
        "shiftworld",
        "--json",
        "--save-predictions",
        &predictions.to_string_lossy(),
    ]);
    let stderr = String::from_utf8_lossy(&on_disk.stderr).into_owned();
    assert!(stderr.contains("id_test_00000.png"), "the skipped image is reported: {stderr}");
    let disk_rows = json_lines(&on_disk);
    let memory_rows = json_lines(&robustft(&["zeroshot", "--suite", "spurious", "--json"]));
    for split in ["id_val", "ood_random_background"] {
        let find =
            |rows: &[Value]| rows.iter().find(|r| r["split"] == split).unwrap()["top1"].as_f64().unwrap();
        // PNG is lossless and 32 px images need no resize: the same pixels, the same predictions.
        assert_eq!(find(&disk_rows), find(&memory_rows), "{split}");
    }
    let id_test = disk_rows.iter().find(|r| r["split"] == "id_test").unwrap();
    assert_eq!(id_test["n"], 999, "the corrupt image is skipped, not fatal");
    let csv = std::fs::read_to_string(&predictions).unwrap();
    assert_eq!(csv.lines().next(), Some("split,id,label,pred,group,confidence"));
    assert_eq!(csv.lines().count(), 1 + 3000 + 500 + 999 + 1000);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn background_swap_reads_description_files_and_reports_groups() {
    let dir = scratch_root().join("robustft-swap-cli");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cd.json");
    std::fs::write(&file, robustft::shiftworld::concept_descriptions_json()).unwrap();
    let swap = |prompts: &[&str], keep_contrast: bool| {
        let mut args = vec!["zeroshot", "--suite", "spurious", "--seed", "1", "--background-swap"];
        args.extend(prompts);
        if keep_contrast {
            args.push("--keep-contrast");
        }
        stdout_json(&robustft(&args))
    };
    let bundled = swap(&["--prompts", "descriptions"], false);
    let from_file = swap(&["--descriptions", file.to_str().unwrap()], false);
    let by_name = swap(&["--descriptions", "shiftworld"], false);
    for key in ["top1", "top1_backgrounds_swapped", "aligned", "conflict", "lost_contrast"] {
        assert_eq!(bundled[key], from_file[key], "{key}: the file holds the bundled descriptions");
        assert_eq!(bundled[key], by_name[key], "{key}");
    }
    assert_eq!(from_file["prompts"], file.to_str().unwrap());
    assert_eq!((bundled["aligned"]["n"].as_u64(), bundled["conflict"]["n"].as_u64()), (Some(900), Some(100)));
    let lost = bundled["lost_contrast"]["n"].as_u64().unwrap();
    assert!(lost > 0 && lost + bundled["kept_contrast"]["n"].as_u64().unwrap() == 1000);
    let kept = swap(&["--prompts", "descriptions"], true);
    assert_eq!(kept["top1"], bundled["top1"], "the rendered images are the same");
    assert_eq!(kept["kept_contrast"]["n"], 1000);
    assert!(kept.get("lost_contrast").is_none());
    let default = swap(&[], true);
    assert_eq!(default["prompts"], "shiftworld_templates");
    assert_ne!(default["top1"], kept["top1"], "another head");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The class a prompt filled from the bundled describe template asks about (it is quoted there).
fn quoted_class(prompt: &str) -> &str {
    prompt.split('"').nth(1).unwrap_or(prompt)
}

fn describe_scratch(tag: &str) -> (PathBuf, String) {
    let dir = scratch_root().join(format!("robustft-describe-cli-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let classes = dir.join("classes.txt");
    std::fs::write(&classes, "owl\ncat\nred fox\n").unwrap();
    (dir, classes.to_string_lossy().into_owned())
}

fn describe_command(classes: &str, out: &std::path::Path, endpoint: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_robustft"));
    command.args(["describe", "--classes", classes, "--endpoint", endpoint, "--model", "mock-model"]);
    command.arg("--out").arg(out).args(["--api-key-env", "ROBUSTFT_TEST_DESCRIBE_KEY"]);
    command
}

#[test]
fn describe_writes_loadable_descriptions_and_reuses_its_cache() {
    let (dir, classes) = describe_scratch("ok");
    let server = mock_chat::MockChat::start(|prompt| {
        mock_chat::chat_completion(&format!(" \"A {} seen up close.\" ", quoted_class(prompt)))
    });
    let out = dir.join("new/cd.json");
    let first = describe_command(&classes, &out, &server.url)
        .env("ROBUSTFT_TEST_DESCRIBE_KEY", "sk-cli")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("3 classes: 3 requested, 0 cached"), "{stderr}");
    let names: Vec<String> = ["owl", "cat", "red fox"].map(String::from).to_vec();
    let loaded = robustft::prompts::ConceptDescriptions::load(&out, &names).unwrap();
    assert_eq!(loaded.per_class()[2], ["A red fox seen up close."]);
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    for (request, class) in requests.iter().zip(&names) {
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.body["model"], "mock-model");
        assert_eq!(quoted_class(request.prompt()), class);
        assert_eq!(request.authorization.as_deref(), Some("Bearer sk-cli"));
    }

    let second = describe_command(&classes, &out, &server.url)
        .env_remove("ROBUSTFT_TEST_DESCRIBE_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("3 classes: 0 requested, 3 cached"), "{stderr}");
    assert_eq!(server.requests().len(), 3, "the second run is served by the cache");
    assert!(dir.join("new/cd.json.cache.json").is_file());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn describe_failures_are_clear_and_write_no_output() {
    let (dir, classes) = describe_scratch("fail");
    let server = mock_chat::MockChat::start(|prompt| match quoted_class(prompt) {
        "cat" => mock_chat::chat_completion("  "),
        "red fox" => (500, "{\"error\": \"internal\"}".to_owned()),
        class => mock_chat::chat_completion(&format!("A {class}.")),
    });
    let out = dir.join("cd.json");
    let failed = describe_command(&classes, &out, &server.url).args(["--retries", "0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(stderr.contains("empty description for class \"cat\""), "{stderr}");
    assert!(!out.exists(), "no output file after a failure");
    assert_eq!(server.requests().len(), 2, "owl, then cat once (--retries 0)");

    let owl_and_fox = dir.join("owl_fox.txt");
    std::fs::write(&owl_and_fox, "owl\nred fox\n").unwrap();
    let failed = describe_command(&owl_and_fox.to_string_lossy(), &out, &server.url).output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    let url = format!("{}/chat/completions", server.url);
    assert!(stderr.contains(&url) && stderr.contains("500") && stderr.contains("red fox"), "{stderr}");
    assert!(!out.exists());

    let template = dir.join("prompt.txt");
    std::fs::write(&template, "Describe a {} briefly.").unwrap();
    let failed =
        describe_command(&classes, &out, &server.url).arg("--prompt").arg(&template).output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains(&template.display().to_string()) && stderr.contains("{class}"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// An empty scratch directory for one test.
fn scratch(tag: &str) -> PathBuf {
    let dir = scratch_root().join(format!("robustft-wiseft-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bundled() -> ClipModel {
    ClipModel::load("bundled", &Device::Cpu).unwrap().0
}

/// Writes an HF-layout checkpoint `dir/name`; returns its path.
fn write_checkpoint(dir: &Path, name: &str, config: &ClipConfig, tensors: &[(String, Tensor)]) -> String {
    let path = dir.join(name);
    robustft::clip::checkpoint::save_hf(&path, config, tensors, &HashMap::new()).unwrap();
    path.to_string_lossy().into_owned()
}

/// `(split, top1)` of the rows at `alpha` (every row when `alpha` is `None`).
fn top1_at(rows: &[Value], alpha: Option<f64>) -> Vec<(String, f64)> {
    rows.iter()
        .filter(|row| alpha.is_none() || row["wiseft_alpha"].as_f64() == alpha)
        .map(|row| (row["split"].as_str().unwrap().to_string(), row["top1"].as_f64().unwrap()))
        .collect()
}

/// The `__metadata__` of a safetensors file (an 8-byte little-endian header length, then the
/// JSON header).
fn safetensors_metadata(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice::<Value>(&bytes[8..8 + length]).unwrap()["__metadata__"].clone()
}

#[test]
fn wiseft_sweeps_from_the_zero_shot_model_to_the_fine_tuned_one() {
    let dir = scratch("sweep");
    let zero_shot = bundled();
    let other = ClipModel::random(zero_shot.config.clone(), 7, &Device::Cpu).unwrap();
    let finetuned = write_checkpoint(&dir, "finetuned", &other.config, &other.tensors());
    let (saved, results) = (dir.join("saved"), dir.join("results.jsonl"));
    let common = ["--zeroshot", "bundled", "--finetuned", &finetuned, "--suite", "spurious", "--json"];
    let mut args = vec!["wiseft", "--alpha", "0,0.5,1", "--save", saved.to_str().unwrap()];
    args.extend(["--results", results.to_str().unwrap()]);
    let sweep = json_lines(&robustft(&[args, common.to_vec()].concat()));
    assert_eq!(sweep.len(), 9, "three splits at each of three α");
    assert!(sweep.iter().all(|row| row["method"] == "wiseft" && row["prompts"] == "shiftworld"));
    // α = 0 is the zero-shot model with the head rebuilt from its own text tower: plain
    // zero-shot evaluation.
    let plain = json_lines(&robustft(&["eval", "--suite", "spurious", "--json"]));
    assert_eq!(top1_at(&sweep, Some(0.0)), top1_at(&plain, None));
    assert_ne!(top1_at(&sweep, Some(1.0)), top1_at(&sweep, Some(0.0)), "the two ends differ");
    // Excluding every parameter takes the fine-tuned model whole, whatever α.
    let excluded =
        json_lines(&robustft(&[&["wiseft", "--alpha", "0", "--exclude", ".*"], &common[..]].concat()));
    assert_eq!(top1_at(&excluded, Some(0.0)), top1_at(&sweep, Some(1.0)));

    let (a, b): (HashMap<_, _>, HashMap<_, _>) =
        (zero_shot.tensors().into_iter().collect(), other.tensors().into_iter().collect());
    for alpha in [0.0, 0.5, 1.0] {
        let checkpoint = saved.join(format!("alpha_{alpha}"));
        let (model, _) = ClipModel::load(checkpoint.to_str().unwrap(), &Device::Cpu).unwrap();
        for (name, got) in model.tensors() {
            let want = ((&a[&name] * (1.0 - alpha)).unwrap() + (&b[&name] * alpha).unwrap()).unwrap();
            let error = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert!(error.to_scalar::<f32>().unwrap() <= 1e-6, "{name} at α = {alpha}");
        }
        let metadata = safetensors_metadata(&checkpoint.join("model.safetensors"));
        assert_eq!(metadata["robustft.wiseft.zeroshot"], "bundled");
        assert_eq!(metadata["robustft.wiseft.finetuned"], finetuned.as_str());
        assert_eq!(metadata["robustft.wiseft.alpha"], alpha.to_string());
        assert!(!checkpoint.join("head.safetensors").exists(), "no trained head, none saved");
    }
    let appended: Vec<Value> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(appended, sweep);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn wiseft_interpolates_a_trained_head_with_the_zero_shot_head() {
    let dir = scratch("head");
    let model = bundled();
    let finetuned = write_checkpoint(&dir, "finetuned", &model.config, &model.tensors());
    let zero_shot = Head::from(&shiftworld_head(&model, PromptKind::Default).unwrap());
    // A stand-in for a trained head: the zero-shot rows moved one class on, with a bias.
    let rows = &zero_shot.weight;
    let weight = Tensor::cat(&[rows.narrow(0, 1, 9).unwrap(), rows.narrow(0, 0, 1).unwrap()], 0).unwrap();
    let bias =
        Tensor::from_vec((0..10).map(|k| k as f32 / 10.0).collect::<Vec<_>>(), 10, &Device::Cpu).unwrap();
    let trained = Head { weight, bias: Some(bias) };
    trained.save(&Path::new(&finetuned).join("head.safetensors"), HashMap::new()).unwrap();
    let saved = dir.join("saved");
    let args = ["wiseft", "--zeroshot", "bundled", "--finetuned", &finetuned, "--alpha", "0.5"];
    let sweep = json_lines(&robustft(
        &[&args[..], &["--suite", "spurious", "--json", "--save", saved.to_str().unwrap()]].concat(),
    ));
    // Both ends share the bundled towers, so the model predicts with the interpolated head alone.
    let head = zero_shot.lerp(&trained, 0.5).unwrap();
    let expected: Vec<(String, f64)> =
        evaluate_suite(&model, &build_suite("spurious", 0).unwrap(), &Predictor::single(head.clone()))
            .unwrap()
            .into_iter()
            .map(|(split, p)| (split, robustft::eval::metrics::top1(&p.labels, &p.preds())))
            .collect();
    assert_eq!(top1_at(&sweep, Some(0.5)), expected);
    let written = Head::load(&saved.join("alpha_0.5/head.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(written.weight.to_vec2::<f32>().unwrap(), head.weight.to_vec2::<f32>().unwrap());
    assert_eq!(written.bias.unwrap().to_vec1::<f32>().unwrap(), head.bias.unwrap().to_vec1::<f32>().unwrap());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn wiseft_on_a_dataset_matches_zero_shot_eval_at_alpha_0() {
    let dir = scratch("dataset");
    let mut manifest = String::from("path,label,split\n");
    for (image, label) in png_paths().iter().zip(["circle", "square", "circle"]) {
        manifest.push_str(&format!("{image},{label},test\n"));
    }
    std::fs::write(dir.join("manifest.csv"), manifest).unwrap();
    std::fs::write(dir.join("classes.txt"), "circle\nsquare\n").unwrap();
    let dataset = dir.to_str().unwrap();
    let plain = json_lines(&robustft(&["eval", "--dataset", dataset, "--json"]));
    let sweep = json_lines(&robustft(&[
        "wiseft",
        "--zeroshot",
        "bundled",
        "--finetuned",
        "bundled",
        "--alpha",
        "0",
        "--dataset",
        dataset,
        "--json",
    ]));
    // The same model, the same default templates (openai_imagenet): the same probabilities.
    for key in ["split", "prompts", "top1", "ece", "n"] {
        assert_eq!(sweep[0][key], plain[0][key], "{key}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn wiseft_refuses_mismatched_checkpoints_and_bad_grids() {
    let dir = scratch("errors");
    let model = bundled();
    let (config, tensors) = (model.config.clone(), model.tensors());
    let wiseft_error = |finetuned: &str, extra: &[&str]| {
        let args = ["wiseft", "--zeroshot", "bundled", "--finetuned", finetuned, "--suite", "spurious"];
        stderr_of(&[&args[..], extra].concat())
    };

    let mut deeper = config.clone();
    deeper.text.layers += 1;
    let other = ClipModel::random(deeper.clone(), 0, &Device::Cpu).unwrap();
    let path = write_checkpoint(&dir, "deeper", &deeper, &other.tensors());
    let err = wiseft_error(&path, &[]);
    assert!(err.contains("bundled") && err.contains(&path) && err.contains("text.layers"), "{err}");

    let missing = "text_model.final_layer_norm.bias";
    let fewer: Vec<_> = tensors.iter().filter(|(name, _)| name != missing).cloned().collect();
    let path = write_checkpoint(&dir, "fewer", &config, &fewer);
    let err = wiseft_error(&path, &[]);
    assert!(err.contains(missing) && err.contains(&path), "{err}");

    let reshaped = "text_model.final_layer_norm.weight";
    let wider = Tensor::ones(config.text.width + 1, candle_core::DType::F32, &Device::Cpu).unwrap();
    let mut other_shape = tensors.clone();
    other_shape.iter_mut().find(|(name, _)| name == reshaped).unwrap().1 = wider;
    let path = write_checkpoint(&dir, "reshaped", &config, &other_shape);
    let err = wiseft_error(&path, &[]);
    assert!(err.contains(reshaped) && err.contains("shape"), "{err}");

    let path = write_checkpoint(&dir, "three_classes", &config, &tensors);
    let weight = Tensor::zeros((3, config.embed_dim), candle_core::DType::F32, &Device::Cpu).unwrap();
    Head { weight, bias: None }.save(&Path::new(&path).join("head.safetensors"), HashMap::new()).unwrap();
    let err = wiseft_error(&path, &[]);
    assert!(err.contains("head.safetensors") && err.contains("3 classes") && err.contains("has 10"), "{err}");

    for (alpha, reason) in [
        ("1.5", "outside [0, 1]"),
        ("0:1:0", "must be positive"),
        ("1:0:0.5", "below the start"),
        ("0,x", "`x`"),
    ] {
        let err = wiseft_error("bundled", &["--alpha", alpha]);
        assert!(err.contains("--alpha") && err.contains(reason), "{alpha}: {err}");
    }
    let err = wiseft_error("bundled", &["--exclude", "text_model.("]);
    assert!(err.contains("--exclude") && err.contains("regex"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bench_prints_text_or_one_json_line_with_the_requested_shape() {
    let args = ["bench", "--arch", "shiftworld", "--mode", "train", "--batch", "3", "--steps", "2"];
    let text = robustft(&args);
    assert!(text.status.success(), "failed: {}", String::from_utf8_lossy(&text.stderr));
    let line = String::from_utf8_lossy(&text.stdout);
    let fp32_kernel = robustft::kernels::MatmulPrecision::Fp32.cpu_kernel();
    assert!(
        line.starts_with(&format!("shiftworld train batch 3 fp32 ({fp32_kernel}): "))
            && line.contains(" images/s over 2 steps"),
        "{line}"
    );

    let bf16 = robustft(&[&args[..], &["--json", "--precision", "bf16"]].concat());
    let kernel = robustft::kernels::Bf16Kernel::on_this_cpu();
    let said = String::from_utf8_lossy(&bf16.stderr).matches(robustft::kernels::PORTABLE_BF16_NOTE).count();
    assert_eq!(said, usize::from(kernel == robustft::kernels::Bf16Kernel::Portable), "kernel {kernel:?}");
    let report = stdout_json(&bf16);
    assert_eq!(report["arch"], "shiftworld");
    assert_eq!(report["mode"], "train");
    assert_eq!(report["batch"], 3);
    assert_eq!(report["steps"], 2);
    assert_eq!(report["precision"], "bf16");
    assert_eq!(report["kernel"], kernel.name());
    assert!(report["images_per_s"].as_f64().unwrap() > 0.0 && report["peak_rss_mb"].as_f64().unwrap() > 0.0);
    assert_eq!(report["threads"], std::thread::available_parallelism().unwrap().get(), "{report}");

    // --threads, else RAYON_NUM_THREADS, sizes the pool every command runs on; the report says so.
    let three = stdout_json(&robustft(&[&["--threads", "3"], &args[..], &["--json"]].concat()));
    assert_eq!(three["threads"], 3, "{three}");
    let one = Command::new(env!("CARGO_BIN_EXE_robustft"))
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .current_dir(root())
        .output()
        .expect("binary runs");
    let line = String::from_utf8_lossy(&one.stdout);
    assert!(line.contains(" images/s over 2 steps on 1 thread, "), "{line}");
}

/// Training's weights do not depend on `--threads`: no op splits a sum by thread count.
#[test]
fn training_reaches_the_same_weights_on_any_thread_count() {
    let dir = scratch("threads");
    let trained = |threads: &str| {
        let out = dir.join(format!("pretrain-{threads}"));
        let run =
            robustft(&["--threads", threads, "pretrain", "--steps", "2", "--out", out.to_str().unwrap()]);
        assert!(run.status.success(), "failed: {}", String::from_utf8_lossy(&run.stderr));
        run_weights::weights(&out)
    };
    let (one, three) = (trained("1"), trained("3"));
    assert!(!one.is_empty());
    for ((name, a), (_, b)) in one.iter().zip(&three) {
        assert!(a == b, "`{name}` differs between 1 and 3 threads");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bench_products_prints_one_json_line_per_linear_layer_and_the_attention_of_a_block() {
    let args = ["bench", "--products", "--arch", "shiftworld", "--batch", "2", "--steps", "1", "--json"];
    let reports = json_lines(&robustft(&[&args[..], &["--precision", "bf16"]].concat()));
    let layers: Vec<&str> = reports.iter().map(|r| r["layer"].as_str().unwrap()).collect();
    assert_eq!(layers, ["qkv", "out", "fc1", "fc2", "attention"]);
    for report in &reports {
        assert_eq!(report["precision"], "bf16", "{report}");
        assert_eq!(report["kernel"], robustft::kernels::Bf16Kernel::on_this_cpu().name(), "{report}");
        assert!(report["gflops"].as_f64().unwrap() > 0.0, "{report}");
    }
    let err = stderr_of(&["bench", "--products", "--recipes", "recipes/shiftworld/ft.toml"]);
    assert!(err.contains("--products") && err.contains("--recipes"), "{err}");
}

#[test]
fn bare_weights_take_a_config_or_say_what_they_assume() {
    let dir = scratch("bare");
    let model = bundled();
    let weights = dir.join("open_clip_model.safetensors");
    let openclip = robustft::clip::keymap::hf_to_openclip(&model.tensors()).unwrap();
    robustft::clip::checkpoint::write_safetensors(&weights, &openclip, HashMap::new()).unwrap();
    model.save_hf(&dir.join("hf"), &HashMap::new()).unwrap();
    let (weights, config) = (weights.to_string_lossy().into_owned(), dir.join("hf/config.json"));
    let image = &png_paths()[2];

    let assumed = robustft(&["embed", "--model", &weights, "--image", image]);
    assert!(assumed.status.success(), "{}", String::from_utf8_lossy(&assumed.stderr));
    let note = String::from_utf8(assumed.stderr).unwrap();
    assert!(
        note.contains(&format!("note: {weights}: no open_clip_config.json or config.json beside the weights: assumed OpenAI's conventions: 2 vision and 1 text attention heads of width 64")),
        "{note}"
    );
    assert!(note.contains("--config FILE|PRESET"), "{note}");

    let given =
        robustft(&["embed", "--model", &weights, "--config", config.to_str().unwrap(), "--image", image]);
    assert!(given.status.success(), "{}", String::from_utf8_lossy(&given.stderr));
    assert!(!String::from_utf8_lossy(&given.stderr).contains("note:"));
    let reference = stdout_json(&robustft(&["embed", "--model", "bundled", "--image", image]));
    assert_eq!(stdout_json(&given)["image_embeds"], reference["image_embeds"]);
    // The bundled model's heads are 32 wide: the conventions' guess computes something else.
    assert_ne!(
        stdout_json(&robustft(&["embed", "--model", &weights, "--image", image]))["image_embeds"],
        reference["image_embeds"]
    );

    let err = stderr_of(&["embed", "--model", &weights, "--config", "ViT-Q-99", "--image", image]);
    assert!(err.contains("--config") && err.contains("neither a file nor a preset name"), "{err}");
}

/// Runs a paper recipe for one short epoch of the bundled model on a synthetic dataset in its
/// layout; returns the result rows' split names.
fn rehearse_paper_recipe(recipe: &str, layout: &str, overrides: &[&str]) -> Vec<String> {
    let dir = scratch(&format!("synth-{layout}"));
    let data = dir.join("data");
    let written = robustft(&["synth-data", "--layout", layout, "--out", data.to_str().unwrap()]);
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    let root = format!("data.root={:?}", data.to_str().unwrap());
    let mut args = vec!["train", "--recipe", recipe, "--out", dir.to_str().unwrap(), "--json"];
    for set in [
        "model=\"bundled\"",
        &root,
        "train.epochs=1",
        "train.batch_size=512",
        "train.warmup_steps=0",
        "eval.wiseft=[0.5]",
    ]
    .iter()
    .chain(overrides)
    {
        args.extend(["--set", set]);
    }
    let rows = json_lines(&robustft(&args));
    std::fs::remove_dir_all(dir).unwrap();
    let mut splits: Vec<String> = rows.iter().map(|r| r["split"].as_str().unwrap().to_string()).collect();
    splits.sort();
    splits.dedup();
    splits
}

#[test]
fn paper_recipes_run_on_synthetic_imagenet_and_iwildcam_layouts() {
    for recipe in ["recipes/paper/flyp-iwildcam.toml", "recipes/paper/drm-iwildcam.toml"] {
        let splits = rehearse_paper_recipe(recipe, "iwildcam", &[]);
        assert_eq!(splits, ["id_test", "id_val", "test", "val"], "{recipe}");
    }
    let splits =
        rehearse_paper_recipe("recipes/paper/flyp-imagenet.toml", "imagenet", &["data.templates=\"simple\""]);
    assert_eq!(
        splits,
        ["imagenet", "imagenet-a", "imagenet-r", "imagenet-sketch", "imagenet-v2", "objectnet"]
    );
}

#[test]
fn synth_data_writes_images_of_the_size_asked_for() {
    let dir = scratch("synth-size");
    let out = dir.join("data");
    let args =
        ["synth-data", "--layout", "iwildcam", "--out", out.to_str().unwrap(), "--image-size", "40x30"];
    let written = robustft(&args);
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    let images = out.join("iwildcam_v2.0/train");
    let first = std::fs::read_dir(&images).unwrap().next().unwrap().unwrap().path();
    let image = image::open(&first).unwrap();
    assert_eq!((image.width(), image.height()), (40, 30), "{}", first.display());

    for bad in ["0x30", "40", "40x-1", "axb"] {
        let err = stderr_of(&[
            "synth-data",
            "--layout",
            "iwildcam",
            "--out",
            out.to_str().unwrap(),
            "--image-size",
            bad,
        ]);
        assert!(err.contains("--image-size") && err.contains("WxH"), "{bad}: {err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `eval --precision`'s rows and per-example confidences on the `spurious` suite.
fn suite_eval_at(precision: &str) -> (Vec<Value>, Vec<f64>) {
    let dir = scratch(&format!("suite-{precision}"));
    let csv = dir.join("predictions.csv");
    let args = ["eval", "--suite", "spurious", "--json", "--precision", precision, "--save-predictions"];
    let rows = json_lines(&robustft(&[&args[..], &[csv.to_str().unwrap()]].concat()));
    let text = std::fs::read_to_string(&csv).unwrap();
    let confidences =
        text.lines().skip(1).map(|line| line.rsplit(',').next().unwrap().parse().unwrap()).collect();
    std::fs::remove_dir_all(&dir).unwrap();
    (rows, confidences)
}

#[test]
fn eval_in_bf16_is_close_to_fp32_and_its_rows_say_so() {
    let (fp32_rows, fp32_confidences) = suite_eval_at("fp32");
    let (bf16_rows, bf16_confidences) = suite_eval_at("bf16");
    assert_eq!(fp32_rows.len(), bf16_rows.len());
    for (fp32, bf16) in fp32_rows.iter().zip(&bf16_rows) {
        assert!(fp32.get("precision").is_none(), "{fp32}");
        assert_eq!(bf16["precision"], "bf16", "{bf16}");
        let gap = (fp32["top1"].as_f64().unwrap() - bf16["top1"].as_f64().unwrap()).abs();
        assert!(gap <= 0.02, "top-1 moved by {gap} in bf16: {fp32} / {bf16}");
    }
    let largest_change =
        fp32_confidences.iter().zip(&bf16_confidences).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(largest_change > 0.0, "bf16 changed no confidence: the fp32 path ran");
    assert!(largest_change < 0.1, "a confidence moved by {largest_change} in bf16");
}

#[test]
fn eval_on_a_suite_writes_per_example_predictions() {
    let dir = scratch("suite-predictions");
    let csv = dir.join("predictions.csv");
    let args = ["eval", "--suite", "spurious", "--json", "--save-predictions", csv.to_str().unwrap()];
    let rows = json_lines(&robustft(&args));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("split,id,label,pred,group,confidence"));
    let examples: u64 = rows.iter().map(|row| row["n"].as_u64().unwrap()).sum();
    assert_eq!(lines.clone().count() as u64, examples, "one line per evaluated example");
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!((first[0], first[1]), (rows[0]["split"].as_str().unwrap(), "0"));
    std::fs::remove_dir_all(&dir).unwrap();
}
