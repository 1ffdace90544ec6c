//! The library's top-level error: every failure a user can cause, each naming the file, key,
//! class or value at fault. The binary adds context with `anyhow` and prints the chain.

use crate::clip::preprocess::PreprocessError;
use crate::clip::tokenizer::TokenizerError;
use crate::clip::CheckpointError;
use crate::data::DataError;
use crate::prompts::{DescribeError, PromptError};
use crate::shiftworld::ShiftWorldError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error(transparent)]
    Describe(#[from] DescribeError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    ShiftWorld(#[from] ShiftWorldError),
    #[error(
        "the model's vocabulary has {model} tokens, which no CLIP BPE vocabulary has (512 + merges + 2)"
    )]
    VocabularySize { model: usize },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("cannot write {}", path.display())]
    Write { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A failed write of `path` (as a closure for `map_err`).
    pub fn write(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Write { path: path.to_path_buf(), source }
    }
}

/// Checks before any work that `path` can be written (see [`crate::files::check_writable`]).
pub fn check_writable(path: &std::path::Path) -> Result<()> {
    crate::files::check_writable(path).map_err(Error::write(path))
}
