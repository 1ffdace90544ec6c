//! The HTML report of robust fine-tuning results: a table of ID and OOD metrics per (suite,
//! method) and, per suite, an ID-vs-OOD scatter plot in the style of the WiSE-FT paper
//! (Wortsman et al., 2022, Fig. 1): one labelled point per method, each weight-space ensembling
//! α sweep as a polyline through its α points, and the y = x diagonal as a dashed reference.
//!
//! Plots are drawn with `plotters`' SVG backend and inlined, so the page needs no external file,
//! CSS or script. No font is needed: without the `ttf`/`ab_glyph` features plotters estimates
//! label sizes from the character count and the SVG backend writes text as `<text>` elements,
//! which the browser renders. The page is well-formed XML and the same input gives the same bytes.
//! All numbers are shown as percentages with one decimal. When result rows were measured under
//! input perturbations, the page ends with their robust-accuracy-vs-ε plots and table
//! ([`super::robustness`]).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::robustness_plot::Robustness;
use crate::error::{Error, Result};

/// One method's result on a suite; metrics are fractions in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub method: String,
    pub id: f64,
    pub ood: f64,
}

/// A sweep of one method over a mixing coefficient: `(alpha, id, ood)` per α.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    pub method: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// The ID-vs-OOD scatter plot of one suite.
#[derive(Clone, Debug, PartialEq)]
pub struct SuitePlot {
    pub suite: String,
    pub id_metric: String,
    pub ood_metric: String,
    pub points: Vec<Point>,
    pub curves: Vec<Curve>,
}

/// One row of the results table: named metric cells, `None` where a metric is missing, and
/// optionally each cell's sample standard deviation over seeds (ddof 1; shown as `mean ± std`,
/// the column header saying so).
#[derive(Clone, Debug, PartialEq)]
pub struct TableRow {
    pub suite: String,
    pub method: String,
    pub cells: Vec<(String, Option<f64>)>,
    pub spread: Vec<(String, f64)>,
}

/// The whole report; `command` is the command line that produced it, shown on the page.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub title: String,
    pub command: String,
    pub table: Vec<TableRow>,
    pub plots: Vec<SuitePlot>,
    /// Robust top-1 against the perturbation budget (empty without perturbed rows).
    pub robustness: Robustness,
}

const PLOT_SIZE: (u32, u32) = (560, 560);
/// Margin added around the data before rounding the axis range out to whole `AXIS_STEP`s.
const AXIS_PADDING: f64 = 0.02;
const AXIS_STEP: f64 = 0.05;
const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:0.3em 0.6em}\
td.num{text-align:right}code{background:#f4f4f4;padding:0.1em 0.3em}";

impl Report {
    /// Renders the self-contained page.
    pub fn to_html(&self) -> Result<String> {
        let mut html =
            String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n");
        let title = escape(&self.title);
        let _ = write!(
            html,
            "<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
        );
        let _ = writeln!(html, "<p>Produced by <code>{}</code></p>", escape(&self.command));
        html.push_str("<h2>Results (%)</h2>\n");
        html.push_str(&html_table(&self.table));
        for plot in &self.plots {
            let _ = writeln!(html, "<h2>{}: ID vs OOD</h2>", escape(&plot.suite));
            html.push_str(&plot.to_svg()?);
        }
        html.push_str(&self.robustness.to_html()?);
        html.push_str("</body>\n</html>\n");
        Ok(html)
    }

    /// Writes the page to `path` through a temporary file renamed into place, creating the parent
    /// directory if needed.
    pub fn write(&self, path: &Path) -> Result<()> {
        let html = self.to_html()?;
        let io = |action: &'static str, at: &Path| {
            let what = at.display().to_string();
            move |e: std::io::Error| Error::Invalid { what, reason: format!("{action}: {e}") }
        };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io("cannot create this directory", parent))?;
        let name = path.file_name().ok_or_else(|| Error::Invalid {
            what: format!("report path {}", path.display()),
            reason: "names no file".into(),
        })?;
        let tmp = parent.join(format!(".{}.tmp", name.to_string_lossy()));
        let written =
            std::fs::write(&tmp, html).map_err(io("cannot write this temporary file", &tmp)).and_then(|()| {
                std::fs::rename(&tmp, path).map_err(io("cannot move the finished report here", path))
            });
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

impl SuitePlot {
    /// The range `(low, high)` shared by both axes, as fractions: every ID and OOD value with a
    /// small margin, rounded out to multiples of 5% and kept within [0, 1].
    pub fn axis_range(&self) -> Result<(f64, f64)> {
        let values = self.values();
        if values.is_empty() {
            return Err(self.invalid("has no points to plot"));
        }
        if let Some(bad) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(self.invalid(&format!("metric {bad} is not a fraction in [0, 1]")));
        }
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let low = ((min - AXIS_PADDING) / AXIS_STEP).floor() * AXIS_STEP;
        let high = ((max + AXIS_PADDING) / AXIS_STEP).ceil() * AXIS_STEP;
        Ok((low.max(0.0), high.min(1.0)))
    }

    fn values(&self) -> Vec<f64> {
        let points = self.points.iter().flat_map(|p| [p.id, p.ood]);
        points
            .chain(self.curves.iter().flat_map(|c| c.points.iter().flat_map(|&(_, id, ood)| [id, ood])))
            .collect()
    }

    fn invalid(&self, reason: &str) -> Error {
        Error::Invalid { what: format!("scatter plot of suite {}", self.suite), reason: reason.into() }
    }

    /// The plot as an `<svg>` element; axes are in percent.
    fn to_svg(&self) -> Result<String> {
        let (low, high) = self.axis_range()?;
        let mut svg = String::new();
        self.draw(&mut svg, low * 100.0, high * 100.0).map_err(|e| self.invalid(&e.to_string()))?;
        Ok(svg)
    }

    fn draw(
        &self,
        svg: &mut String,
        low: f64,
        high: f64,
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(low..high, low..high)?;
        let percent = |value: &f64| format!("{value:.0}");
        chart
            .configure_mesh()
            .max_light_lines(1)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .x_label_formatter(&percent)
            .y_label_formatter(&percent)
            .x_desc(format!("ID {} (%)", self.id_metric))
            .y_desc(format!("OOD {} (%)", self.ood_metric))
            .draw()?;
        let diagonal = [(low, low), (high, high)];
        chart.draw_series(DashedLineSeries::new(diagonal, 6, 4, BLACK.mix(0.5).stroke_width(1)))?;
        let middle = (low + high) / 2.0;
        for (index, curve) in self.curves.iter().enumerate() {
            let color = color(index);
            let mut sweep = curve.points.clone();
            sweep.sort_by(|a, b| a.0.total_cmp(&b.0));
            let vertices = sweep.iter().map(|&(_, id, ood)| (id * 100.0, ood * 100.0));
            chart.draw_series(LineSeries::new(vertices, color.stroke_width(2)))?;
            let (Some(first), Some(last)) = (sweep.first(), sweep.last()) else { continue };
            let labels =
                [(first, format!("α={}", first.0)), (last, format!("{} (α={})", curve.method, last.0))];
            chart.draw_series(labels.into_iter().map(|(&(_, id, ood), text)| {
                let (offset, style) = label_placement(id * 100.0, middle);
                EmptyElement::at((id * 100.0, ood * 100.0))
                    + Circle::new((0, 0), 3, color.filled())
                    + Text::new(text, offset, style)
            }))?;
        }
        for (index, point) in self.points.iter().enumerate() {
            let (offset, style) = label_placement(point.id * 100.0, middle);
            chart.draw_series(std::iter::once(
                EmptyElement::at((point.id * 100.0, point.ood * 100.0))
                    + Circle::new((0, 0), 5, color(self.curves.len() + index).filled())
                    + Text::new(point.method.clone(), offset, style),
            ))?;
        }
        root.present()?;
        Ok(())
    }
}

/// The `index`-th series colour (Tableau 10 without its yellow and grey, cycling).
pub(super) fn color(index: usize) -> RGBColor {
    const PALETTE: [(u8, u8, u8); 8] = [
        (0x4e, 0x79, 0xa7),
        (0xf2, 0x8e, 0x2b),
        (0xe1, 0x57, 0x59),
        (0x76, 0xb7, 0xb2),
        (0x59, 0xa1, 0x4f),
        (0xb0, 0x7a, 0xa1),
        (0xff, 0x9d, 0xa7),
        (0x9c, 0x75, 0x5f),
    ];
    let (r, g, b) = PALETTE[index % PALETTE.len()];
    RGBColor(r, g, b)
}

/// Where a marker's label goes: right of markers in the left half of the plot, left of those in
/// the right half, so that labels stay inside the plot.
fn label_placement(x: f64, middle: f64) -> ((i32, i32), TextStyle<'static>) {
    let style = TextStyle::from(("sans-serif", 16).into_font());
    if x <= middle {
        ((8, -4), style.pos(Pos::new(HPos::Left, VPos::Bottom)))
    } else {
        ((-8, -4), style.pos(Pos::new(HPos::Right, VPos::Bottom)))
    }
}

/// The metric columns of `rows`: the union of their cell names in first-seen order.
fn columns(rows: &[TableRow]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in rows.iter().flat_map(|row| &row.cells) {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    names
}

/// A row's value in `column` as a percentage with one decimal (`mean ± std` when the row has a
/// spread for it), `-` when missing.
fn percent_cell(row: &TableRow, column: &str) -> String {
    let spread = row.spread.iter().find(|(name, _)| name == column).map(|(_, std)| *std);
    match (row.cells.iter().find(|(name, _)| name == column).and_then(|(_, value)| *value), spread) {
        (Some(value), Some(std)) => format!("{:.1} ± {:.1}", value * 100.0, std * 100.0),
        (Some(value), None) => format!("{:.1}", value * 100.0),
        (None, _) => "-".into(),
    }
}

/// A column's header: its name, marked when some row shows a spread in it.
fn header(rows: &[TableRow], column: &str) -> String {
    match rows.iter().any(|row| row.spread.iter().any(|(name, _)| name == column)) {
        true => format!("{column} {SPREAD_NOTE}"),
        false => column.to_string(),
    }
}

/// What `± x` in a cell means.
pub(super) const SPREAD_NOTE: &str = "(mean ± sample std, ddof 1)";

fn html_table(rows: &[TableRow]) -> String {
    let columns = columns(rows);
    let mut html = String::from("<table>\n<tr><th>Suite</th><th>Method</th>");
    columns.iter().for_each(|c| html.push_str(&format!("<th>{}</th>", escape(&header(rows, c)))));
    html.push_str("</tr>\n");
    for row in rows {
        let _ = write!(html, "<tr><td>{}</td><td>{}</td>", escape(&row.suite), escape(&row.method));
        columns
            .iter()
            .for_each(|c| html.push_str(&format!("<td class=\"num\">{}</td>", percent_cell(row, c))));
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}

/// The results as a GitHub-markdown table: Suite, Method, then one column per metric (the union of
/// the rows' cell names, first seen first), values as percentages with one decimal, `-` where
/// missing; a column with a spread over seeds says in its header that it is the sample std.
pub fn markdown_table(rows: &[TableRow]) -> String {
    let columns = columns(rows);
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let header: Vec<String> = ["Suite".to_string(), "Method".to_string()]
        .into_iter()
        .chain(columns.iter().map(|c| header(rows, c)))
        .collect();
    let mut markdown = line(header.iter().map(|h| markdown_escape(h)).collect());
    markdown.push_str(&line(
        header.iter().enumerate().map(|(i, _)| if i < 2 { "---" } else { "---:" }.into()).collect(),
    ));
    for row in rows {
        let names = [markdown_escape(&row.suite), markdown_escape(&row.method)];
        markdown
            .push_str(&line(names.into_iter().chain(columns.iter().map(|c| percent_cell(row, c))).collect()));
    }
    markdown
}

pub(super) fn markdown_escape(text: &str) -> String {
    text.replace('|', "\\|")
}

pub(super) fn escape(text: &str) -> String {
    html_escape::encode_safe(text).into_owned()
}
