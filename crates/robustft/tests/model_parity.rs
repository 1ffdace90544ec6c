//! Numerical parity of the CLIP model with the Python references on tiny random checkpoints
//! written by `scripts/fixtures/models.py`: transformers `CLIPModel` (HF layout, exact GELU)
//! and open_clip `CLIP` (OpenCLIP layout, QuickGELU), read from every file format the loader
//! accepts. Embeddings, logits, the contrastive loss and every parameter's gradient are compared,
//! on the device `ROBUSTFT_TEST_DEVICE` names (`support/device.rs`).

use std::collections::HashMap;
use std::path::PathBuf;

use robustft::clip::keymap::hf_to_openclip;
use robustft::clip::{Activation, ClipModel, Layout};

#[path = "support/clip_reference.rs"]
mod clip_reference;
#[path = "support/device.rs"]
mod device;
use clip_reference::{
    assert_gradients_match, assert_outputs_match, expected, fixture, gradients, max_abs_diff, run, Tolerances,
};

use device::{test_device, tolerance};

/// fp32 against fp32: embeddings and logits to 1e-4, the loss to 1e-5, gradients to 1e-4 of
/// each tensor's largest entry (+ 2e-6 for the exactly-zero key-bias gradients); wider on CUDA.
fn fp32() -> Tolerances {
    Tolerances { embeds: 1e-4, logits: 1e-4, loss: 1e-5, gradient_relative: 1e-4, gradient_floor: 2e-6 }
        .scaled(tolerance(1.0))
}

#[test]
fn hf_layout_matches_transformers_outputs_and_gradients() {
    let (model, info) = ClipModel::load(fixture("clip_hf").to_str().unwrap(), &test_device()).unwrap();
    assert_eq!(info.layout, Layout::Hf);
    assert_eq!(model.config.activation, Activation::Gelu);
    assert_eq!((model.config.vision.heads, model.config.text.heads), (4, 4));
    let reference = expected("expected_hf.safetensors");
    let out = run(&model, &reference);
    assert_outputs_match(&out, &reference, &fp32());
    assert_gradients_match(&gradients(&model, &out.loss), &reference, &fp32());
}

#[test]
fn openclip_layout_matches_open_clip_outputs_and_gradients() {
    let (model, info) = ClipModel::load(fixture("clip_openclip").to_str().unwrap(), &test_device()).unwrap();
    assert_eq!(info.layout, Layout::OpenClip);
    assert_eq!(model.config.activation, Activation::QuickGelu);
    assert_eq!(model.config.text.mlp_dim, 128);
    let reference = expected("expected_openclip.safetensors");
    let out = run(&model, &reference);
    assert_outputs_match(&out, &reference, &fp32());
    let grads = hf_to_openclip(&gradients(&model, &out.loss)).unwrap();
    assert_gradients_match(&grads, &reference, &fp32());
}

#[test]
fn pickle_state_dicts_load_the_same_weights() {
    let reference = expected("expected_openclip.safetensors");
    for file in ["open_clip_pytorch_model.bin", "model.pt"] {
        let path = fixture("clip_openclip").join(file);
        let (model, info) = ClipModel::load(path.to_str().unwrap(), &test_device()).unwrap();
        assert_eq!(info.files.unwrap().weights, path);
        let out = run(&model, &reference);
        assert_outputs_match(&out, &reference, &fp32());
    }
}

#[test]
fn saved_hf_checkpoint_round_trips() {
    let (model, _) = ClipModel::load(fixture("clip_openclip").to_str().unwrap(), &test_device()).unwrap();
    let dir = tempdir("roundtrip");
    model.save_hf(&dir, &HashMap::from([("robustft.note".to_string(), "test".to_string())])).unwrap();
    let (reloaded, info) = ClipModel::load(dir.to_str().unwrap(), &test_device()).unwrap();
    assert_eq!(info.layout, Layout::Hf);
    assert_eq!(reloaded.config, model.config);
    for ((name, a), (_, b)) in model.tensors().iter().zip(reloaded.tensors().iter()) {
        assert_eq!(max_abs_diff(a, b), 0.0, "{name} changed in the round trip");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("robustft-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
