//! The demo and method comparisons: a matrix of recipes × ShiftWorld suites × seeds run with the
//! bundled model, summarised as a table (mean ± std over seeds) and an ID-vs-OOD report of the
//! clean rows, and — when rows were measured under input perturbations — robust top-1 against
//! the budget on the ID split, per threat and method. The demo's default recipes — zero-shot,
//! FT, LP-FT, FLYP and DRM, each with its WiSE-FT curve — are the committed
//! `recipes/shiftworld/` files, embedded here so the demo needs no files.

use crate::error::{Error, Result};
use crate::eval::evaluate::{Perturbation, ResultRow};
use crate::eval::report::{Curve, Point, Report, SuitePlot, TableRow};
use crate::eval::robustness_plot::{first_seen, RobustCurve, RobustRow, Robustness, ThreatPlot};
use crate::recipe::Recipe;

/// The split the ID columns, points and robustness plots are measured on.
const ID_SPLIT: &str = "id_test";

/// The WiSE-FT point the table shows beside each method.
const TABLE_ALPHA: f64 = 0.5;

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
                .filter(|r| if ood { r.split.starts_with("ood_") } else { r.split == ID_SPLIT })
                .filter_map(|r| metric(r, name))
                .collect();
            mean_std(&values).map(|(mean, _)| mean)
        })
        .collect()
}

/// The report of result rows from [`matrix`] runs (each row's dataset is `shiftworld/<suite>`):
/// the clean rows' table and scatter, one table row per recipe ([`row_label`]) in first-seen
/// order, and the perturbed rows' robustness plots and table ([`robustness`]).
pub fn summarize(rows: &[ResultRow], suites: &[String], command: &str) -> Report {
    let clean: Vec<ResultRow> = rows.iter().filter(|r| r.perturbation.is_none()).cloned().collect();
    Report { robustness: robustness(rows, suites), ..summarize_clean(&clean, suites, command) }
}

/// The table and ID-vs-OOD plots of clean rows.
fn summarize_clean(rows: &[ResultRow], suites: &[String], command: &str) -> Report {
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
            if alphas.contains(&TABLE_ALPHA) {
                table.push(table_row(suite, &wiseft_label(method), &of(Some(TABLE_ALPHA))));
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
        robustness: Robustness::default(),
    }
}

/// The table's name for a method's WiSE-FT point.
fn wiseft_label(method: &str) -> String {
    format!("{method} + WiSE-FT {TABLE_ALPHA}")
}

/// The series a perturbed row belongs to, as the table names it: the method, or its WiSE-FT
/// point; rows of other WiSE-FT points are left out.
fn series_label(row: &ResultRow) -> Option<String> {
    match row.wiseft_alpha {
        None => Some(row_label(row)),
        Some(alpha) if alpha == TABLE_ALPHA => Some(wiseft_label(&row_label(row))),
        Some(_) => None,
    }
}

/// A perturbed row as the robustness summary reads it.
struct Measured<'a> {
    series: String,
    dataset: &'a str,
    seed: u64,
    perturbation: &'a Perturbation,
}

/// Robust top-1 of the perturbed [`ID_SPLIT`] rows: per suite, one plot per threat (first-seen
/// order) with one line per series ([`series_label`]), and one table row per (series, threat,
/// ε), mean ± sample std over seeds.
fn robustness(rows: &[ResultRow], suites: &[String]) -> Robustness {
    let measured: Vec<Measured> = rows
        .iter()
        .filter(|r| r.split == ID_SPLIT)
        .filter_map(|r| {
            let (series, perturbation) = (series_label(r)?, r.perturbation.as_ref()?);
            Some(Measured { series, dataset: &r.dataset, seed: r.seed, perturbation })
        })
        .collect();
    let mut robustness = Robustness::default();
    for suite in suites {
        let dataset = format!("shiftworld/{suite}");
        let of_suite: Vec<&Measured> = measured.iter().filter(|m| m.dataset == dataset).collect();
        for threat in first_seen(of_suite.iter().map(|m| m.perturbation.threat.clone())) {
            let of_threat: Vec<&Measured> =
                of_suite.iter().copied().filter(|m| m.perturbation.threat == threat).collect();
            let (plot, table) = threat_summary(suite, &threat, &of_threat);
            robustness.plots.push(plot);
            robustness.table.extend(table);
        }
    }
    robustness
}

/// The plot and table rows of one threat on one suite.
fn threat_summary(suite: &str, threat: &str, measured: &[&Measured]) -> (ThreatPlot, Vec<RobustRow>) {
    let mut plot =
        ThreatPlot { suite: suite.into(), threat: threat.into(), split: ID_SPLIT.into(), curves: vec![] };
    let mut table = Vec::new();
    for method in first_seen(measured.iter().map(|m| m.series.clone())) {
        let of_method: Vec<&Measured> = measured.iter().copied().filter(|m| m.series == method).collect();
        let mut curve = RobustCurve { method: method.clone(), points: Vec::new() };
        for (eps, robust_top1, std) in budget_stats(&of_method) {
            let (suite, method, threat) = (suite.to_string(), method.clone(), threat.to_string());
            table.push(RobustRow { suite, method, threat, eps, robust_top1, std });
            curve.points.push((eps, robust_top1));
        }
        plot.curves.push(curve);
    }
    (plot, table)
}

/// Per budget, ascending: the mean robust top-1 over seeds, and its sample std when there are
/// several seeds.
fn budget_stats(measured: &[&Measured]) -> Vec<(f64, f64, Option<f64>)> {
    let mut budgets: Vec<f64> = measured.iter().map(|m| m.perturbation.eps).collect();
    budgets.sort_by(f64::total_cmp);
    budgets.dedup();
    budgets
        .into_iter()
        .filter_map(|eps| {
            let at = measured.iter().filter(|m| m.perturbation.eps == eps);
            let per_seed = seed_means(at.map(|m| (m.seed, m.perturbation.robust_top1)));
            let (mean, std) = mean_std(&per_seed)?;
            Some((eps, mean, (per_seed.len() > 1).then_some(std)))
        })
        .collect()
}

/// The mean value of each seed of `(seed, value)` pairs, in seed order.
fn seed_means(values: impl Iterator<Item = (u64, f64)>) -> Vec<f64> {
    let mut by_seed: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    values.for_each(|(seed, value)| by_seed.entry(seed).or_default().push(value));
    by_seed.values().filter_map(|v| mean_std(v).map(|(mean, _)| mean)).collect()
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
    use crate::eval::evaluate::{perturbed, test_row};

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
        let row = |recipe: Option<&str>, top1: f64| test_row(recipe, None, "id_test", 0, top1);
        let rows = [row(Some("drm"), 0.5), row(Some("drm_std"), 0.75), row(None, 0.25)];
        let report = summarize(&rows, &["spurious".into()], "test");
        let methods: Vec<&str> = report.table.iter().map(|r| r.method.as_str()).collect();
        assert_eq!(methods, ["drm", "drm_std (drm)"]);
        assert_eq!(report.table[1].cells[0].1, Some(0.75));
    }

    /// Clean `id_test` and `ood_x` rows of two recipes over two seeds, and their WiSE-FT 0.5.
    fn clean_rows() -> Vec<ResultRow> {
        let mut rows = Vec::new();
        for (recipe, base) in [("drm", 0.6), ("drm_std", 0.7)] {
            for seed in [0, 1] {
                for alpha in [None, Some(0.5)] {
                    rows.push(test_row(Some(recipe), alpha, "id_test", seed, base + 0.01 * seed as f64));
                    rows.push(test_row(Some(recipe), alpha, "ood_x", seed, base - 0.2));
                }
            }
        }
        rows
    }

    /// `drm` under ℓ∞ at ε = 1/255 over two seeds (0.4, 0.6) and at 2/255 on seed 0 (0.3),
    /// under fog at severity 3; its WiSE-FT 0.5 under ℓ∞; rows the plots leave out (an OOD split,
    /// another WiSE-FT point).
    fn perturbed_rows() -> Vec<ResultRow> {
        let at = |alpha, split: &str, seed, threat: &str, eps, robust| {
            perturbed(test_row(Some("drm"), alpha, split, seed, 0.6), threat, eps, robust)
        };
        vec![
            at(None, "id_test", 0, "linf", 1.0 / 255.0, 0.4),
            at(None, "id_test", 1, "linf", 1.0 / 255.0, 0.6),
            at(None, "id_test", 0, "linf", 2.0 / 255.0, 0.3),
            at(None, "id_test", 0, "corruption:fog", 3.0, 0.55),
            at(Some(0.5), "id_test", 0, "linf", 1.0 / 255.0, 0.45),
            at(None, "ood_x", 0, "linf", 1.0 / 255.0, 0.05),
            at(Some(0.25), "id_test", 0, "linf", 1.0 / 255.0, 0.05),
        ]
    }

    #[test]
    fn perturbed_rows_leave_the_clean_table_and_scatter_unchanged() {
        let suites = ["spurious".to_string()];
        let clean = summarize(&clean_rows(), &suites, "test");
        assert_eq!(clean.robustness, Robustness::default());
        let mut rows = clean_rows();
        rows.extend(perturbed_rows());
        let both = summarize(&rows, &suites, "test");
        assert_eq!((&both.table, &both.plots), (&clean.table, &clean.plots));
        assert!(!both.robustness.plots.is_empty());
    }

    #[test]
    fn robust_top1_is_averaged_over_seeds_per_method_threat_and_budget() {
        let robustness = robustness(&perturbed_rows(), &["spurious".to_string()]);
        let threats: Vec<&str> = robustness.plots.iter().map(|p| p.threat.as_str()).collect();
        assert_eq!(threats, ["linf", "corruption:fog"]);
        let linf = &robustness.plots[0];
        let methods: Vec<&str> = linf.curves.iter().map(|c| c.method.as_str()).collect();
        assert_eq!(methods, ["drm", "drm + WiSE-FT 0.5"]);
        assert_eq!(linf.curves[0].points, [(1.0 / 255.0, 0.5), (2.0 / 255.0, 0.3)]);
        assert_eq!(linf.curves[1].points, [(1.0 / 255.0, 0.45)]);
        assert_eq!(robustness.plots[1].curves[0].points, [(3.0, 0.55)]);
        let first = &robustness.table[0];
        assert_eq!((first.method.as_str(), first.threat.as_str(), first.robust_top1), ("drm", "linf", 0.5));
        // NumPy: np.std([0.4, 0.6], ddof=1) == 0.14142135623730948
        assert!((first.std.unwrap() - 0.14142135623730948).abs() < 1e-12, "{first:?}");
        assert_eq!(robustness.table[1].std, None, "one seed has no spread");
        assert_eq!(robustness.table.len(), 4);
    }

    #[test]
    fn the_report_page_draws_each_threat_with_every_series() {
        let mut rows = clean_rows();
        rows.extend(perturbed_rows());
        let html = summarize(&rows, &["spurious".to_string()], "test").to_html().unwrap();
        let robust = &html[html.find("<h2>Robust top-1 (%)</h2>").expect("the robustness section")..];
        assert_eq!(robust.matches("<svg").count(), 2, "one plot per threat");
        let linf = &robust
            [robust.find("robust top-1 vs ε, ℓ∞").unwrap()..robust.find("corruption: fog</h2>").unwrap()];
        assert!(linf.contains("\ndrm\n"), "{linf}");
        assert!(linf.contains("drm + WiSE-FT 0.5"), "{linf}");
        assert!(robust.contains("robust top-1 vs severity, corruption: fog"), "{robust}");
        assert!(robust.contains("<td class=\"num\">50.0 ± 14.1</td>"), "{robust}");
    }

    #[test]
    fn mean_and_sample_std() {
        // NumPy: np.std([0.5, 0.7], ddof=1) == 0.14142135623730948
        assert_eq!(mean_std(&[0.5, 0.7]), Some((0.6, 0.14142135623730948)));
        assert_eq!(mean_std(&[0.25]), Some((0.25, 0.0)));
        assert_eq!(mean_std(&[]), None);
    }
}
