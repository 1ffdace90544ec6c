//! The one key-remap table between the two checkpoint layouts CLIP weights ship in:
//! HF transformers (`CLIPModel`: `vision_model.encoder.layers.N.self_attn.q_proj.weight`, ...,
//! the project's canonical names) and OpenAI / OpenCLIP (`visual.transformer.resblocks.N.
//! attn.in_proj_weight`, ...). Checked against transformers' `convert_clip_original_pytorch_to_hf.py`
//! conventions and, numerically, by the parity fixtures of `scripts/fixtures/models.py`.
//!
//! | OpenCLIP key                              | HF key                                              | transform   |
//! |-------------------------------------------|-----------------------------------------------------|-------------|
//! | `visual.conv1.weight`                     | `vision_model.embeddings.patch_embedding.weight`    |             |
//! | `visual.class_embedding`                  | `vision_model.embeddings.class_embedding`           |             |
//! | `visual.positional_embedding`             | `vision_model.embeddings.position_embedding.weight` |             |
//! | `visual.ln_pre.*`                         | `vision_model.pre_layrnorm.*`                       |             |
//! | `visual.transformer.resblocks.N.*`        | `vision_model.encoder.layers.N.*` (block table)     |             |
//! | `visual.ln_post.*`                        | `vision_model.post_layernorm.*`                     |             |
//! | `visual.proj` `[width, embed]`            | `visual_projection.weight` `[embed, width]`         | transpose   |
//! | `token_embedding.weight`                  | `text_model.embeddings.token_embedding.weight`      |             |
//! | `positional_embedding`                    | `text_model.embeddings.position_embedding.weight`   |             |
//! | `transformer.resblocks.N.*`               | `text_model.encoder.layers.N.*` (block table)       |             |
//! | `ln_final.*`                              | `text_model.final_layer_norm.*`                     |             |
//! | `text_projection` `[width, embed]`        | `text_projection.weight` `[embed, width]`           | transpose   |
//! | `logit_scale`                             | `logit_scale`                                       |             |
//!
//! Inside a block: `ln_1` ↔ `layer_norm1`, `ln_2` ↔ `layer_norm2`, `attn.out_proj` ↔
//! `self_attn.out_proj`, `mlp.c_fc` ↔ `mlp.fc1`, `mlp.c_proj` ↔ `mlp.fc2`, and the fused
//! `attn.in_proj_weight` `[3w, w]` / `attn.in_proj_bias` `[3w]` ↔ `self_attn.{q,k,v}_proj`
//! (split in q, k, v order along the first dimension).
//!
//! Buffers that are not parameters are dropped: `attn_mask`, OpenAI's `input_resolution`,
//! `context_length`, `vocab_size`, and HF's `*.position_ids`. A DDP `module.` prefix is stripped.

use candle_core::Tensor;

use super::CheckpointError;

/// The key layout of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// HF transformers `CLIPModel` names.
    Hf,
    /// OpenAI CLIP / OpenCLIP names.
    OpenClip,
}

const GLOBAL_RENAMES: [(&str, &str); 9] = [
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("logit_scale", "logit_scale"),
    ("visual.ln_pre.", "vision_model.pre_layrnorm."),
    ("visual.ln_post.", "vision_model.post_layernorm."),
    ("ln_final.", "text_model.final_layer_norm."),
];

const TRANSPOSED: [(&str, &str); 2] =
    [("visual.proj", "visual_projection.weight"), ("text_projection", "text_projection.weight")];

const TOWER_BLOCKS: [(&str, &str); 2] = [
    ("visual.transformer.resblocks.", "vision_model.encoder.layers."),
    ("transformer.resblocks.", "text_model.encoder.layers."),
];

const BLOCK_RENAMES: [(&str, &str); 5] = [
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("attn.out_proj.", "self_attn.out_proj."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
];

const FUSED_QKV: [(&str, &str); 2] = [("attn.in_proj_weight", "weight"), ("attn.in_proj_bias", "bias")];

const QKV: [&str; 3] = ["q_proj", "k_proj", "v_proj"];

const OPENCLIP_BUFFERS: [&str; 4] = ["attn_mask", "input_resolution", "context_length", "vocab_size"];

/// Guesses the layout from the keys: HF checkpoints have `vision_model.` keys.
pub fn detect_layout<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Layout> {
    for key in keys {
        let key = key.strip_prefix("module.").unwrap_or(key);
        if key.starts_with("vision_model.") || key.starts_with("text_model.") {
            return Some(Layout::Hf);
        }
        if key.starts_with("visual.") || key.starts_with("transformer.resblocks.") {
            return Some(Layout::OpenClip);
        }
    }
    None
}

/// True for HF and OpenCLIP buffers that are not parameters.
fn is_buffer(key: &str) -> bool {
    key.ends_with(".position_ids") || key.ends_with("attn_mask") || OPENCLIP_BUFFERS.contains(&key)
}

/// Renames (and splits / transposes) OpenCLIP tensors into HF names. Unknown keys are
/// returned as an error naming them.
pub fn openclip_to_hf(tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let mut out = Vec::with_capacity(tensors.len() + tensors.len() / 4);
    let mut unknown = Vec::new();
    for (key, tensor) in tensors {
        let key = key.strip_prefix("module.").map(str::to_string).unwrap_or(key);
        if is_buffer(&key) {
            continue;
        }
        match openclip_entry_to_hf(&key, &tensor)? {
            Some(entries) => out.extend(entries),
            None => unknown.push(key),
        }
    }
    if unknown.is_empty() {
        Ok(out)
    } else {
        Err(CheckpointError::UnexpectedKeys { keys: unknown })
    }
}

fn openclip_entry_to_hf(
    key: &str,
    tensor: &Tensor,
) -> Result<Option<Vec<(String, Tensor)>>, CheckpointError> {
    if let Some((_, hf)) = TRANSPOSED.iter().find(|(oc, _)| *oc == key) {
        expect_rank(key, tensor, 2)?;
        return Ok(Some(vec![(hf.to_string(), tensor.t()?.contiguous()?)]));
    }
    if let Some(hf) = rename_global(key, &GLOBAL_RENAMES, false) {
        return Ok(Some(vec![(hf, tensor.clone())]));
    }
    for (oc_prefix, hf_prefix) in TOWER_BLOCKS {
        let Some(rest) = key.strip_prefix(oc_prefix) else { continue };
        let Some((layer, inner)) = rest.split_once('.') else { return Ok(None) };
        let block = format!("{hf_prefix}{layer}.");
        if let Some((_, suffix)) = FUSED_QKV.iter().find(|(fused, _)| *fused == inner) {
            expect_rank(key, tensor, if *suffix == "weight" { 2 } else { 1 })?;
            return Ok(Some(split_qkv(&block, suffix, tensor)?));
        }
        return Ok(rename_global(inner, &BLOCK_RENAMES, false)
            .map(|hf| vec![(format!("{block}{hf}"), tensor.clone())]));
    }
    Ok(None)
}

fn expect_rank(key: &str, tensor: &Tensor, rank: usize) -> Result<(), CheckpointError> {
    if tensor.rank() == rank {
        return Ok(());
    }
    Err(CheckpointError::Rank { key: key.to_string(), expected: rank, found: tensor.dims().to_vec() })
}

fn split_qkv(block: &str, suffix: &str, fused: &Tensor) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let width = fused.dim(0)? / 3;
    QKV.iter()
        .enumerate()
        .map(|(i, proj)| {
            Ok((
                format!("{block}self_attn.{proj}.{suffix}"),
                fused.narrow(0, i * width, width)?.contiguous()?,
            ))
        })
        .collect()
}

/// Applies the first matching rename of `table` (exact key, or prefix when the entry ends
/// with '.'), in either direction.
fn rename_global(key: &str, table: &[(&str, &str)], reverse: bool) -> Option<String> {
    table.iter().find_map(|&(oc, hf)| {
        let (from, to) = if reverse { (hf, oc) } else { (oc, hf) };
        if from.ends_with('.') {
            key.strip_prefix(from).map(|rest| format!("{to}{rest}"))
        } else {
            (key == from).then(|| to.to_string())
        }
    })
}

/// Renames HF tensors (the canonical names) into the OpenCLIP layout, fusing q/k/v and
/// transposing the projections. Used to save OpenCLIP-layout files and to compare gradients
/// with OpenCLIP references.
pub fn hf_to_openclip(tensors: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let lookup: std::collections::HashMap<&str, &Tensor> =
        tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut out = Vec::new();
    for (key, tensor) in tensors {
        if key.contains(".self_attn.k_proj.") || key.contains(".self_attn.v_proj.") {
            continue; // fused together with q_proj
        }
        if let Some((oc, _)) = TRANSPOSED.iter().find(|(_, hf)| hf == key) {
            out.push((oc.to_string(), tensor.t()?.contiguous()?));
        } else if let Some(oc) = rename_global(key, &GLOBAL_RENAMES, true) {
            out.push((oc, tensor.clone()));
        } else if let Some(entry) = hf_block_entry_to_openclip(key, tensor, &lookup)? {
            out.push(entry);
        } else {
            return Err(CheckpointError::UnexpectedKeys { keys: vec![key.clone()] });
        }
    }
    Ok(out)
}

fn hf_block_entry_to_openclip(
    key: &str,
    tensor: &Tensor,
    lookup: &std::collections::HashMap<&str, &Tensor>,
) -> Result<Option<(String, Tensor)>, CheckpointError> {
    for (oc_prefix, hf_prefix) in TOWER_BLOCKS {
        let Some(rest) = key.strip_prefix(hf_prefix) else { continue };
        let Some((layer, inner)) = rest.split_once('.') else { return Ok(None) };
        let block = format!("{oc_prefix}{layer}.");
        if let Some(suffix) = inner.strip_prefix("self_attn.q_proj.") {
            let (fused_name, _) = FUSED_QKV
                .iter()
                .find(|(_, s)| *s == suffix)
                .ok_or_else(|| CheckpointError::UnexpectedKeys { keys: vec![key.to_string()] })?;
            let parts = QKV
                .iter()
                .map(|proj| {
                    let name = format!("{hf_prefix}{layer}.self_attn.{proj}.{suffix}");
                    lookup
                        .get(name.as_str())
                        .map(|t| (*t).clone())
                        .ok_or(CheckpointError::MissingKey { key: name })
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Some((format!("{block}{fused_name}"), Tensor::cat(&parts, 0)?)));
        }
        return Ok(
            rename_global(inner, &BLOCK_RENAMES, true).map(|oc| (format!("{block}{oc}"), tensor.clone()))
        );
    }
    Ok(None)
}
