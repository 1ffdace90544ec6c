//! Weight-space ensembling, WiSE-FT (Wortsman et al., CVPR 2022; methods.md §0.3):
//! θ_α = (1 − α)·θ_zero-shot + α·θ_fine-tuned, elementwise over every parameter the two share.
//! The two sets must have the same keys and shapes; names matching an exclusion are taken from
//! the fine-tuned model unchanged.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Interpolates two parameter lists with the same names, in the order of `finetuned`.
pub fn interpolate(
    zero_shot: &[(String, Tensor)],
    finetuned: &[(String, Tensor)],
    alpha: f64,
    exclude: &dyn Fn(&str) -> bool,
) -> Result<Vec<(String, Tensor)>> {
    let finetuned_names: std::collections::HashSet<&str> =
        finetuned.iter().map(|(k, _)| k.as_str()).collect();
    if let Some((name, _)) = zero_shot.iter().find(|(k, _)| !finetuned_names.contains(k.as_str())) {
        return Err(missing(name, "fine-tuned"));
    }
    let lookup: std::collections::HashMap<&str, &Tensor> =
        zero_shot.iter().map(|(k, t)| (k.as_str(), t)).collect();
    finetuned
        .iter()
        .map(|(name, ft)| {
            let zs = lookup.get(name.as_str()).ok_or_else(|| missing(name, "zero-shot"))?;
            if zs.dims() != ft.dims() {
                return Err(Error::Invalid {
                    what: format!("WiSE-FT parameter `{name}`"),
                    reason: format!("shapes differ: {:?} vs {:?}", zs.dims(), ft.dims()),
                });
            }
            let mixed = if exclude(name) { ft.clone() } else { lerp(zs, ft, alpha)? };
            Ok((name.clone(), mixed))
        })
        .collect()
}

/// A parameter one of the two models lacks.
fn missing(name: &str, model: &str) -> Error {
    Error::Invalid {
        what: format!("WiSE-FT parameter `{name}`"),
        reason: format!("missing from the {model} model"),
    }
}

/// `(1 − α)·a + α·b`.
pub fn lerp(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    Ok(((a * (1.0 - alpha))? + (b * alpha)?)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn params(values: &[f32]) -> Vec<(String, Tensor)> {
        vec![("w".to_string(), Tensor::new(values, &Device::Cpu).unwrap())]
    }

    fn values(p: &[(String, Tensor)]) -> Vec<f32> {
        p[0].1.to_vec1().unwrap()
    }

    #[test]
    fn endpoints_and_midpoint() {
        let (zs, ft) = (params(&[0.0, 2.0]), params(&[4.0, -2.0]));
        let keep_none = |_: &str| false;
        assert_eq!(values(&interpolate(&zs, &ft, 0.0, &keep_none).unwrap()), vec![0.0, 2.0]);
        assert_eq!(values(&interpolate(&zs, &ft, 1.0, &keep_none).unwrap()), vec![4.0, -2.0]);
        assert_eq!(values(&interpolate(&zs, &ft, 0.5, &keep_none).unwrap()), vec![2.0, 0.0]);
        assert_eq!(values(&interpolate(&zs, &ft, 0.5, &|n| n == "w").unwrap()), vec![4.0, -2.0], "excluded");
    }

    #[test]
    fn mismatched_models_are_rejected_naming_the_parameter() {
        let zs = params(&[0.0, 2.0]);
        let err = interpolate(&zs, &params(&[1.0]), 0.5, &|_| false).unwrap_err().to_string();
        assert!(err.contains("`w`") && err.contains("shapes differ"), "{err}");
        let renamed = vec![("v".to_string(), zs[0].1.clone())];
        let err = interpolate(&zs, &renamed, 0.5, &|_| false).unwrap_err().to_string();
        assert!(err.contains("`w`") && err.contains("fine-tuned"), "{err}");
        let extra = [zs.clone(), renamed].concat();
        let err = interpolate(&zs, &extra, 0.5, &|_| false).unwrap_err().to_string();
        assert!(err.contains("`v`") && err.contains("zero-shot"), "{err}");
    }
}
