//! `robustft report`: the table and ID-vs-OOD report of existing `results.jsonl` files (runs
//! of `train` or `demo` on ShiftWorld suites), e.g. to gather runs made separately.

use std::path::PathBuf;

use anyhow::Context;
use robustft::demo::DEMO_SUITES;
use robustft::eval::evaluate::ResultRow;

use super::demo::write_summary;

/// Prints a markdown table (mean ± std over seeds) and writes OUT/results.jsonl (the rows
/// gathered) and OUT/report.html.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// results.jsonl files to gather.
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    results: Vec<PathBuf>,

    /// ShiftWorld suites to report (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = DEMO_SUITES.map(String::from))]
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
    write_summary(&rows, &args.suites, &args.out)
}
