//! WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022; methods.md
//! §0.3) of two checkpoints, as `robustft wiseft` evaluates it: the grid of mixing weights α,
//! the configuration differences that make two checkpoints impossible to interpolate, and the
//! classifier of each interpolation — a trained head interpolated with the zero-shot head of
//! the zero-shot model (WiSE-FT's recipe for a linear classifier initialised from it); the
//! towers themselves are interpolated by [`crate::train::wiseft::interpolate`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use serde_json::Value;

use super::predictor::Head;
use crate::clip::{ClipConfig, ClipModel};
use crate::error::{Error, Result};

/// More mixing weights than this in one sweep is taken for a mistyped grid: each one is a
/// whole evaluation.
pub const MAX_ALPHAS: usize = 1001;

/// Parses `start:end:step` (inclusive) or a comma list; every α must lie in [0, 1].
pub fn parse_alphas(text: &str) -> std::result::Result<Vec<f64>, String> {
    let values = match text.split(':').collect::<Vec<_>>()[..] {
        [start, end, step] => alpha_range(number(start)?, number(end)?, number(step)?)?,
        [list] => list.split(',').map(number).collect::<std::result::Result<_, _>>()?,
        _ => return Err("expected START:END:STEP or a comma list such as 0,0.5,1".into()),
    };
    match values.iter().find(|alpha| !(0.0..=1.0).contains(*alpha)) {
        Some(alpha) => Err(format!("α = {alpha} is outside [0, 1]")),
        None => Ok(values),
    }
}

fn number(text: &str) -> std::result::Result<f64, String> {
    text.trim().parse().map_err(|_| format!("`{text}` is not a number"))
}

/// `start, start + step, ...` up to `end` inclusive, each rounded to 1e-9 (so 0:1:0.1 gives 0.3,
/// not 0.30000000000000004).
fn alpha_range(start: f64, end: f64, step: f64) -> std::result::Result<Vec<f64>, String> {
    if let Some(bound) = [start, end].into_iter().find(|bound| !(0.0..=1.0).contains(bound)) {
        return Err(format!("α = {bound} is outside [0, 1]"));
    }
    if step.is_nan() || step <= 0.0 {
        return Err(format!("the step {step} must be positive"));
    }
    if end < start {
        return Err(format!("the end {end} is below the start {start}"));
    }
    let steps = ((end - start) / step + 1e-9).floor();
    if steps >= MAX_ALPHAS as f64 {
        return Err(format!("{start}:{end}:{step} gives more than {MAX_ALPHAS} values"));
    }
    Ok((0..=steps as usize).map(|i| ((start + i as f64 * step) * 1e9).round() / 1e9).collect())
}

/// `field a-value vs b-value` for every field in which two configurations differ (none: they
/// can be interpolated).
pub fn config_differences(a: &ClipConfig, b: &ClipConfig) -> Vec<String> {
    let mut differences = Vec::new();
    let json = |config: &ClipConfig| serde_json::to_value(config).expect("a config serialises");
    collect_differences("", &json(a), &json(b), &mut differences);
    differences
}

fn collect_differences(field: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let path = if field.is_empty() { key.clone() } else { format!("{field}.{key}") };
                collect_differences(&path, value, b.get(key).unwrap_or(&Value::Null), out);
            }
        }
        _ if a != b => out.push(format!("{field} {a} vs {b}")),
        _ => {}
    }
}

/// The two ends of a head's interpolation: the zero-shot model's zero-shot head and a trained
/// head.
pub struct HeadPair {
    pub initial: Head,
    pub trained: Head,
}

impl HeadPair {
    /// The trained head at `path` (checked against `classes`) and the zero-shot head of
    /// `prompts` from the `zero_shot` model, which must have its shape.
    pub fn load(
        zero_shot: &ClipModel,
        classes: &[String],
        prompts: &[Vec<String>],
        path: &Path,
        device: &Device,
    ) -> Result<Self> {
        let trained = Head::load(path, device)?;
        trained.check_classes(path, classes)?;
        let initial = Head::zero_shot(zero_shot, prompts)?;
        if trained.weight.dims() != initial.weight.dims() {
            return Err(Error::Invalid {
                what: path.display().to_string(),
                reason: format!(
                    "head.weight has shape {:?}, but the zero-shot head over the {} classes has shape {:?}",
                    trained.weight.dims(),
                    prompts.len(),
                    initial.weight.dims()
                ),
            });
        }
        Ok(Self { initial, trained })
    }

    /// The head at α; `head.weight` and `head.bias` come from the trained head when `exclude`
    /// matches them.
    pub fn at(&self, alpha: f64, exclude: &dyn Fn(&str) -> bool) -> Result<Head> {
        let mixed = self.initial.lerp(&self.trained, alpha)?;
        Ok(Head {
            weight: if exclude("head.weight") { self.trained.weight.clone() } else { mixed.weight },
            bias: if exclude("head.bias") { self.trained.bias.clone() } else { mixed.bias },
        })
    }
}

/// Writes an interpolation to `out` in the HF layout with `metadata`, and its head (with its
/// class names) as `head.safetensors`, or removes a stale head file there when it has none.
pub fn save_interpolation(
    out: &Path,
    model: &ClipModel,
    head: Option<(&Head, &[String])>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    model.save_hf(out, &metadata)?;
    let head_path = out.join("head.safetensors");
    match head {
        Some((head, classes)) => head.save_with_classes(&head_path, metadata, classes),
        None if head_path.exists() => std::fs::remove_file(&head_path).map_err(Error::write(&head_path)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_rounded() {
        assert_eq!(
            parse_alphas("0:1:0.1").unwrap(),
            vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
        );
        assert_eq!(parse_alphas("0.25:0.75:0.25").unwrap(), vec![0.25, 0.5, 0.75]);
        assert_eq!(parse_alphas("0.5:0.5:0.1").unwrap(), vec![0.5]);
        assert_eq!(parse_alphas("0, 0.5,1").unwrap(), vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn bad_grids_are_refused_with_the_reason() {
        let error = |text: &str| parse_alphas(text).unwrap_err();
        assert!(error("0,1.5").contains("1.5 is outside [0, 1]"));
        assert!(error("-0.5:1:0.5").contains("outside [0, 1]"));
        assert!(error("0:1:0").contains("must be positive"));
        assert!(error("1:0:0.1").contains("below the start"));
        assert!(error("0:1:1e-9").contains("more than"));
        assert!(error("0,half").contains("`half` is not a number"));
        assert!(error("0:1").contains("START:END:STEP"));
    }

    #[test]
    fn configurations_differ_by_named_fields() {
        let a = ClipConfig::vit_b_32();
        let mut b = a.clone();
        b.vision.layers += 1;
        assert!(config_differences(&a, &a).is_empty());
        let differences = config_differences(&a, &b);
        assert_eq!(differences.len(), 1, "{differences:?}");
        assert!(differences[0].starts_with("vision.layers"), "{differences:?}");
    }
}
