//! `robustft eval`: zero-shot evaluation of a model on every split of a dataset on disk (a CSV
//! manifest directory such as `robustft shiftworld generate` writes) or of a ShiftWorld suite
//! rendered in memory, with per-split metrics, result rows and per-example predictions.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use robustft::clip::preprocess::ClipPreprocess;
use robustft::data::{load_manifest_split, manifest_splits};
use robustft::eval::dataset::{evaluate_split, write_predictions_csv, SplitEvaluation};
use robustft::eval::evaluate::{append_rows, ResultRow, RowContext};
use robustft::eval::predictor::{Head, Predictor};
use robustft::eval::suite::{zeroshot_suite_rows, PromptKind};
use robustft::shiftworld::build_suite;
use robustft::zeroshot::{tokenizer_for, ZeroShotHead};

use super::{ModelArgs, PromptArgs};

/// Prints one table row (or, with --json, one JSON line) per split: top-1, top-5, macro-F1
/// over classes present in the split, worst-group accuracy, ECE.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// A dataset directory with manifest.csv (path,label,split[,group][,domain]) and
    /// classes.txt; every split in the manifest is evaluated.
    #[arg(long, value_name = "DIR", required_unless_present = "suite", conflicts_with = "suite")]
    dataset: Option<PathBuf>,

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
    let (model, _) = args.model.load()?;
    let preprocess = ClipPreprocess::openai(model.config.vision.image_size).id();
    let rows = match (&args.suite, &args.dataset) {
        (Some(suite), _) => zeroshot_suite_rows(
            &model,
            &args.model.model,
            &build_suite(suite, args.seed)?,
            PromptKind::Default,
        )?,
        (None, Some(dir)) => dataset_rows(&args, &model, dir, preprocess)?,
        (None, None) => unreachable!("clap requires --dataset or --suite"),
    };
    if let Some(path) = &args.results {
        append_rows(path, &rows)?;
    }
    if args.json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
    } else {
        println!(
            "{:<24} {:>6} {:>6} {:>8} {:>10} {:>6} {:>6}",
            "split", "top1", "top5", "f1_macro", "worst_grp", "ece", "n"
        );
        for row in &rows {
            let m = &row.metrics;
            let worst = m.worst_group_acc.map_or("-".to_string(), |w| format!("{w:.3}"));
            println!(
                "{:<24} {:>6.3} {:>6.3} {:>8.3} {:>10} {:>6.3} {:>6}",
                row.split, m.top1, m.top5, m.f1_macro, worst, m.ece, m.n
            );
        }
    }
    Ok(())
}

fn dataset_rows(
    args: &EvalArgs,
    model: &robustft::clip::ClipModel,
    dir: &std::path::Path,
    preprocess: String,
) -> anyhow::Result<Vec<ResultRow>> {
    let names = manifest_splits(dir)?;
    let splits = names
        .iter()
        .map(|name| load_manifest_split(dir, name).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let classes = &splits.first().context("the manifest has no splits")?.classes;
    let (prompts, prompt_set) = args.prompts_from.prompts(classes)?;
    let head = ZeroShotHead::build(model, &tokenizer_for(model)?, &prompts)?;
    let evaluations: Vec<SplitEvaluation> = splits
        .into_iter()
        .map(|split| evaluate_split(model, split, &Predictor::single(Head::from(&head))))
        .collect::<Result<_, _>>()?;
    for evaluation in &evaluations {
        for (path, reason) in &evaluation.skipped {
            eprintln!("warning: skipped {} in split {}: {reason}", path.display(), evaluation.split);
        }
    }
    if let Some(path) = &args.save_predictions {
        write_predictions_csv(path, &evaluations)?;
    }
    let context = RowContext {
        model: args.model.model.clone(),
        dataset: dir.display().to_string(),
        method: "zeroshot".into(),
        prompts: prompt_set,
        seed: 0,
        preprocess,
        wiseft_alpha: None,
    };
    Ok(evaluations.iter().map(|e| ResultRow::score(&context, &e.split, &e.predictions, &["Other"])).collect())
}
