//! The dataset layer: every on-disk dataset is read into a [`Split`] (class names + labelled
//! [`Record`]s + an optional [`LogitProjection`]), and a [`Loader`] decodes a split's images in
//! parallel into batches whose order depends only on a seed.
//!
//! What is implemented, and where it comes from:
//!
//! * **CSV manifests** ([`manifest_splits`], [`load_manifest_split`]): the project's own format
//!   (written by `robustft shiftworld generate`), read by an RFC 4180 reader of our own
//!   (`csv.rs`). Format: see [`load_manifest_split`].
//! * **ImageFolder** ([`load_image_folder`]): torchvision's `datasets.ImageFolder` layout and
//!   ordering (`DatasetFolder.find_classes` / `make_dataset`).
//! * **WILDS** ([`load_iwildcam_split`], [`load_fmow_split`]): iWildCam v2.0 and FMoW v1.1
//!   with their official splits, following p-lambda/wilds `wilds/datasets/iwildcam_dataset.py`
//!   and `fmow_dataset.py` (details in `wilds.rs`).
//! * **ImageNet and its shifts** ([`load_imagenet_variant`]): ImageNet, ImageNet-V2,
//!   ImageNet-Sketch, ImageNet-R, ImageNet-A and ObjectNet, with the label spaces and logit
//!   projections of mlfoundations/wise-ft `src/datasets/` (which FLYP and DRM reuse; details
//!   in `imagenet.rs`).
//! * **Synthetic stand-ins** ([`write_synthetic`]): the ImageNet (1000 classes, `train/` and
//!   every variant folder) and iWildCam (182 classes, `metadata.csv`) layouts filled with tiny
//!   JPEGs, to rehearse the paper recipes without the data (`synth.rs`).
//! * **Layouts by name** ([`Layout`]): the formats above as `eval` and `wiseft` name them.
//! * **Loader** ([`Loader`]): seeded Fisher–Yates order, parallel decoding on a thread pool,
//!   a bounded prefetch queue, failed images skipped and reported, resumable mid-epoch.

mod csv;
mod image_folder;
mod imagenet;
mod imagenet_classes;
mod layout;
mod loader;
mod manifest;
mod synth;
mod wilds;

use std::fmt;
use std::path::PathBuf;

pub use image_folder::{load_image_folder, IMAGE_EXTENSIONS};
pub use imagenet::{imagenet_class_names, load_imagenet_variant, IMAGENET_VARIANTS, OBJECTNET_BORDER_CROP};
pub use imagenet_classes::{
    IMAGENET_A_CLASS_INDICES, IMAGENET_CLASS_NAMES, IMAGENET_R_CLASS_INDICES, IMAGENET_WNIDS,
};
pub use layout::{Layout, LAYOUT_NAMES};
pub use loader::{decode_checked, epoch_order, Batch, Loader, LoaderConfig, Transform};
pub use manifest::{load_manifest_split, manifest_splits};
pub use synth::{write_synthetic, SynthImages, SynthLayout, DEFAULT_SYNTH_SIDE};
pub use wilds::{load_fmow_split, load_iwildcam_split, FMOW_SPLITS, IWILDCAM_SPLITS};

/// One labelled example of a split.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// A name for the example, unique within its dataset (a relative path or a WILDS file name).
    pub id: String,
    /// The image file.
    pub path: PathBuf,
    /// Index into [`Split::classes`].
    pub label: usize,
    /// The evaluation group (FMoW: region; iWildCam: camera location; manifests: `group`).
    pub group: Option<String>,
    /// The domain (FMoW: year; iWildCam: camera location; manifests: `domain`).
    pub domain: Option<String>,
}

/// A labelled split: classes + records. Everything on disk is read into this form.
#[derive(Clone, Debug)]
pub struct Split {
    pub name: String,
    /// The split's label space: `records[i].label` indexes this list.
    pub classes: Vec<String>,
    pub records: Vec<Record>,
    /// How to map the model's class logits to `classes` before the softmax, when the model
    /// predicts over a larger label space (ImageNet-R/-A, ObjectNet).
    pub projection: Option<LogitProjection>,
}

/// How a dataset maps the model's class logits to its own label space before the softmax
/// (methods.md §4.3; mlfoundations/wise-ft `src/datasets/imagenet.py: project_logits` and
/// `objectnet.py: ObjectNetBase.project_logits`).
#[derive(Clone, Debug, PartialEq)]
pub enum LogitProjection {
    /// Keep these columns, in this order: output `k` is input column `indices[k]`
    /// (ImageNet-R / -A: 200 of the 1000 ImageNet columns).
    Subset(Vec<usize>),
    /// Output `k` is the maximum over input columns `groups[k]` (ObjectNet: 113 classes, each
    /// the max over the ImageNet classes mapped to it). An empty group gives `-inf`.
    MaxPool(Vec<Vec<usize>>),
}

impl LogitProjection {
    /// Projects one row of logits.
    ///
    /// # Panics
    /// If `logits_row` is shorter than [`LogitProjection::input_len`]; check that once
    /// against the model's class count before evaluating.
    pub fn apply(&self, logits_row: &[f32]) -> Vec<f32> {
        match self {
            LogitProjection::Subset(indices) => indices.iter().map(|&i| logits_row[i]).collect(),
            LogitProjection::MaxPool(groups) => groups
                .iter()
                .map(|group| group.iter().map(|&i| logits_row[i]).fold(f32::NEG_INFINITY, f32::max))
                .collect(),
        }
    }

    /// The number of classes after projection.
    pub fn num_classes(&self) -> usize {
        match self {
            LogitProjection::Subset(indices) => indices.len(),
            LogitProjection::MaxPool(groups) => groups.len(),
        }
    }

    /// The smallest logit row this projection can be applied to (the largest index read + 1).
    pub fn input_len(&self) -> usize {
        let largest = match self {
            LogitProjection::Subset(indices) => indices.iter().max(),
            LogitProjection::MaxPool(groups) => groups.iter().flatten().max(),
        };
        largest.map_or(0, |&i| i + 1)
    }
}

/// Where in a file a problem was found: the file, and the 1-based line when there is one.
#[derive(Clone, Debug, PartialEq)]
pub struct Location {
    pub path: PathBuf,
    pub line: Option<usize>,
}

impl Location {
    pub(crate) fn file(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), line: None }
    }

    pub(crate) fn line(path: impl Into<PathBuf>, line: usize) -> Self {
        Self { path: path.into(), line: Some(line) }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

/// Why a dataset could not be read. Each variant names the file (and line), column, class or
/// split at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: malformed CSV: {reason}")]
    Csv { at: Location, reason: String },
    #[error("{path}: no column `{column}` in the header (columns: {available})")]
    MissingColumn { path: PathBuf, column: String, available: String },
    #[error("{at}: unknown class `{class}` ({hint})")]
    UnknownClass { at: Location, class: String, hint: String },
    #[error("{at}: bad label `{value}`: {reason}")]
    BadLabel { at: Location, value: String, reason: String },
    #[error("{at}: bad `{column}` value `{value}`: {reason}")]
    BadValue { at: Location, column: String, value: String, reason: String },
    #[error("{dataset}: no split `{split}` (available: {available})")]
    MissingSplit { dataset: String, split: String, available: String },
    #[error("{at}: duplicate class `{class}` (first on line {first_line})")]
    DuplicateClass { at: Location, class: String, first_line: usize },
    #[error("{at}: {reason}")]
    BadClassList { at: Location, reason: String },
    #[error("{dataset}: split `{split}` has no examples")]
    EmptySplit { dataset: String, split: String },
    #[error("{path}: no class sub-folders")]
    NoClasses { path: PathBuf },
    #[error("{path}: class folder `{class}` holds no image files (extensions: {extensions})")]
    EmptyClass { path: PathBuf, class: String, extensions: String },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("unknown dataset variant `{variant}` (known: {known})")]
    UnknownVariant { variant: String, known: String },
}

/// Reads a whole text file (a regular file only), naming it on failure.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String, DataError> {
    crate::files::read_regular_to_string(path)
        .map_err(|source| DataError::Io { path: path.to_owned(), source })
}

/// A short description of a list of known names for error messages: all of them when there
/// are few, otherwise the count and the first few.
pub(crate) fn describe_known<S: AsRef<str>>(names: &[S]) -> String {
    const SHOWN: usize = 8;
    let quoted: Vec<String> = names.iter().take(SHOWN).map(|n| format!("`{}`", n.as_ref())).collect();
    match names.len() {
        0 => "none".to_owned(),
        n if n <= SHOWN => quoted.join(", "),
        n => format!("{n} of them, e.g. {}", quoted.join(", ")),
    }
}
