//! `robustft train --recipe FILE.toml [--set key=value]... [--config FILE|PRESET]`: runs one
//! recipe (a method, its data and hyper-parameters) end to end — resolved recipe written to
//! `<out>/<name>/` first, training with a progress bar and `metrics.jsonl`, checkpoints,
//! evaluation of the trained model and its WiSE-FT interpolations into `results.jsonl`.

use std::path::PathBuf;

use anyhow::Context;
use robustft::experiment::{Event, Experiment, RunSettings};
use robustft::recipe::Recipe;

use super::print_rows;
use crate::progress;

/// Prints one row per (model, split) — top-1, macro-F1, worst-group accuracy, ECE — or JSON
/// lines with --json.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The recipe (TOML; see recipes/ for every method on ShiftWorld and the paper recipes).
    #[arg(long, value_name = "FILE.toml")]
    recipe: PathBuf,

    /// Override a recipe value, e.g. --set train.lr=3e-5 --set method.name=flyp (dotted keys,
    /// TOML values; repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,

    /// The architecture facts the recipe's model weights cannot tell (attention heads,
    /// activation): an open_clip_config.json, an HF config.json, or a preset name (ViT-B-32,
    /// ViT-B-16, ViT-L-14, ViT-L-14-336). The resolved recipe keeps it as `model_config` (the
    /// same as --set model_config=...). Without either, the config beside the weights is read,
    /// else OpenAI's conventions apply (a note says so; a width they cannot split is refused).
    #[arg(long, value_name = "FILE|PRESET", value_parser = super::parse_config_spec)]
    config: Option<String>,

    /// Runs are written to OUT/<recipe name>/ (recipe.toml, metrics.jsonl, checkpoint/,
    /// model/, results.jsonl).
    #[arg(long, default_value = "runs", value_name = "DIR")]
    out: PathBuf,

    /// Continue the run's latest checkpoint (same recipe and overrides as the interrupted run).
    #[arg(long, conflicts_with = "force")]
    resume: bool,

    /// Start over in OUT/<recipe name>/ when it holds an earlier run (finished or interrupted),
    /// deleting that run's files; without it such a directory is refused.
    #[arg(long)]
    force: bool,

    /// Where to compute: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: robustft::device::DeviceChoice,

    /// Print the result rows as JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut recipe = Recipe::load(&args.recipe, &args.overrides)?;
    if let Some(config) = &args.config {
        recipe.model_config = Some(config.clone());
    }
    let device = args.device.open().with_context(|| format!("cannot open device {:?}", args.device))?;
    let name = recipe.name.clone();
    let experiment =
        Experiment::resolve(recipe, &device).with_context(|| format!("recipe {}", args.recipe.display()))?;
    for notice in &experiment.model_notices {
        eprintln!("note: {notice}");
    }
    let settings =
        RunSettings { out: args.out.clone(), resume: args.resume, force: args.force, stop_after: None };
    let rows = run_with_progress(&experiment, &settings)
        .with_context(|| format!("run {}", args.out.join(&name).display()))?;
    print_rows(&rows, args.json)?;
    eprintln!("results in {}", args.out.join(&name).join("results.jsonl").display());
    Ok(())
}

/// Runs an experiment with stage messages (plain lines when stderr is not a terminal) and a
/// step progress bar on stderr.
pub fn run_with_progress(
    experiment: &Experiment,
    settings: &RunSettings,
) -> robustft::Result<Vec<robustft::eval::evaluate::ResultRow>> {
    let bar = progress::bar(None, "steps");
    let label = experiment.recipe.name.clone();
    let mut shown = false;
    let rows = experiment.run(settings, &mut |event| match event {
        Event::Stage(stage) => progress::print_line(&bar, &format!("[{label}] {stage}")),
        Event::Step(report) => {
            if !shown {
                progress::show(&bar, report.total_steps);
                shown = true;
            }
            bar.set_position(report.step);
            bar.set_message(format!(
                "epoch {}  loss {:.3}  lr {:.2e}  {:.0} img/s",
                report.epoch, report.loss, report.lr, report.images_per_s
            ));
        }
    });
    bar.finish_and_clear();
    rows
}
