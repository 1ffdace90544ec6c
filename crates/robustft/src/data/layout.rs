//! Dataset layouts by name, for commands that read a dataset root without a recipe (`eval`,
//! `wiseft`): the CSV manifest, WILDS iWildCam v2.0 and FMoW v1.1, and ImageNet with its
//! variants (one sub-directory per split, `train` read as `imagenet`), read by the same loaders
//! as a recipe's `data.format`.

use std::path::Path;
use std::str::FromStr;

use super::{
    describe_known, imagenet_class_names, load_fmow_split, load_imagenet_variant, load_iwildcam_split,
    load_manifest_split, manifest_splits, DataError, Split, FMOW_SPLITS, IMAGENET_VARIANTS, IWILDCAM_SPLITS,
};

/// A dataset layout on disk (a recipe's `data.format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Manifest,
    Iwildcam,
    Fmow,
    Imagenet,
}

/// The names [`Layout`] parses, as recipes spell `data.format`.
pub const LAYOUT_NAMES: [&str; 4] = ["manifest", "iwildcam", "fmow", "imagenet"];

impl FromStr for Layout {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Ok(match name {
            "manifest" => Self::Manifest,
            "iwildcam" => Self::Iwildcam,
            "fmow" => Self::Fmow,
            "imagenet" => Self::Imagenet,
            _ => return Err(format!("unknown dataset format `{name}` (known: {})", LAYOUT_NAMES.join(", "))),
        })
    }
}

impl Layout {
    /// The splits evaluated when none are named: every manifest split; every WILDS split but
    /// `train`; every ImageNet variant with a directory under `root`.
    pub fn default_eval_splits(self, root: &Path) -> Result<Vec<String>, DataError> {
        let but_train =
            |names: &[&str]| names.iter().filter(|s| **s != "train").map(|s| s.to_string()).collect();
        Ok(match self {
            Self::Manifest => manifest_splits(root)?,
            Self::Iwildcam => but_train(&IWILDCAM_SPLITS),
            Self::Fmow => but_train(&FMOW_SPLITS),
            Self::Imagenet => {
                let present: Vec<String> = IMAGENET_VARIANTS
                    .iter()
                    .filter(|v| root.join(v).is_dir())
                    .map(|v| v.to_string())
                    .collect();
                if present.is_empty() {
                    return Err(DataError::MissingSplit {
                        dataset: root.display().to_string(),
                        split: "any ImageNet variant".into(),
                        available: format!(
                            "none of {} is a directory there",
                            describe_known(&IMAGENET_VARIANTS)
                        ),
                    });
                }
                present
            }
        })
    }

    /// Every split a dataset of this layout offers under `root` (ImageNet: `train` and every
    /// variant, present or not).
    pub fn split_names(self, root: &Path) -> Result<Vec<String>, DataError> {
        let fixed = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
        Ok(match self {
            Self::Manifest => manifest_splits(root)?,
            Self::Iwildcam => fixed(&IWILDCAM_SPLITS),
            Self::Fmow => fixed(&FMOW_SPLITS),
            Self::Imagenet => std::iter::once("train").chain(IMAGENET_VARIANTS).map(String::from).collect(),
        })
    }

    /// Split `split` under `root`.
    pub fn load_split(self, root: &Path, split: &str) -> Result<Split, DataError> {
        match self {
            Self::Manifest => load_manifest_split(root, split),
            Self::Iwildcam => load_iwildcam_split(root, split),
            Self::Fmow => load_fmow_split(root, split),
            Self::Imagenet => {
                let variant = if split == "train" { "imagenet" } else { split };
                let mut loaded = load_imagenet_variant(&root.join(split), variant)?;
                loaded.name = split.to_string();
                Ok(loaded)
            }
        }
    }

    /// The classes a model's head predicts on this layout: ImageNet's 1000 (variants with fewer
    /// classes project onto them), otherwise the first split's.
    pub fn head_classes(self, splits: &[Split]) -> Vec<String> {
        match (self, splits.first()) {
            (Self::Imagenet, _) => imagenet_class_names(),
            (_, Some(first)) => first.classes.clone(),
            (_, None) => Vec::new(),
        }
    }
}
