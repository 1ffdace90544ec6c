//! `robustft sweep`: a recipe over a grid of settings, seeds and `--across` values, the
//! settings chosen on a validation split (`--select id_val:top1`, the mean over seeds and
//! `--across` values; WiSE-FT points are candidates too, and inference-only keys such as
//! `drm.beta` are evaluated without retraining), reported beside the candidate a test-selected
//! table would pick ([`robustft::sweep`]). Finished runs are skipped, so a killed sweep
//! continues where it stopped.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use robustft::eval::evaluate::ResultRow;
use robustft::eval::report::{markdown_table, Report, TableRow};
use robustft::sweep::{candidates, points, run_points, select, Axis, Candidate, Runner, Selection};

use super::train::run_with_progress;

/// Prints a markdown table of every candidate (validation score, ID test, mean OOD test) with
/// the selected one and the test oracle marked; writes OUT/results.jsonl, OUT/sweep.json and
/// OUT/report.html.
#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    /// The recipe to sweep.
    #[arg(long, value_name = "FILE.toml")]
    recipe: PathBuf,

    /// One axis of the grid: a dotted recipe key and its values (TOML), e.g.
    /// --grid drm.lambda=0.25,0.5,1 --grid drm.affinity='"center","standardize"'; repeatable
    /// (the grid is their product). Keys that only change how the trained model predicts
    /// (drm.beta, vrf.a, vrf.b) are evaluated on one trained model per point of the other
    /// axes, without retraining.
    #[arg(long, value_name = "KEY=V1,V2,...", required = true, value_parser = parse_axis)]
    grid: Vec<Axis>,

    /// Settings the selection averages over, like seeds, instead of choosing among them: a
    /// dotted recipe key and its values, e.g. --across data.suite='"spurious","domains"' for
    /// one setting that serves both suites; repeatable.
    #[arg(long, value_name = "KEY=V1,V2,...", value_parser = parse_axis)]
    across: Vec<Axis>,

    /// The validation split and metric that select the point: SPLIT:METRIC with METRIC one of
    /// top1, top5, f1_macro, recall_macro, worst_group_acc (never a test split: the point of
    /// the command).
    #[arg(long, default_value = "id_val:top1", value_name = "SPLIT:METRIC", value_parser = parse_selection)]
    select: Selection,

    /// Seeds of every point (comma-separated); the selection averages over them.
    #[arg(long, visible_alias = "seed", value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,

    /// Where the runs (OUT/<point>-s<seed>/), results.jsonl, sweep.json and report.html go.
    #[arg(long, default_value = "runs/sweep", value_name = "DIR")]
    out: PathBuf,

    /// Where to compute: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: robustft::device::DeviceChoice,
}

fn parse_axis(text: &str) -> Result<Axis, String> {
    Axis::parse(text).map_err(|e| e.to_string())
}

fn parse_selection(text: &str) -> Result<Selection, String> {
    Selection::parse(text).map_err(|e| e.to_string())
}

pub fn run(args: SweepArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let text = std::fs::read_to_string(&args.recipe)
        .with_context(|| format!("cannot read {}", args.recipe.display()))?;
    let source = args.recipe.display().to_string();
    let points = points(&text, &source, &args.grid, &args.across, &args.seeds)?;
    let device = args.device.open().with_context(|| format!("cannot open device {:?}", args.device))?;
    let mut runner = Runner {
        out: &args.out,
        device: &device,
        train: &mut |experiment, settings| run_with_progress(experiment, settings),
        say: &mut |line| {
            let minutes = started.elapsed().as_secs_f64() / 60.0;
            match line.starts_with("== ") {
                true => eprintln!("{line} ({minutes:.1} min so far)"),
                false => eprintln!("{line}"),
            }
        },
    };
    let rows = run_points(&points, &mut runner)?;
    let scored = candidates(&rows, &args.select)?;
    let (selected, oracle) = select(&scored);
    let mut datasets: Vec<&str> = Vec::new();
    for row in &rows {
        if !datasets.contains(&row.dataset.as_str()) {
            datasets.push(&row.dataset);
        }
    }
    let report = sweep_report(&scored, selected, oracle, &datasets.join("+"), &args);
    write_outputs(&rows, &scored, selected, oracle, &report, &args)?;
    println!("{}", markdown_table(&report.table));
    eprintln!("in {:.1} min", started.elapsed().as_secs_f64() / 60.0);
    Ok(())
}

/// One table row per candidate, best validation score first; the selected candidate and the
/// test oracle are marked.
fn sweep_report(
    scored: &[Candidate],
    selected: Option<&Candidate>,
    oracle: Option<&Candidate>,
    dataset: &str,
    args: &SweepArgs,
) -> Report {
    let mut order: Vec<&Candidate> = scored.iter().collect();
    order.sort_by(|a, b| b.validation.total_cmp(&a.validation));
    let metric = &args.select.metric;
    let table = order
        .into_iter()
        .map(|c| {
            let mut label = c.label();
            if Some(c) == selected {
                label.push_str(" ← selected on validation");
            }
            if Some(c) == oracle {
                label.push_str(" ← best on OOD test (oracle)");
            }
            TableRow {
                suite: dataset.to_string(),
                method: label,
                cells: vec![
                    (format!("{} {metric}", args.select.split), Some(c.validation)),
                    (format!("id_test {metric}"), c.id_test),
                    (format!("OOD {metric}"), c.ood_test),
                ],
                spread: Vec::new(),
            }
        })
        .collect();
    Report {
        title: format!("robustft sweep of {}", args.recipe.display()),
        command: format!("robustft {}", std::env::args().skip(1).collect::<Vec<_>>().join(" ")),
        table,
        plots: Vec::new(),
        robustness: Default::default(),
    }
}

/// Writes OUT/results.jsonl (every row, `recipe` naming its point), OUT/sweep.json (the
/// candidates, the selected one and the oracle) and OUT/report.html.
fn write_outputs(
    rows: &[ResultRow],
    scored: &[Candidate],
    selected: Option<&Candidate>,
    oracle: Option<&Candidate>,
    report: &Report,
    args: &SweepArgs,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let lines: String =
        rows.iter().map(|r| serde_json::to_string(r).map(|s| s + "\n")).collect::<Result<_, _>>()?;
    let results = args.out.join("results.jsonl");
    std::fs::write(&results, lines).with_context(|| format!("cannot write {}", results.display()))?;
    let summary = serde_json::json!({
        "select": format!("{}:{}", args.select.split, args.select.metric),
        "selected": selected.map(Candidate::label),
        "oracle_on_ood_test": oracle.map(Candidate::label),
        "candidates": scored.iter().map(|c| serde_json::json!({
            "candidate": c.label(), "point": c.point, "wiseft_alpha": c.alpha,
            "validation": c.validation, "id_test": c.id_test, "ood_test": c.ood_test,
        })).collect::<Vec<_>>(),
    });
    let path = args.out.join("sweep.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    report.write(&args.out.join("report.html"))?;
    eprintln!(
        "wrote {}, {} and {}",
        results.display(),
        path.display(),
        args.out.join("report.html").display()
    );
    Ok(())
}
