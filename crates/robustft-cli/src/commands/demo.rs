//! `robustft demo`: the headline comparison with no arguments, no downloads and no GPU —
//! zero-shot, FT, LP-FT, FLYP and DRM (each with WiSE-FT) on ShiftWorld's `spurious` and
//! `domains` suites with the bundled model, from the committed recipes. Prints the table and
//! writes `OUT/results.jsonl` and `OUT/report.html` (table + ID-vs-OOD scatter per suite).
//! With `--recipes` and `--seeds` it compares any recipes over several seeds (mean ± std).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use robustft::demo::{demo_recipes, matrix, summarize, DemoRun, RecipeText, DEMO_SUITES};
use robustft::eval::evaluate::ResultRow;
use robustft::eval::report::markdown_table;
use robustft::eval::robustness_plot::{robustness_digest_markdown, robustness_markdown};
use robustft::experiment::{Experiment, RunSettings};

use super::train::run_with_progress;

/// Runs every recipe on every suite and seed in turn (progress on stderr), then prints a
/// markdown table of ID and OOD metrics on stdout (mean ± std over seeds).
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Seeds of the ShiftWorld worlds and of the training order (comma-separated; `--seed` is
    /// the same flag).
    #[arg(long, visible_alias = "seed", value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,

    /// Recipes to compare (default: the demo's zero-shot, FT, LP-FT, FLYP and DRM); each runs
    /// with its data.suite, seed and name replaced, and is a row of the table under its own
    /// name (two recipes of one method, e.g. two DRM normalisations, compare side by side).
    #[arg(long, value_name = "FILE.toml", num_args = 1..)]
    recipes: Vec<PathBuf>,

    /// ShiftWorld suites (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = DEMO_SUITES.map(String::from))]
    suites: Vec<String>,

    /// One training epoch and one WiSE-FT point (α = 0.5) per method: a smoke run (CI).
    #[arg(long)]
    quick: bool,

    /// Where the runs, results.jsonl and report.html go.
    #[arg(long, default_value = "runs/demo", value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let recipes = match args.recipes.is_empty() {
        true => demo_recipes(),
        false => args
            .recipes
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Ok(RecipeText { source: path.display().to_string(), text })
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let runs = matrix(&recipes, &args.suites, &args.seeds, args.quick)?;
    let total = runs.len();
    let mut rows = Vec::new();
    for (k, DemoRun { recipe_name, run }) in runs.into_iter().enumerate() {
        let minutes = started.elapsed().as_secs_f64() / 60.0;
        eprintln!("== [{}/{total}] {} ({minutes:.1} min so far)", k + 1, run.name);
        let name = run.name.clone();
        let experiment = Experiment::resolve(run, &Device::Cpu).with_context(|| format!("run {name}"))?;
        let settings = RunSettings { out: args.out.clone(), resume: false, force: true, stop_after: None };
        let run_rows = run_with_progress(&experiment, &settings).with_context(|| format!("run {name}"))?;
        rows.extend(run_rows.into_iter().map(|row| ResultRow { recipe: Some(recipe_name.clone()), ..row }));
    }
    write_summary(&rows, &rows, &args.suites, &args.out)?;
    eprintln!("in {:.1} min", started.elapsed().as_secs_f64() / 60.0);
    Ok(())
}

/// Writes `rows` to `out/results.jsonl` and the report of `summary_rows` (the same rows, keyed
/// as [`summarize`] reads them) to `out/report.html`, and prints the markdown table (and the
/// robust top-1 table when rows were measured under perturbations). The report is rendered
/// before anything is written, so a failure leaves neither file.
pub fn write_summary(
    rows: &[ResultRow],
    summary_rows: &[ResultRow],
    suites: &[String],
    out: &Path,
) -> anyhow::Result<()> {
    let report = summarize(summary_rows, suites, &command_line());
    report.to_html().context("cannot render the report")?;
    let results = out.join("results.jsonl");
    let lines: String =
        rows.iter().map(|r| serde_json::to_string(r).map(|s| s + "\n")).collect::<Result<_, _>>()?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(&results, lines).with_context(|| format!("cannot write {}", results.display()))?;
    report.write(&out.join("report.html"))?;
    println!("{}", markdown_table(&report.table));
    if !report.robustness.table.is_empty() {
        println!("{}", robustness_digest_markdown(&report.robustness.table));
        println!("{}", robustness_markdown(&report.robustness.table));
    }
    eprintln!("wrote {} and {}", results.display(), out.join("report.html").display());
    Ok(())
}

/// The command as typed (shown in the report).
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("robustft {}", args.join(" "))
}
