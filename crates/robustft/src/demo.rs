//! The demo and method comparisons: a matrix of recipes × ShiftWorld suites × seeds run with the
//! bundled model, summarised as a table (mean ± std over seeds) and an ID-vs-OOD report. The
//! demo's default recipes — zero-shot, FT, LP-FT, FLYP and DRM, each with its WiSE-FT curve —
//! are the committed `recipes/shiftworld/` files, embedded here so the demo needs no files.

use crate::error::{Error, Result};
use crate::eval::evaluate::ResultRow;
use crate::eval::report::{Curve, Point, Report, SuitePlot, TableRow};
use crate::recipe::Recipe;

/// The suites the demo runs on.
pub const DEMO_SUITES: [&str; 2] = ["spurious", "domains"];

/// A recipe text and where it came from.
pub struct RecipeText {
    pub source: String,
    pub text: String,
}

/// The demo's recipes: zero-shot, FT, LP-FT, FLYP, DRM.
pub fn demo_recipes() -> Vec<RecipeText> {
    [
        ("zeroshot", include_str!("../../../recipes/shiftworld/zeroshot.toml")),
        ("ft", include_str!("../../../recipes/shiftworld/ft.toml")),
        ("lp_ft", include_str!("../../../recipes/shiftworld/lp_ft.toml")),
        ("flyp", include_str!("../../../recipes/shiftworld/flyp.toml")),
        ("drm", include_str!("../../../recipes/shiftworld/drm.toml")),
    ]
    .into_iter()
    .map(|(name, text)| RecipeText { source: format!("recipes/shiftworld/{name}.toml"), text: text.into() })
    .collect()
}

/// One run of the matrix: the recipe as written (its name keys the table's rows) and the run.
#[derive(Debug)]
pub struct DemoRun {
    pub recipe_name: String,
    pub run: Recipe,
}

/// Every (suite, seed, recipe) run, named `<suite>-<recipe name>-s<seed>`; `quick` trains one
/// epoch and evaluates one WiSE-FT point.
pub fn matrix(recipes: &[RecipeText], suites: &[String], seeds: &[u64], quick: bool) -> Result<Vec<DemoRun>> {
    check_distinct(recipes)?;
    let mut runs = Vec::new();
    for suite in suites {
        for &seed in seeds {
            for recipe in recipes {
                let base = Recipe::parse(&recipe.text, &recipe.source, &[])?;
                let mut sets = vec![
                    format!("name={suite}-{}-s{seed}", base.name),
                    format!("data.suite={suite}"),
                    format!("seed={seed}"),
                ];
                if quick {
                    sets.push("train.epochs=1".into());
                    if !base.eval.wiseft.is_empty() {
                        sets.push("eval.wiseft=[0.5]".into());
                    }
                }
                let run = Recipe::parse(&recipe.text, &recipe.source, &sets)?;
                runs.push(DemoRun { recipe_name: base.name, run });
            }
        }
    }
    Ok(runs)
}

/// Refuses two recipes with the same name: their runs would share directories and their table
/// rows would merge. Two recipes of one method with distinct names compare side by side.
fn check_distinct(recipes: &[RecipeText]) -> Result<()> {
    let mut seen: Vec<(String, &str)> = Vec::new();
    for recipe in recipes {
        let name = Recipe::parse(&recipe.text, &recipe.source, &[])?.name;
        if let Some((_, other)) = seen.iter().find(|(n, _)| *n == name) {
            return Err(Error::Invalid {
                what: format!("demo recipes {other} and {}", recipe.source),
                reason: format!(
                    "both are named `{name}`, so their runs and table rows would be merged; give them \
                     distinct names"
                ),
            });
        }
        seen.push((name, &recipe.source));
    }
    Ok(())
}

/// What a table row shows for a row's recipe: its name, with the method label when they differ
/// (`drm_std (drm)`); rows of a single run (no recipe) show the method label.
pub fn row_label(row: &ResultRow) -> String {
    match &row.recipe {
        Some(name) if *name != row.method => format!("{name} ({})", row.method),
        _ => row.method.clone(),
    }
}

/// The metric a suite's plot leads with: top-1 on `spurious`, macro-F1 otherwise (`domains` is
/// class-imbalanced; iWildCam's convention).
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

/// Mean and sample standard deviation (ddof 1, as WILDS and most papers report over seeds; 0
/// for a single value).
fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let squares = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>();
    Some((mean, (squares / (n - 1.0).max(1.0)).sqrt()))
}

/// One seed's value of `name`: `id_test`, or the mean over the `ood_*` splits.
fn per_seed(rows: &[&ResultRow], name: &str, ood: bool) -> Vec<f64> {
    let mut seeds: Vec<u64> = rows.iter().map(|r| r.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    seeds
        .iter()
        .filter_map(|&seed| {
            let values: Vec<f64> = rows
                .iter()
                .filter(|r| r.seed == seed)
                .filter(|r| if ood { r.split.starts_with("ood_") } else { r.split == "id_test" })
                .filter_map(|r| metric(r, name))
                .collect();
            mean_std(&values).map(|(mean, _)| mean)
        })
        .collect()
}

/// The report of result rows from [`matrix`] runs (each row's dataset is `shiftworld/<suite>`),
/// one table row per recipe ([`row_label`]), in first-seen order.
pub fn summarize(rows: &[ResultRow], suites: &[String], command: &str) -> Report {
    let labels: Vec<String> = rows.iter().map(row_label).collect();
    let mut methods: Vec<&str> = Vec::new();
    for label in &labels {
        if !methods.contains(&label.as_str()) {
            methods.push(label);
        }
    }
    let labelled: Vec<(&str, &ResultRow)> = labels.iter().map(String::as_str).zip(rows).collect();
    let mut table = Vec::new();
    let mut plots = Vec::new();
    for suite in suites {
        let dataset = format!("shiftworld/{suite}");
        let lead = lead_metric(suite);
        let mut plot = SuitePlot {
            suite: suite.clone(),
            id_metric: format!("ID {lead}"),
            ood_metric: format!("OOD {lead}"),
            points: Vec::new(),
            curves: Vec::new(),
        };
        for method in &methods {
            let of = |alpha: Option<f64>| -> Vec<&ResultRow> {
                labelled
                    .iter()
                    .filter(|(label, r)| r.dataset == dataset && label == method && r.wiseft_alpha == alpha)
                    .map(|(_, r)| *r)
                    .collect()
            };
            let own = of(None);
            if own.is_empty() {
                continue;
            }
            let mut alphas: Vec<f64> = labelled
                .iter()
                .filter(|(label, r)| r.dataset == dataset && label == method)
                .filter_map(|(_, r)| r.wiseft_alpha)
                .collect();
            alphas.sort_by(f64::total_cmp);
            alphas.dedup();
            table.push(table_row(suite, method, &own));
            if alphas.contains(&0.5) {
                table.push(table_row(suite, &format!("{method} + WiSE-FT 0.5"), &of(Some(0.5))));
            }
            let point = |rows: &[&ResultRow]| -> Option<(f64, f64)> {
                Some((mean_std(&per_seed(rows, lead, false))?.0, mean_std(&per_seed(rows, lead, true))?.0))
            };
            if let Some((id, ood)) = point(&own) {
                plot.points.push(Point { method: method.to_string(), id, ood });
                let mut curve: Vec<(f64, f64, f64)> =
                    alphas.iter().filter_map(|&a| point(&of(Some(a))).map(|(i, o)| (a, i, o))).collect();
                if !curve.is_empty() {
                    curve.push((1.0, id, ood));
                    plot.curves.push(Curve { method: method.to_string(), points: curve });
                }
            }
        }
        plots.push(plot);
    }
    Report {
        title: "robustft: robust fine-tuning on ShiftWorld".into(),
        command: command.into(),
        table,
        plots,
    }
}

/// ID and OOD cells of one method (mean over seeds, with the std when there are several).
fn table_row(suite: &str, method: &str, rows: &[&ResultRow]) -> TableRow {
    let columns = [
        ("ID top-1", "top1", false),
        ("OOD top-1", "top1", true),
        ("ID macro-F1", "f1_macro", false),
        ("OOD macro-F1", "f1_macro", true),
        ("OOD worst-group", "worst_group_acc", true),
    ];
    let (mut cells, mut spread) = (Vec::new(), Vec::new());
    for (label, name, ood) in columns {
        let values = per_seed(rows, name, ood);
        let stats = mean_std(&values);
        cells.push((label.to_string(), stats.map(|s| s.0)));
        if let (Some((_, std)), true) = (stats, values.len() > 1) {
            spread.push((label.to_string(), std));
        }
    }
    TableRow { suite: suite.to_string(), method: method.to_string(), cells, spread }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_recipes_make_ten_runs_with_distinct_names() {
        let runs = matrix(&demo_recipes(), &["spurious".into(), "domains".into()], &[7], true).unwrap();
        let mut names: Vec<&str> = runs.iter().map(|r| r.run.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 10);
        assert!(runs.iter().all(|r| r.run.seed == 7 && r.run.train.epochs == 1));
        assert!(runs.iter().any(|r| r.recipe_name == "lp_ft" && r.run.name == "spurious-lp_ft-s7"));
    }

    fn ft_renamed(name: &str) -> (RecipeText, RecipeText) {
        let ft = demo_recipes().into_iter().find(|r| r.source.ends_with("/ft.toml")).unwrap();
        let renamed = RecipeText {
            source: format!("{name}.toml"),
            text: ft.text.replacen("name = \"ft\"", &format!("name = \"{name}\""), 1),
        };
        (ft, renamed)
    }

    #[test]
    fn recipes_of_one_name_are_refused_naming_both_and_of_one_method_compared() {
        let (ft, same) = ft_renamed("ft");
        let err = matrix(&[ft, same], &["spurious".into()], &[0], true).unwrap_err().to_string();
        assert!(err.contains("recipes/shiftworld/ft.toml and ft.toml"), "{err}");
        assert!(err.contains("`ft`"), "{err}");
        let (ft, other) = ft_renamed("ft_lr3e-5");
        assert_ne!(other.text, ft.text);
        assert_eq!(matrix(&[ft, other], &["spurious".into()], &[0], true).unwrap().len(), 2);
    }

    #[test]
    fn table_rows_are_keyed_by_recipe_name_and_show_the_method() {
        let row = |recipe: Option<&str>, top1: f64| {
            crate::eval::evaluate::test_row(recipe, None, "id_test", 0, top1)
        };
        let rows = [row(Some("drm"), 0.5), row(Some("drm_std"), 0.75), row(None, 0.25)];
        let report = summarize(&rows, &["spurious".into()], "test");
        let methods: Vec<&str> = report.table.iter().map(|r| r.method.as_str()).collect();
        assert_eq!(methods, ["drm", "drm_std (drm)"]);
        assert_eq!(report.table[1].cells[0].1, Some(0.75));
    }

    #[test]
    fn mean_and_sample_std() {
        // NumPy: np.std([0.5, 0.7], ddof=1) == 0.14142135623730948
        assert_eq!(mean_std(&[0.5, 0.7]), Some((0.6, 0.14142135623730948)));
        assert_eq!(mean_std(&[0.25]), Some((0.25, 0.0)));
        assert_eq!(mean_std(&[]), None);
    }
}
