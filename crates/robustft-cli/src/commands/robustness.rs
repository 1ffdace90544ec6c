//! `robustft robustness`: clean and robust top-1 of a model (or a trained run's final
//! predictor: its head, FLYP's rebuilt head, DRM's mixture, VRF refitted on the run's recipe)
//! on every split of a ShiftWorld
//! suite or a dataset on disk, under attacks (PGD ℓ∞/ℓ2/ℓ1, APGD-CE/DLR), common corruptions
//! and the spatial grid (`robustft::perturb`). One row per (split, threat, ε).

use std::path::{Path, PathBuf};

use anyhow::Context;
use robustft::eval::robustness::{
    evaluate_perturbations, PerturbationSpec, RobustnessProgress, DEFAULT_STEPS,
};
use robustft::experiment::Experiment;
use robustft::perturb::threat::Threat;
use robustft::perturb::{format_budget, parse_budget, parse_budgets};
use robustft::recipe::Recipe;
use robustft::train::run_dir::RunDir;

use super::eval::{prepare, EvalTarget};
use super::{check_write_targets, print_rows};
use crate::progress;

/// Prints one row per split, threat and budget: the clean and the robust top-1 (robust: on
/// the perturbed images; the other metrics are the perturbed predictions').
#[derive(clap::Args, Debug)]
pub struct RobustnessArgs {
    #[command(flatten)]
    target: EvalTarget,

    /// A finished run directory of `robustft train` (`<out>/<recipe>`): evaluates its final
    /// model as the run predicts (instead of --model); a VRF run is refitted on its recipe's
    /// splits and evaluated on the recipe's data.
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,

    /// Threats, comma-separated: linf, l2, l1 (PGD); apgd-ce, apgd-dlr (ℓ∞), apgd-ce-l2,
    /// apgd-dlr-l2; spatial (worst of 45 rotations and shifts); corruption:<name> (gaussian_noise,
    /// shot_noise, impulse_noise, defocus_blur, gaussian_blur, contrast, brightness,
    /// jpeg_compression, pixelate); corruptions (all nine).
    #[arg(long, default_value = "linf", value_name = "THREATS", value_parser = parse_threats)]
    threat: String,

    /// Budgets, comma-separated numbers or fractions (0,1/255,2/255,4/255): the pixel-space
    /// radius of an attack (images in [0, 1]), the largest rotation in degrees for spatial,
    /// the severity (1–5) of a corruption. Default: ℓ∞ 2/255, ℓ2 0.25, ℓ1 4, spatial 30,
    /// corruptions 1,2,3,4,5.
    #[arg(long, value_name = "EPS", value_parser = parse_budget_list, allow_hyphen_values = true)]
    eps: Option<String>,

    /// Gradient steps of an attack (at least 1).
    #[arg(long, default_value_t = DEFAULT_STEPS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,

    /// PGD's step size, a number or a fraction (default 2.5·ε/steps).
    #[arg(long, value_name = "ALPHA", value_parser = parse_step_size)]
    step_size: Option<String>,

    /// Start PGD at the clean image instead of a random point of the ball (APGD always starts
    /// at a random point, as published).
    #[arg(long)]
    no_random_start: bool,

    /// Evaluate only the first N examples of each split.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,

    /// Seeds the attacks' random starts and the corruptions' noise.
    #[arg(long, default_value_t = 0)]
    attack_seed: u64,

    /// Print the rows as JSON lines instead of a table.
    #[arg(long)]
    json: bool,

    /// Append the rows to this results.jsonl file.
    #[arg(long, value_name = "FILE")]
    results: Option<PathBuf>,
}

fn parse_threats(text: &str) -> Result<String, String> {
    Threat::parse_list(text).map(|_| text.to_string())
}

fn parse_step_size(text: &str) -> Result<String, String> {
    parse_budget(text).map(|_| text.to_string())
}

fn parse_budget_list(text: &str) -> Result<String, String> {
    parse_budgets(text).map(|_| text.to_string())
}

pub fn run(mut args: RobustnessArgs) -> anyhow::Result<()> {
    check_write_targets(&[args.results.as_deref()])?;
    if let Some(dir) = &args.run {
        let model = run_model(dir)?;
        if let Some(recipe) = predicts_through_vrf(dir)? {
            return vrf_run(&args, recipe, &model);
        }
        args.target.model.model = model.display().to_string();
    }
    let spec = spec_of(&args);
    spec.expand(args.attack_seed).map_err(|e| anyhow::anyhow!("{e}"))?;
    let prepared = prepare(&args.target)?;
    let context = robustft::eval::evaluate::RowContext { seed: args.attack_seed, ..prepared.context };
    let bar = progress::bar(None, "images");
    let mut progress = |report: RobustnessProgress| show_progress(&bar, report);
    let rows = evaluate_perturbations(
        &prepared.benchmark,
        &prepared.model,
        &prepared.predictor,
        &[spec],
        &context,
        &mut progress,
    )?;
    bar.finish_and_clear();
    write_rows(&args, &rows)
}

/// The perturbation spec the arguments name.
fn spec_of(args: &RobustnessArgs) -> PerturbationSpec {
    PerturbationSpec {
        threat: args.threat.clone(),
        eps: args.eps.clone(),
        steps: args.steps as usize,
        step_size: args.step_size.clone(),
        random_start: !args.no_random_start,
        limit: args.limit.map(|n| n as usize),
    }
}

/// A VRF run: its recipe resolved again, VRF refitted on the recipe's splits, evaluated on the
/// recipe's data (which --suite and --dataset cannot replace).
fn vrf_run(args: &RobustnessArgs, recipe: Recipe, model: &Path) -> anyhow::Result<()> {
    eprintln!(
        "note: {} predicts through VRF, refitted on its recipe's training and validation splits; it is \
         evaluated on the recipe's data, not on --suite/--dataset",
        args.run.as_deref().unwrap_or(model).display()
    );
    let device = args.target.model.device.open()?;
    let experiment = Experiment::resolve(recipe, &device)?;
    let bar = progress::bar(None, "images");
    let rows =
        experiment.perturbed_rows_of_run(model, &[spec_of(args)], args.attack_seed, &mut |report| {
            show_progress(&bar, report)
        })?;
    bar.finish_and_clear();
    write_rows(args, &rows)
}

/// Draws one report of the evaluation on `bar`.
fn show_progress(bar: &indicatif::ProgressBar, report: RobustnessProgress) {
    match report {
        RobustnessProgress::Stage(line) => progress::print_line(bar, &line),
        RobustnessProgress::Start { what, examples } => {
            progress::print_line(bar, &what);
            bar.reset();
            bar.set_message(what);
            progress::show(bar, examples as u64);
        }
        RobustnessProgress::Images(n) => bar.inc(n as u64),
    }
}

/// Appends the rows to --results and prints them.
fn write_rows(args: &RobustnessArgs, rows: &[robustft::eval::evaluate::ResultRow]) -> anyhow::Result<()> {
    if let Some(path) = &args.results {
        robustft::eval::evaluate::append_rows(path, rows)?;
    }
    if args.json {
        return print_rows(rows, true);
    }
    print_table(rows);
    Ok(())
}

/// The final model of the finished run `dir`, refusing a directory that is no such run.
fn run_model(dir: &Path) -> anyhow::Result<PathBuf> {
    let run = RunDir::new(dir);
    anyhow::ensure!(
        run.recipe().is_file(),
        "{} is not a run directory of `robustft train` (it has no recipe.toml)",
        dir.display()
    );
    let model = run.model();
    anyhow::ensure!(
        model.join("config.json").is_file(),
        "{} holds no finished run: {} is missing (was the run interrupted? `robustft train --resume` finishes it)",
        dir.display(),
        model.display()
    );
    Ok(model)
}

/// The run's recipe when the run in `dir` predicts through VRF (refitted on the run's data).
fn predicts_through_vrf(dir: &Path) -> anyhow::Result<Option<Recipe>> {
    let path = RunDir::new(dir).recipe();
    let recipe =
        Recipe::load(&path, &[]).with_context(|| format!("cannot read the run's {}", path.display()))?;
    Ok((recipe.eval.predictor == "vrf").then_some(recipe))
}

/// One line per row: split, threat, ε, steps, clean and robust top-1.
fn print_table(rows: &[robustft::eval::evaluate::ResultRow]) {
    println!(
        "{:<24} {:<28} {:>9} {:>5} {:>6} {:>6} {:>6}",
        "split", "threat", "eps", "steps", "clean", "robust", "n"
    );
    for row in rows {
        let Some(p) = &row.perturbation else { continue };
        println!(
            "{:<24} {:<28} {:>9} {:>5} {:>6.3} {:>6.3} {:>6}",
            row.split,
            p.threat,
            format_budget(p.eps),
            p.steps,
            p.clean_top1,
            p.robust_top1,
            row.metrics.n
        );
    }
}
