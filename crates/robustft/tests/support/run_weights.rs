//! The trained weights of a finished recipe run, for end-to-end tests that compare runs (a
//! resumed run against an uninterrupted one, a run with a term or constraint against one
//! without).

#![allow(dead_code)] // each test crate uses its own subset

use std::path::Path;

use candle_core::Device;
use robustft::clip::ClipModel;

/// Every trained tensor of a finished run (the towers and, when there is one, the head), by
/// name, as flat values.
pub fn weights(run_dir: &Path) -> Vec<(String, Vec<f32>)> {
    let (model, _) = ClipModel::load(run_dir.join("model").to_str().unwrap(), &Device::Cpu).unwrap();
    let mut tensors: Vec<(String, Vec<f32>)> =
        model.tensors().into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap())).collect();
    let head = run_dir.join("model/head.safetensors");
    if head.exists() {
        for (name, t) in candle_core::safetensors::load(head, &Device::Cpu).unwrap() {
            tensors.push((name, t.flatten_all().unwrap().to_vec1().unwrap()));
        }
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// Asserts that a resumed run's weights equal the uninterrupted run's, to the bit, naming the
/// first tensor that differs.
pub fn assert_resumed_weights_equal(
    run: &str,
    uninterrupted: &[(String, Vec<f32>)],
    resumed: &[(String, Vec<f32>)],
) {
    assert_eq!(uninterrupted.len(), resumed.len(), "{run}: tensors after resume");
    for ((tensor, x), (_, y)) in uninterrupted.iter().zip(resumed) {
        assert_eq!(x, y, "{run}: `{tensor}` differs after resume");
    }
}
