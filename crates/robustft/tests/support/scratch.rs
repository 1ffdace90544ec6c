//! Scratch directories for tests, under Cargo's per-target temporary directory
//! (`CARGO_TARGET_TMPDIR`, inside `target/`): named by the test, emptied when a test starts, so
//! reruns replace them instead of piling up in the system's temporary directory, and a failed
//! test's files stay there to be inspected.

use std::path::PathBuf;

/// A fresh, empty directory `robustft-<name>` for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("robustft-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
