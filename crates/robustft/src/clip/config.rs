//! CLIP architecture configuration: the named presets users know (`ViT-B-32`, `ViT-B-16`,
//! `ViT-L-14`, `ViT-L-14-336`, with the `ViT-B/32` and `openai/clip-vit-base-patch32`
//! spellings accepted) and the inference of a configuration from a checkpoint's tensor shapes.
//!
//! Sources: OpenAI CLIP `clip/model.py` (`build_model` derives every size from the state dict;
//! heads = width / 64), open_clip `model_configs/*.json`, and HF transformers `CLIPConfig`
//! defaults. What tensor shapes cannot tell (attention heads, activation, LayerNorm epsilon)
//! comes from the checkpoint's `config.json` / `open_clip_config.json` when present, else from
//! OpenAI's conventions (64-wide heads, QuickGELU, eps 1e-5).

use serde::{Deserialize, Serialize};

/// The MLP activation of a transformer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`: OpenAI's original CLIP models.
    QuickGelu,
    /// The exact (erf) GELU: most OpenCLIP models trained by LAION.
    Gelu,
}

impl Activation {
    /// Parses HF's `hidden_act` value.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            _ => None,
        }
    }

    /// HF's `hidden_act` spelling.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::QuickGelu => "quick_gelu",
            Self::Gelu => "gelu",
        }
    }
}

/// The image tower: a ViT with a class token, learned positions and pre-LayerNorm blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_dim: usize,
}

impl VisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image: the patches plus the class token.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// The text tower: a causal transformer pooled at the end-of-text token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub context_length: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_dim: usize,
}

/// A whole CLIP model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    /// Dimension of the shared image-text embedding space.
    pub embed_dim: usize,
    pub activation: Activation,
    pub layer_norm_eps: f64,
}

/// The names `ClipConfig::preset` understands, in their canonical spelling.
pub const PRESET_NAMES: [&str; 4] = ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"];

impl ClipConfig {
    /// OpenAI's ViT-B/32.
    pub fn vit_b_32() -> Self {
        Self::openai_vit(224, 32, 768, 12, 512, 512)
    }

    /// OpenAI's ViT-B/16.
    pub fn vit_b_16() -> Self {
        Self::openai_vit(224, 16, 768, 12, 512, 512)
    }

    /// OpenAI's ViT-L/14.
    pub fn vit_l_14() -> Self {
        Self::openai_vit(224, 14, 1024, 24, 768, 768)
    }

    /// OpenAI's ViT-L/14 at 336 pixels.
    pub fn vit_l_14_336() -> Self {
        Self::openai_vit(336, 14, 1024, 24, 768, 768)
    }

    fn openai_vit(
        image_size: usize,
        patch_size: usize,
        vision_width: usize,
        vision_layers: usize,
        text_width: usize,
        embed_dim: usize,
    ) -> Self {
        Self {
            vision: VisionConfig {
                image_size,
                patch_size,
                width: vision_width,
                layers: vision_layers,
                heads: vision_width / 64,
                mlp_dim: 4 * vision_width,
            },
            text: TextConfig {
                vocab_size: 49408,
                context_length: 77,
                width: text_width,
                layers: 12,
                heads: text_width / 64,
                mlp_dim: 4 * text_width,
            },
            embed_dim,
            activation: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }

    /// Looks a preset up by any common spelling: `ViT-B-32`, `ViT-B/32`, `vit_b_32`,
    /// `openai/clip-vit-base-patch32`, `ViT-L-14@336`, `openai/clip-vit-large-patch14-336`.
    pub fn preset(name: &str) -> Option<Self> {
        match canonical_preset_name(name)? {
            "ViT-B-32" => Some(Self::vit_b_32()),
            "ViT-B-16" => Some(Self::vit_b_16()),
            "ViT-L-14" => Some(Self::vit_l_14()),
            "ViT-L-14-336" => Some(Self::vit_l_14_336()),
            _ => None,
        }
    }

    /// Every `(name, shape)` a checkpoint of this configuration holds, in the HF key layout
    /// (the project's canonical names), in a stable order: vision tower, text tower, heads.
    pub fn expected_parameters(&self) -> Vec<(String, Vec<usize>)> {
        let v = &self.vision;
        let t = &self.text;
        let mut out: Vec<(String, Vec<usize>)> = vec![
            ("vision_model.embeddings.class_embedding".into(), vec![v.width]),
            (
                "vision_model.embeddings.patch_embedding.weight".into(),
                vec![v.width, 3, v.patch_size, v.patch_size],
            ),
            ("vision_model.embeddings.position_embedding.weight".into(), vec![v.tokens(), v.width]),
        ];
        push_layer_norm(&mut out, "vision_model.pre_layrnorm", v.width);
        push_encoder(&mut out, "vision_model.encoder", v.layers, v.width, v.mlp_dim);
        push_layer_norm(&mut out, "vision_model.post_layernorm", v.width);
        out.push(("visual_projection.weight".into(), vec![self.embed_dim, v.width]));
        out.push(("text_model.embeddings.token_embedding.weight".into(), vec![t.vocab_size, t.width]));
        out.push(("text_model.embeddings.position_embedding.weight".into(), vec![t.context_length, t.width]));
        push_encoder(&mut out, "text_model.encoder", t.layers, t.width, t.mlp_dim);
        push_layer_norm(&mut out, "text_model.final_layer_norm", t.width);
        out.push(("text_projection.weight".into(), vec![self.embed_dim, t.width]));
        out.push(("logit_scale".into(), vec![]));
        out
    }
}

/// Maps any accepted spelling of a preset to its canonical name.
pub fn canonical_preset_name(name: &str) -> Option<&'static str> {
    let key: String = name
        .trim()
        .to_ascii_lowercase()
        .trim_start_matches("openai/")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    match key.trim_end_matches("px") {
        "vitb32" | "clipvitbasepatch32" => Some("ViT-B-32"),
        "vitb16" | "clipvitbasepatch16" => Some("ViT-B-16"),
        "vitl14" | "clipvitlargepatch14" => Some("ViT-L-14"),
        "vitl14336" | "clipvitlargepatch14336" => Some("ViT-L-14-336"),
        _ => None,
    }
}

fn push_layer_norm(out: &mut Vec<(String, Vec<usize>)>, prefix: &str, width: usize) {
    out.push((format!("{prefix}.weight"), vec![width]));
    out.push((format!("{prefix}.bias"), vec![width]));
}

fn push_linear(out: &mut Vec<(String, Vec<usize>)>, prefix: &str, fan_in: usize, fan_out: usize) {
    out.push((format!("{prefix}.weight"), vec![fan_out, fan_in]));
    out.push((format!("{prefix}.bias"), vec![fan_out]));
}

fn push_encoder(
    out: &mut Vec<(String, Vec<usize>)>,
    prefix: &str,
    layers: usize,
    width: usize,
    mlp_dim: usize,
) {
    for i in 0..layers {
        let p = format!("{prefix}.layers.{i}");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            push_linear(out, &format!("{p}.self_attn.{proj}"), width, width);
        }
        push_layer_norm(out, &format!("{p}.layer_norm1"), width);
        push_linear(out, &format!("{p}.mlp.fc1"), width, mlp_dim);
        push_linear(out, &format!("{p}.mlp.fc2"), mlp_dim, width);
        push_layer_norm(out, &format!("{p}.layer_norm2"), width);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_spellings_resolve_to_one_name() {
        for spelling in ["ViT-B-32", "ViT-B/32", "vit_b_32", "openai/clip-vit-base-patch32"] {
            assert_eq!(canonical_preset_name(spelling), Some("ViT-B-32"), "{spelling}");
        }
        for spelling in ["ViT-L-14-336", "ViT-L/14@336px", "openai/clip-vit-large-patch14-336"] {
            assert_eq!(canonical_preset_name(spelling), Some("ViT-L-14-336"), "{spelling}");
        }
        assert_eq!(canonical_preset_name("ViT-H-14"), None);
    }

    #[test]
    fn vit_b_32_has_openai_parameter_count() {
        // OpenAI ViT-B/32: 151,277,313 parameters (sum(p.numel() for p in model.parameters())).
        let total: usize = ClipConfig::vit_b_32()
            .expected_parameters()
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum();
        assert_eq!(total, 151_277_313);
    }
}
