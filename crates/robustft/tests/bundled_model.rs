//! The bundled ShiftWorld CLIP's zero-shot figures, re-measured: every row of
//! `assets/shiftworld-clip/zeroshot.jsonl` (written by `robustft zeroshot --suite S --json`
//! for each suite and prompt set, seed 0, and quoted in the README) is recomputed from the
//! model bundled in the library and must agree to within 0.005.

use candle_core::Device;
use robustft::clip::bundled::load_bundled;
use robustft::eval::metrics::split_metrics;
use robustft::eval::suite::{zeroshot_suite, PromptKind};
use robustft::shiftworld::build_suite;
use serde_json::Value;

const TOLERANCE: f64 = 0.005;

fn recorded() -> Vec<Value> {
    let text =
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/shiftworld-clip/zeroshot.jsonl"));
    text.lines().map(|l| serde_json::from_str(l).expect("a JSON row")).collect()
}

#[test]
fn zero_shot_figures_match_the_recorded_ones() {
    let model = load_bundled(&Device::Cpu).unwrap();
    let rows = recorded();
    assert!(rows.len() >= 8, "every suite is recorded");
    for suite_name in ["spurious", "rendition", "corruption", "domains"] {
        let suite = build_suite(suite_name, 0).unwrap();
        for kind in [PromptKind::Default, PromptKind::Descriptions] {
            for (split, predictions) in zeroshot_suite(&model, &suite, kind).unwrap() {
                let want = rows
                    .iter()
                    .find(|r| {
                        r["suite"] == suite_name
                            && r["split"] == split.as_str()
                            && r["prompts"] == kind.name()
                    })
                    .unwrap_or_else(|| panic!("no recorded row for {suite_name}/{split}/{}", kind.name()));
                let got = split_metrics(&predictions, &[]);
                for (metric, value) in [("top1", got.top1), ("f1_macro", got.f1_macro)] {
                    let expected = want[metric].as_f64().unwrap();
                    assert!(
                        (value - expected).abs() <= TOLERANCE,
                        "{suite_name}/{split}/{}: {metric} {value} vs recorded {expected}",
                        kind.name()
                    );
                }
            }
        }
    }
}
