//! The demo: the headline comparison on ShiftWorld with the bundled model — zero-shot, FT,
//! LP-FT, FLYP and DRM, each with its WiSE-FT curve, on the `spurious` and `domains` suites —
//! run from the committed recipes in `recipes/shiftworld/` (embedded here, so the demo needs no
//! files), summarised as a table and an ID-vs-OOD report.

use crate::error::Result;
use crate::eval::evaluate::ResultRow;
use crate::eval::report::{Curve, Point, Report, SuitePlot, TableRow};
use crate::recipe::Recipe;

/// The suites the demo runs on.
pub const DEMO_SUITES: [&str; 2] = ["spurious", "domains"];

/// The demo's methods and their recipes.
pub const DEMO_METHODS: [(&str, &str); 5] = [
    ("zeroshot", include_str!("../../../recipes/shiftworld/zeroshot.toml")),
    ("ft", include_str!("../../../recipes/shiftworld/ft.toml")),
    ("lp_ft", include_str!("../../../recipes/shiftworld/lp_ft.toml")),
    ("flyp", include_str!("../../../recipes/shiftworld/flyp.toml")),
    ("drm", include_str!("../../../recipes/shiftworld/drm.toml")),
];

/// The demo's recipes for `seed`; `quick` trains one epoch and evaluates one WiSE-FT point.
pub fn demo_recipes(seed: u64, quick: bool) -> Result<Vec<Recipe>> {
    let mut recipes = Vec::new();
    for suite in DEMO_SUITES {
        for (method, text) in DEMO_METHODS {
            let mut sets =
                vec![format!("name={suite}-{method}"), format!("data.suite={suite}"), format!("seed={seed}")];
            if quick {
                sets.push("train.epochs=1".into());
                if method != "zeroshot" {
                    sets.push("eval.wiseft=[0.5]".into());
                }
            }
            recipes.push(Recipe::parse(text, &format!("recipes/shiftworld/{method}.toml"), &sets)?);
        }
    }
    Ok(recipes)
}

/// The metric a suite's plot and table lead with: top-1 on `spurious`, macro-F1 otherwise
/// (`domains` is class-imbalanced; iWildCam's convention).
fn lead_metric(suite: &str) -> &'static str {
    if suite == "spurious" {
        "top1"
    } else {
        "f1_macro"
    }
}

fn metric(row: &ResultRow, name: &str) -> Option<f64> {
    let m = &row.metrics;
    match name {
        "top1" => Some(m.top1),
        "f1_macro" => Some(m.f1_macro),
        "worst_group_acc" => m.worst_group_acc,
        _ => None,
    }
}

/// The mean of `name` over the rows of splits matching `is_split`.
fn mean_over(rows: &[&ResultRow], name: &str, is_split: impl Fn(&str) -> bool) -> Option<f64> {
    let values: Vec<f64> =
        rows.iter().filter(|r| is_split(&r.split)).filter_map(|r| metric(r, name)).collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// (ID, OOD) of the lead metric: `id_test`, and the mean over the `ood_*` splits.
fn id_ood(rows: &[&ResultRow], name: &str) -> Option<(f64, f64)> {
    Some((mean_over(rows, name, |s| s == "id_test")?, mean_over(rows, name, |s| s.starts_with("ood_"))?))
}

/// The report of the demo's result rows (each row's dataset is `shiftworld/<suite>`).
pub fn summarize(rows: &[ResultRow], command: &str) -> Report {
    let mut table = Vec::new();
    let mut plots = Vec::new();
    for suite in DEMO_SUITES {
        let dataset = format!("shiftworld/{suite}");
        let lead = lead_metric(suite);
        let mut plot = SuitePlot {
            suite: suite.to_string(),
            id_metric: format!("ID {lead}"),
            ood_metric: format!("OOD {lead}"),
            points: Vec::new(),
            curves: Vec::new(),
        };
        for (method, _) in DEMO_METHODS {
            let of = |alpha: Option<f64>| -> Vec<&ResultRow> {
                rows.iter()
                    .filter(|r| r.dataset == dataset && r.method == method && r.wiseft_alpha == alpha)
                    .collect()
            };
            let own = of(None);
            if own.is_empty() {
                continue;
            }
            let mut alphas: Vec<f64> = rows
                .iter()
                .filter(|r| r.dataset == dataset && r.method == method)
                .filter_map(|r| r.wiseft_alpha)
                .collect();
            alphas.sort_by(f64::total_cmp);
            alphas.dedup();
            table.push(table_row(suite, method, &own));
            if let Some(&mid) = alphas.iter().find(|a| **a == 0.5) {
                table.push(table_row(suite, &format!("{method} + WiSE-FT 0.5"), &of(Some(mid))));
            }
            if let Some((id, ood)) = id_ood(&own, lead) {
                plot.points.push(Point { method: method.to_string(), id, ood });
                let mut points: Vec<(f64, f64, f64)> = alphas
                    .iter()
                    .filter_map(|&a| id_ood(&of(Some(a)), lead).map(|(i, o)| (a, i, o)))
                    .collect();
                if !points.is_empty() {
                    points.push((1.0, id, ood));
                    plot.curves.push(Curve { method: method.to_string(), points });
                }
            }
        }
        plots.push(plot);
    }
    Report {
        title: "robustft demo: robust fine-tuning on ShiftWorld".into(),
        command: command.into(),
        table,
        plots,
    }
}

fn table_row(suite: &str, method: &str, rows: &[&ResultRow]) -> TableRow {
    let cell = |label: &str, name: &str, ood: bool| {
        let value = if ood {
            mean_over(rows, name, |s| s.starts_with("ood_"))
        } else {
            mean_over(rows, name, |s| s == "id_test")
        };
        (label.to_string(), value)
    };
    TableRow {
        suite: suite.to_string(),
        method: method.to_string(),
        cells: vec![
            cell("ID top-1", "top1", false),
            cell("OOD top-1", "top1", true),
            cell("ID macro-F1", "f1_macro", false),
            cell("OOD macro-F1", "f1_macro", true),
            cell("OOD worst-group", "worst_group_acc", true),
        ],
    }
}
