//! A recipe's data, loaded and checked before any work (docs/design.md, "data flow"): the
//! training, validation and evaluation splits of a ShiftWorld suite (rendered in memory) or of
//! a dataset on disk (manifest, WILDS iWildCam / FMoW, ImageNet and its variants), with one
//! class list.

use std::sync::Arc;

use crate::clip::preprocess::ClipPreprocess;
use crate::data::Split;
use crate::error::{Error, Result};
use crate::eval::benchmark::Benchmark;
use crate::eval::suite::render_split;
use crate::recipe::Recipe;
use crate::shiftworld::{build_suite, Suite, CLASSES};
use crate::train::images::DiskSet;
use crate::train::supervised::TrainSource;

/// The examples of a run: training and validation sources, and the evaluation splits.
pub(super) struct Data {
    pub train: Arc<dyn TrainSource>,
    pub val: Option<Arc<dyn TrainSource>>,
    pub eval: Benchmark,
    /// The training and validation splits' files, for data on disk.
    pub files: Option<(Arc<Split>, Option<Arc<Split>>)>,
}

/// Loads the recipe's data and checks it: the named splits exist and share one class list.
pub(super) fn load_data(recipe: &Recipe, preprocess: &ClipPreprocess) -> Result<(Data, Vec<String>)> {
    let d = &recipe.data;
    if let Some(name) = &d.suite {
        let suite = build_suite(name, recipe.seed)?;
        let available: Vec<&str> = suite.splits.iter().map(|s| s.name.as_str()).collect();
        let find = |split: &str| {
            suite.split(split).ok_or_else(|| missing_split(split, &format!("suite {name}"), &available))
        };
        let train: Arc<dyn TrainSource> = Arc::new(render_split(find(&d.train_split)?, preprocess));
        let val =
            suite.split(&d.val_split).map(|s| Arc::new(render_split(s, preprocess)) as Arc<dyn TrainSource>);
        let wanted: Vec<String> = match d.eval_splits.is_empty() {
            true => available.iter().filter(|s| **s != d.train_split).map(|s| s.to_string()).collect(),
            false => d.eval_splits.clone(),
        };
        let eval_splits = wanted.iter().map(|s| find(s).cloned()).collect::<Result<Vec<_>>>()?;
        let eval = Suite { splits: eval_splits, ..suite.clone() };
        let classes = CLASSES.iter().map(|c| c.to_string()).collect();
        return Ok((Data { train, val, eval: Benchmark::Suite(eval), files: None }, classes));
    }
    let format = d.format.expect("checked at parse");
    let root = d.root.clone().expect("checked at parse");
    if !root.exists() {
        return Err(Error::Invalid {
            what: format!("data.root {}", root.display()),
            reason: "does not exist".into(),
        });
    }
    let available = format.split_names(&root)?;
    let load = |split: &str| -> Result<Arc<Split>> {
        if !available.iter().any(|s| s == split) {
            let names: Vec<&str> = available.iter().map(String::as_str).collect();
            return Err(missing_split(split, &root.display().to_string(), &names));
        }
        Ok(Arc::new(format.load_split(&root, split)?))
    };
    let train = load(&d.train_split)?;
    let classes = train.classes.clone();
    let wanted: Vec<String> = match d.eval_splits.is_empty() {
        true => available.iter().filter(|s| **s != d.train_split).cloned().collect(),
        false => d.eval_splits.clone(),
    };
    if wanted.is_empty() {
        return Err(Error::Invalid {
            what: format!("data.root {}", root.display()),
            reason: format!(
                "has no split to evaluate besides the training split (splits: {})",
                available.join(", ")
            ),
        });
    }
    let eval = wanted.iter().map(|s| load(s)).collect::<Result<Vec<_>>>()?;
    let val_files = match available.contains(&d.val_split) {
        true => Some(load(&d.val_split)?),
        false => None,
    };
    for split in val_files.iter().chain(&eval) {
        check_classes(split, &classes)?;
    }
    for split in std::iter::once(&train).chain(&val_files).chain(&eval) {
        check_readable(split, preprocess)?;
    }
    let disk_set = |split: &Arc<Split>| {
        Arc::new(DiskSet::new(split.clone(), preprocess.clone())) as Arc<dyn TrainSource>
    };
    let data = Data {
        train: disk_set(&train),
        val: val_files.as_ref().map(disk_set),
        eval: Benchmark::Disk { root: root.clone(), splits: eval },
        files: Some((train, val_files)),
    };
    Ok((data, classes))
}

fn missing_split(split: &str, dataset: &str, available: &[&str]) -> Error {
    Error::Invalid {
        what: format!("split `{split}` of {dataset}"),
        reason: format!("does not exist (available: {})", available.join(", ")),
    }
}

/// A split must hold a readable image, found before any work (every image is tried until one
/// decodes; a split whose images are all unreadable fails here, not after training).
fn check_readable(split: &Arc<Split>, preprocess: &ClipPreprocess) -> Result<()> {
    let probe = DiskSet::new(split.clone(), preprocess.clone());
    for index in 0..probe.len() {
        if !probe.load(&[index])?.1.is_empty() {
            return Ok(());
        }
    }
    let first = probe.skipped().into_iter().next().map(|(path, reason)| format!(": {path}: {reason}"));
    Err(Error::Invalid {
        what: format!("split `{}`", split.name),
        reason: format!("has no readable image ({} listed{})", probe.len(), first.unwrap_or_default()),
    })
}

/// A fingerprint of a split's image files (path, size and modification time of each), so
/// cached features of a dataset regenerated in place are not reused.
pub(super) fn files_fingerprint(split: &Split) -> u64 {
    let mut text = String::new();
    for record in &split.records {
        let meta = std::fs::metadata(&record.path).ok();
        let size = meta.as_ref().map_or(0, |m| m.len());
        let modified =
            meta.and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        let nanos = modified.map_or(0, |d| d.as_nanos());
        text.push_str(&format!("{}|{}|{size}|{nanos}\n", record.path.display(), record.label));
    }
    crate::rng::fnv1a(text.as_bytes())
}

/// An evaluation split must share the training classes, or project onto them.
fn check_classes(split: &Split, classes: &[String]) -> Result<()> {
    let fits = match &split.projection {
        Some(projection) => projection.input_len() <= classes.len(),
        None => split.classes == classes,
    };
    if fits {
        return Ok(());
    }
    Err(Error::Invalid {
        what: format!("split `{}`", split.name),
        reason: format!(
            "has {} classes that do not match the training split's {} (class-count or class-name mismatch)",
            split.classes.len(),
            classes.len()
        ),
    })
}
