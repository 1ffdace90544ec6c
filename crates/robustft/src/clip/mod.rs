//! CLIP (Radford et al., 2021) in candle: configuration and presets, the two towers,
//! checkpoint loading in the HF and OpenAI/OpenCLIP layouts, the BPE tokenizer and the exact
//! OpenAI preprocessing. Every parameter is a candle `Var` named by its HF checkpoint key
//! ([`ParamStore`]), so any method can reach any parameter and keep a frozen copy.
//!
//! Checked against transformers' `CLIPModel` and open_clip's `CLIP` on tiny random checkpoints
//! (embeddings, logits and every parameter's gradient): `tests/model_parity.rs`.

pub mod bundled;
pub mod checkpoint;
pub mod config;
pub mod keymap;
pub mod layers;
pub mod params;
pub mod preprocess;
pub mod text;
pub mod tokenizer;
pub mod vision;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub use checkpoint::{ConfigSource, LoadedCheckpoint, ModelFiles};
pub use config::{Activation, ClipConfig, TextConfig, VisionConfig};
pub use keymap::Layout;
pub use params::ParamStore;

use crate::rng::SplitMix64;

/// Everything that can go wrong finding, reading, validating or writing a checkpoint.
/// Each message names the file, key or tower concerned.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: no such file or directory (and not a hub id of the form org/name)")]
    NotFound { path: PathBuf },
    #[error("no model weights in {dir} (looked for {looked_for})")]
    NoWeights { dir: PathBuf, looked_for: String },
    #[error("{id} is not in the local Hugging Face cache ({cache}); robustft never downloads: fetch it once (e.g. `huggingface-cli download {id}`) or pass a local path")]
    NotCached { id: String, cache: PathBuf },
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a CLIP checkpoint (no `vision_model.*` or `visual.*` keys)")]
    UnknownLayout { path: PathBuf },
    #[error("{path} is a TorchScript archive, not a state dict; load it in Python and save `model.state_dict()` (or use the open_clip / HF safetensors release)")]
    TorchScript { path: PathBuf },
    #[error("bad model config {path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("missing key `{key}`")]
    MissingKey { key: String },
    #[error("key `{key}`: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch { key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("unexpected keys: {}", keys.join(", "))]
    UnexpectedKeys { keys: Vec<String> },
    #[error("{config}: {heads} attention heads do not divide the {tower} tower's width {width}; the config does not match the weights")]
    Heads { tower: String, width: usize, heads: usize, config: String },
    #[error("the {tower} tower is {width} wide, not a multiple of OpenAI's 64-wide attention heads, so its head count cannot be assumed; {fix}")]
    UnknownHeads { tower: String, width: usize, fix: &'static str },
    #[error("key `{key}`: expected a rank-{expected} tensor, found shape {found:?}")]
    Rank { key: String, expected: usize, found: Vec<usize> },
    #[error("{path} is not a checkpoint: {looks_like}")]
    NotACheckpoint { path: PathBuf, looks_like: String },
    #[error("{path}: malformed PyTorch checkpoint (the pickle reader failed: {reason})")]
    MalformedPickle { path: PathBuf, reason: String },
    #[error("{spec}: {reason}")]
    RandomPreset { spec: String, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    InFile { path: PathBuf, source: Box<CheckpointError> },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl CheckpointError {
    /// Adds the file name to errors whose message does not carry one already.
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            Self::MissingKey { .. }
            | Self::ShapeMismatch { .. }
            | Self::UnexpectedKeys { .. }
            | Self::Heads { .. }
            | Self::UnknownHeads { .. }
            | Self::Rank { .. }
            | Self::Candle(_) => Self::InFile { path: path.to_path_buf(), source: Box::new(self) },
            other => other,
        }
    }
}

/// The `--model` prefix of a randomly initialised preset (`random:ViT-B-32`): a model at a
/// preset's full size without pre-trained weights (the same ones every time), to rehearse a
/// recipe or time it where no checkpoint is on disk. Its zero-shot accuracy is chance.
pub const RANDOM_MODEL_PREFIX: &str = "random:";

/// A CLIP model whose parameters are trainable candle `Var`s.
pub struct ClipModel {
    pub config: ClipConfig,
    pub params: ParamStore,
    trainable: Towers,
    frozen: Towers,
    device: Device,
}

/// The two towers built over one view of the parameters.
pub struct Towers {
    vision: vision::VisionTower,
    text: text::TextTower,
    /// Whether the image tower takes large batches in passes ([`vision::passes`]): without
    /// gradients; with them, the whole batch in one pass.
    in_passes: bool,
}

impl Towers {
    fn load(
        config: &ClipConfig,
        weights: params::WeightView<'_>,
        in_passes: bool,
    ) -> Result<Self, CheckpointError> {
        Ok(Self {
            vision: vision::VisionTower::load(config, weights)?,
            text: text::TextTower::load(config, weights)?,
            in_passes,
        })
    }

    /// `pixels`: `[b, 3, s, s]` -> unnormalised image features `[b, embed_dim]`.
    pub fn encode_image(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        if self.in_passes {
            self.vision.forward_without_grad(pixels)
        } else {
            self.vision.forward(pixels)
        }
    }

    /// `ids`: `[b, t]` u32 token ids -> unnormalised text features `[b, embed_dim]`.
    pub fn encode_text(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.text.forward(ids)
    }
}

impl ClipModel {
    /// Builds a model over canonical (HF-named) tensors, which must match
    /// `config.expected_parameters()`.
    pub fn from_tensors(
        config: ClipConfig,
        tensors: Vec<(String, Tensor)>,
        device: &Device,
    ) -> Result<Self, CheckpointError> {
        let params = ParamStore::from_tensors(tensors)?;
        let model = Self {
            trainable: Towers::load(&config, params.tracked(), false)?,
            frozen: Towers::load(&config, params.detached(), true)?,
            config,
            params,
            device: device.clone(),
        };
        // The parameters' first buffers, freed as they were copied into variables, would
        // otherwise stay kept beside the activations.
        crate::allocator::release_kept_blocks();
        Ok(model)
    }

    /// Loads a checkpoint from a path or a cached hub id (see [`checkpoint`]), the model
    /// bundled in the binary when `spec` is [`bundled::BUNDLED_MODEL`], or a randomly
    /// initialised preset when `spec` is `random:PRESET` ([`RANDOM_MODEL_PREFIX`]).
    pub fn load(spec: &str, device: &Device) -> Result<(Self, LoadedCheckpointInfo), CheckpointError> {
        Self::load_with_config(spec, None, device)
    }

    /// [`ClipModel::load`] with the architecture facts shapes cannot tell taken from `config`
    /// instead of the files beside the weights. The returned info's `notices` say which values
    /// were assumed from a convention; callers show them to the user.
    pub fn load_with_config(
        spec: &str,
        config: Option<&ConfigSource>,
        device: &Device,
    ) -> Result<(Self, LoadedCheckpointInfo), CheckpointError> {
        let without_files = LoadedCheckpointInfo { files: None, layout: Layout::Hf, notices: Vec::new() };
        if spec == bundled::BUNDLED_MODEL {
            return Ok((bundled::load_bundled(device)?, without_files));
        }
        if let Some(preset) = spec.strip_prefix(RANDOM_MODEL_PREFIX) {
            return Ok((Self::random_preset(preset, config, device)?, without_files));
        }
        let files = checkpoint::resolve(spec)?;
        let loaded = checkpoint::load_with(&files, config, device)?;
        let info = LoadedCheckpointInfo {
            files: Some(loaded.files),
            layout: loaded.layout,
            notices: loaded.notices,
        };
        Ok((Self::from_tensors(loaded.config, loaded.tensors, device)?, info))
    }

    /// A freshly initialised model (OpenAI's initialisation scheme: normal weights with
    /// std `width^-0.5`-style scales, unit LayerNorms, zero biases, logit scale ln(1/0.07)),
    /// deterministic for a given `seed`.
    pub fn random(config: ClipConfig, seed: u64, device: &Device) -> Result<Self, CheckpointError> {
        let mut rng = SplitMix64::new(seed);
        let tensors = config
            .expected_parameters()
            .into_iter()
            .map(|(name, shape)| {
                let values = initial_values(&name, &shape, &config, &mut rng);
                Ok((name, Tensor::from_vec(values, shape, device)?))
            })
            .collect::<Result<Vec<_>, CheckpointError>>()?;
        Self::from_tensors(config, tensors, device)
    }

    /// `random:PRESET`: the preset's architecture with [`ClipModel::random`]'s seed-0 weights.
    /// The preset fixes heads and activation, so a config `source` is refused rather than
    /// ignored.
    fn random_preset(
        preset: &str,
        source: Option<&ConfigSource>,
        device: &Device,
    ) -> Result<Self, CheckpointError> {
        let refuse = |reason: String| CheckpointError::RandomPreset {
            spec: format!("{RANDOM_MODEL_PREFIX}{preset}"),
            reason,
        };
        if source.is_some() {
            return Err(refuse(
                "a random preset takes its architecture from the preset; --config does not apply".into(),
            ));
        }
        let architecture = ClipConfig::preset(preset)
            .ok_or_else(|| refuse(format!("unknown preset (known: {})", config::PRESET_NAMES.join(", "))))?;
        Self::random(architecture, 0, device)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Differentiable image features (`[b, 3, s, s]` -> `[b, embed_dim]`, unnormalised):
    /// gradients reach every image-tower parameter.
    pub fn encode_image(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        self.trainable.encode_image(pixels)
    }

    /// Differentiable text features (`[b, t]` u32 ids -> `[b, embed_dim]`, unnormalised).
    pub fn encode_text(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.trainable.encode_text(ids)
    }

    /// The same towers for inference: current weights, no autograd graph, so activations
    /// are freed as soon as they are used; large image batches pass through the image tower
    /// in passes of fewer images ([`vision::passes`]), with the same features.
    pub fn no_grad(&self) -> &Towers {
        &self.frozen
    }

    /// The learned log-temperature `s` (a scalar tensor; logits use `exp(s)`).
    pub fn logit_scale(&self) -> Tensor {
        self.params.get("logit_scale").expect("validated at load").as_tensor().clone()
    }

    /// The image tower's parameters (vision transformer and image projection), in order.
    pub fn image_tower_params(&self) -> impl Iterator<Item = (&str, &candle_core::Var)> {
        self.params
            .iter()
            .filter(|(name, _)| name.starts_with("vision_model.") || *name == "visual_projection.weight")
    }

    /// Current parameter values in canonical order (shared storage; not copies).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|(n, v)| (n.to_string(), v.as_tensor().clone())).collect()
    }

    /// Saves the model in the HF layout (see [`checkpoint::save_hf`]).
    pub fn save_hf(&self, dir: &Path, metadata: &HashMap<String, String>) -> Result<(), CheckpointError> {
        checkpoint::save_hf(dir, &self.config, &self.tensors(), metadata)
    }
}

/// Where a loaded model came from.
#[derive(Clone, Debug)]
pub struct LoadedCheckpointInfo {
    /// `None` for the bundled model and random presets.
    pub files: Option<ModelFiles>,
    pub layout: Layout,
    /// Values assumed from a convention (see [`LoadedCheckpoint::notices`]).
    pub notices: Vec<String>,
}

/// Initial values of one parameter, following OpenAI CLIP's `initialize_parameters`.
fn initial_values(name: &str, shape: &[usize], config: &ClipConfig, rng: &mut SplitMix64) -> Vec<f32> {
    let count: usize = shape.iter().product();
    let filled = |v: f32| vec![v; count];
    if name == "logit_scale" {
        return filled((1.0f32 / 0.07).ln());
    }
    let is_norm = name.contains("layer_norm") || name.contains("layrnorm") || name.contains("layernorm");
    if is_norm {
        return filled(if name.ends_with(".weight") { 1.0 } else { 0.0 });
    }
    if name.ends_with(".bias") {
        return filled(0.0);
    }
    let width = if name.starts_with("text") { config.text.width } else { config.vision.width } as f32;
    let layers = if name.starts_with("text") { config.text.layers } else { config.vision.layers } as f32;
    let std = if name.contains("token_embedding") {
        0.02
    } else if name.contains("position_embedding") {
        if name.starts_with("text") {
            0.01
        } else {
            width.powf(-0.5)
        }
    } else if name.contains("out_proj") || name.contains("fc2") {
        width.powf(-0.5) * (2.0 * layers).powf(-0.5)
    } else if name.contains("fc1") {
        (2.0 * width).powf(-0.5)
    } else {
        width.powf(-0.5)
    };
    (0..count).map(|_| rng.normal() * std).collect()
}
