//! Numerical parity of the CLIP model with the Python references on tiny random checkpoints
//! written by `scripts/fixtures/models.py`: transformers `CLIPModel` (HF layout, exact GELU)
//! and open_clip `CLIP` (OpenCLIP layout, QuickGELU), read from every file format the loader
//! accepts. Embeddings, logits, the contrastive loss and every parameter's gradient are compared.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use robustft::clip::keymap::hf_to_openclip;
use robustft::clip::layers::l2_normalize;
use robustft::clip::{Activation, ClipModel, Layout};
use robustft::losses::clip_contrastive_loss;

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models")).join(path)
}

fn expected(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu).expect("fixture readable")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    (a - b).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.flatten_all().unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

struct Outputs {
    image_embeds: Tensor,
    text_embeds: Tensor,
    logits: Tensor,
    loss: Tensor,
}

fn run(model: &ClipModel, reference: &HashMap<String, Tensor>) -> Outputs {
    let pixels = &reference["pixel_values"];
    let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
    let image = model.encode_image(pixels).unwrap();
    let text = model.encode_text(&ids).unwrap();
    let image_embeds = l2_normalize(&image).unwrap();
    let text_embeds = l2_normalize(&text).unwrap();
    let logits = image_embeds
        .matmul(&text_embeds.t().unwrap())
        .unwrap()
        .broadcast_mul(&model.logit_scale().exp().unwrap())
        .unwrap();
    let loss = clip_contrastive_loss(&image, &text, &model.logit_scale()).unwrap();
    Outputs { image_embeds, text_embeds, logits, loss }
}

fn assert_outputs_match(out: &Outputs, reference: &HashMap<String, Tensor>) {
    // Python: F.normalize(model.get_image_features(pixel_values).pooler_output, dim=-1)
    //      or model.encode_image(pixel_values, normalize=True)   (open_clip)
    let e = max_abs_diff(&out.image_embeds, &reference["image_embeds"]);
    assert!(e <= 1e-4, "image embeds max-abs error {e}");
    // Python: F.normalize(model.get_text_features(input_ids).pooler_output, dim=-1)
    let e = max_abs_diff(&out.text_embeds, &reference["text_embeds"]);
    assert!(e <= 1e-4, "text embeds max-abs error {e}");
    // Python: logit_scale.exp() * image_embeds @ text_embeds.T
    let e = max_abs_diff(&out.logits, &reference["logits_per_image"]);
    assert!(e <= 1e-4, "logits max-abs error {e}");
    // Python: open_clip.loss.ClipLoss()(image_features, text_features, logit_scale.exp())
    let e = max_abs_diff(&out.loss, &reference["loss"]);
    assert!(e <= 1e-5, "loss error {e}");
}

/// Gradients match when the error is small relative to the tensor's largest entry; tensors
/// whose true gradient is zero (key biases) only carry fp32 noise (~3e-7), hence the floor.
fn assert_gradients_match(grads: &[(String, Tensor)], reference: &HashMap<String, Tensor>) {
    assert!(!grads.is_empty());
    for (name, grad) in grads {
        // Python: loss.backward(); {f"grad.{n}": p.grad for n, p in model.named_parameters()}
        let want = reference
            .get(&format!("grad.{name}"))
            .unwrap_or_else(|| panic!("no reference gradient for {name}"));
        let err = max_abs_diff(grad, want);
        let tolerance = 1e-4 * max_abs(want) + 2e-6;
        assert!(err <= tolerance, "gradient of {name}: max-abs error {err} > {tolerance}");
    }
    let reference_count = reference.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(grads.len(), reference_count, "every parameter's gradient is compared");
}

fn gradients(model: &ClipModel, loss: &Tensor) -> Vec<(String, Tensor)> {
    let store = loss.backward().unwrap();
    model
        .params
        .iter()
        .map(|(name, var)| {
            let grad = store.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient reached {name}"));
            (name.to_string(), grad.clone())
        })
        .collect()
}

#[test]
fn hf_layout_matches_transformers_outputs_and_gradients() {
    let (model, info) = ClipModel::load(fixture("clip_hf").to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(info.layout, Layout::Hf);
    assert_eq!(model.config.activation, Activation::Gelu);
    assert_eq!((model.config.vision.heads, model.config.text.heads), (4, 4));
    let reference = expected("expected_hf.safetensors");
    let out = run(&model, &reference);
    assert_outputs_match(&out, &reference);
    assert_gradients_match(&gradients(&model, &out.loss), &reference);
}

#[test]
fn openclip_layout_matches_open_clip_outputs_and_gradients() {
    let (model, info) = ClipModel::load(fixture("clip_openclip").to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(info.layout, Layout::OpenClip);
    assert_eq!(model.config.activation, Activation::QuickGelu);
    assert_eq!(model.config.text.mlp_dim, 128);
    let reference = expected("expected_openclip.safetensors");
    let out = run(&model, &reference);
    assert_outputs_match(&out, &reference);
    let grads = hf_to_openclip(&gradients(&model, &out.loss)).unwrap();
    assert_gradients_match(&grads, &reference);
}

#[test]
fn pickle_state_dicts_load_the_same_weights() {
    let reference = expected("expected_openclip.safetensors");
    for file in ["open_clip_pytorch_model.bin", "model.pt"] {
        let path = fixture("clip_openclip").join(file);
        let (model, info) = ClipModel::load(path.to_str().unwrap(), &Device::Cpu).unwrap();
        assert_eq!(info.files.unwrap().weights, path);
        let out = run(&model, &reference);
        assert_outputs_match(&out, &reference);
    }
}

#[test]
fn saved_hf_checkpoint_round_trips() {
    let (model, _) = ClipModel::load(fixture("clip_openclip").to_str().unwrap(), &Device::Cpu).unwrap();
    let dir = tempdir("roundtrip");
    model.save_hf(&dir, &HashMap::from([("robustft.note".to_string(), "test".to_string())])).unwrap();
    let (reloaded, info) = ClipModel::load(dir.to_str().unwrap(), &Device::Cpu).unwrap();
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
