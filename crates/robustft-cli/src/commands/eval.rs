//! `robustft eval`: zero-shot evaluation of a model on the splits of a dataset on disk (a CSV
//! manifest directory such as `robustft shiftworld generate` writes, a WILDS iWildCam or FMoW
//! root, an ImageNet root with its variants) or of a ShiftWorld suite rendered in memory, with
//! per-split metrics, result rows and per-example predictions. A model `robustft train` wrote
//! predicts as its run did: through its trained head (`head.safetensors`, checked against the
//! dataset's classes: count, and names and order when the head stores them), or through the
//! heads its run rebuilt from the text tower (`predictor.json`: FLYP's default prompts, DRM's
//! β-mixture of default prompts and concept descriptions).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use robustft::clip::preprocess::ClipPreprocess;
use robustft::clip::ClipModel;
use robustft::data::Split;
use robustft::eval::dataset::{evaluate_split, write_predictions_csv, SplitEvaluation};
use robustft::eval::evaluate::{append_rows, ResultRow, RowContext};
use robustft::eval::predictor::{Head, Predictor, TextPredictor};
use robustft::eval::suite::{evaluate_suite, zeroshot_suite_rows, PromptKind};
use robustft::shiftworld::{build_suite, Suite, CLASSES};
use robustft::zeroshot::{tokenizer_for, ZeroShotHead};

use super::{check_write_targets, print_rows, Dataset, LayoutArgs, ModelArgs, PromptArgs, DATASET_TEMPLATES};

/// Prints one table row (or, with --json, one JSON line) per split: top-1, top-5, macro-F1
/// over classes present in the split, worst-group accuracy, ECE.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,

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

    /// Print the result rows as JSON lines instead of a table.
    #[arg(long)]
    json: bool,

    /// Append the result rows to this results.jsonl file.
    #[arg(long, value_name = "FILE")]
    results: Option<PathBuf>,

    /// Write one CSV row per example (split,id,label,pred,group,confidence); --dataset only.
    #[arg(long, value_name = "FILE.csv", conflicts_with = "suite")]
    save_predictions: Option<PathBuf>,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    check_write_targets(&[args.results.as_deref(), args.save_predictions.as_deref()])?;
    let (model, device) = args.model.load()?;
    let preprocess = ClipPreprocess::openai(model.config.vision.image_size).id();
    let head = trained_head(&args.model.model, &device)?;
    if head.is_some() {
        eprintln!("evaluating the trained head saved beside the model (head.safetensors)");
    }
    if let Some(text) = TextPredictor::load(Path::new(&args.model.model))? {
        eprintln!("predicting as the run did: the heads its predictor.json rebuilds from the text tower");
        return run_text_predictor(&args, &model, &text, preprocess);
    }
    let rows = match (&args.suite, &args.dataset) {
        (Some(suite), _) => {
            let suite = build_suite(suite, args.seed)?;
            match &head {
                Some((head, path)) => {
                    head.check_classes(path, &CLASSES.map(String::from))?;
                    suite_rows_with_head(&args, &model, &suite, head)?
                }
                None => zeroshot_suite_rows(&model, &args.model.model, &suite, PromptKind::Default)?,
            }
        }
        (None, Some(dir)) => dataset_rows(&args, &model, dir, preprocess, head)?,
        (None, None) => unreachable!("clap requires --dataset or --suite"),
    };
    if let Some(path) = &args.results {
        append_rows(path, &rows)?;
    }
    print_rows(&rows, args.json)
}

/// Rows of a model that predicts through heads rebuilt from its text tower (FLYP, DRM).
fn run_text_predictor(
    args: &EvalArgs,
    model: &ClipModel,
    text: &TextPredictor,
    preprocess: String,
) -> anyhow::Result<()> {
    let predictor = text.build(model)?;
    let method = if text.descriptions.is_some() { "text_heads_mixture" } else { "text_heads" };
    let rows = match (&args.suite, &args.dataset) {
        (Some(suite), _) => {
            let suite = build_suite(suite, args.seed)?;
            anyhow::ensure!(
                text.num_classes() == CLASSES.len(),
                "the saved predictor has {} classes, the suite {}",
                text.num_classes(),
                CLASSES.len()
            );
            let context =
                row_context(args, format!("shiftworld/{}", suite.name), method, suite.seed, preprocess);
            let predictions = evaluate_suite(model, &suite, &predictor)?;
            predictions.iter().map(|(split, p)| ResultRow::score(&context, split, p, &[])).collect()
        }
        (None, Some(dir)) => {
            let Dataset { splits, classes } = args.layout.load(dir)?;
            anyhow::ensure!(
                text.num_classes() == classes.len(),
                "the saved predictor has {} classes, the dataset {} has {}",
                text.num_classes(),
                dir.display(),
                classes.len()
            );
            let evaluations = evaluate_dataset(model, &splits, &predictor)?;
            report_skipped(&evaluations);
            if let Some(path) = &args.save_predictions {
                write_predictions_csv(path, &evaluations)?;
            }
            dataset_result_rows(
                &row_context(args, dir.display().to_string(), method, 0, preprocess),
                &evaluations,
            )
        }
        (None, None) => unreachable!("clap requires --dataset or --suite"),
    };
    if let Some(path) = &args.results {
        append_rows(path, &rows)?;
    }
    print_rows(&rows, args.json)
}

/// What every row of an evaluation of `args.model` shares.
fn row_context(args: &EvalArgs, dataset: String, method: &str, seed: u64, preprocess: String) -> RowContext {
    RowContext {
        model: args.model.model.clone(),
        dataset,
        method: method.into(),
        prompts: "saved".into(),
        seed,
        preprocess,
        wiseft_alpha: None,
    }
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

/// Rows of a trained head on every evaluation split of a suite.
fn suite_rows_with_head(
    args: &EvalArgs,
    model: &ClipModel,
    suite: &Suite,
    head: &Head,
) -> anyhow::Result<Vec<ResultRow>> {
    let context = RowContext {
        model: args.model.model.clone(),
        dataset: format!("shiftworld/{}", suite.name),
        method: "trained_head".into(),
        prompts: "none".into(),
        seed: suite.seed,
        preprocess: ClipPreprocess::openai(model.config.vision.image_size).id(),
        wiseft_alpha: None,
    };
    let predictions = evaluate_suite(model, suite, &Predictor::single(head.clone()))?;
    Ok(predictions.iter().map(|(split, p)| ResultRow::score(&context, split, p, &[])).collect())
}

fn dataset_rows(
    args: &EvalArgs,
    model: &ClipModel,
    dir: &Path,
    preprocess: String,
    trained: Option<(Head, PathBuf)>,
) -> anyhow::Result<Vec<ResultRow>> {
    let Dataset { splits, classes } = args.layout.load(dir)?;
    let (head, method, prompt_set) = match trained {
        Some((head, path)) => {
            head.check_classes(&path, &classes)?;
            (head, "trained_head", "none".to_string())
        }
        None => {
            let (prompts, prompt_set) = args.prompts_from.prompts(&classes, DATASET_TEMPLATES)?;
            (
                Head::from(&ZeroShotHead::build(model, &tokenizer_for(model)?, &prompts)?),
                "zeroshot",
                prompt_set,
            )
        }
    };
    let evaluations = evaluate_dataset(model, &splits, &Predictor::single(head))?;
    report_skipped(&evaluations);
    if let Some(path) = &args.save_predictions {
        write_predictions_csv(path, &evaluations)?;
    }
    let context = RowContext {
        model: args.model.model.clone(),
        dataset: dir.display().to_string(),
        method: method.into(),
        prompts: prompt_set,
        seed: 0,
        preprocess,
        wiseft_alpha: None,
    };
    Ok(dataset_result_rows(&context, &evaluations))
}

/// The predictions of `model` + `predictor` on every split.
pub fn evaluate_dataset(
    model: &ClipModel,
    splits: &[Arc<Split>],
    predictor: &Predictor,
) -> anyhow::Result<Vec<SplitEvaluation>> {
    Ok(splits
        .iter()
        .map(|split| evaluate_split(model, split.clone(), predictor))
        .collect::<Result<_, _>>()?)
}

/// Reports on stderr every image an evaluation skipped.
pub fn report_skipped(evaluations: &[SplitEvaluation]) {
    for evaluation in evaluations {
        for (path, reason) in &evaluation.skipped {
            eprintln!("warning: skipped {} in split {}: {reason}", path.display(), evaluation.split);
        }
    }
}

/// One result row per split; the catch-all group "Other" (iWildCam's empty images) is left out
/// of worst-group accuracy.
pub fn dataset_result_rows(context: &RowContext, evaluations: &[SplitEvaluation]) -> Vec<ResultRow> {
    evaluations.iter().map(|e| ResultRow::score(context, &e.split, &e.predictions, &["Other"])).collect()
}
