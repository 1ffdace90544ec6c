//! The learned radii (γ) of a projection constraint (FTP, TPGM) compared with a reference:
//! read from the constraint's saved state (`gamma.<parameter>`).

use std::collections::BTreeMap;

use candle_core::DType;
use robustft::constraints::Constraint;

/// max |γ − γ_ref| over the projected parameters; the names must agree.
pub fn radius_error(constraint: &dyn Constraint, expected: &BTreeMap<String, f64>) -> f64 {
    let state = constraint.state().unwrap();
    let radii: BTreeMap<&str, f64> = state
        .iter()
        .filter_map(|(key, t)| {
            key.strip_prefix("gamma.")
                .map(|name| (name, t.to_dtype(DType::F64).unwrap().to_scalar().unwrap()))
        })
        .collect();
    assert_eq!(radii.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    radii.iter().map(|(name, gamma)| (gamma - expected[*name]).abs()).fold(0.0, f64::max)
}
