//! `robustft wiseft`: WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models",
//! CVPR 2022; methods.md §0.3) of any two checkpoints of one architecture. For each α of a grid,
//! θ_α = (1 − α)·θ_zero-shot + α·θ_fine-tuned over every parameter of both towers (names
//! matching --exclude are taken from the fine-tuned model unchanged), evaluated on a ShiftWorld
//! suite or on every split of a dataset on disk, and optionally saved.
//!
//! The classifier follows the fine-tuned checkpoint. When it holds a trained head
//! (`head.safetensors` beside its weights, as `robustft train` writes for FT, LP-FT, L2-SP and
//! LP), that head is interpolated with the zero-shot head that the *zero-shot* model's text tower
//! builds from the prompts: WiSE-FT's recipe for a linear classifier initialised from the
//! zero-shot head. Otherwise the zero-shot head is rebuilt from each interpolated text tower,
//! as FLYP and DRM predict with their text towers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use regex::Regex;
use robustft::clip::preprocess::ClipPreprocess;
use robustft::clip::{ClipConfig, ClipModel, ConfigSource};
use robustft::device::DeviceChoice;
use robustft::eval::evaluate::{append_rows, ResultRow, RowContext};
use robustft::eval::predictor::{Head, Predictor};
use robustft::train::wiseft::interpolate;
use robustft::zeroshot::{tokenizer_for, ZeroShotHead};
use serde_json::Value;

use super::eval::{default_templates, open_benchmark, report_skipped, result_rows};
use super::{check_write_targets, print_rows, LayoutArgs, PromptArgs};

/// More mixing weights than this in one sweep is taken for a mistyped --alpha: each one is a
/// whole evaluation.
const MAX_ALPHAS: usize = 1001;

/// The name a trained head is stored under, beside the model's weights.
const HEAD_FILE: &str = "head.safetensors";

/// Prints one table row (or, with --json, one JSON line) per α and split; the rows name the
/// fine-tuned checkpoint, method `wiseft` and their `wiseft_alpha`. One progress line per α
/// goes to stderr.
#[derive(clap::Args, Debug)]
pub struct WiseftArgs {
    /// The zero-shot end (α = 0): `bundled`, a checkpoint directory or weights file, or a hub id
    /// already in the local Hugging Face cache.
    #[arg(long, value_name = "bundled|PATH|HUB_ID")]
    zeroshot: String,

    /// The fine-tuned end (α = 1), of the same architecture, such as the `runs/<name>/model`
    /// directory `robustft train` writes. A head.safetensors beside its weights (head.weight
    /// [classes, dim], optional head.bias) is interpolated with the zero-shot head; without one,
    /// the zero-shot head is rebuilt from each interpolated text tower.
    #[arg(long, value_name = "bundled|PATH|HUB_ID")]
    finetuned: String,

    /// The architecture facts weights cannot tell, for both ends: an open_clip_config.json, an
    /// HF config.json, or a preset name (see `robustft eval --help`).
    #[arg(long, value_name = "FILE|PRESET", value_parser = super::parse_config_source)]
    config: Option<ConfigSource>,

    /// The mixing weights: START:END:STEP, inclusive (0:1:0.1 gives 0, 0.1, ..., 1), or a comma
    /// list such as 0,0.5,1; each in [0, 1].
    #[arg(
        long,
        default_value = "0:1:0.1",
        value_name = "START:END:STEP|A,B,...",
        value_parser = parse_alphas
    )]
    alpha: Alphas,

    /// Parameters whose canonical (HF) name contains a match of this regular expression, such
    /// as `^text_model\.` or `layer_norm`, are taken from the fine-tuned model unchanged at
    /// every α; `head.weight` and `head.bias` name the trained head.
    #[arg(long, value_name = "REGEX", value_parser = Regex::new)]
    exclude: Option<Regex>,

    /// A ShiftWorld suite rendered in memory (spurious, rendition, corruption, domains).
    #[arg(long, value_name = "SUITE", required_unless_present = "dataset", conflicts_with = "dataset")]
    suite: Option<String>,

    /// The suite's world seed (with --suite).
    #[arg(long, default_value_t = 0, requires = "suite")]
    seed: u64,

    /// A dataset directory: a manifest (manifest.csv with path,label,split[,group][,domain] and
    /// classes.txt), or a WILDS or ImageNet root with --format.
    #[arg(long, value_name = "DIR")]
    dataset: Option<PathBuf>,

    #[command(flatten)]
    layout: LayoutArgs,

    #[command(flatten)]
    prompts_from: PromptArgs,

    /// Write each interpolated model to DIR/alpha_<α>/ in the HF layout (metadata naming both
    /// checkpoints and α), with the interpolated head.safetensors when there is a trained head.
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,

    /// Append the result rows to this results.jsonl file.
    #[arg(long, value_name = "FILE")]
    results: Option<PathBuf>,

    /// Print the result rows as JSON lines instead of a table.
    #[arg(long)]
    json: bool,

    /// Where to compute: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: DeviceChoice,
}

/// The mixing weights of a sweep, in the order given.
#[derive(Clone, Debug)]
pub struct Alphas(Vec<f64>);

/// Parses `start:end:step` (inclusive) or a comma list; every α must lie in [0, 1].
fn parse_alphas(text: &str) -> Result<Alphas, String> {
    let values = match text.split(':').collect::<Vec<_>>()[..] {
        [start, end, step] => alpha_range(number(start)?, number(end)?, number(step)?)?,
        [list] => list.split(',').map(number).collect::<Result<_, _>>()?,
        _ => return Err("expected START:END:STEP or a comma list such as 0,0.5,1".into()),
    };
    match values.iter().find(|alpha| !(0.0..=1.0).contains(*alpha)) {
        Some(alpha) => Err(format!("α = {alpha} is outside [0, 1]")),
        None => Ok(Alphas(values)),
    }
}

fn number(text: &str) -> Result<f64, String> {
    text.trim().parse().map_err(|_| format!("`{text}` is not a number"))
}

/// `start, start + step, ...` up to `end` inclusive, each rounded to 1e-9 (so 0:1:0.1 gives 0.3,
/// not 0.30000000000000004).
fn alpha_range(start: f64, end: f64, step: f64) -> Result<Vec<f64>, String> {
    if let Some(bound) = [start, end].into_iter().find(|bound| !(0.0..=1.0).contains(bound)) {
        return Err(format!("α = {bound} is outside [0, 1]"));
    }
    if step.is_nan() || step <= 0.0 {
        return Err(format!("the step {step} must be positive"));
    }
    if end < start {
        return Err(format!("the end {end} is below the start {start}"));
    }
    let steps = ((end - start) / step + 1e-9).floor();
    if steps >= MAX_ALPHAS as f64 {
        return Err(format!("{start}:{end}:{step} gives more than {MAX_ALPHAS} values"));
    }
    Ok((0..=steps as usize).map(|i| ((start + i as f64 * step) * 1e9).round() / 1e9).collect())
}

pub fn run(args: WiseftArgs) -> anyhow::Result<()> {
    check_write_targets(&[args.results.as_deref()])?;
    let device = args.device.open().with_context(|| format!("cannot open device {:?}", args.device))?;
    let (zero_shot, _) = load_model(&args.zeroshot, args.config.as_ref(), &device)?;
    let (finetuned, head_path) = load_model(&args.finetuned, args.config.as_ref(), &device)?;
    check_same_architecture(&args, &zero_shot.config, &finetuned.config)?;
    let (benchmark, classes) =
        open_benchmark(args.suite.as_deref(), args.seed, args.dataset.as_deref(), &args.layout)?;
    let (prompts, prompt_set) = args.prompts_from.prompts(&classes, default_templates(&benchmark))?;
    let heads = match &head_path {
        Some(path) => Some(head_pair(&zero_shot, &classes, &prompts, path, &device)?),
        None => None,
    };
    describe_classifier(&args, head_path.as_deref());
    let exclude = |name: &str| args.exclude.as_ref().is_some_and(|re| re.is_match(name));
    let (zero_shot_tensors, finetuned_tensors) = (zero_shot.tensors(), finetuned.tensors());
    report_exclusions(&args, &finetuned_tensors, heads.is_some());
    let context = RowContext {
        model: args.finetuned.clone(),
        dataset: benchmark.name(),
        method: "wiseft".into(),
        prompts: prompt_set,
        seed: benchmark.seed(),
        preprocess: ClipPreprocess::openai(finetuned.config.vision.image_size).id(),
        wiseft_alpha: None,
    };
    let mut rows = Vec::new();
    for (index, &alpha) in args.alpha.0.iter().enumerate() {
        let mixed = interpolate(&zero_shot_tensors, &finetuned_tensors, alpha, &exclude)?;
        let model = ClipModel::from_tensors(finetuned.config.clone(), mixed, &device)?;
        let head = match &heads {
            Some((initial, trained)) => Some(interpolate_head(initial, trained, alpha, &exclude)?),
            None => None,
        };
        if let Some(dir) = &args.save {
            let head = head.as_ref().map(|head| (head, classes.as_slice()));
            save_interpolation(&args, dir, alpha, &model, head)?;
        }
        let classifier = match head {
            Some(head) => head,
            None => zero_shot_head(&model, &prompts)?,
        };
        let context = RowContext { wiseft_alpha: Some(alpha), ..context.clone() };
        let evaluations = benchmark.evaluate(&model, &Predictor::single(classifier))?;
        if index == 0 {
            report_skipped(&evaluations);
        }
        let alpha_rows = result_rows(&context, &benchmark, &evaluations);
        eprintln!("{}", progress(alpha, index, args.alpha.0.len(), &alpha_rows));
        rows.extend(alpha_rows);
    }
    if let Some(path) = &args.results {
        append_rows(path, &rows)?;
    }
    print_rows(&rows, args.json)
}

/// Loads a checkpoint, with the path of the trained head stored beside its weights, if any.
fn load_model(
    spec: &str,
    config: Option<&ConfigSource>,
    device: &Device,
) -> anyhow::Result<(ClipModel, Option<PathBuf>)> {
    let (model, info) = super::load_model(spec, config, device)?;
    let head = info.files.map(|files| files.weights.with_file_name(HEAD_FILE)).filter(|path| path.is_file());
    Ok((model, head))
}

/// Refuses two checkpoints of different architectures, naming both and every differing field.
fn check_same_architecture(
    args: &WiseftArgs,
    zero_shot: &ClipConfig,
    finetuned: &ClipConfig,
) -> anyhow::Result<()> {
    if zero_shot == finetuned {
        return Ok(());
    }
    let mut differences = Vec::new();
    collect_differences(
        "",
        &serde_json::to_value(zero_shot)?,
        &serde_json::to_value(finetuned)?,
        &mut differences,
    );
    anyhow::bail!(
        "cannot interpolate --zeroshot {} and --finetuned {}: their architectures differ ({})",
        args.zeroshot,
        args.finetuned,
        differences.join("; ")
    )
}

/// `field zero-shot-value vs fine-tuned-value` for every leaf of two configurations that differs.
fn collect_differences(field: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let path = if field.is_empty() { key.clone() } else { format!("{field}.{key}") };
                collect_differences(&path, value, b.get(key).unwrap_or(&Value::Null), out);
            }
        }
        _ if a != b => out.push(format!("{field} {a} vs {b}")),
        _ => {}
    }
}

/// The zero-shot head of `model`'s text tower over `prompts`.
fn zero_shot_head(model: &ClipModel, prompts: &[Vec<String>]) -> anyhow::Result<Head> {
    Ok(Head::from(&ZeroShotHead::build(model, &tokenizer_for(model)?, prompts)?))
}

/// The zero-shot model's zero-shot head and the trained head at `path`, which must be for
/// `classes` and have its shape.
fn head_pair(
    zero_shot: &ClipModel,
    classes: &[String],
    prompts: &[Vec<String>],
    path: &Path,
    device: &Device,
) -> anyhow::Result<(Head, Head)> {
    let trained = Head::load(path, device)?;
    trained.check_classes(path, classes)?;
    let initial = zero_shot_head(zero_shot, prompts)?;
    anyhow::ensure!(
        trained.weight.dims() == initial.weight.dims(),
        "{}: head.weight has shape {:?}, but the zero-shot head over the {} classes has shape {:?}",
        path.display(),
        trained.weight.dims(),
        prompts.len(),
        initial.weight.dims()
    );
    Ok((initial, trained))
}

/// WiSE-FT of the heads; `head.weight` and `head.bias` come from the trained head when excluded.
fn interpolate_head(
    initial: &Head,
    trained: &Head,
    alpha: f64,
    exclude: &dyn Fn(&str) -> bool,
) -> anyhow::Result<Head> {
    let mixed = initial.lerp(trained, alpha)?;
    Ok(Head {
        weight: if exclude("head.weight") { trained.weight.clone() } else { mixed.weight },
        bias: if exclude("head.bias") { trained.bias.clone() } else { mixed.bias },
    })
}

/// Says on stderr how the interpolated models classify.
fn describe_classifier(args: &WiseftArgs, head_path: Option<&Path>) {
    match head_path {
        Some(path) => eprintln!(
            "interpolating the trained head {} with the zero-shot head of {}",
            path.display(),
            args.zeroshot
        ),
        None => eprintln!(
            "no {HEAD_FILE} beside {}: the zero-shot head is rebuilt from each interpolated text tower",
            args.finetuned
        ),
    }
}

/// Says on stderr how many parameters --exclude keeps from the fine-tuned model.
fn report_exclusions(args: &WiseftArgs, parameters: &[(String, candle_core::Tensor)], has_head: bool) {
    let Some(pattern) = &args.exclude else { return };
    let head_names = if has_head { ["head.weight", "head.bias"].as_slice() } else { &[] };
    let names = parameters.iter().map(|(name, _)| name.as_str()).chain(head_names.iter().copied());
    let (matched, total) =
        names.fold((0, 0), |(m, t), name| (m + usize::from(pattern.is_match(name)), t + 1));
    eprintln!("--exclude {pattern}: {matched} of {total} parameters taken from the fine-tuned model");
}

/// Writes the interpolated model (and head, with its class names) to `dir/alpha_<α>/`.
fn save_interpolation(
    args: &WiseftArgs,
    dir: &Path,
    alpha: f64,
    model: &ClipModel,
    head: Option<(&Head, &[String])>,
) -> anyhow::Result<()> {
    let out = dir.join(format!("alpha_{alpha}"));
    let mut metadata = HashMap::from([
        ("robustft.wiseft.zeroshot".to_string(), args.zeroshot.clone()),
        ("robustft.wiseft.finetuned".to_string(), args.finetuned.clone()),
        ("robustft.wiseft.alpha".to_string(), alpha.to_string()),
    ]);
    if let Some(pattern) = &args.exclude {
        metadata.insert("robustft.wiseft.exclude".to_string(), pattern.to_string());
    }
    let cannot_save = || format!("cannot save the α = {alpha} model to {}", out.display());
    model.save_hf(&out, &metadata).with_context(cannot_save)?;
    let head_path = out.join(HEAD_FILE);
    match head {
        Some((head, classes)) => {
            head.save_with_classes(&head_path, metadata, classes).with_context(cannot_save)?
        }
        None if head_path.exists() => std::fs::remove_file(&head_path)
            .with_context(|| format!("cannot remove the stale {}", head_path.display()))?,
        None => {}
    }
    Ok(())
}

/// One stderr line per α: the top-1 of every split.
fn progress(alpha: f64, index: usize, count: usize, rows: &[ResultRow]) -> String {
    let top1: Vec<String> = rows.iter().map(|row| format!("{} {:.3}", row.split, row.metrics.top1)).collect();
    format!("α = {alpha} ({}/{count}): top-1 {}", index + 1, top1.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_rounded() {
        let Alphas(values) = parse_alphas("0:1:0.1").unwrap();
        assert_eq!(values, vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]);
        assert_eq!(parse_alphas("0.25:0.75:0.25").unwrap().0, vec![0.25, 0.5, 0.75]);
        assert_eq!(parse_alphas("0.5:0.5:0.1").unwrap().0, vec![0.5]);
        assert_eq!(parse_alphas("0, 0.5,1").unwrap().0, vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn bad_grids_are_refused_with_the_reason() {
        let error = |text: &str| parse_alphas(text).unwrap_err();
        assert!(error("0,1.5").contains("1.5 is outside [0, 1]"));
        assert!(error("-0.5:1:0.5").contains("outside [0, 1]"));
        assert!(error("0:1:0").contains("must be positive"));
        assert!(error("1:0:0.1").contains("below the start"));
        assert!(error("0:1:1e-9").contains("more than"));
        assert!(error("0,half").contains("`half` is not a number"));
        assert!(error("0:1").contains("START:END:STEP"));
    }
}
