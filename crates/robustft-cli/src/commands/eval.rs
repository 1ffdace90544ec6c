//! `robustft eval`: zero-shot evaluation of a model on the splits of a dataset on disk (a CSV
//! manifest directory such as `robustft shiftworld generate` writes, a WILDS iWildCam or FMoW
//! root, an ImageNet root with its variants) or of a ShiftWorld suite rendered in memory, with
//! per-split metrics, result rows and per-example predictions. A model `robustft train` wrote
//! predicts as its run did: through its trained head (`head.safetensors`, checked against the
//! dataset's classes: count, and names and order when the head stores them), or through the
//! heads its run rebuilt from the text tower (`predictor.json`: FLYP's default prompts, DRM's
//! β-mixture of default prompts and concept descriptions).

use std::path::{Path, PathBuf};

use candle_core::Device;
use robustft::clip::preprocess::ClipPreprocess;
use robustft::clip::ClipModel;
use robustft::eval::benchmark::Benchmark;
use robustft::eval::dataset::{write_predictions_csv, SplitEvaluation};
use robustft::eval::evaluate::{append_rows, ResultRow, RowContext};
use robustft::eval::predictor::{Head, Predictor, TextPredictor};
use robustft::shiftworld::{build_suite, CLASSES};

use super::{
    check_write_targets, print_rows, Dataset, LayoutArgs, ModelArgs, PromptArgs, DATASET_TEMPLATES,
    SUITE_TEMPLATES,
};

/// Prints one table row (or, with --json, one JSON line) per split: top-1, top-5, macro-F1
/// over classes present in the split, worst-group accuracy, ECE.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub target: EvalTarget,

    /// Print the result rows as JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Append the result rows to this results.jsonl file.
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,

    /// Write one CSV row per example (split,id,label,pred,group,confidence); a suite's examples
    /// are numbered within their split.
    #[arg(long, value_name = "FILE.csv")]
    save_predictions: Option<PathBuf>,
}

/// What is evaluated (the model, the prompts of a zero-shot head) and on what data.
#[derive(clap::Args, Debug)]
pub struct EvalTarget {
    #[command(flatten)]
    pub model: ModelArgs,

    /// A dataset directory: a manifest (manifest.csv with path,label,split[,group][,domain] and
    /// classes.txt), or a WILDS or ImageNet root with --format.
    #[arg(long, value_name = "DIR", required_unless_present = "suite", conflicts_with = "suite")]
    dataset: Option<PathBuf>,

    #[command(flatten)]
    layout: LayoutArgs,

    /// A ShiftWorld suite rendered in memory (spurious, rendition, corruption, domains),
    /// with the `shiftworld` templates.
    #[arg(long, value_name = "SUITE")]
    suite: Option<String>,

    /// The suite's world seed (with --suite).
    #[arg(long, default_value_t = 0)]
    seed: u64,

    #[command(flatten)]
    prompts_from: PromptArgs,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    check_write_targets(&[args.results.as_deref(), args.save_predictions.as_deref()])?;
    let prepared = prepare(&args.target)?;
    let evaluations = prepared.benchmark.evaluate(&prepared.model, &prepared.predictor)?;
    report_skipped(&evaluations);
    if let Some(path) = &args.save_predictions {
        write_predictions_csv(path, &evaluations)?;
    }
    let rows = result_rows(&prepared.context, &prepared.benchmark, &evaluations);
    if let Some(path) = &args.results {
        append_rows(path, &rows)?;
    }
    print_rows(&rows, args.json)
}

/// A model, what it is evaluated on, how it predicts, and what its rows are named by.
pub struct Prepared {
    pub model: ClipModel,
    pub benchmark: Benchmark,
    pub predictor: Predictor,
    pub context: RowContext,
}

/// Loads what `args` name: the model, the benchmark and the predictor the model's directory
/// keeps (else the zero-shot head of the prompts).
pub fn prepare(args: &EvalTarget) -> anyhow::Result<Prepared> {
    let (model, device) = args.model.load()?;
    let (benchmark, classes) =
        open_benchmark(args.suite.as_deref(), args.seed, args.dataset.as_deref(), &args.layout)?;
    let (predictor, method, prompt_set) = classifier(args, &model, &device, &classes, &benchmark)?;
    let context = RowContext {
        model: args.model.model.clone(),
        dataset: benchmark.name(),
        method: method.into(),
        prompts: prompt_set,
        seed: benchmark.seed(),
        preprocess: ClipPreprocess::openai(model.config.vision.image_size).id(),
        wiseft_alpha: None,
    };
    Ok(Prepared { model, benchmark, predictor, context })
}

/// What `eval` evaluates on (--suite or --dataset), with the classes a head predicts over.
pub fn open_benchmark(
    suite: Option<&str>,
    seed: u64,
    dataset: Option<&Path>,
    layout: &LayoutArgs,
) -> anyhow::Result<(Benchmark, Vec<String>)> {
    Ok(match (suite, dataset) {
        (Some(name), _) => (Benchmark::Suite(build_suite(name, seed)?), CLASSES.map(String::from).to_vec()),
        (None, Some(dir)) => {
            let Dataset { splits, classes } = layout.load(dir)?;
            (Benchmark::Disk { root: dir.to_path_buf(), splits }, classes)
        }
        (None, None) => unreachable!("clap requires --suite or --dataset"),
    })
}

/// The default templates of a zero-shot head on `benchmark`.
pub fn default_templates(benchmark: &Benchmark) -> &'static str {
    match benchmark {
        Benchmark::Suite(_) => SUITE_TEMPLATES,
        Benchmark::Disk { .. } => DATASET_TEMPLATES,
    }
}

/// How the model classifies, with the method and prompt set its rows name: as its run did
/// (the heads `predictor.json` rebuilds, or the trained `head.safetensors`, checked against
/// the classes), else the zero-shot head of the prompts.
fn classifier(
    args: &EvalTarget,
    model: &ClipModel,
    device: &Device,
    classes: &[String],
    benchmark: &Benchmark,
) -> anyhow::Result<(Predictor, &'static str, String)> {
    if let Some(text) = TextPredictor::load(Path::new(&args.model.model))? {
        eprintln!("predicting as the run did: the heads its predictor.json rebuilds from the text tower");
        anyhow::ensure!(
            text.num_classes() == classes.len(),
            "the saved predictor has {} classes, the evaluated data {}",
            text.num_classes(),
            classes.len()
        );
        let method = if text.descriptions.is_some() { "text_heads_mixture" } else { "text_heads" };
        return Ok((text.build(model)?, method, "saved".into()));
    }
    if let Some((head, path)) = trained_head(&args.model.model, device)? {
        eprintln!("evaluating the trained head saved beside the model (head.safetensors)");
        head.check_classes(&path, classes)?;
        return Ok((Predictor::single(head), "trained_head", "none".into()));
    }
    let (prompts, prompt_set) = args.prompts_from.prompts(classes, default_templates(benchmark))?;
    let head = Head::zero_shot(model, &prompts)?;
    Ok((Predictor::single(head), "zeroshot", prompt_set))
}

/// The head `robustft train` saves beside a head-based method's weights (`head.safetensors`:
/// FT, LP, LP-FT, L2-SP), and its path, if `spec` is such a directory.
fn trained_head(spec: &str, device: &Device) -> anyhow::Result<Option<(Head, PathBuf)>> {
    let path = Path::new(spec).join("head.safetensors");
    Ok(match path.is_file() {
        true => Some((Head::load(&path, device)?, path)),
        false => None,
    })
}

/// Reports on stderr every image an evaluation skipped.
pub fn report_skipped(evaluations: &[SplitEvaluation]) {
    for evaluation in evaluations {
        for (path, reason) in &evaluation.skipped {
            eprintln!("warning: skipped {} in split {}: {reason}", path.display(), evaluation.split);
        }
    }
}

/// One result row per split (groups the benchmark leaves out of the worst-group accuracy, such
/// as WILDS' catch-all "Other", are skipped).
pub fn result_rows(
    context: &RowContext,
    benchmark: &Benchmark,
    evaluations: &[SplitEvaluation],
) -> Vec<ResultRow> {
    let skip = benchmark.skipped_groups();
    evaluations.iter().map(|e| ResultRow::score(context, &e.split, &e.predictions, skip)).collect()
}
