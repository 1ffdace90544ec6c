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
use robustft::eval::wiseft::{config_differences, parse_alphas, save_interpolation, HeadPair};
use robustft::train::wiseft::interpolate;

use super::eval::{default_templates, open_benchmark, report_skipped, result_rows};
use super::{check_write_targets, print_rows, LayoutArgs, PromptArgs};

/// The name a trained head is stored under, beside the model's weights.
const HEAD_FILE: &str = "head.safetensors";

/// Prints one table row (or, with --json, one JSON line) per α and split; the rows name the
/// fine-tuned checkpoint, method `wiseft` and their `wiseft_alpha`. One progress line per α
/// goes to stderr.
#[derive(clap::Args, Debug)]
pub struct WiseftArgs {
    /// The zero-shot end (α = 0): `bundled`, a checkpoint directory or weights file, a hub id
    /// already in the local Hugging Face cache, or random:PRESET (a randomly initialised preset).
    #[arg(long, value_name = "bundled|PATH|HUB_ID|random:PRESET")]
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
        value_parser = parse_alpha_grid
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

fn parse_alpha_grid(text: &str) -> Result<Alphas, String> {
    parse_alphas(text).map(Alphas)
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
        Some(path) => Some(HeadPair::load(&zero_shot, &classes, &prompts, path, &device)?),
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
            Some(pair) => Some(pair.at(alpha, &exclude)?),
            None => None,
        };
        if let Some(dir) = &args.save {
            let head = head.as_ref().map(|head| (head, classes.as_slice()));
            save_alpha(&args, dir, alpha, &model, head)?;
        }
        let classifier = match head {
            Some(head) => head,
            None => Head::zero_shot(&model, &prompts)?,
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
    let differences = config_differences(zero_shot, finetuned);
    if differences.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "cannot interpolate --zeroshot {} and --finetuned {}: their architectures differ ({})",
        args.zeroshot,
        args.finetuned,
        differences.join("; ")
    )
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
fn save_alpha(
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
    save_interpolation(&out, model, head, metadata)
        .with_context(|| format!("cannot save the α = {alpha} model to {}", out.display()))
}

/// One stderr line per α: the top-1 of every split.
fn progress(alpha: f64, index: usize, count: usize, rows: &[ResultRow]) -> String {
    let top1: Vec<String> = rows.iter().map(|row| format!("{} {:.3}", row.split, row.metrics.top1)).collect();
    format!("α = {alpha} ({}/{count}): top-1 {}", index + 1, top1.join(", "))
}
