//! The CLIP parity fixtures of `scripts/fixtures/models.py` (tiny random checkpoints in HF and
//! OpenCLIP layouts with the outputs and gradients of transformers / open_clip) and the
//! comparison of a model's embeddings, logits, contrastive loss and gradients with them,
//! within given tolerances.

#![allow(dead_code)] // each test crate uses its own subset

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use robustft::clip::layers::l2_normalize;
use robustft::clip::ClipModel;
use robustft::losses::clip_contrastive_loss;

pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/models")).join(path)
}

pub fn expected(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu).expect("fixture readable")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let host =
        |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let (a, b) = (host(a), host(b));
    (a - b).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

pub fn max_abs(a: &Tensor) -> f32 {
    a.to_device(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The largest errors allowed: absolute for the unit-norm embeddings, the logits and the loss;
/// for a gradient, `gradient_relative` of the reference tensor's largest entry plus
/// `gradient_floor`. A key bias's true gradient is zero (softmax ignores what it adds, the
/// same to every score of a row), so its reference carries only noise: it is held to
/// `gradient_relative` of its layer's query-bias gradient instead.
#[derive(Clone, Copy)]
pub struct Tolerances {
    pub embeds: f32,
    pub logits: f32,
    pub loss: f32,
    pub gradient_relative: f32,
    pub gradient_floor: f32,
}

impl Tolerances {
    /// Every bound multiplied by `factor` (a device's widening).
    pub fn scaled(self, factor: f64) -> Self {
        let f = factor as f32;
        Self {
            embeds: self.embeds * f,
            logits: self.logits * f,
            loss: self.loss * f,
            gradient_relative: self.gradient_relative * f,
            gradient_floor: self.gradient_floor * f,
        }
    }
}

pub struct Outputs {
    pub image_embeds: Tensor,
    pub text_embeds: Tensor,
    pub logits: Tensor,
    pub loss: Tensor,
}

pub fn run(model: &ClipModel, reference: &HashMap<String, Tensor>) -> Outputs {
    let pixels = &reference["pixel_values"].to_device(model.device()).unwrap();
    let ids = reference["input_ids"].to_dtype(DType::U32).unwrap().to_device(model.device()).unwrap();
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

/// The largest error of each output: image embeds, text embeds, logits, loss.
pub fn output_errors(out: &Outputs, reference: &HashMap<String, Tensor>) -> [f32; 4] {
    [
        // Python: F.normalize(model.get_image_features(pixel_values).pooler_output, dim=-1)
        //      or model.encode_image(pixel_values, normalize=True)   (open_clip)
        max_abs_diff(&out.image_embeds, &reference["image_embeds"]),
        // Python: F.normalize(model.get_text_features(input_ids).pooler_output, dim=-1)
        max_abs_diff(&out.text_embeds, &reference["text_embeds"]),
        // Python: logit_scale.exp() * image_embeds @ text_embeds.T
        max_abs_diff(&out.logits, &reference["logits_per_image"]),
        // Python: open_clip.loss.ClipLoss()(image_features, text_features, logit_scale.exp())
        max_abs_diff(&out.loss, &reference["loss"]),
    ]
}

pub fn assert_outputs_match(out: &Outputs, reference: &HashMap<String, Tensor>, tolerances: &Tolerances) {
    let [image, text, logits, loss] = output_errors(out, reference);
    assert!(image <= tolerances.embeds, "image embeds max-abs error {image}");
    assert!(text <= tolerances.embeds, "text embeds max-abs error {text}");
    assert!(logits <= tolerances.logits, "logits max-abs error {logits}");
    assert!(loss <= tolerances.loss, "loss error {loss}");
}

pub fn assert_gradients_match(
    grads: &[(String, Tensor)],
    reference: &HashMap<String, Tensor>,
    tolerances: &Tolerances,
) {
    assert!(!grads.is_empty());
    for (name, grad) in grads {
        // Python: loss.backward(); {f"grad.{n}": p.grad for n, p in model.named_parameters()}
        let want = reference
            .get(&format!("grad.{name}"))
            .unwrap_or_else(|| panic!("no reference gradient for {name}"));
        let err = max_abs_diff(grad, want);
        let scale = match name.strip_suffix("k_proj.bias") {
            Some(layer) => max_abs(&reference[&format!("grad.{layer}q_proj.bias")]),
            None => max_abs(want),
        };
        let tolerance = tolerances.gradient_relative * scale + tolerances.gradient_floor;
        assert!(err <= tolerance, "gradient of {name}: max-abs error {err} > {tolerance}");
    }
    let reference_count = reference.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(grads.len(), reference_count, "every parameter's gradient is compared");
}

pub fn gradients(model: &ClipModel, loss: &Tensor) -> Vec<(String, Tensor)> {
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
