//! `robustft zeroshot`: zero-shot classification of image files, or zero-shot evaluation of
//! a model on a ShiftWorld suite.

use std::path::PathBuf;

use anyhow::Context;
use robustft::clip::preprocess::ClipPreprocess;
use robustft::eval::evaluate::ResultRow;
use robustft::eval::suite::{background_swap, shiftworld_prompts, zeroshot_suite_rows_with, PromptKind};
use robustft::prompts::load_class_names;
use robustft::shiftworld::{build_suite, CLASSES};
use robustft::zeroshot::{probabilities, tokenizer_for, top_k, ZeroShotHead};
use serde_json::json;

use super::{load_images, ModelArgs, PromptArgs, DATASET_TEMPLATES, SUITE_TEMPLATES};

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
    #[arg(long, value_name = "SUITE", conflicts_with_all = ["classes", "templates", "images"])]
    suite: Option<String>,

    /// The suite's world seed (with --suite).
    #[arg(long, default_value_t = 0, requires = "suite")]
    seed: u64,

    /// Which prompts build the head (with --suite): the `shiftworld` templates over the class
    /// names, or the classes' concept descriptions. With --suite, --descriptions (`shiftworld`
    /// or a file) replaces it.
    #[arg(long, value_enum, default_value = "default", requires = "suite", conflicts_with = "descriptions")]
    prompts: Prompts,

    /// Print one JSON line per split (with --suite).
    #[arg(long, requires = "suite")]
    json: bool,

    /// Instead of the per-split table, measure how much the head rests on the background:
    /// top-1 on the suite's id_test as rendered and with every background swapped for another
    /// example's (with --suite), one JSON line; also on the examples whose object colour
    /// still contrasts with the new background and on those where it no longer does, and on
    /// `spurious` per group kind (aligned: the class's own background; conflict: another
    /// class's).
    #[arg(long, requires = "suite")]
    background_swap: bool,

    /// With --background-swap: give each object only a background its colour contrasts with,
    /// as every rendered scene has, so that the swap changes the background and not the
    /// object's visibility.
    #[arg(long, requires = "background_swap")]
    keep_contrast: bool,

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

/// The head's prompts on a suite and their name: --descriptions (a bundled ShiftWorld set or a
/// file), else --prompts.
fn suite_prompts(args: &ZeroshotArgs) -> anyhow::Result<(Vec<Vec<String>>, String)> {
    if args.prompts_from.descriptions.is_some() {
        let classes: Vec<String> = CLASSES.iter().map(|c| c.to_string()).collect();
        return args.prompts_from.prompts(&classes, SUITE_TEMPLATES);
    }
    let kind = match args.prompts {
        Prompts::Default => PromptKind::Default,
        Prompts::Descriptions => PromptKind::Descriptions,
    };
    Ok((shiftworld_prompts(kind), kind.name().to_string()))
}

fn run_suite(args: &ZeroshotArgs, suite_name: &str) -> anyhow::Result<()> {
    let suite = build_suite(suite_name, args.seed)?;
    let (prompts, prompts_name) = suite_prompts(args)?;
    let (model, _) = args.model.load()?;
    if args.background_swap {
        let id_test =
            suite.splits.iter().find(|s| s.name == "id_test").context("the suite has no id_test split")?;
        let measured = background_swap(&model, &id_test.examples, &prompts, args.seed, args.keep_contrast)?;
        let mut out = json!({"suite": suite_name, "split": "id_test", "prompts": prompts_name, "seed": args.seed,
            "keep_contrast": args.keep_contrast});
        let subsets: [(&str, &dyn Fn(usize) -> bool); 5] = [
            ("all", &|_| true),
            ("aligned", &|i| id_test.examples[i].group.ends_with("|aligned")),
            ("conflict", &|i| id_test.examples[i].group.ends_with("|conflict")),
            ("kept_contrast", &|i| !measured.lost_contrast[i]),
            ("lost_contrast", &|i| measured.lost_contrast[i]),
        ];
        for (name, keep) in subsets {
            if let Some((original, swapped)) = measured.top1_where(keep) {
                let n = (0..id_test.examples.len()).filter(|&i| keep(i)).count();
                let measures = json!({"n": n, "top1": original, "top1_backgrounds_swapped": swapped,
                    "change": swapped - original});
                match name {
                    "all" => merge(&mut out, measures),
                    _ => out[name] = measures,
                }
            }
        }
        println!("{out}");
        return Ok(());
    }
    let rows = zeroshot_suite_rows_with(&model, &args.model.model, &suite, &prompts_name, &prompts)?;
    if args.json {
        for row in &rows {
            let mut value = serde_json::to_value(row)?;
            value["suite"] = json!(suite_name);
            println!("{value}");
        }
    } else {
        print_table(suite_name, &prompts_name, &rows);
    }
    Ok(())
}

/// Adds the fields of the object `from` to the object `into`.
fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
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
