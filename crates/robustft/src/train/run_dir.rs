//! A training run's directory and its atomic checkpoints: `checkpoint/` holds the model (HF
//! layout safetensors with metadata), any extra trained tensors (`extra.safetensors`, e.g. a
//! classification head) and the trainer state. A checkpoint is written to `checkpoint.tmp`
//! and renamed into place (the previous one kept as `checkpoint.old` until the swap is done),
//! so a kill at any moment leaves a complete checkpoint. A run starts only in a directory that
//! holds no earlier run, unless it resumes that run (same resolved recipe) or is forced to start
//! over (the earlier run's files are deleted first, so nothing stale can be resumed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::state::{TrainerState, TRAINER_STATE_FILE};
use crate::clip::checkpoint::write_safetensors;
use crate::clip::{CheckpointError, ClipModel};
use crate::error::{Error, Result};
use crate::optim::AdamW;

/// File of the extra trained tensors inside a checkpoint directory.
pub const EXTRA_FILE: &str = "extra.safetensors";

/// Where a run keeps its files.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint")
    }

    fn checkpoint_tmp(&self) -> PathBuf {
        self.root.join("checkpoint.tmp")
    }

    fn checkpoint_old(&self) -> PathBuf {
        self.root.join("checkpoint.old")
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn results(&self) -> PathBuf {
        self.root.join("results.jsonl")
    }

    /// The newest complete checkpoint, if any (a kill between the two renames of
    /// [`RunDir::save_checkpoint`] leaves it as `checkpoint.old`).
    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        [self.checkpoint(), self.checkpoint_old()].into_iter().find(|d| d.join(TRAINER_STATE_FILE).is_file())
    }

    pub fn recipe(&self) -> PathBuf {
        self.root.join("recipe.toml")
    }

    /// The final model (HF layout, with a trained head beside it).
    pub fn model(&self) -> PathBuf {
        self.root.join("model")
    }

    /// What the directory holds of an earlier run, if anything: a finished run (its results) or
    /// an interrupted one (a checkpoint, no results).
    pub fn previous_run(&self) -> Option<&'static str> {
        if self.results().exists() || self.model().exists() {
            Some("a finished run")
        } else if self.latest_checkpoint().is_some() || self.checkpoint_tmp().exists() {
            Some("an interrupted run (a checkpoint and no results)")
        } else {
            None
        }
    }

    /// Deletes every file of an earlier run (recipe, metrics, checkpoints, results, model), so
    /// nothing stale can be resumed or mistaken for this run's output.
    pub fn clear(&self) -> Result<()> {
        let dirs = [
            self.checkpoint(),
            self.checkpoint_old(),
            self.checkpoint_tmp(),
            self.model(),
            self.root.join("model.tmp"),
        ];
        for dir in dirs.iter().filter(|d| d.exists()) {
            std::fs::remove_dir_all(dir).map_err(io_error(dir))?;
        }
        for file in [self.recipe(), self.metrics(), self.results()].iter().filter(|f| f.exists()) {
            std::fs::remove_file(file).map_err(io_error(file))?;
        }
        Ok(())
    }

    /// Keeps the rows of `metrics.jsonl` up to `step` (the checkpoint a resumed run continues,
    /// or 0 for a new run), so rows logged after the last checkpoint are not logged twice; a row
    /// cut short by a kill is dropped too. Rewritten atomically, only when something goes.
    pub fn truncate_metrics(&self, step: u64) -> Result<()> {
        let path = self.metrics();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error(&path)(error)),
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                let row = serde_json::from_str::<serde_json::Value>(line).ok();
                row.and_then(|row| row.get("step")?.as_u64()).is_some_and(|row_step| row_step <= step)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        if kept.len() == text.len() {
            return Ok(());
        }
        Ok(crate::clip::checkpoint::write_atomic(&path, kept.as_bytes())?)
    }

    /// Readies the directory for a run of the resolved recipe `text`: on `resume`, insists it
    /// holds a run of that same recipe (naming the keys that differ); otherwise refuses an
    /// earlier run there unless `force`, clears it and writes the recipe before any work.
    pub fn start(&self, text: &str, resume: bool, force: bool) -> Result<()> {
        let refuse = |reason: String| Error::Invalid {
            what: format!("run directory {}", self.root.display()),
            reason,
        };
        if resume {
            let Ok(existing) = std::fs::read_to_string(self.recipe()) else {
                return Err(refuse(
                    "holds no run to --resume (no recipe.toml); start the run without --resume".into(),
                ));
            };
            if existing != text {
                return Err(refuse(format!(
                    "holds a run of another recipe (differing: {}); resume it with the same recipe, or \
                     start over with --force instead of --resume",
                    differing_keys(&existing, text)
                )));
            }
            return Ok(());
        }
        if let Some(previous) = self.previous_run().filter(|_| !force) {
            return Err(refuse(format!(
                "holds {previous}; continue it with --resume, or start over with --force (deletes it)"
            )));
        }
        self.clear()?;
        self.create()?;
        Ok(crate::clip::checkpoint::write_atomic(&self.recipe(), text.as_bytes())?)
    }

    /// Creates the directory.
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root).map_err(io_error(&self.root))
    }

    /// Writes model + extra tensors + trainer state to `checkpoint.tmp`, then swaps it into
    /// `checkpoint`.
    pub fn save_checkpoint(
        &self,
        model: &ClipModel,
        extra: &[(String, Tensor)],
        state: &TrainerState,
        optimizer: &AdamW,
        metadata: &HashMap<String, String>,
    ) -> Result<()> {
        let tmp = self.checkpoint_tmp();
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_error(&tmp))?;
        }
        model.save_hf(&tmp, metadata)?;
        if !extra.is_empty() {
            write_safetensors(&tmp.join(EXTRA_FILE), extra, HashMap::new())?;
        }
        state.save(&tmp, optimizer)?;
        let (current, old) = (self.checkpoint(), self.checkpoint_old());
        if current.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
            }
            std::fs::rename(&current, &old).map_err(io_error(&current))?;
        }
        std::fs::rename(&tmp, &current).map_err(io_error(&tmp))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
        }
        Ok(())
    }
}

/// The extra tensors of a checkpoint directory (empty when it has none).
pub fn load_extra(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let path = dir.join(EXTRA_FILE);
    if !path.is_file() {
        return Ok(HashMap::new());
    }
    candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(|e| Error::Checkpoint(CheckpointError::from(e).in_file(&path)))
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }.into()
}

/// The dotted keys whose values differ between two recipe texts (at most five named).
fn differing_keys(a: &str, b: &str) -> String {
    let (a, b): (toml::Table, toml::Table) = (a.parse().unwrap_or_default(), b.parse().unwrap_or_default());
    let mut keys = Vec::new();
    collect_differences("", &toml::Value::Table(a), &toml::Value::Table(b), &mut keys);
    let shown = keys.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    match keys.len() {
        0 => "formatting only".into(),
        n if n > 5 => format!("{shown} and {} more", n - 5),
        _ => shown,
    }
}

fn collect_differences(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    let (toml::Value::Table(a), toml::Value::Table(b)) = (a, b) else {
        if a != b {
            out.push(prefix.to_string());
        }
        return;
    };
    let keys: Vec<&String> = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))).collect();
    for key in keys {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match (a.get(key), b.get(key)) {
            (Some(x), Some(y)) => collect_differences(&path, x, y, out),
            _ => out.push(path),
        }
    }
}
