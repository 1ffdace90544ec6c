//! The tiny CLIP bundled in the binary: pretrained on ShiftWorld by this project's own
//! `robustft pretrain` (recipe, seed and wall time in `assets/shiftworld-clip/README.md` and in
//! the safetensors metadata). `--model bundled` (the default everywhere) loads it; nothing is
//! read from disk or downloaded.

use std::path::Path;

use candle_core::Device;

use super::checkpoint::load_hf_bytes;
use super::{CheckpointError, ClipModel};

/// The `--model` value that names the bundled model.
pub const BUNDLED_MODEL: &str = "bundled";

const WEIGHTS: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/shiftworld-clip/model.safetensors"));
const CONFIG: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/shiftworld-clip/config.json"));

/// Loads the bundled ShiftWorld CLIP.
pub fn load_bundled(device: &Device) -> Result<ClipModel, CheckpointError> {
    let (config, tensors) = load_hf_bytes(WEIGHTS, CONFIG, Path::new("assets/shiftworld-clip"), device)?;
    ClipModel::from_tensors(config, tensors, device)
}
