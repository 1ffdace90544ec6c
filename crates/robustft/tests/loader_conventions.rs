//! The checkpoint loader never computes silently with a guessed architecture: a bare weights
//! file whose widths contradict OpenAI's 64-wide heads is refused (naming the file, the width
//! and the fix), a config (`--config` or beside the weights) gives exact results for heads of
//! another width, and every value assumed from a convention is reported as a notice.

#[path = "support/scratch.rs"]
mod scratch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use robustft::clip::checkpoint::write_safetensors;
use robustft::clip::keymap::hf_to_openclip;
use robustft::clip::{Activation, ClipConfig, ClipModel, ConfigSource, TextConfig, VisionConfig};

fn scratch(tag: &str) -> PathBuf {
    scratch::scratch_dir(&format!("loader-{tag}"))
}

/// A tiny CLIP whose towers are `vision_width` and `text_width` wide with the given heads.
fn tiny_config(vision_width: usize, vision_heads: usize, text_width: usize, text_heads: usize) -> ClipConfig {
    ClipConfig {
        vision: VisionConfig {
            image_size: 16,
            patch_size: 8,
            width: vision_width,
            layers: 1,
            heads: vision_heads,
            mlp_dim: 2 * vision_width,
        },
        text: TextConfig {
            vocab_size: 50,
            context_length: 6,
            width: text_width,
            layers: 1,
            heads: text_heads,
            mlp_dim: 2 * text_width,
        },
        embed_dim: 16,
        activation: Activation::Gelu,
        layer_norm_eps: 1e-5,
    }
}

/// Writes `model` as a bare OpenCLIP weights file (no config beside it).
fn save_openclip(model: &ClipModel, dir: &Path) -> PathBuf {
    let path = dir.join("open_clip_model.safetensors");
    write_safetensors(&path, &hf_to_openclip(&model.tensors()).unwrap(), HashMap::new()).unwrap();
    path
}

/// open_clip's config for `config`.
fn openclip_config_json(config: &ClipConfig, head_width: usize) -> String {
    serde_json::json!({
        "model_cfg": {
            "embed_dim": config.embed_dim,
            "quick_gelu": config.activation == Activation::QuickGelu,
            "vision_cfg": {
                "image_size": config.vision.image_size,
                "layers": config.vision.layers,
                "width": config.vision.width,
                "patch_size": config.vision.patch_size,
                "head_width": head_width,
            },
            "text_cfg": {
                "context_length": config.text.context_length,
                "vocab_size": config.text.vocab_size,
                "width": config.text.width,
                "heads": config.text.heads,
                "layers": config.text.layers,
            },
        }
    })
    .to_string()
}

fn load_error(spec: &Path, config: Option<&ConfigSource>) -> String {
    match ClipModel::load_with_config(spec.to_str().unwrap(), config, &Device::Cpu) {
        Ok(_) => panic!("{} loaded but should not", spec.display()),
        Err(e) => e.to_string(),
    }
}

/// Image and text embeddings of `model` on fixed inputs.
fn embeddings(model: &ClipModel) -> (Vec<f32>, Vec<f32>) {
    let config = &model.config;
    let size = config.vision.image_size;
    let pixels: Vec<f32> = (0..2 * 3 * size * size).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let pixels = Tensor::from_vec(pixels, (2, 3, size, size), &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[1u32, 7, 9, 49, 0, 0], [1, 3, 49, 0, 0, 0]], &Device::Cpu).unwrap();
    let flat = |t: Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (flat(model.no_grad().encode_image(&pixels).unwrap()), flat(model.no_grad().encode_text(&ids).unwrap()))
}

#[test]
fn width_96_without_config_is_refused_naming_file_width_and_fix() {
    let dir = scratch("w96");
    let model = ClipModel::random(tiny_config(96, 4, 64, 1), 1, &Device::Cpu).unwrap();
    let weights = save_openclip(&model, &dir);
    let err = load_error(&weights, None);
    assert!(err.contains(&weights.display().to_string()), "{err}");
    assert!(err.contains("vision tower is 96 wide"), "{err}");
    assert!(err.contains("open_clip_config.json") && err.contains("--config"), "{err}");
}

#[test]
fn head_width_80_with_a_config_reloads_exactly() {
    let config = tiny_config(160, 2, 80, 1);
    let model = ClipModel::random(config.clone(), 2, &Device::Cpu).unwrap();
    let expected = embeddings(&model);

    // OpenCLIP layout: refused bare, exact with open_clip_config.json given by --config and beside.
    let dir = scratch("h80-openclip");
    let weights = save_openclip(&model, &dir);
    assert!(load_error(&weights, None).contains("160 wide"));
    let config_file = scratch("h80-config").join("open_clip_config.json");
    std::fs::write(&config_file, openclip_config_json(&config, 80)).unwrap();
    let source = ConfigSource::parse(config_file.to_str().unwrap()).unwrap();
    let (loaded, info) =
        ClipModel::load_with_config(weights.to_str().unwrap(), Some(&source), &Device::Cpu).unwrap();
    assert_eq!(loaded.config, config);
    assert_eq!(embeddings(&loaded), expected);
    assert!(info.notices.is_empty(), "{:?}", info.notices);
    std::fs::copy(&config_file, dir.join("open_clip_config.json")).unwrap();
    let (beside, _) = ClipModel::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(embeddings(&beside), expected);

    // HF layout: config.json given by --config.
    let hf = scratch("h80-hf");
    model.save_hf(&hf, &HashMap::new()).unwrap();
    let hf_config = scratch("h80-hf-config").join("config.json");
    std::fs::rename(hf.join("config.json"), &hf_config).unwrap();
    assert!(load_error(&hf, None).contains("160 wide"));
    let source = ConfigSource::parse(hf_config.to_str().unwrap()).unwrap();
    let (loaded, _) = ClipModel::load_with_config(hf.to_str().unwrap(), Some(&source), &Device::Cpu).unwrap();
    assert_eq!(embeddings(&loaded), expected);
}

#[test]
fn conventions_are_announced_with_the_override() {
    let dir = scratch("notice");
    let model = ClipModel::random(tiny_config(128, 2, 64, 1), 3, &Device::Cpu).unwrap();
    let weights = save_openclip(&model, &dir);
    let (loaded, info) = ClipModel::load(weights.to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!((loaded.config.vision.heads, loaded.config.text.heads), (2, 1));
    assert_eq!(loaded.config.activation, Activation::QuickGelu);
    assert_eq!(info.notices.len(), 1, "{:?}", info.notices);
    let notice = &info.notices[0];
    assert!(notice.starts_with(&weights.display().to_string()), "{notice}");
    assert!(
        notice.contains("no open_clip_config.json or config.json beside the weights: assumed OpenAI's conventions: 2 vision and 1 text attention heads of width 64, quick_gelu activation"),
        "{notice}"
    );
    assert!(notice.contains("--config FILE|PRESET"), "{notice}");
}

#[test]
fn hf_config_defaults_are_announced() {
    let dir = scratch("hf-defaults");
    let model = ClipModel::random(tiny_config(96, 12, 64, 8), 4, &Device::Cpu).unwrap();
    model.save_hf(&dir, &HashMap::new()).unwrap();
    let config_path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    json["vision_config"].as_object_mut().unwrap().remove("num_attention_heads");
    json["text_config"].as_object_mut().unwrap().remove("hidden_act");
    json["vision_config"].as_object_mut().unwrap().remove("hidden_act");
    std::fs::write(&config_path, json.to_string()).unwrap();
    let (_, info) = ClipModel::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
    let text = info.notices.join("\n");
    assert!(
        text.contains("no vision_config.num_attention_heads: assuming transformers' default 12"),
        "{text}"
    );
    assert!(text.contains("no text_config.hidden_act: assuming transformers' default quick_gelu"), "{text}");
}

#[test]
fn a_preset_config_sets_heads_and_activation() {
    assert_eq!(ConfigSource::parse("ViT-B/32").unwrap(), ConfigSource::Preset("ViT-B-32"));
    let err = ConfigSource::parse("/no/such/config.json").unwrap_err().to_string();
    assert!(err.contains("/no/such/config.json") && err.contains("ViT-B-32"), "{err}");
    // 96 = 12 × 8: ViT-B-32's 12 heads divide the width; its heads and QuickGELU apply, silently.
    let dir = scratch("preset");
    let model = ClipModel::random(tiny_config(96, 12, 64, 8), 5, &Device::Cpu).unwrap();
    let weights = save_openclip(&model, &dir);
    let source = ConfigSource::Preset("ViT-B-32");
    let (loaded, info) =
        ClipModel::load_with_config(weights.to_str().unwrap(), Some(&source), &Device::Cpu).unwrap();
    assert_eq!((loaded.config.vision.heads, loaded.config.text.heads), (12, 8));
    assert_eq!(loaded.config.activation, Activation::QuickGelu);
    assert!(info.notices.is_empty());
}

#[test]
fn a_config_whose_heads_do_not_divide_the_width_names_the_config() {
    let dir = scratch("nodivide");
    let model = ClipModel::random(tiny_config(160, 2, 80, 1), 6, &Device::Cpu).unwrap();
    let weights = save_openclip(&model, &dir);
    let err = load_error(&weights, Some(&ConfigSource::Preset("ViT-B-32")));
    assert!(
        err.contains("preset ViT-B-32: 12 attention heads do not divide the vision tower's width 160"),
        "{err}"
    );
}
