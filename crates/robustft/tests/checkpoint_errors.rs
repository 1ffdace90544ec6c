//! A wrong checkpoint file gets an error naming the file and the missing key or mismatched
//! shape, never a panic: truncated files, missing keys, wrong shapes, unknown layouts, and
//! `random:PRESET` specs naming no preset.

#[path = "support/scratch.rs"]
mod scratch;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use robustft::clip::ClipModel;

fn hf_weights() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/clip_hf/model.safetensors"))
}

fn scratch(tag: &str) -> PathBuf {
    let dir = scratch::scratch_dir(&format!("ckpt-{tag}"));
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

#[test]
fn malformed_config_value_names_the_key() {
    let dir = scratch("heads-four");
    std::fs::copy(hf_weights(), dir.join("model.safetensors")).unwrap();
    let config_path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    json["vision_config"]["num_attention_heads"] = serde_json::json!("four");
    std::fs::write(&config_path, json.to_string()).unwrap();
    let err = load_error(&dir);
    assert!(err.contains(&config_path.display().to_string()), "{err}");
    assert!(
        err.contains("`vision_config.num_attention_heads` must be a positive integer, found \"four\""),
        "{err}"
    );
    assert!(!err.contains("beside the weights"), "{err}");
}

#[test]
fn an_image_passed_as_a_model_is_not_a_checkpoint() {
    let png =
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models/images/img_64x64.png"));
    let dir = scratch("png");
    for name in ["model.pt", "model.safetensors"] {
        let path = dir.join(name);
        std::fs::copy(&png, &path).unwrap();
        let err = load_error(&path);
        assert!(err.contains(&format!("{} is not a checkpoint: it is a PNG image", path.display())), "{err}");
        assert!(!err.contains("Zip"), "{err}");
    }
}

/// A PyTorch zip archive whose `data.pkl` maps "w" to `_rebuild_tensor_v2()` with no arguments.
fn write_malformed_pt(path: &std::path::Path) {
    use std::io::Write;
    let mut pickle = vec![0x80, 0x02, b'}', b'('];
    pickle.push(b'X');
    pickle.extend(1u32.to_le_bytes());
    pickle.push(b'w');
    pickle.extend(b"ctorch._utils\n_rebuild_tensor_v2\n");
    pickle.extend([b')', b'R', b'u', b'.']);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", options).unwrap();
    zip.write_all(&pickle).unwrap();
    zip.finish().unwrap();
}

#[test]
fn a_pickle_that_crashes_the_reader_is_reported_with_the_file() {
    let path = scratch("pickle").join("model.pt");
    write_malformed_pt(&path);
    let err = load_error(&path);
    assert!(err.contains(&format!("{}: malformed PyTorch checkpoint", path.display())), "{err}");
}

#[test]
fn wrong_rank_tensor_is_named_with_its_shape() {
    let path = write_modified("rank", |t| {
        t.insert(
            "vision_model.embeddings.patch_embedding.weight".into(),
            Tensor::zeros(48, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_error(&path);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("key `vision_model.embeddings.patch_embedding.weight`: expected a rank-4 tensor, found shape [48]"),
        "{err}"
    );
}

#[test]
fn wrong_rank_openclip_projection_is_named() {
    let mut tensors: HashMap<String, Tensor> = candle_core::safetensors::load(
        hf_weights().with_file_name("../clip_openclip/open_clip_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    tensors.insert("visual.proj".into(), Tensor::zeros(24, candle_core::DType::F32, &Device::Cpu).unwrap());
    let path = scratch("rank-openclip").join("open_clip_model.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = load_error(&path);
    assert!(err.contains("key `visual.proj`: expected a rank-2 tensor, found shape [24]"), "{err}");
}

#[test]
fn a_tensor_that_cannot_be_copied_is_a_write_error_not_a_short_file() {
    use candle_core::DType;
    // A storage-only dtype (4-bit floats) has no conversion to f32: the copy fails.
    let packed = Tensor::from_raw_buffer(&[0u8; 8], DType::F4, &[8], &Device::Cpu).unwrap();
    let good = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
    let path = scratch("unwritable").join("weights.safetensors");
    let tensors = vec![("good".to_string(), good), ("packed".to_string(), packed)];
    let err = robustft::clip::checkpoint::write_safetensors(&path, &tensors, HashMap::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&path.display().to_string()) && err.contains("tensor `packed`"), "{err}");
    assert!(!path.exists(), "{} was written", path.display());
}

#[test]
fn a_random_preset_that_is_unknown_or_given_a_config_is_refused_by_name() {
    let err = ClipModel::load("random:ViT-Q-99", &Device::Cpu).err().expect("an unknown preset is refused");
    assert!(err.to_string().starts_with("random:ViT-Q-99: unknown preset (known: ViT-B-32,"), "{err}");
    let config = robustft::clip::ConfigSource::Preset("ViT-B-32");
    let err = ClipModel::load_with_config("random:ViT-B-32", Some(&config), &Device::Cpu)
        .err()
        .expect("a config is refused");
    assert!(err.to_string().contains("--config does not apply"), "{err}");
}
