//! Finding, reading and writing CLIP checkpoints.
//!
//! Accepted inputs (`--model`): a directory or file in the HF transformers layout
//! (`model.safetensors` + `config.json`, or `pytorch_model.bin`), or the OpenAI / OpenCLIP layout
//! (`open_clip_model.safetensors`, `open_clip_pytorch_model.bin`, `*.pt`/`*.pth`/`*.bin` state
//! dicts read with candle's pickle reader, + optional `open_clip_config.json`); or a hub id
//! (`openai/clip-vit-base-patch32`) resolved in the local Hugging Face cache through the
//! `hf-hub` crate, offline (nothing is downloaded). TorchScript archives (OpenAI's original
//! `ViT-B-32.pt`) are not state dicts and are rejected with an explanation.
//!
//! The architecture is inferred from tensor shapes (as OpenAI's `build_model` does); heads,
//! activation and LayerNorm epsilon come from the config file beside the weights, else from
//! OpenAI's conventions (64-wide heads, QuickGELU, 1e-5). Every expected key must be present
//! with its expected shape; errors name the key and the file. Saving writes the HF layout
//! (`model.safetensors` with metadata + `config.json`) atomically (temp file, then rename).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::config::{Activation, ClipConfig, TextConfig, VisionConfig};
use super::keymap::{detect_layout, openclip_to_hf, Layout};
use super::CheckpointError;

/// Weight file names looked for inside a model directory (or hub repository), in order.
const WEIGHT_FILES: [&str; 5] = [
    "model.safetensors",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
    "model.pt",
];

/// Where a model's files are.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFiles {
    pub weights: PathBuf,
    /// HF `config.json`, when present.
    pub hf_config: Option<PathBuf>,
    /// `open_clip_config.json`, when present.
    pub openclip_config: Option<PathBuf>,
}

/// A checkpoint read into canonical (HF) names, with its inferred configuration.
pub struct LoadedCheckpoint {
    pub config: ClipConfig,
    /// Tensors in `config.expected_parameters()` order, f32, on the requested device.
    pub tensors: Vec<(String, Tensor)>,
    pub layout: Layout,
    pub files: ModelFiles,
}

/// Resolves `spec` (a path or a hub id) to files on disk.
pub fn resolve(spec: &str) -> Result<ModelFiles, CheckpointError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return files_in_dir(path);
    }
    if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new("."));
        return Ok(ModelFiles {
            weights: path.to_path_buf(),
            hf_config: existing(dir.join("config.json")),
            openclip_config: existing(dir.join("open_clip_config.json")),
        });
    }
    if looks_like_hub_id(spec) {
        return files_in_hub_cache(spec);
    }
    Err(CheckpointError::NotFound { path: path.to_path_buf() })
}

fn existing(path: PathBuf) -> Option<PathBuf> {
    path.is_file().then_some(path)
}

fn files_in_dir(dir: &Path) -> Result<ModelFiles, CheckpointError> {
    let weights = WEIGHT_FILES.iter().map(|name| dir.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        CheckpointError::NoWeights { dir: dir.to_path_buf(), looked_for: WEIGHT_FILES.join(", ") }
    })?;
    Ok(ModelFiles {
        weights,
        hf_config: existing(dir.join("config.json")),
        openclip_config: existing(dir.join("open_clip_config.json")),
    })
}

fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.')) && !spec.contains('\\')
}

fn files_in_hub_cache(id: &str) -> Result<ModelFiles, CheckpointError> {
    let cache = hf_hub::Cache::from_env();
    let repo = cache.model(id.to_string());
    let weights = WEIGHT_FILES
        .iter()
        .find_map(|name| repo.get(name))
        .ok_or_else(|| CheckpointError::NotCached { id: id.to_string(), cache: cache.path().clone() })?;
    Ok(ModelFiles {
        weights,
        hf_config: repo.get("config.json"),
        openclip_config: repo.get("open_clip_config.json"),
    })
}

/// Reads and validates a checkpoint onto `device`.
pub fn load(files: &ModelFiles, device: &Device) -> Result<LoadedCheckpoint, CheckpointError> {
    let raw = read_tensors(&files.weights, device).map_err(|e| e.in_file(&files.weights))?;
    let layout = detect_layout(raw.iter().map(|(k, _)| k.as_str()))
        .ok_or_else(|| CheckpointError::UnknownLayout { path: files.weights.clone() })?;
    let hints = ConfigHints::read(files, layout)?;
    let (config, tensors) = validate(raw, layout, &hints).map_err(|e| e.in_file(&files.weights))?;
    Ok(LoadedCheckpoint { config, tensors, layout, files: files.clone() })
}

/// Loads an HF-layout checkpoint held in memory: safetensors bytes and `config.json` text
/// (the model bundled into the binary). `origin` names it in errors.
pub fn load_hf_bytes(
    weights: &[u8],
    config_json: &str,
    origin: &Path,
    device: &Device,
) -> Result<(ClipConfig, Vec<(String, Tensor)>), CheckpointError> {
    let raw: Vec<(String, Tensor)> = candle_core::safetensors::load_buffer(weights, device)
        .map_err(|e| CheckpointError::from(e).in_file(origin))?
        .into_iter()
        .collect();
    let json = serde_json::from_str(config_json)
        .map_err(|e| CheckpointError::BadConfig { path: origin.to_path_buf(), reason: e.to_string() })?;
    let hints = ConfigHints::from_hf_json(&json, origin)?;
    validate(raw, Layout::Hf, &hints).map_err(|e| e.in_file(origin))
}

/// Renames to canonical keys, infers the configuration and checks every key and shape.
fn validate(
    raw: Vec<(String, Tensor)>,
    layout: Layout,
    hints: &ConfigHints,
) -> Result<(ClipConfig, Vec<(String, Tensor)>), CheckpointError> {
    let canonical = match layout {
        Layout::Hf => raw
            .into_iter()
            .map(|(k, t)| (k.strip_prefix("module.").map(str::to_string).unwrap_or(k), t))
            .filter(|(k, _)| !k.ends_with(".position_ids"))
            .collect(),
        Layout::OpenClip => openclip_to_hf(raw)?,
    };
    let mut by_name: HashMap<String, Tensor> = canonical.into_iter().collect();
    let config = infer_config(&by_name, hints)?;
    let tensors = take_expected(&config, &mut by_name)?;
    Ok((config, tensors))
}

/// Reads every tensor of a safetensors or pickle file, converted to f32.
fn read_tensors(path: &Path, device: &Device) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let tensors: Vec<(String, Tensor)> = if is_safetensors {
        candle_core::safetensors::load(path, device)?.into_iter().collect()
    } else {
        reject_torchscript(path)?;
        candle_core::pickle::read_all(path)?
    };
    tensors.into_iter().map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.to_device(device)?))).collect()
}

/// TorchScript archives (OpenAI's JIT `.pt`) hold code, not a state dict.
fn reject_torchscript(path: &Path) -> Result<(), CheckpointError> {
    let Ok(file) = std::fs::File::open(path) else { return Ok(()) };
    let Ok(names) = zip_names(file) else { return Ok(()) };
    if names.iter().any(|n| n.ends_with("constants.pkl") || n.contains("/code/")) {
        return Err(CheckpointError::TorchScript { path: path.to_path_buf() });
    }
    Ok(())
}

/// Names of the entries of a zip archive (PyTorch's file format), read from the central
/// directory.
fn zip_names(file: std::fs::File) -> std::io::Result<Vec<String>> {
    let mut archive = zip::ZipArchive::new(file).map_err(std::io::Error::other)?;
    Ok((0..archive.len())
        .filter_map(|i| archive.by_index(i).ok().and_then(|f| f.name().ok().map(|n| n.to_string())))
        .collect())
}

/// Architecture facts that shapes cannot tell, read from the config file beside the weights.
#[derive(Debug)]
struct ConfigHints {
    vision_heads: Option<usize>,
    text_heads: Option<usize>,
    activation: Activation,
    layer_norm_eps: f64,
}

impl ConfigHints {
    fn read(files: &ModelFiles, layout: Layout) -> Result<Self, CheckpointError> {
        match (&files.openclip_config, &files.hf_config) {
            (Some(path), _) if layout == Layout::OpenClip => Self::from_openclip(path),
            (_, Some(path)) => Self::from_hf(path),
            (Some(path), None) => Self::from_openclip(path),
            (None, None) => Ok(Self::openai_conventions()),
        }
    }

    fn openai_conventions() -> Self {
        Self { vision_heads: None, text_heads: None, activation: Activation::QuickGelu, layer_norm_eps: 1e-5 }
    }

    fn from_hf(path: &Path) -> Result<Self, CheckpointError> {
        Self::from_hf_json(&read_json(path)?, path)
    }

    fn from_hf_json(json: &Value, path: &Path) -> Result<Self, CheckpointError> {
        let tower = |name: &str| json.get(name).cloned().unwrap_or(Value::Null);
        let (text, vision) = (tower("text_config"), tower("vision_config"));
        let act = |cfg: &Value| -> Result<Activation, CheckpointError> {
            let name = cfg.get("hidden_act").and_then(Value::as_str).unwrap_or("quick_gelu");
            Activation::from_hf_name(name).ok_or_else(|| CheckpointError::BadConfig {
                path: path.to_path_buf(),
                reason: format!("unsupported hidden_act {name:?} (expected \"quick_gelu\" or \"gelu\")"),
            })
        };
        let (text_act, vision_act) = (act(&text)?, act(&vision)?);
        if text_act != vision_act {
            return Err(CheckpointError::BadConfig {
                path: path.to_path_buf(),
                reason: "the text and vision towers use different activations, which is not supported".into(),
            });
        }
        Ok(Self {
            vision_heads: Some(usize_field(&vision, "num_attention_heads").unwrap_or(12)),
            text_heads: Some(usize_field(&text, "num_attention_heads").unwrap_or(8)),
            activation: text_act,
            layer_norm_eps: text.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-5),
        })
    }

    fn from_openclip(path: &Path) -> Result<Self, CheckpointError> {
        let json = read_json(path)?;
        let cfg = json.get("model_cfg").unwrap_or(&json);
        let vision = cfg.get("vision_cfg").cloned().unwrap_or(Value::Null);
        let text = cfg.get("text_cfg").cloned().unwrap_or(Value::Null);
        let head_width = usize_field(&vision, "head_width").unwrap_or(64);
        let vision_heads = usize_field(&vision, "width").map(|w| w / head_width.max(1));
        let quick_gelu = cfg.get("quick_gelu").and_then(Value::as_bool).unwrap_or(false);
        Ok(Self {
            vision_heads,
            text_heads: Some(usize_field(&text, "heads").unwrap_or(8)),
            activation: if quick_gelu { Activation::QuickGelu } else { Activation::Gelu },
            layer_norm_eps: 1e-5,
        })
    }
}

fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text)
        .map_err(|e| CheckpointError::BadConfig { path: path.to_path_buf(), reason: e.to_string() })
}

fn usize_field(value: &Value, key: &str) -> Option<usize> {
    value.get(key).and_then(Value::as_u64).map(|v| v as usize)
}

/// Derives the architecture from canonical tensor shapes (OpenAI `build_model`'s approach).
fn infer_config(
    tensors: &HashMap<String, Tensor>,
    hints: &ConfigHints,
) -> Result<ClipConfig, CheckpointError> {
    let dims = |key: &str| -> Result<Vec<usize>, CheckpointError> {
        tensors
            .get(key)
            .map(|t| t.dims().to_vec())
            .ok_or(CheckpointError::MissingKey { key: key.to_string() })
    };
    let count_layers = |prefix: &str| {
        (0..).take_while(|i| tensors.contains_key(&format!("{prefix}.layers.{i}.layer_norm1.weight"))).count()
    };
    let patch = dims("vision_model.embeddings.patch_embedding.weight")?;
    let vision_positions = dims("vision_model.embeddings.position_embedding.weight")?[0];
    let grid = ((vision_positions.saturating_sub(1)) as f64).sqrt().round() as usize;
    let vision_width = patch[0];
    let text_embedding = dims("text_model.embeddings.token_embedding.weight")?;
    let text_width = text_embedding[1];
    let vision = VisionConfig {
        image_size: grid * patch[2],
        patch_size: patch[2],
        width: vision_width,
        layers: count_layers("vision_model.encoder"),
        heads: heads_for("vision", vision_width, hints.vision_heads)?,
        mlp_dim: dims("vision_model.encoder.layers.0.mlp.fc1.weight")?[0],
    };
    let text = TextConfig {
        vocab_size: text_embedding[0],
        context_length: dims("text_model.embeddings.position_embedding.weight")?[0],
        width: text_width,
        layers: count_layers("text_model.encoder"),
        heads: heads_for("text", text_width, hints.text_heads)?,
        mlp_dim: dims("text_model.encoder.layers.0.mlp.fc1.weight")?[0],
    };
    Ok(ClipConfig {
        vision,
        text,
        embed_dim: dims("text_projection.weight")?[0],
        activation: hints.activation,
        layer_norm_eps: hints.layer_norm_eps,
    })
}

fn heads_for(tower: &str, width: usize, hinted: Option<usize>) -> Result<usize, CheckpointError> {
    let heads = hinted.unwrap_or(width / 64);
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err(CheckpointError::Heads { tower: tower.to_string(), width, heads });
    }
    Ok(heads)
}

/// Moves every expected tensor out of `tensors` in canonical order, checking shapes, and
/// fails on anything left over.
fn take_expected(
    config: &ClipConfig,
    tensors: &mut HashMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let mut out = Vec::new();
    for (key, shape) in config.expected_parameters() {
        let tensor = tensors.remove(&key).ok_or_else(|| CheckpointError::MissingKey { key: key.clone() })?;
        let tensor = if shape.is_empty() && tensor.dims() == [1] { tensor.reshape(())? } else { tensor };
        if tensor.dims() != shape.as_slice() {
            return Err(CheckpointError::ShapeMismatch {
                key,
                expected: shape,
                found: tensor.dims().to_vec(),
            });
        }
        out.push((key, tensor));
    }
    if !tensors.is_empty() {
        let mut keys: Vec<String> = tensors.keys().cloned().collect();
        keys.sort();
        return Err(CheckpointError::UnexpectedKeys { keys });
    }
    Ok(out)
}

/// The HF `config.json` for `config`.
pub fn hf_config_json(config: &ClipConfig) -> Value {
    let act = config.activation.hf_name();
    json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "vocab_size": config.text.vocab_size,
            "hidden_size": config.text.width,
            "intermediate_size": config.text.mlp_dim,
            "num_hidden_layers": config.text.layers,
            "num_attention_heads": config.text.heads,
            "max_position_embeddings": config.text.context_length,
            "hidden_act": act,
            "layer_norm_eps": config.layer_norm_eps,
            "projection_dim": config.embed_dim,
            "bos_token_id": config.text.vocab_size - 2,
            "eos_token_id": config.text.vocab_size - 1,
        },
        "vision_config": {
            "hidden_size": config.vision.width,
            "intermediate_size": config.vision.mlp_dim,
            "num_hidden_layers": config.vision.layers,
            "num_attention_heads": config.vision.heads,
            "image_size": config.vision.image_size,
            "patch_size": config.vision.patch_size,
            "num_channels": 3,
            "hidden_act": act,
            "layer_norm_eps": config.layer_norm_eps,
            "projection_dim": config.embed_dim,
        },
    })
}

/// Writes `tensors` (canonical names) as an HF-layout model directory: `model.safetensors`
/// (with `metadata` in its header) and `config.json`. Each file is written to a temporary
/// name and renamed, so a crash never leaves a half-written checkpoint.
pub fn save_hf(
    dir: &Path,
    config: &ClipConfig,
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io { path: dir.to_path_buf(), source })?;
    let mut meta = metadata.clone();
    meta.insert("format".into(), "pt".into());
    write_safetensors(&dir.join("model.safetensors"), tensors, meta)?;
    let config_text = serde_json::to_string_pretty(&hf_config_json(config)).expect("a JSON value serialises");
    write_atomic(&dir.join("config.json"), config_text.as_bytes())
}

/// Writes f32 `tensors` with `metadata` as a safetensors file, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let bytes = safetensors::tensor::serialize(
        tensors.iter().map(|(k, t)| (k.as_str(), SafeView(t))),
        Some(metadata),
    )
    .map_err(|e| CheckpointError::Write { path: path.to_path_buf(), reason: e.to_string() })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    std::fs::write(&tmp, bytes).map_err(|source| CheckpointError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })
}

/// Adapts a candle tensor to the `safetensors` serialiser; values are written as f32.
struct SafeView<'a>(&'a Tensor);

impl safetensors::View for SafeView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        self.0.dims()
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let values: Vec<f32> =
            self.0.flatten_all().and_then(|t| t.to_dtype(DType::F32)?.to_vec1()).unwrap_or_default();
        std::borrow::Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn data_len(&self) -> usize {
        self.0.elem_count() * 4
    }
}
