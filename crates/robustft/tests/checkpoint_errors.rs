//! A wrong checkpoint file gets an error naming the file and the missing key or mismatched
//! shape, never a panic: truncated files, missing keys, wrong shapes, unknown layouts.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use robustft::clip::ClipModel;

fn hf_weights() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/clip_hf/model.safetensors"))
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("robustft-ckpt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(hf_weights().with_file_name("config.json"), dir.join("config.json")).unwrap();
    dir
}

fn load_error(path: &std::path::Path) -> String {
    match ClipModel::load(path.to_str().unwrap(), &Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => format!("{e}"),
    }
}

fn write_modified(tag: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let mut tensors = candle_core::safetensors::load(hf_weights(), &Device::Cpu).unwrap();
    edit(&mut tensors);
    let path = scratch(tag).join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

#[test]
fn truncated_file_names_the_file() {
    let bytes = std::fs::read(hf_weights()).unwrap();
    let path = scratch("truncated").join("model.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_error(&path);
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn missing_key_is_named() {
    let path = write_modified("missing", |t| {
        t.remove("text_model.encoder.layers.1.mlp.fc2.bias");
    });
    let err = load_error(&path);
    assert!(err.contains("missing key `text_model.encoder.layers.1.mlp.fc2.bias`"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let path = write_modified("shape", |t| {
        t.insert(
            "vision_model.encoder.layers.0.self_attn.k_proj.weight".into(),
            Tensor::zeros((48, 47), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_error(&path);
    assert!(err.contains("vision_model.encoder.layers.0.self_attn.k_proj.weight"), "{err}");
    assert!(err.contains("[48, 48]") && err.contains("[48, 47]"), "{err}");
}

#[test]
fn unexpected_key_is_named() {
    let path = write_modified("unexpected", |t| {
        t.insert(
            "vision_model.extra_head.weight".into(),
            Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_error(&path);
    assert!(err.contains("vision_model.extra_head.weight"), "{err}");
}

#[test]
fn non_clip_file_is_rejected() {
    let path = write_modified("foreign", |t| {
        t.clear();
        t.insert("encoder.weight".into(), Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap());
    });
    let err = load_error(&path);
    assert!(err.contains("not a CLIP checkpoint"), "{err}");
}

#[test]
fn directory_without_weights_lists_what_was_looked_for() {
    let dir = scratch("empty");
    let err = load_error(&dir);
    assert!(err.contains("model.safetensors") && err.contains("open_clip_model.safetensors"), "{err}");
}
