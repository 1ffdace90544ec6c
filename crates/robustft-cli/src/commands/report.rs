//! `robustft report`: the table and ID-vs-OOD report of existing `results.jsonl` files (runs
//! of `train`, `demo`, `eval` or `wiseft`), e.g. to gather runs made separately. ShiftWorld
//! suites and datasets on disk (manifest, WILDS, ImageNet roots) are reported alike: ID is the
//! `id_test` split, OOD the mean over the `ood_*` splits (WILDS' OOD `test` split counts as
//! one). Rows measured under a perturbation are kept out of that table and reported as robust
//! top-1 against ε on the ID split (`robustft::demo::summarize`).

use std::path::PathBuf;

use anyhow::Context;
use robustft::eval::evaluate::ResultRow;

use super::demo::write_summary;

/// The dataset prefix of ShiftWorld suites' rows; the summary keys every suite by it.
const SUITE_PREFIX: &str = "shiftworld/";

/// Prints a markdown table (mean ± sample std over seeds; robust top-1 per threat and ε in a
/// second one when rows were measured under perturbations) and writes OUT/results.jsonl (the
/// rows gathered) and OUT/report.html.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// results.jsonl files to gather.
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    results: Vec<PathBuf>,

    /// What to report (comma-separated): ShiftWorld suite names (`spurious`) or the `dataset`
    /// of other rows (a data root). [default: every suite and dataset in the rows]
    #[arg(long, value_delimiter = ',')]
    suites: Vec<String>,

    /// Where results.jsonl and report.html go.
    #[arg(long, default_value = "runs/report", value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for path in &args.results {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let row: ResultRow = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a result row", path.display(), number + 1))?;
            rows.push(row);
        }
    }
    let available = suites_of(&rows);
    let suites = match args.suites.is_empty() {
        true => available.clone(),
        false => args.suites.clone(),
    };
    if let Some(unknown) = suites.iter().find(|suite| !available.contains(suite)) {
        anyhow::bail!(
            "--suites {unknown}: no row of {} is about it (suites and datasets in the rows: {})",
            args.results.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            available.join(", ")
        );
    }
    write_summary(&rows, &summary_rows(&rows), &suites, &args.out)
}

/// The suite (or dataset) each row is about, in first-seen order.
fn suites_of(rows: &[ResultRow]) -> Vec<String> {
    let mut suites: Vec<String> = Vec::new();
    for row in rows {
        let suite = row.dataset.strip_prefix(SUITE_PREFIX).unwrap_or(&row.dataset).to_string();
        if !suites.contains(&suite) {
            suites.push(suite);
        }
    }
    suites
}

/// The rows as the summary reads them: every dataset keyed as a suite, a WILDS OOD `test`
/// split as `ood_test`.
fn summary_rows(rows: &[ResultRow]) -> Vec<ResultRow> {
    let as_suite = |row: &ResultRow| {
        let is_suite = row.dataset.starts_with(SUITE_PREFIX);
        let dataset = if is_suite { row.dataset.clone() } else { format!("{SUITE_PREFIX}{}", row.dataset) };
        let split = if !is_suite && row.split == "test" { "ood_test".to_string() } else { row.split.clone() };
        ResultRow { dataset, split, ..row.clone() }
    };
    rows.iter().map(as_suite).collect()
}
