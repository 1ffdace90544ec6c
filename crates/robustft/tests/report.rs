//! The HTML report (`robustft::eval::report`): one inline SVG scatter plot per suite naming every
//! method, α sweeps as polylines, escaped text, well-formed and deterministic output, the
//! markdown table's layout, and the atomic write; the robustness section
//! (`robustft::eval::robustness`): one robust-top-1-vs-ε plot per threat with a line per method,
//! its table, and nothing at all without perturbed rows.

use std::path::PathBuf;

use robustft::eval::report::{markdown_table, Curve, Point, Report, SuitePlot, TableRow};
use robustft::eval::robustness_plot::{
    robustness_digest_markdown, robustness_markdown, RobustCurve, RobustRow, Robustness, ThreatPlot,
};

fn plot(suite: &str, methods: &[&str], sweep: usize) -> SuitePlot {
    let points = methods
        .iter()
        .enumerate()
        .map(|(i, m)| Point { method: m.to_string(), id: 0.6 + 0.05 * i as f64, ood: 0.31 + 0.1 * i as f64 })
        .collect();
    let alphas = (0..sweep).map(|k| k as f64 / (sweep - 1) as f64);
    let curve = Curve {
        method: "WiSE-FT".into(),
        points: alphas.map(|a| (a, 0.7 + 0.2 * a, 0.4 + 0.1 * a)).collect(),
    };
    SuitePlot {
        suite: suite.into(),
        id_metric: "accuracy".into(),
        ood_metric: "accuracy".into(),
        points,
        curves: vec![curve],
    }
}

fn row(suite: &str, method: &str, cells: &[(&str, Option<f64>)]) -> TableRow {
    let cells = cells.iter().map(|(c, v)| (c.to_string(), *v)).collect();
    TableRow { suite: suite.into(), method: method.into(), cells, spread: Vec::new() }
}

fn report() -> Report {
    let methods = ["zero-shot", "FT <lp> & end"];
    Report {
        title: "Results <all>".into(),
        command: "robustft report --out a&b".into(),
        table: vec![
            row("texture", methods[0], &[("ID acc", Some(0.8123)), ("OOD acc", Some(0.5))]),
            row("texture", methods[1], &[("ID acc", Some(0.9)), ("ECE", None)]),
        ],
        plots: vec![plot("texture", &methods, 5), plot("background", &methods, 3)],
        robustness: Robustness::default(),
    }
}

/// The `<svg>…</svg>` blocks of a page.
fn svg_blocks(html: &str) -> Vec<&str> {
    html.split("<svg").skip(1).map(|rest| &rest[..rest.find("</svg>").expect("closed svg")]).collect()
}

/// Checks that every tag is closed in order (the page is meant to be well-formed XML).
fn assert_balanced(html: &str) {
    let mut stack: Vec<String> = Vec::new();
    for tag in html.split('<').skip(1).map(|t| &t[..t.find('>').expect("tag ends")]) {
        if tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        let name = |t: &str| t.split_whitespace().next().unwrap_or_default().to_string();
        match tag.strip_prefix('/') {
            Some(closing) => assert_eq!(stack.pop(), Some(name(closing)), "unbalanced </{closing}>"),
            None => stack.push(name(tag)),
        }
    }
    assert!(stack.is_empty(), "unclosed tags {stack:?}");
}

#[test]
fn page_has_one_svg_per_suite_and_balanced_tags() {
    let html = report().to_html().unwrap();
    assert_eq!(svg_blocks(&html).len(), 2);
    assert_balanced(&html);
    assert!(!html.contains("<link") && !html.contains("<script"), "the page must be self-contained");
}

#[test]
fn every_method_is_named_escaped_in_each_plot_and_the_table() {
    let html = report().to_html().unwrap();
    let table = &html[html.find("<table>").unwrap()..html.find("</table>").unwrap()];
    for svg in svg_blocks(&html) {
        for name in ["zero-shot", "FT &lt;lp&gt; &amp; end", "WiSE-FT (α=1)"] {
            assert!(svg.contains(name), "{name} missing from a plot");
        }
        assert!(svg.contains("\nα=0\n"), "the sweep's α=0 end is unlabelled");
    }
    assert!(table.contains("zero-shot") && table.contains("FT &lt;lp&gt; &amp; end"));
    assert!(html.contains("Results &lt;all&gt;") && html.contains("a&amp;b"));
    assert!(!html.contains("<lp>") && !html.contains("<all>") && !html.contains("a&b"));
}

#[test]
fn sweep_is_one_polyline_through_all_alpha_points() {
    let html = report().to_html().unwrap();
    for (svg, alphas) in svg_blocks(&html).into_iter().zip([5, 3]) {
        let vertex_counts: Vec<usize> = svg
            .split("<polyline")
            .skip(1)
            .map(|p| {
                let points = &p[p.find("points=\"").unwrap() + 8..];
                points[..points.find('"').unwrap()].split_whitespace().count()
            })
            .collect();
        assert_eq!(vertex_counts.iter().filter(|&&n| n == alphas).count(), 1, "{vertex_counts:?}");
        assert!(vertex_counts.iter().all(|&n| n == alphas || n == 2), "{vertex_counts:?}");
    }
}

#[test]
fn axis_range_covers_every_point_and_rejects_bad_metrics() {
    let mut suite = plot("texture", &["a", "b", "c"], 4);
    let (low, high) = suite.axis_range().unwrap();
    // Values span 0.31 (point a's OOD) to 0.9 (the sweep's α=1 ID): padded by 0.02, rounded to 5%.
    assert!((low - 0.25).abs() < 1e-9 && (high - 0.95).abs() < 1e-9, "{low} {high}");
    suite.points.push(Point { method: "d".into(), id: 0.999, ood: 0.001 });
    assert_eq!(suite.axis_range().unwrap(), (0.0, 1.0));
    suite.curves[0].points.push((2.0, 1.5, 0.5));
    assert!(suite.axis_range().is_err());
    assert!(report().plots[0].axis_range().is_ok());
    let mut nan = report();
    nan.plots[1].points[0].ood = f64::NAN;
    assert!(nan.to_html().unwrap_err().to_string().contains("background"));
}

#[test]
fn output_is_deterministic() {
    assert_eq!(report().to_html().unwrap(), report().to_html().unwrap());
    assert_eq!(markdown_table(&report().table), markdown_table(&report().table));
}

#[test]
fn markdown_table_has_union_columns_and_percentages() {
    let mut rows = report().table;
    rows.push(row("bg|x", "lp", &[("OOD acc", Some(0.12345))]));
    let markdown = markdown_table(&rows);
    let lines: Vec<&str> = markdown.lines().collect();
    assert_eq!(lines.len(), 2 + rows.len());
    assert_eq!(lines[0], "| Suite | Method | ID acc | OOD acc | ECE |");
    assert_eq!(lines[1], "| --- | --- | ---: | ---: | ---: |");
    assert_eq!(lines[2], "| texture | zero-shot | 81.2 | 50.0 | - |");
    assert_eq!(lines[3], "| texture | FT <lp> & end | 90.0 | - | - |");
    assert_eq!(lines[4], "| bg\\|x | lp | - | 12.3 | - |");
    let html = report().to_html().unwrap();
    assert!(html.contains("<td class=\"num\">81.2</td><td class=\"num\">50.0</td><td class=\"num\">-</td>"));
}

#[test]
fn write_is_atomic_and_creates_the_directory() {
    let dir: PathBuf = std::env::temp_dir().join(format!("robustft-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("nested").join("report.html");
    report().write(&path).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), report().to_html().unwrap());
    let entries: Vec<_> =
        std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("report.html")]);
    // A directory in the way makes the rename fail; the temporary file must not be left behind.
    let taken = dir.join("taken.html");
    std::fs::create_dir(&taken).unwrap();
    assert!(report().write(&taken).is_err());
    assert!(taken.is_dir() && !dir.join(".taken.html.tmp").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_spread_is_shown_as_mean_plus_minus_std() {
    let mut with_spread = row("spurious", "drm", &[("ID top-1", Some(0.8125)), ("OOD top-1", Some(0.5))]);
    with_spread.spread = vec![("ID top-1".to_string(), 0.0125)];
    let markdown = markdown_table(&[with_spread.clone()]);
    assert!(markdown.contains("| 81.2 ± 1.2 | 50.0 |"), "{markdown}");
    // The header says which std: only the column with a spread.
    let header = markdown.lines().next().unwrap();
    assert!(header.contains("| ID top-1 (mean ± sample std, ddof 1) | OOD top-1 |"), "{header}");
    let report = Report {
        title: "t".into(),
        command: "c".into(),
        table: vec![with_spread],
        plots: vec![],
        robustness: Robustness::default(),
    };
    assert!(report.to_html().unwrap().contains("<th>ID top-1 (mean ± sample std, ddof 1)</th>"));
}

/// ℓ∞ and fog plots of two methods (`ft` over two budgets, `FT <a> & b` over one) and their table.
fn robustness() -> Robustness {
    let curve =
        |method: &str, points: &[(f64, f64)]| RobustCurve { method: method.into(), points: points.to_vec() };
    let threat_plot = |threat: &str, curves| ThreatPlot {
        suite: "spurious".into(),
        threat: threat.into(),
        split: "id_test".into(),
        curves,
    };
    let row = |method: &str, threat: &str, eps: f64, robust_top1: f64, std: Option<f64>| RobustRow {
        suite: "spurious".into(),
        method: method.into(),
        threat: threat.into(),
        eps,
        robust_top1,
        std,
    };
    Robustness {
        plots: vec![
            threat_plot(
                "linf",
                vec![
                    curve("ft", &[(2.0 / 255.0, 0.3), (1.0 / 255.0, 0.5)]),
                    curve("FT <a> & b", &[(1.0 / 255.0, 0.4)]),
                ],
            ),
            threat_plot("corruption:fog", vec![curve("ft", &[(1.0, 0.7), (3.0, 0.55)])]),
        ],
        table: vec![
            row("ft", "linf", 1.0 / 255.0, 0.5, Some(0.0125)),
            row("ft", "linf", 2.0 / 255.0, 0.3, None),
            row("FT <a> & b", "corruption:fog", 3.0, 0.55, None),
        ],
    }
}

#[test]
fn each_threat_is_one_plot_with_a_line_per_method_through_its_budgets() {
    let html = Report { robustness: robustness(), ..report() }.to_html().unwrap();
    assert_balanced(&html);
    let blocks = svg_blocks(&html);
    assert_eq!(blocks.len(), 4, "two scatters, then ℓ∞ and fog");
    // The series' polylines (stroke width 2; the axes and ticks have 1): their vertex counts.
    let vertices = |svg: &str| -> Vec<usize> {
        svg.split("<polyline")
            .skip(1)
            .filter(|p| p[..p.find("points").unwrap()].contains("stroke-width=\"2\""))
            .map(|p| {
                let points = &p[p.find("points=\"").unwrap() + 8..];
                points[..points.find('"').unwrap()].split_whitespace().count()
            })
            .collect()
    };
    // ℓ∞: ft's two budgets, the other method's one, then the legend's two strokes.
    assert_eq!(vertices(blocks[2]), [2, 1, 2, 2]);
    for name in ["\nft\n", "\nFT &lt;a&gt; &amp; b\n", "ε (ℓ∞)", "robust top-1 on id_test (%)"] {
        assert!(blocks[2].contains(name), "{name} missing from the ℓ∞ plot");
    }
    assert!(blocks[3].contains("severity (corruption: fog)"));
    assert!(html.contains("<h2>spurious: robust top-1 vs ε, ℓ∞</h2>"), "{html}");
    assert!(html.contains("<h2>spurious: robust top-1 vs severity, corruption: fog</h2>"), "{html}");
    assert!(html.contains("<td>ℓ∞</td><td class=\"num\">1/255</td><td class=\"num\">50.0 ± 1.2</td>"));
    assert_eq!(html, Report { robustness: robustness(), ..report() }.to_html().unwrap());
}

#[test]
fn without_perturbed_rows_the_page_has_no_robustness_section() {
    let html = report().to_html().unwrap();
    assert!(!html.contains("Robust top-1"), "{html}");
    assert_eq!(svg_blocks(&html).len(), 2);
    assert_eq!(robustness_markdown(&[]), "");
}

#[test]
fn robustness_markdown_names_threat_budget_and_spread() {
    let markdown = robustness_markdown(&robustness().table);
    let lines: Vec<&str> = markdown.lines().collect();
    assert_eq!(lines[0], "| Suite | Method | Threat | Budget | Robust top-1 (mean ± sample std, ddof 1) |");
    assert_eq!(lines[1], "| --- | --- | --- | ---: | ---: |");
    assert_eq!(lines[2], "| spurious | ft | ℓ∞ | 1/255 | 50.0 ± 1.2 |");
    assert_eq!(lines[3], "| spurious | ft | ℓ∞ | 2/255 | 30.0 |");
    assert_eq!(lines[4], "| spurious | FT <a> & b | corruption: fog | 3 | 55.0 |");
}

#[test]
fn a_robust_accuracy_outside_0_1_is_refused_naming_the_plot() {
    let mut bad = robustness();
    bad.plots[1].curves[0].points[0].1 = 1.5;
    let err = Report { robustness: bad, ..report() }.to_html().unwrap_err().to_string();
    assert!(err.contains("corruption:fog") && err.contains("1.5"), "{err}");
}

#[test]
fn the_robustness_digest_takes_each_family_at_its_middle_budget() {
    let at = |method: &str, threat: &str, eps: f64, top1: f64, std: Option<f64>| RobustRow {
        suite: "spurious".into(),
        method: method.into(),
        threat: threat.into(),
        eps,
        robust_top1: top1,
        std,
    };
    let rows = [
        at("ft", "linf", 1.0 / 255.0, 0.6, Some(0.01)),
        at("ft", "linf", 2.0 / 255.0, 0.4, Some(0.02)),
        at("ft", "linf", 4.0 / 255.0, 0.1, Some(0.01)),
        at("ft", "corruption:contrast", 3.0, 0.5, None),
        at("ft", "corruption:pixelate", 3.0, 0.7, None),
        at("flyp", "linf", 2.0 / 255.0, 0.3, None),
    ];
    let digest = robustness_digest_markdown(&rows);
    let lines: Vec<&str> = digest.lines().collect();
    assert_eq!(lines[0], "| Suite | Method | ℓ∞ 2/255 | corruptions (mean), severity 3 |");
    assert_eq!(lines[1], "| --- | --- | ---: | ---: |");
    // ℓ∞ at the middle of {1, 2, 4}/255; corruptions: (50 + 70) / 2.
    assert_eq!(lines[2], "| spurious | ft | 40.0 ± 2.0 | 60.0 |");
    assert_eq!(lines[3], "| spurious | flyp | 30.0 | – |");
    assert_eq!(robustness_digest_markdown(&[]), "");
}
