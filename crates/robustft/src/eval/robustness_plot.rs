//! The robustness part of the report: robust top-1 against the perturbation budget, one SVG
//! plot per (suite, threat) with one line per method — the accuracy-vs-ε curves of RobustBench
//! (Croce et al., 2021) and of Heuillet et al. (arXiv 2508.14079) — and a table of robust top-1
//! per (method, threat, ε), mean ± sample std over seeds. The x axis is the pixel-space budget
//! ε, or the severity for a corruption (`threat` = `corruption:<name>`, `crate::perturb`).
//!
//! Drawn with `plotters`' SVG backend like the ID-vs-OOD scatter ([`super::report`]); the same
//! input gives the same bytes. Accuracies are shown as percentages with one decimal.

use std::fmt::Write as _;

use plotters::prelude::*;

use super::report::{color, escape, markdown_escape, SPREAD_NOTE};
use crate::error::{Error, Result};

/// The prefix of a corruption's threat name; its budget is a severity.
pub const CORRUPTION_PREFIX: &str = "corruption:";

/// One method's robust top-1 (a fraction, mean over seeds) at each budget: `(eps, top1)`.
#[derive(Clone, Debug, PartialEq)]
pub struct RobustCurve {
    pub method: String,
    pub points: Vec<(f64, f64)>,
}

/// The robust-accuracy-vs-budget plot of one threat on one suite's `split`.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreatPlot {
    pub suite: String,
    pub threat: String,
    pub split: String,
    pub curves: Vec<RobustCurve>,
}

/// Robust top-1 of one (suite, method, threat, ε): the mean over seeds, and the sample std
/// (ddof 1) when there are several.
#[derive(Clone, Debug, PartialEq)]
pub struct RobustRow {
    pub suite: String,
    pub method: String,
    pub threat: String,
    pub eps: f64,
    pub robust_top1: f64,
    pub std: Option<f64>,
}

/// The plots and the table (empty when no row was perturbed).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Robustness {
    pub plots: Vec<ThreatPlot>,
    pub table: Vec<RobustRow>,
}

const PLOT_SIZE: (u32, u32) = (560, 420);
/// Margin above the highest accuracy (a fraction) before rounding the y axis up.
const Y_PADDING: f64 = 0.02;
/// The highest corruption severity (ImageNet-C's scale, 1–5).
const MAX_SEVERITY: f64 = 5.0;

impl Robustness {
    /// The page's robustness section: nothing without perturbed rows.
    pub fn to_html(&self) -> Result<String> {
        let mut html = String::new();
        if self.table.is_empty() && self.plots.is_empty() {
            return Ok(html);
        }
        html.push_str("<h2>Robust top-1 (%)</h2>\n");
        html.push_str(&html_table(&self.table));
        for plot in &self.plots {
            let title = format!(
                "{}: robust top-1 vs {}, {}",
                plot.suite,
                budget_name(&plot.threat),
                threat_name(&plot.threat)
            );
            let _ = writeln!(html, "<h2>{}</h2>", escape(&title));
            html.push_str(&plot.to_svg()?);
        }
        Ok(html)
    }
}

/// A threat as the report names it: `ℓ∞`, `ℓ2`, `ℓ1`, `corruption: fog`, others as they are.
pub fn threat_name(threat: &str) -> String {
    match threat {
        "linf" => "ℓ∞".into(),
        "l2" => "ℓ2".into(),
        "l1" => "ℓ1".into(),
        other => match other.strip_prefix(CORRUPTION_PREFIX) {
            Some(name) => format!("corruption: {name}"),
            None => other.into(),
        },
    }
}

/// What a threat's budget is: a corruption's severity, else the pixel-space ε.
fn budget_name(threat: &str) -> &'static str {
    match threat.starts_with(CORRUPTION_PREFIX) {
        true => "severity",
        false => "ε",
    }
}

/// An axis tick: at most four significant decimals, trailing zeros dropped (`0.0157`, `3`).
pub fn budget_label(eps: f64) -> String {
    let text = format!("{eps:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl ThreatPlot {
    fn invalid(&self, reason: &str) -> Error {
        Error::Invalid {
            what: format!("robustness plot of {} on suite {}", self.threat, self.suite),
            reason: reason.into(),
        }
    }

    /// The x range (0 to the largest budget; to at least severity 5 for a corruption) and the y
    /// range in percent (0 to the highest accuracy plus a margin, rounded up to 10%).
    fn ranges(&self) -> Result<((f64, f64), (f64, f64))> {
        let points: Vec<(f64, f64)> = self.curves.iter().flat_map(|c| c.points.iter().copied()).collect();
        if points.is_empty() {
            return Err(self.invalid("has no points to plot"));
        }
        if let Some((_, bad)) = points.iter().find(|(_, top1)| !(0.0..=1.0).contains(top1)) {
            return Err(self.invalid(&format!("robust top-1 {bad} is not a fraction in [0, 1]")));
        }
        if let Some((bad, _)) = points.iter().find(|(eps, _)| !(eps.is_finite() && *eps >= 0.0)) {
            return Err(self.invalid(&format!("budget {bad} is not a finite number ≥ 0")));
        }
        let high = points.iter().map(|p| p.0).fold(0.0, f64::max);
        let top = points.iter().map(|p| p.1).fold(0.0, f64::max);
        let x_high = match (self.is_corruption(), high > 0.0) {
            (true, _) => high.max(MAX_SEVERITY),
            (false, true) => high,
            (false, false) => 1.0,
        };
        let y_high = (((top + Y_PADDING) * 10.0).ceil() * 10.0).min(100.0);
        Ok(((0.0, x_high), (0.0, y_high)))
    }

    fn is_corruption(&self) -> bool {
        self.threat.starts_with(CORRUPTION_PREFIX)
    }

    /// The plot as an `<svg>` element.
    fn to_svg(&self) -> Result<String> {
        let ranges = self.ranges()?;
        let mut svg = String::new();
        self.draw(&mut svg, ranges).map_err(|e| self.invalid(&e.to_string()))?;
        Ok(svg)
    }

    fn draw(
        &self,
        svg: &mut String,
        ((x_low, x_high), (y_low, y_high)): ((f64, f64), (f64, f64)),
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(x_low..x_high, y_low..y_high)?;
        let budget = |value: &f64| budget_label(*value);
        // Severities are whole numbers: one tick each.
        let x_ticks = if self.is_corruption() { x_high as usize + 1 } else { 10 };
        chart
            .configure_mesh()
            .max_light_lines(1)
            .x_labels(x_ticks)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .x_label_formatter(&budget)
            .y_label_formatter(&|value: &f64| format!("{value:.0}"))
            .x_desc(format!("{} ({})", budget_name(&self.threat), threat_name(&self.threat)))
            .y_desc(format!("robust top-1 on {} (%)", self.split))
            .draw()?;
        for (index, curve) in self.curves.iter().enumerate() {
            let color = color(index);
            let mut points: Vec<(f64, f64)> =
                curve.points.iter().map(|&(eps, top1)| (eps, top1 * 100.0)).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(curve.method.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 15))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// A row's robust top-1 as a percentage with one decimal, `mean ± std` with a spread.
fn robust_cell(row: &RobustRow) -> String {
    match row.std {
        Some(std) => format!("{:.1} ± {:.1}", row.robust_top1 * 100.0, std * 100.0),
        None => format!("{:.1}", row.robust_top1 * 100.0),
    }
}

/// The headers of the robustness table; the last says when cells carry a spread.
fn headers(rows: &[RobustRow]) -> [String; 5] {
    let robust = match rows.iter().any(|row| row.std.is_some()) {
        true => format!("Robust top-1 {SPREAD_NOTE}"),
        false => "Robust top-1".to_string(),
    };
    ["Suite".into(), "Method".into(), "Threat".into(), "Budget".into(), robust]
}

/// The text cells of one row.
fn cells(row: &RobustRow) -> [String; 5] {
    [
        row.suite.clone(),
        row.method.clone(),
        threat_name(&row.threat),
        crate::perturb::format_budget(row.eps),
        robust_cell(row),
    ]
}

fn html_table(rows: &[RobustRow]) -> String {
    let mut html = String::from("<table>\n<tr>");
    headers(rows).iter().for_each(|h| html.push_str(&format!("<th>{}</th>", escape(h))));
    html.push_str("</tr>\n");
    for row in rows {
        let [suite, method, threat, budget, robust] = cells(row);
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{budget}</td><td class=\"num\">{robust}</td></tr>",
            escape(&suite),
            escape(&method),
            escape(&threat)
        );
    }
    html.push_str("</table>\n");
    html
}

/// The robustness table as GitHub markdown: Suite, Method, Threat, Budget (ε, or a
/// corruption's severity), robust top-1 in percent (`mean ± std` over seeds when there are
/// several); empty without rows.
pub fn robustness_markdown(rows: &[RobustRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let escaped = |cells: [String; 5]| cells.map(|c| markdown_escape(&c));
    let mut markdown = line(&escaped(headers(rows)));
    markdown.push_str("| --- | --- | --- | ---: | ---: |\n");
    rows.iter().for_each(|row| markdown.push_str(&line(&escaped(cells(row)))));
    markdown
}

/// The one-line-per-method digest of the robustness table: for each (suite, method) and each
/// threat family — a threat, or all corruptions together — the robust top-1 at the family's
/// middle budget (the lower middle of the budgets measured on that suite; the corruptions'
/// cell is the mean over the corruptions at that severity, without a spread). GitHub
/// markdown, one table per suite; empty without rows.
pub fn robustness_digest_markdown(rows: &[RobustRow]) -> String {
    let mut markdown = String::new();
    for suite in first_seen(rows.iter().map(|r| r.suite.clone())) {
        let rows: Vec<&RobustRow> = rows.iter().filter(|r| r.suite == suite).collect();
        let families = first_seen(rows.iter().map(|r| family(&r.threat)));
        let budgets: Vec<f64> = families.iter().map(|f| middle_budget(&rows, f)).collect();
        let mut header = vec!["Suite".to_string(), "Method".to_string()];
        header.extend(
            families
                .iter()
                .zip(&budgets)
                .map(|(f, &b)| format!("{} {}", family_name(f), crate::perturb::format_budget(b))),
        );
        let _ = writeln!(
            markdown,
            "| {} |",
            header.iter().map(|h| markdown_escape(h)).collect::<Vec<_>>().join(" | ")
        );
        let _ = writeln!(markdown, "| --- | --- |{}", " ---: |".repeat(families.len()));
        for method in first_seen(rows.iter().map(|r| r.method.clone())) {
            let mut cells = vec![markdown_escape(&suite), markdown_escape(&method)];
            for (f, &b) in families.iter().zip(&budgets) {
                let at: Vec<&&RobustRow> = rows
                    .iter()
                    .filter(|r| r.method == method && family(&r.threat) == *f && r.eps == b)
                    .collect();
                cells.push(match at.as_slice() {
                    [] => "–".into(),
                    [one] => robust_cell(one),
                    many => format!(
                        "{:.1}",
                        many.iter().map(|r| r.robust_top1).sum::<f64>() / many.len() as f64 * 100.0
                    ),
                });
            }
            let _ = writeln!(markdown, "| {} |", cells.join(" | "));
        }
        markdown.push('\n');
    }
    markdown
}

/// The digest's column of a threat: the threat itself, or `corruptions` for any corruption.
fn family(threat: &str) -> String {
    match threat.starts_with(CORRUPTION_PREFIX) {
        true => "corruptions".into(),
        false => threat.into(),
    }
}

fn family_name(family: &str) -> String {
    match family {
        "corruptions" => "corruptions (mean), severity".into(),
        other => threat_name(other),
    }
}

/// The lower middle of the budgets a family was measured at.
fn middle_budget(rows: &[&RobustRow], family_id: &str) -> f64 {
    let mut budgets: Vec<f64> =
        rows.iter().filter(|r| family(&r.threat) == family_id).map(|r| r.eps).collect();
    budgets.sort_by(f64::total_cmp);
    budgets.dedup();
    budgets[(budgets.len() - 1) / 2]
}

/// The distinct values in first-seen order.
pub(crate) fn first_seen(values: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for value in values {
        if !seen.contains(&value) {
            seen.push(value);
        }
    }
    seen
}
