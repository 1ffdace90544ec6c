//! The resumable trainer state: everything besides the model weights that a run needs to
//! continue bit-for-bit — the optimiser's moments and step count, the run's step, and the
//! data position (derived from the step and the seed, recorded as metadata). Stored as
//! `trainer_state.safetensors` next to the checkpoint, written atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Device;

use crate::clip::checkpoint::write_safetensors;
use crate::clip::CheckpointError;
use crate::optim::AdamW;

/// File name of the trainer state inside a checkpoint directory.
pub const TRAINER_STATE_FILE: &str = "trainer_state.safetensors";

/// Run-level counters restored on `--resume`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TrainerState {
    /// Optimiser steps completed.
    pub step: u64,
    /// Free-form run facts (seed, epoch, batch index, ...), stored as metadata.
    pub meta: BTreeMap<String, String>,
}

impl TrainerState {
    /// Writes the state and `optimizer`'s moments into `dir`.
    pub fn save(&self, dir: &Path, optimizer: &AdamW) -> Result<(), CheckpointError> {
        let mut metadata: HashMap<String, String> = self.meta.clone().into_iter().collect();
        metadata.insert("step".into(), self.step.to_string());
        metadata.insert("optimizer_steps".into(), optimizer.steps().to_string());
        write_safetensors(&dir.join(TRAINER_STATE_FILE), &optimizer.state_tensors()?, metadata)
    }

    /// Reads the state from `dir` and restores `optimizer`'s moments.
    pub fn load(dir: &Path, optimizer: &mut AdamW) -> Result<Self, CheckpointError> {
        let path = dir.join(TRAINER_STATE_FILE);
        let bytes =
            std::fs::read(&path).map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
        let bad = |reason: String| CheckpointError::BadConfig { path: path.clone(), reason };
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut meta: BTreeMap<String, String> =
            header.metadata().clone().unwrap_or_default().into_iter().collect();
        let number = |meta: &mut BTreeMap<String, String>, key: &str| -> Result<u64, CheckpointError> {
            meta.remove(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(format!("metadata lacks a numeric `{key}`")))
        };
        let step = number(&mut meta, "step")?;
        let optimizer_steps = number(&mut meta, "optimizer_steps")?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| CheckpointError::from(e).in_file(&path))?;
        optimizer.restore(&tensors, optimizer_steps).map_err(|e| bad(e.to_string()))?;
        Ok(Self { step, meta })
    }
}
