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
//! A weights file is recognised by its content, not its name (safetensors header, PyTorch zip
//! archive); anything else (an image, a legacy pickle, text) is refused as not a checkpoint, and
//! a panic inside candle's pickle reader is caught and reported with the file's name.
//!
//! The architecture is inferred from tensor shapes (as OpenAI's `build_model` does); heads,
//! activation and LayerNorm epsilon come from `--config` ([`ConfigSource`]: an
//! `open_clip_config.json`, an HF `config.json` or a preset name), else from the config file
//! beside the weights, else from OpenAI's conventions (64-wide heads, QuickGELU, 1e-5). The
//! conventions are never applied silently: a tower whose width is not a multiple of 64 is
//! refused (naming the file, the width and the fix), and every value taken from a convention is
//! reported in [`LoadedCheckpoint::notices`] for the caller to print. A config value of the
//! wrong type is a malformed config, naming the key. Every expected key must be present with
//! its expected shape; errors name the key and the file. Saving writes the HF layout
//! (`model.safetensors` with metadata + `config.json`) atomically (temp file, then rename).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::config::{canonical_preset_name, Activation, ClipConfig, TextConfig, VisionConfig};
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
    /// Values assumed from a convention rather than read from a config (one line each), for
    /// the caller to show the user; empty when a config gave everything.
    pub notices: Vec<String>,
}

/// Where the architecture facts that tensor shapes cannot tell come from, when given
/// explicitly (`--config`) instead of by the files beside the weights.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigSource {
    /// An `open_clip_config.json` or an HF `config.json`, told apart by their keys.
    File(PathBuf),
    /// A preset's heads, activation and LayerNorm epsilon (`ViT-B-32`, ...).
    Preset(&'static str),
}

impl ConfigSource {
    /// A preset name (any spelling [`canonical_preset_name`] accepts) or an existing file.
    pub fn parse(spec: &str) -> Result<Self, CheckpointError> {
        if let Some(name) = canonical_preset_name(spec) {
            return Ok(Self::Preset(name));
        }
        let path = PathBuf::from(spec);
        if path.is_file() {
            return Ok(Self::File(path));
        }
        Err(CheckpointError::BadConfig {
            path,
            reason: format!("neither a file nor a preset name ({})", super::config::PRESET_NAMES.join(", ")),
        })
    }
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

/// Reads and validates a checkpoint onto `device`, with the config files beside the weights.
pub fn load(files: &ModelFiles, device: &Device) -> Result<LoadedCheckpoint, CheckpointError> {
    load_with(files, None, device)
}

/// Reads and validates a checkpoint onto `device`; `config`, when given, replaces the config
/// files beside the weights.
pub fn load_with(
    files: &ModelFiles,
    config: Option<&ConfigSource>,
    device: &Device,
) -> Result<LoadedCheckpoint, CheckpointError> {
    let raw = read_tensors(&files.weights, device).map_err(|e| e.in_file(&files.weights))?;
    let layout = detect_layout(raw.iter().map(|(k, _)| k.as_str()))
        .ok_or_else(|| CheckpointError::UnknownLayout { path: files.weights.clone() })?;
    let mut hints = match config {
        Some(source) => ConfigHints::from_source(source)?,
        None => ConfigHints::read(files, layout)?,
    };
    let (config, tensors) = validate(raw, layout, &mut hints).map_err(|e| e.in_file(&files.weights))?;
    let notices = hints.notices.iter().map(|n| format!("{}: {n}", files.weights.display())).collect();
    Ok(LoadedCheckpoint { config, tensors, layout, files: files.clone(), notices })
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
    let mut hints = ConfigHints::from_hf_json(&json, origin)?;
    validate(raw, Layout::Hf, &mut hints).map_err(|e| e.in_file(origin))
}

/// Renames to canonical keys, infers the configuration and checks every key and shape.
fn validate(
    raw: Vec<(String, Tensor)>,
    layout: Layout,
    hints: &mut ConfigHints,
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
    let tensors: Vec<(String, Tensor)> = match sniff(path)? {
        WeightsFormat::Safetensors => candle_core::safetensors::load(path, device)?.into_iter().collect(),
        WeightsFormat::TorchZip => {
            reject_torchscript(path)?;
            read_pickle(path)?
        }
    };
    tensors.into_iter().map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.to_device(device)?))).collect()
}

/// The two container formats weights are read from.
enum WeightsFormat {
    Safetensors,
    TorchZip,
}

/// Tells a weights file's format from its first bytes; anything else is not a checkpoint,
/// with what it looks like instead when that is recognisable.
fn sniff(path: &Path) -> Result<WeightsFormat, CheckpointError> {
    use std::io::Read;
    let io_error = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path).map_err(io_error)?.take(16).read_to_end(&mut head).map_err(io_error)?;
    let size = std::fs::metadata(path).map_err(io_error)?.len();
    if head.starts_with(b"PK\x03\x04") {
        return Ok(WeightsFormat::TorchZip);
    }
    if head.len() > 8 && head[8] == b'{' {
        let header_len = u64::from_le_bytes(head[..8].try_into().expect("eight bytes"));
        if header_len <= size.saturating_sub(8) {
            return Ok(WeightsFormat::Safetensors);
        }
    }
    Err(CheckpointError::NotACheckpoint { path: path.to_path_buf(), looks_like: describe_content(&head) })
}

/// What a file that is not a checkpoint appears to be, from its magic bytes.
fn describe_content(head: &[u8]) -> String {
    let kind = match head {
        [0x89, b'P', b'N', b'G', ..] => "a PNG image",
        [0xFF, 0xD8, 0xFF, ..] => "a JPEG image",
        [0x1F, 0x8B, ..] => "a gzip archive",
        [0x80, 0x02..=0x05, ..] => {
            "a pickle in PyTorch's legacy (pre-1.6) format: re-save it with a current torch.save, or as safetensors"
        }
        [] => "an empty file",
        _ if head.iter().all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) => "a text file",
        _ => "an unrecognised format",
    };
    format!("it is {kind}; expected a safetensors file or a PyTorch (zip) state dict")
}

/// candle's pickle reader, with a panic on malformed input turned into an error naming the file.
fn read_pickle(path: &Path) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let owned = path.to_path_buf();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(move || candle_core::pickle::read_all(owned));
    std::panic::set_hook(default_hook);
    match outcome {
        Ok(result) => Ok(result?),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(CheckpointError::MalformedPickle { path: path.to_path_buf(), reason: message })
        }
    }
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

/// Architecture facts that shapes cannot tell, read from a config (or a preset); `None` heads
/// fall back to OpenAI's 64-wide heads, which `infer_config` checks against the widths.
#[derive(Debug)]
struct ConfigHints {
    vision_heads: Option<usize>,
    text_heads: Option<usize>,
    activation: Activation,
    layer_norm_eps: f64,
    /// Where the hints come from, for errors: a file, a preset, or OpenAI's conventions.
    source: String,
    /// Values taken from a convention rather than from the source.
    notices: Vec<String>,
}

/// How to replace a value assumed from a convention.
const OVERRIDE_HINT: &str =
    "put the model's open_clip_config.json or config.json beside the weights, or pass --config FILE|PRESET";

impl ConfigHints {
    fn read(files: &ModelFiles, layout: Layout) -> Result<Self, CheckpointError> {
        match (&files.openclip_config, &files.hf_config) {
            (Some(path), _) if layout == Layout::OpenClip => Self::from_openclip(path),
            (_, Some(path)) => Self::from_hf(path),
            (Some(path), None) => Self::from_openclip(path),
            (None, None) => Ok(Self::openai_conventions()),
        }
    }

    fn from_source(source: &ConfigSource) -> Result<Self, CheckpointError> {
        match source {
            ConfigSource::Preset(name) => Ok(Self::from_preset(name)),
            ConfigSource::File(path) => {
                let json = read_json(path)?;
                if json.get("vision_config").is_some() || json.get("text_config").is_some() {
                    Self::from_hf_json(&json, path)
                } else if json.get("model_cfg").is_some() || json.get("vision_cfg").is_some() {
                    Self::from_openclip_json(&json, path)
                } else {
                    Err(CheckpointError::BadConfig {
                        path: path.clone(),
                        reason: "neither an HF config.json (no `vision_config`/`text_config`) nor an \
                                 open_clip_config.json (no `model_cfg`/`vision_cfg`)"
                            .into(),
                    })
                }
            }
        }
    }

    fn openai_conventions() -> Self {
        Self {
            vision_heads: None,
            text_heads: None,
            activation: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            source: "no open_clip_config.json or config.json beside the weights".into(),
            notices: Vec::new(),
        }
    }

    fn from_preset(name: &str) -> Self {
        let preset = ClipConfig::preset(name).expect("a canonical preset name");
        Self {
            vision_heads: Some(preset.vision.heads),
            text_heads: Some(preset.text.heads),
            activation: preset.activation,
            layer_norm_eps: preset.layer_norm_eps,
            source: format!("preset {name}"),
            notices: Vec::new(),
        }
    }

    fn from_hf(path: &Path) -> Result<Self, CheckpointError> {
        Self::from_hf_json(&read_json(path)?, path)
    }

    fn from_hf_json(json: &Value, path: &Path) -> Result<Self, CheckpointError> {
        let tower = |name: &str| json.get(name).cloned().unwrap_or(Value::Null);
        let (text, vision) = (tower("text_config"), tower("vision_config"));
        let mut notices = Vec::new();
        let mut act = |cfg: &Value, name: &str| -> Result<Activation, CheckpointError> {
            let Some(value) = cfg.get("hidden_act") else {
                notices.push(format!(
                    "{} has no {name}.hidden_act: assuming transformers' default quick_gelu",
                    path.display()
                ));
                return Ok(Activation::QuickGelu);
            };
            value.as_str().and_then(Activation::from_hf_name).ok_or_else(|| CheckpointError::BadConfig {
                path: path.to_path_buf(),
                reason: format!("`{name}.hidden_act` is {value}; expected \"quick_gelu\" or \"gelu\""),
            })
        };
        let (text_act, vision_act) = (act(&text, "text_config")?, act(&vision, "vision_config")?);
        if text_act != vision_act {
            return Err(CheckpointError::BadConfig {
                path: path.to_path_buf(),
                reason: "the text and vision towers use different activations, which is not supported".into(),
            });
        }
        let mut heads = |cfg: &Value, name: &str, default: usize| -> Result<usize, CheckpointError> {
            let key = format!("{name}.num_attention_heads");
            Ok(positive_int(cfg, "num_attention_heads", &key, path)?.unwrap_or_else(|| {
                notices.push(format!(
                    "{} has no {key}: assuming transformers' default {default}",
                    path.display()
                ));
                default
            }))
        };
        let vision_heads = heads(&vision, "vision_config", 12)?;
        let text_heads = heads(&text, "text_config", 8)?;
        Ok(Self {
            vision_heads: Some(vision_heads),
            text_heads: Some(text_heads),
            activation: text_act,
            layer_norm_eps: layer_norm_eps(&text, path)?,
            source: path.display().to_string(),
            notices,
        })
    }

    fn from_openclip(path: &Path) -> Result<Self, CheckpointError> {
        Self::from_openclip_json(&read_json(path)?, path)
    }

    /// open_clip's own defaults (`CLIPVisionCfg`, `CLIPTextCfg`) fill what the file omits,
    /// as open_clip itself does.
    fn from_openclip_json(json: &Value, path: &Path) -> Result<Self, CheckpointError> {
        let cfg = json.get("model_cfg").unwrap_or(json);
        let vision = cfg.get("vision_cfg").cloned().unwrap_or(Value::Null);
        let text = cfg.get("text_cfg").cloned().unwrap_or(Value::Null);
        let head_width = positive_int(&vision, "head_width", "vision_cfg.head_width", path)?.unwrap_or(64);
        let vision_width = positive_int(&vision, "width", "vision_cfg.width", path)?;
        let quick_gelu = match cfg.get("quick_gelu") {
            None => false,
            Some(value) => value.as_bool().ok_or_else(|| CheckpointError::BadConfig {
                path: path.to_path_buf(),
                reason: format!("`quick_gelu` must be true or false, found {value}"),
            })?,
        };
        Ok(Self {
            vision_heads: vision_width.map(|w| w / head_width),
            text_heads: Some(positive_int(&text, "heads", "text_cfg.heads", path)?.unwrap_or(8)),
            activation: if quick_gelu { Activation::QuickGelu } else { Activation::Gelu },
            layer_norm_eps: 1e-5,
            source: path.display().to_string(),
            notices: Vec::new(),
        })
    }
}

fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text)
        .map_err(|e| CheckpointError::BadConfig { path: path.to_path_buf(), reason: e.to_string() })
}

/// `value[field]` as a positive integer: `None` when absent, an error naming `key` (its
/// dotted path in the file) when present with another type or zero.
fn positive_int(
    value: &Value,
    field: &str,
    key: &str,
    path: &Path,
) -> Result<Option<usize>, CheckpointError> {
    match value.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(found) => match found.as_u64() {
            Some(n) if n > 0 => Ok(Some(n as usize)),
            _ => Err(CheckpointError::BadConfig {
                path: path.to_path_buf(),
                reason: format!("`{key}` must be a positive integer, found {found}"),
            }),
        },
    }
}

/// The HF text tower's `layer_norm_eps` (the model uses one epsilon), 1e-5 when absent.
fn layer_norm_eps(text: &Value, path: &Path) -> Result<f64, CheckpointError> {
    match text.get("layer_norm_eps") {
        None => Ok(1e-5),
        Some(value) => value.as_f64().filter(|eps| eps.is_finite() && *eps > 0.0).ok_or_else(|| {
            CheckpointError::BadConfig {
                path: path.to_path_buf(),
                reason: format!("`text_config.layer_norm_eps` must be a positive number, found {value}"),
            }
        }),
    }
}

/// Derives the architecture from canonical tensor shapes (OpenAI `build_model`'s approach).
fn infer_config(
    tensors: &HashMap<String, Tensor>,
    hints: &mut ConfigHints,
) -> Result<ClipConfig, CheckpointError> {
    let dims = |key: &str, rank: usize| -> Result<Vec<usize>, CheckpointError> {
        let found = tensors
            .get(key)
            .map(|t| t.dims().to_vec())
            .ok_or(CheckpointError::MissingKey { key: key.to_string() })?;
        if found.len() != rank {
            return Err(CheckpointError::Rank { key: key.to_string(), expected: rank, found });
        }
        Ok(found)
    };
    let count_layers = |prefix: &str| {
        (0..).take_while(|i| tensors.contains_key(&format!("{prefix}.layers.{i}.layer_norm1.weight"))).count()
    };
    let patch = dims("vision_model.embeddings.patch_embedding.weight", 4)?;
    let vision_positions = dims("vision_model.embeddings.position_embedding.weight", 2)?[0];
    let grid = ((vision_positions.saturating_sub(1)) as f64).sqrt().round() as usize;
    let vision_width = patch[0];
    let text_embedding = dims("text_model.embeddings.token_embedding.weight", 2)?;
    let text_width = text_embedding[1];
    let vision_heads = heads_for("vision", vision_width, hints.vision_heads, &hints.source)?;
    let text_heads = heads_for("text", text_width, hints.text_heads, &hints.source)?;
    if hints.vision_heads.is_none() || hints.text_heads.is_none() {
        hints.notices.push(format!(
            "{}: assumed OpenAI's conventions: {vision_heads} vision and {text_heads} text attention heads \
             of width 64, {} activation, LayerNorm eps {}; if this is not an OpenAI model, {OVERRIDE_HINT}",
            hints.source,
            hints.activation.hf_name(),
            hints.layer_norm_eps
        ));
    }
    let vision = VisionConfig {
        image_size: grid * patch[2],
        patch_size: patch[2],
        width: vision_width,
        layers: count_layers("vision_model.encoder"),
        heads: vision_heads,
        mlp_dim: dims("vision_model.encoder.layers.0.mlp.fc1.weight", 2)?[0],
    };
    let text = TextConfig {
        vocab_size: text_embedding[0],
        context_length: dims("text_model.embeddings.position_embedding.weight", 2)?[0],
        width: text_width,
        layers: count_layers("text_model.encoder"),
        heads: text_heads,
        mlp_dim: dims("text_model.encoder.layers.0.mlp.fc1.weight", 2)?[0],
    };
    Ok(ClipConfig {
        vision,
        text,
        embed_dim: dims("text_projection.weight", 2)?[0],
        activation: hints.activation,
        layer_norm_eps: hints.layer_norm_eps,
    })
}

/// A tower's head count: the config's, which must divide the width, or OpenAI's 64-wide heads,
/// which only a width that is a multiple of 64 can have.
fn heads_for(
    tower: &str,
    width: usize,
    hinted: Option<usize>,
    source: &str,
) -> Result<usize, CheckpointError> {
    match hinted {
        None if width == 0 || !width.is_multiple_of(64) => {
            Err(CheckpointError::UnknownHeads { tower: tower.to_string(), width, fix: OVERRIDE_HINT })
        }
        None => Ok(width / 64),
        Some(heads) if heads == 0 || !width.is_multiple_of(heads) => {
            Err(CheckpointError::Heads { tower: tower.to_string(), width, heads, config: source.to_string() })
        }
        Some(heads) => Ok(heads),
    }
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

/// Writes f32 `tensors` with `metadata` as a safetensors file, atomically. Every tensor is
/// copied to the host first, so a failed copy is an error naming its key, never a short file.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<(), CheckpointError> {
    let write_error = |reason: String| CheckpointError::Write { path: path.to_path_buf(), reason };
    let host = tensors
        .iter()
        .map(|(key, tensor)| {
            HostTensor::new(tensor)
                .map(|t| (key.as_str(), t))
                .map_err(|e| write_error(format!("tensor `{key}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes =
        safetensors::tensor::serialize(host, Some(metadata)).map_err(|e| write_error(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    std::fs::write(&tmp, bytes).map_err(|source| CheckpointError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })
}

/// A tensor's values as little-endian f32 bytes on the host, for the `safetensors` serialiser.
struct HostTensor {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl HostTensor {
    fn new(tensor: &Tensor) -> candle_core::Result<Self> {
        let values: Vec<f32> = tensor.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        Ok(Self {
            shape: tensor.dims().to_vec(),
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }
}

impl safetensors::View for HostTensor {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}
