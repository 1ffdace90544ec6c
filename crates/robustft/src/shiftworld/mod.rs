//! ShiftWorld: a deterministic procedural world of 32×32 shape images with captions, and
//! fine-tuning benchmark suites with in-distribution (ID) and out-of-distribution (OOD) splits
//! built on it. It reproduces, in miniature and in seconds, the settings that robust
//! fine-tuning papers evaluate on: DRM's (Li et al., "Dual Risk Minimization", 2024) core vs
//! non-core features with concept descriptions, Waterbirds' spurious backgrounds (Sagawa et
//! al. 2020), ImageNet-R's renditions (Hendrycks et al. 2021), ImageNet-C's corruptions
//! (Hendrycks & Dietterich 2019) and iWildCam's camera domains with long-tailed classes (Beery
//! et al. 2021, WILDS).
//!
//! # Factors ([`Scene`])
//! - **Core** (the class, [`CLASSES`]): the shape's geometry: circle, square, triangle, star,
//!   cross, ring, hexagon, crescent, heart, arrow. Drawn from exact geometry at 4× resolution
//!   and box-downsampled (antialiasing); proportions keep every class recognisable at the
//!   smallest size (about 13 px across).
//! - **Non-core**: colour (12 named colours; object and background always contrast), size
//!   (42–80% of the side), position (the object stays inside), rotation (±45°), background
//!   (solid, stripes, checker, dots, gradient, value-noise texture; a named colour and a shade
//!   of it; period 4–8 px, orientation, phase), rendition style (filled, outline, dashed
//!   sketch with hatching, pixelated in 3×3 blocks), lighting (neutral, bright, dim, warm,
//!   cool) and corruption (noise, blur, contrast, occlusion; severities 1–5).
//!
//! Same seed, same bytes on every machine: randomness comes only from
//! [`crate::rng::SplitMix64`] (its uniforms; never `normal()`, whose `ln`/`cos` are platform
//! libm), pixels use only IEEE basic operations (rotation uses a Taylor-series sine), and no
//! hash-map order is observable.
//!
//! # Pretraining data ([`sample_pretraining`])
//! Every factor is drawn independently of the others (shape, background pattern and colour
//! uniform; style filled 55% / each other 15%; lighting neutral 50%, else uniform; corruption
//! none 70%, else uniform kind and severity; object colour uniform among those contrasting
//! with the background), like broad web data, so that a model pretrained on it is robust
//! zero-shot. The probabilities are the constants of [`pretraining`].
//! Captions (see [`caption`]) always name the shape, by class name or (25%) by a core
//! description; every other factor is mentioned with probability 0.15–0.5, and captions are
//! kept to [`MAX_CAPTION_CHARS`] characters.
//!
//! # Suites ([`build_suite`], sizes in [`SPLIT_SIZES`])
//! Every suite has splits `train`, `id_val`, `id_test` and one or more `ood_<name>`. Labels in
//! the `spurious`, `rendition` and `corruption` suites are class-stratified (example `i` has
//! class `i % 10`), so every split is exactly balanced.
//!
//! | suite | train / id_val / id_test | OOD splits (each) | groups | headline metric |
//! |---|---|---|---|---|
//! | `spurious` | 3000 / 500 / 1000 | `ood_random_background` (1000) | `<class>\|aligned`, `<class>\|conflict` | `worst_group_acc` |
//! | `rendition` | 2000 / 500 / 1000 | `ood_outline`, `ood_sketch`, `ood_pixelated` (1000) | the style | `top1` |
//! | `corruption` | 2000 / 500 / 1000 | `ood_noise`, `ood_blur`, `ood_contrast`, `ood_occlusion` (1000) | `clean`, `severity_1`..`severity_5` | `top1` |
//! | `domains` | 3000 / 500 / 1000 | `ood_unseen_cameras` (1000) | the camera | `f1_macro` |
//!
//! - `spurious` (Waterbirds): each class has its own background (pattern + colour,
//!   [`suites::SPURIOUS_BACKGROUNDS`]). In the ID splits exactly 90% of each class's examples
//!   have it ("aligned") and 10% have another class's background ("conflict"); in the OOD
//!   split every (class, background) pair occurs equally often, so alignment is at chance
//!   (10%). Objects are filled, evenly lit and clean.
//! - `rendition` (ImageNet-R): ID splits are filled shapes; each OOD split is one other style.
//!   Backgrounds are uniform over patterns and colours.
//! - `corruption` (ImageNet-C): ID splits are clean; one OOD split per corruption, with the
//!   severity (1–5, each on exactly a fifth of every class) as the group.
//! - `domains` (iWildCam): 16 cameras ([`suites::CAMERAS`]), each a background palette,
//!   pattern family and lighting. The ID splits come from the first 10 (round robin), the
//!   OOD split from the other 6, whose combinations no training camera has. Class frequencies
//!   are long-tailed (Zipf, exponent 1.2, over a fixed class ranking) times a per-camera mix;
//!   the domain (camera name) is recorded per example and is also the group.
//!
//! # On-disk format ([`write_suite`], format version 1)
//! ```text
//! DIR/<split>/<class>/<split>_<index>.png   32×32 RGB PNG; index zero-padded to 5 digits,
//!                                           counting within the split
//! DIR/manifest.csv                          header `path,label,split,group,domain`; path
//!                                           relative to DIR with `/`; label = class index;
//!                                           domain empty when none; rows in split order,
//!                                           then index order
//! DIR/classes.txt                           class names, one per line, label order
//! DIR/concept_descriptions.json             DRM concept-description file (class -> sentences)
//! DIR/scenes.jsonl                          {"path": ..., "scene": {every factor}} per image
//! DIR/suite.json                            format "shiftworld-suite", format_version, name,
//!                                           seed, headline_metric, image_size, classes,
//!                                           splits [{name, size, ood}]
//! ```
//! Labels are the class indices of `classes.txt` (the order of [`CLASSES`]), not the
//! alphabetical order of the class folders that torchvision's `ImageFolder` would assign:
//! loaders take the label from the manifest.
//!
//! The suite is written to `DIR.tmp` and renamed when complete. An existing `DIR` is replaced
//! only if it is empty or a suite written earlier holding nothing else; otherwise writing is
//! refused.

mod captions;
mod disk;
mod render;
mod scene;
mod shapes;
pub mod suites;

use std::path::PathBuf;

pub use captions::{
    caption, concept_descriptions, concept_descriptions_json, description_set, DESCRIPTION_SET_NAMES,
    MAX_CAPTION_CHARS, PARAPHRASE_PROBABILITY,
};
pub use disk::{encode_png, example_path, write_suite, FORMAT, FORMAT_VERSION, MANIFEST_HEADER};
pub use render::{render, tile};
pub use scene::{
    pretraining, Background, Color, Corruption, CorruptionKind, Lighting, Orientation, Pattern, Scene, Shape,
    Style, MAX_SEVERITY, ROTATION_RANGE, SIZE_RANGE,
};
pub use suites::{build_suite, Example, SplitSizes, Suite, SuiteSplit, SPLIT_SIZES, SUITE_NAMES};

use crate::rng::SplitMix64;

/// Class names in label order.
pub const CLASSES: [&str; 10] =
    ["circle", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent", "heart", "arrow"];

/// Image side in pixels.
pub const IMAGE_SIZE: u32 = 32;

/// Failures of building or writing a suite, each naming the suite or path at fault.
#[derive(Debug, thiserror::Error)]
pub enum ShiftWorldError {
    #[error("unknown ShiftWorld suite {name:?} (the suites are: {known})")]
    UnknownSuite { name: String, known: String },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode {} as PNG", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("cannot serialise {}", path.display())]
    Serialize {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{} exists and is neither empty nor a ShiftWorld suite written earlier; refusing to overwrite it",
        path.display()
    )]
    OutputInTheWay { path: PathBuf },
    #[error(
        "{} exists and is not an unfinished ShiftWorld output; remove it or choose another output directory",
        path.display()
    )]
    TemporaryInTheWay { path: PathBuf },
    #[error("output path {} does not name a directory", path.display())]
    InvalidOutput { path: PathBuf },
}

/// A pretraining example: a scene with every factor drawn independently, and its caption.
pub fn sample_pretraining(rng: &mut SplitMix64) -> (Scene, String) {
    let scene = Scene::sample_pretraining(rng);
    let text = caption(&scene, rng);
    (scene, text)
}

/// `count` pretraining samples drawn from `seed`, tiled in a square-ish grid (each pixel
/// `scale`×`scale`), with their captions in grid order (row by row).
pub fn sample_grid(seed: u64, count: usize, scale: u32) -> (image::RgbImage, Vec<String>) {
    let mut rng = SplitMix64::new(seed);
    let (images, captions): (Vec<_>, Vec<_>) = (0..count)
        .map(|_| {
            let (scene, text) = sample_pretraining(&mut rng);
            (render(&scene), text)
        })
        .unzip();
    let columns = (1..).find(|c| c * c >= count).unwrap_or(1);
    (tile(&images, columns, scale), captions)
}
