//! `robustft finetune`: zero-shot, end-to-end fine-tuning (cross-entropy, head initialised
//! from the zero-shot head) and WiSE-FT on a ShiftWorld suite, side by side: the robustness
//! erosion that robust fine-tuning methods address, measured.

use anyhow::Context;
use robustft::clip::preprocess::ClipPreprocess;
use robustft::clip::ClipModel;
use robustft::eval::evaluate::{ResultRow, RowContext};
use robustft::eval::metrics::Predictions;
use robustft::eval::suite::{evaluate_suite, render_split, shiftworld_head, PromptKind};
use robustft::shiftworld::build_suite;
use robustft::train::finetune::{finetune, FinetuneConfig, LinearHead};
use robustft::train::wiseft::{interpolate, lerp};

use super::ModelArgs;

/// Prints one row per (method, split) with top-1, macro-F1 and worst-group accuracy (or JSON
/// lines with --json).
#[derive(clap::Args, Debug)]
pub struct FinetuneArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// The ShiftWorld suite (spurious, rendition, corruption, domains).
    #[arg(long)]
    suite: String,

    /// Seed of the suite's world and of the training order.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Passes over the training split.
    #[arg(long, default_value_t = 3)]
    epochs: usize,

    /// Peak learning rate (AdamW, cosine schedule).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,

    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,

    /// Decoupled weight decay (not on biases, norms, embeddings).
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,

    /// WiSE-FT mixing weight of the fine-tuned model.
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,

    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: FinetuneArgs) -> anyhow::Result<()> {
    let suite = build_suite(&args.suite, args.seed)?;
    let (model, device) = args.model.load()?;
    let zero_shot_weights = model.params.snapshot()?;
    let zs_head = shiftworld_head(&model, PromptKind::Default)?;
    let mut results = vec![("zeroshot".to_string(), evaluate_suite(&model, &suite, &|f| zs_head.logits(f))?)];

    let preprocess = ClipPreprocess::openai(model.config.vision.image_size);
    let train_split =
        suite.splits.iter().find(|s| s.name == "train").context("the suite has no train split")?;
    let data = render_split(train_split, &preprocess);
    let config = FinetuneConfig {
        epochs: args.epochs,
        batch_size: args.batch,
        lr: args.lr,
        warmup_steps: 10,
        weight_decay: args.weight_decay,
        seed: args.seed,
    };
    let head = LinearHead::new(zs_head.weights())?;
    let losses = finetune(&model, &head, &data, &config)?;
    eprintln!("fine-tuned {} epochs, mean loss per epoch {losses:?}", args.epochs);
    results.push(("ft".to_string(), evaluate_suite(&model, &suite, &|f| head.logits(f))?));

    let mixed = interpolate(&zero_shot_weights, &model.tensors(), args.alpha, &|_| false)?;
    let wise = ClipModel::from_tensors(model.config.clone(), mixed, &device)?;
    let wise_head = LinearHead::new(&lerp(zs_head.weights(), head.weight.as_tensor(), args.alpha)?)?;
    results
        .push((format!("wiseft_{}", args.alpha), evaluate_suite(&wise, &suite, &|f| wise_head.logits(f))?));

    let rows = score(&args, &preprocess, &results);
    if args.json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
    } else {
        println!("suite {} (headline: {})", args.suite, suite.headline_metric);
        println!("{:<12} {:<24} {:>6} {:>8} {:>10}", "method", "split", "top1", "f1_macro", "worst_grp");
        for row in &rows {
            let m = &row.metrics;
            let worst = m.worst_group_acc.map_or("-".to_string(), |w| format!("{w:.3}"));
            println!(
                "{:<12} {:<24} {:>6.3} {:>8.3} {:>10}",
                row.method, row.split, m.top1, m.f1_macro, worst
            );
        }
    }
    Ok(())
}

fn score(
    args: &FinetuneArgs,
    preprocess: &ClipPreprocess,
    results: &[(String, Vec<(String, Predictions)>)],
) -> Vec<ResultRow> {
    results
        .iter()
        .flat_map(|(method, splits)| {
            let context = RowContext {
                model: args.model.model.clone(),
                dataset: format!("shiftworld/{}", args.suite),
                method: method.clone(),
                prompts: PromptKind::Default.name().into(),
                seed: args.seed,
                preprocess: preprocess.id(),
            };
            splits.iter().map(move |(split, p)| ResultRow::score(&context, split, p, &[])).collect::<Vec<_>>()
        })
        .collect()
}
