//! Writing a suite to disk as an ImageFolder tree plus a CSV manifest (layout in the module
//! doc of [`super`]), so the loaders that read real data read ShiftWorld too.
//!
//! The suite is written into `DIR.tmp` (marked unfinished by a `.shiftworld-incomplete` file
//! until the end) and renamed to `DIR` only when complete. `DIR` may be absent, empty, or a
//! suite written earlier (its `suite.json` says so and it holds nothing else), which is then
//! replaced; anything else is refused. A leftover `DIR.tmp` is removed only if it carries the
//! unfinished marker.

use std::fs;
use std::path::{Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::captions::concept_descriptions_json;
use super::render::render;
use super::scene::Scene;
use super::suites::Suite;
use super::{ShiftWorldError, CLASSES, IMAGE_SIZE};

/// `format` value of `suite.json`.
pub const FORMAT: &str = "shiftworld-suite";
/// Version of the on-disk layout, recorded in `suite.json`.
pub const FORMAT_VERSION: u32 = 1;

const SUITE_FILE: &str = "suite.json";
const MANIFEST_FILE: &str = "manifest.csv";
const CLASSES_FILE: &str = "classes.txt";
const CONCEPTS_FILE: &str = "concept_descriptions.json";
const SCENES_FILE: &str = "scenes.jsonl";
const INCOMPLETE_MARKER: &str = ".shiftworld-incomplete";
/// Header of `manifest.csv`.
pub const MANIFEST_HEADER: &str = "path,label,split,group,domain";

/// `suite.json`.
#[derive(Serialize, Deserialize)]
struct SuiteFile {
    format: String,
    format_version: u32,
    name: String,
    seed: u64,
    headline_metric: String,
    image_size: u32,
    classes: Vec<String>,
    splits: Vec<SplitEntry>,
}

#[derive(Serialize, Deserialize)]
struct SplitEntry {
    name: String,
    size: usize,
    ood: bool,
}

/// One line of `scenes.jsonl`.
#[derive(Serialize)]
struct SceneLine<'a> {
    path: &'a str,
    scene: &'a Scene,
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ShiftWorldError {
    let path = path.to_path_buf();
    move |source| ShiftWorldError::Io { action, path, source }
}

/// The image's path relative to the suite directory (always `/`-separated).
pub fn example_path(split: &str, label: usize, index: usize) -> String {
    format!("{split}/{}/{split}_{index:05}.png", CLASSES[label])
}

/// Encodes an image as PNG bytes (the `image` crate's default settings: deterministic).
pub fn encode_png(image: &image::RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes).write_image(
        image.as_raw(),
        image.width(),
        image.height(),
        ExtendedColorType::Rgb8,
    )?;
    Ok(bytes)
}

/// Writes `suite` to `out` (see the module doc for the replacement rules).
pub fn write_suite(suite: &Suite, out: &Path) -> Result<(), ShiftWorldError> {
    let replace_existing = check_output(out)?;
    let tmp = temporary_dir(out)?;
    prepare_temporary(&tmp)?;
    if let Err(err) = write_contents(suite, &tmp) {
        // Best effort: the marker makes a leftover safe to remove on the next run anyway.
        let _ = fs::remove_dir_all(&tmp);
        return Err(err);
    }
    let marker = tmp.join(INCOMPLETE_MARKER);
    fs::remove_file(&marker).map_err(io_error("remove", &marker))?;
    if replace_existing {
        fs::remove_dir_all(out).map_err(io_error("remove the previous suite", out))?;
    }
    fs::rename(&tmp, out).map_err(io_error("rename the finished suite to", out))
}

/// Whether `out` holds a previous suite to replace; errors if it is in the way.
fn check_output(out: &Path) -> Result<bool, ShiftWorldError> {
    if !out.exists() {
        return Ok(false);
    }
    if out.is_dir() {
        let mut entries = fs::read_dir(out).map_err(io_error("read directory", out))?;
        if entries.next().is_none() {
            return Ok(true);
        }
        if is_previous_suite(out) {
            return Ok(true);
        }
    }
    Err(ShiftWorldError::OutputInTheWay { path: out.to_path_buf() })
}

/// Whether `dir` is a suite this module wrote: a `suite.json` of our format and no entries
/// other than the files and split directories it names.
fn is_previous_suite(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join(SUITE_FILE)) else { return false };
    let Ok(file) = serde_json::from_str::<SuiteFile>(&text) else { return false };
    if file.format != FORMAT {
        return false;
    }
    let known = |name: &str| {
        [SUITE_FILE, MANIFEST_FILE, CLASSES_FILE, CONCEPTS_FILE, SCENES_FILE].contains(&name)
            || file.splits.iter().any(|s| s.name == name)
    };
    let Ok(entries) = fs::read_dir(dir) else { return false };
    entries.into_iter().all(|entry| entry.is_ok_and(|e| e.file_name().to_str().is_some_and(known)))
}

/// `DIR.tmp` next to `DIR`.
fn temporary_dir(out: &Path) -> Result<PathBuf, ShiftWorldError> {
    let name = out.file_name().ok_or_else(|| ShiftWorldError::InvalidOutput { path: out.to_path_buf() })?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    Ok(out.with_file_name(tmp_name))
}

/// Creates an empty, marked `tmp`, removing an unfinished one left by an earlier run.
fn prepare_temporary(tmp: &Path) -> Result<(), ShiftWorldError> {
    if tmp.exists() {
        if !tmp.join(INCOMPLETE_MARKER).is_file() {
            return Err(ShiftWorldError::TemporaryInTheWay { path: tmp.to_path_buf() });
        }
        fs::remove_dir_all(tmp).map_err(io_error("remove the unfinished", tmp))?;
    }
    fs::create_dir_all(tmp).map_err(io_error("create directory", tmp))?;
    let marker = tmp.join(INCOMPLETE_MARKER);
    fs::write(&marker, b"").map_err(io_error("write", &marker))
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), ShiftWorldError> {
    fs::write(path, contents).map_err(io_error("write", path))
}

/// Writes every file of the suite under `dir`.
fn write_contents(suite: &Suite, dir: &Path) -> Result<(), ShiftWorldError> {
    write_file(&dir.join(CLASSES_FILE), (CLASSES.join("\n") + "\n").as_bytes())?;
    write_file(&dir.join(CONCEPTS_FILE), concept_descriptions_json().as_bytes())?;
    for split in &suite.splits {
        for class in CLASSES {
            let class_dir = dir.join(&split.name).join(class);
            fs::create_dir_all(&class_dir).map_err(io_error("create directory", &class_dir))?;
        }
    }
    let images: Vec<(String, &Scene)> = suite
        .splits
        .iter()
        .flat_map(|split| {
            split
                .examples
                .iter()
                .enumerate()
                .map(|(i, ex)| (example_path(&split.name, ex.label, i), &ex.scene))
        })
        .collect();
    images.par_iter().try_for_each(|(relative, scene)| {
        let path = dir.join(relative);
        let bytes = encode_png(&render(scene))
            .map_err(|source| ShiftWorldError::Encode { path: path.clone(), source })?;
        write_file(&path, &bytes)
    })?;
    write_file(&dir.join(MANIFEST_FILE), manifest(suite).as_bytes())?;
    write_file(&dir.join(SCENES_FILE), scenes_jsonl(&images, &dir.join(SCENES_FILE))?.as_bytes())?;
    let suite_file = suite_file(suite);
    let path = dir.join(SUITE_FILE);
    let json = serde_json::to_string_pretty(&suite_file)
        .map_err(|source| ShiftWorldError::Serialize { path: path.clone(), source })?;
    write_file(&path, (json + "\n").as_bytes())
}

/// `manifest.csv`: one row per image, splits in suite order, examples in index order. No field
/// can hold a comma or a quote (class, split, group and camera names are fixed identifiers).
fn manifest(suite: &Suite) -> String {
    let mut csv = format!("{MANIFEST_HEADER}\n");
    for split in &suite.splits {
        for (i, ex) in split.examples.iter().enumerate() {
            let path = example_path(&split.name, ex.label, i);
            let domain = ex.domain.as_deref().unwrap_or("");
            csv.push_str(&format!("{path},{},{},{},{domain}\n", ex.label, split.name, ex.group));
        }
    }
    csv
}

fn scenes_jsonl(images: &[(String, &Scene)], path: &Path) -> Result<String, ShiftWorldError> {
    let mut out = String::new();
    for (relative, scene) in images {
        let line = serde_json::to_string(&SceneLine { path: relative, scene })
            .map_err(|source| ShiftWorldError::Serialize { path: path.to_path_buf(), source })?;
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

fn suite_file(suite: &Suite) -> SuiteFile {
    SuiteFile {
        format: FORMAT.to_owned(),
        format_version: FORMAT_VERSION,
        name: suite.name.clone(),
        seed: suite.seed,
        headline_metric: suite.headline_metric.to_owned(),
        image_size: IMAGE_SIZE,
        classes: CLASSES.iter().map(|c| c.to_string()).collect(),
        splits: suite
            .splits
            .iter()
            .map(|s| SplitEntry { name: s.name.clone(), size: s.examples.len(), ood: s.is_ood() })
            .collect(),
    }
}
