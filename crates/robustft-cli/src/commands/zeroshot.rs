//! `robustft zeroshot`: zero-shot classification of image files, or zero-shot evaluation of
//! a model on a ShiftWorld suite.

use std::path::PathBuf;

use anyhow::Context;
use robustft::clip::preprocess::ClipPreprocess;
use robustft::eval::evaluate::ResultRow;
use robustft::eval::suite::{background_swap_top1, zeroshot_suite_rows, PromptKind};
use robustft::prompts::load_class_names;
use robustft::shiftworld::build_suite;
use robustft::zeroshot::{probabilities, tokenizer_for, top_k, ZeroShotHead};
use serde_json::json;

use super::{load_images, ModelArgs, PromptArgs, DATASET_TEMPLATES};

/// Images encoded per image-tower call.
const IMAGE_BATCH: usize = 32;

/// With IMAGES: one line per image, `{"image": path, "top": [{"rank", "index", "class",
/// "prob"}, ...]}`. With --suite: a table of per-split metrics (or JSON lines with --json).
#[derive(clap::Args, Debug)]
pub struct ZeroshotArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Evaluate on a ShiftWorld suite (spurious, rendition, corruption, domains), rendered in
    /// memory, instead of classifying image files.
    #[arg(long, value_name = "SUITE", conflicts_with_all = ["classes", "templates", "descriptions", "images"])]
    suite: Option<String>,

    /// The suite's world seed (with --suite).
    #[arg(long, default_value_t = 0, requires = "suite")]
    seed: u64,

    /// Which prompts build the head (with --suite): the `shiftworld` templates over the class
    /// names, or the classes' concept descriptions.
    #[arg(long, value_enum, default_value = "default", requires = "suite")]
    prompts: Prompts,

    /// Print one JSON line per split (with --suite).
    #[arg(long, requires = "suite")]
    json: bool,

    /// Instead of the per-split table, measure how much the head rests on the background:
    /// top-1 on the suite's id_test as rendered and with every background swapped for another
    /// example's (with --suite).
    #[arg(long, requires = "suite")]
    background_swap: bool,

    /// The classes: a file (one name per line, or a JSON array of names) or an inline
    /// comma-separated list such as "cat,dog,bird" (a single name without a file of that name,
    /// such as "circle", is a one-class list).
    #[arg(long, value_name = "FILE|a,b,c", required_unless_present = "suite")]
    classes: Option<String>,

    #[command(flatten)]
    prompts_from: PromptArgs,

    /// How many classes to print per image.
    #[arg(long, default_value_t = 5, value_name = "K")]
    top_k: usize,

    /// Image files to classify.
    #[arg(value_name = "IMAGE", required_unless_present = "suite")]
    images: Vec<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Prompts {
    Default,
    Descriptions,
}

pub fn run(args: ZeroshotArgs) -> anyhow::Result<()> {
    match &args.suite {
        Some(suite) => run_suite(&args, suite),
        None => run_images(&args),
    }
}

fn run_images(args: &ZeroshotArgs) -> anyhow::Result<()> {
    let classes = load_class_names(args.classes.as_deref().unwrap_or_default())?;
    let (prompts, _) = args.prompts_from.prompts(&classes, DATASET_TEMPLATES)?;
    let (model, device) = args.model.load()?;
    let tokenizer = tokenizer_for(&model)?;
    let head =
        ZeroShotHead::build(&model, &tokenizer, &prompts).context("cannot build the zero-shot head")?;
    let preprocess = ClipPreprocess::openai(model.config.vision.image_size);
    for paths in args.images.chunks(IMAGE_BATCH) {
        let pixels = load_images(&preprocess, paths, &device)?;
        let probs = probabilities(&head.logits(&model.no_grad().encode_image(&pixels)?)?)?;
        for (path, row) in paths.iter().zip(&probs) {
            let top: Vec<_> = top_k(row, args.top_k)
                .into_iter()
                .enumerate()
                .map(|(rank, k)| json!({"rank": rank + 1, "index": k, "class": classes[k], "prob": row[k]}))
                .collect();
            println!("{}", json!({"image": path, "top": top}));
        }
    }
    Ok(())
}

fn run_suite(args: &ZeroshotArgs, suite_name: &str) -> anyhow::Result<()> {
    let suite = build_suite(suite_name, args.seed)?;
    let kind = match args.prompts {
        Prompts::Default => PromptKind::Default,
        Prompts::Descriptions => PromptKind::Descriptions,
    };
    let (model, _) = args.model.load()?;
    if args.background_swap {
        let id_test =
            suite.splits.iter().find(|s| s.name == "id_test").context("the suite has no id_test split")?;
        let (original, swapped) = background_swap_top1(&model, &id_test.examples, kind, args.seed)?;
        let change = swapped - original;
        let out = json!({"suite": suite_name, "split": "id_test", "prompts": kind.name(),
            "top1": original, "top1_backgrounds_swapped": swapped, "change": change});
        println!("{out}");
        return Ok(());
    }
    let rows = zeroshot_suite_rows(&model, &args.model.model, &suite, kind)?;
    if args.json {
        for row in &rows {
            let mut value = serde_json::to_value(row)?;
            value["suite"] = json!(suite_name);
            println!("{value}");
        }
    } else {
        print_table(suite_name, kind.name(), &rows);
    }
    Ok(())
}

fn print_table(suite: &str, prompts: &str, rows: &[ResultRow]) {
    println!("suite {suite}, prompts {prompts}");
    println!("{:<24} {:>6} {:>8} {:>10} {:>6}", "split", "top1", "f1_macro", "worst_grp", "n");
    for row in rows {
        let m = &row.metrics;
        let worst = m.worst_group_acc.map_or("-".to_string(), |w| format!("{:.3}", w));
        println!("{:<24} {:>6.3} {:>8.3} {:>10} {:>6}", row.split, m.top1, m.f1_macro, worst, m.n);
    }
}
