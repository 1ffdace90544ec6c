//! `robustft demo`: the headline comparison with no arguments, no downloads and no GPU —
//! zero-shot, FT, LP-FT, FLYP and DRM (each with WiSE-FT) on ShiftWorld's `spurious` and
//! `domains` suites with the bundled model, from the committed recipes. Prints the table and
//! writes `OUT/results.jsonl` and `OUT/report.html` (table + ID-vs-OOD scatter per suite).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use robustft::demo::{demo_recipes, summarize};
use robustft::eval::report::markdown_table;
use robustft::experiment::{Experiment, RunSettings};

use super::train::run_with_progress;

/// Runs every demo recipe in turn (progress on stderr), then prints a markdown table of ID and
/// OOD metrics on stdout.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Seed of the ShiftWorld suites' worlds and of the training order.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// One training epoch and one WiSE-FT point (α = 0.5) per method: a smoke run (CI).
    #[arg(long)]
    quick: bool,

    /// Where the runs, results.jsonl and report.html go.
    #[arg(long, default_value = "runs/demo", value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let recipes = demo_recipes(args.seed, args.quick)?;
    let mut rows = Vec::new();
    for (k, recipe) in recipes.into_iter().enumerate() {
        eprintln!(
            "== [{}/10] {} ({:.1} min so far)",
            k + 1,
            recipe.name,
            started.elapsed().as_secs_f64() / 60.0
        );
        let name = recipe.name.clone();
        let experiment =
            Experiment::resolve(recipe, &Device::Cpu).with_context(|| format!("demo recipe {name}"))?;
        let settings = RunSettings { out: args.out.clone(), resume: false, stop_after: None };
        rows.extend(run_with_progress(&experiment, &settings).with_context(|| format!("demo run {name}"))?);
    }
    let lines: String =
        rows.iter().map(|r| serde_json::to_string(r).map(|s| s + "\n")).collect::<Result<_, _>>()?;
    std::fs::write(args.out.join("results.jsonl"), lines)
        .with_context(|| format!("cannot write {}", args.out.join("results.jsonl").display()))?;
    let command = format!("robustft demo --seed {}{}", args.seed, if args.quick { " --quick" } else { "" });
    let report = summarize(&rows, &command);
    report.write(&args.out.join("report.html"))?;
    println!("{}", markdown_table(&report.table));
    eprintln!(
        "wrote {} and {} in {:.1} min",
        args.out.join("results.jsonl").display(),
        args.out.join("report.html").display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}
