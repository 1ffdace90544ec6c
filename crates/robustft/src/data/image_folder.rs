//! torchvision's `ImageFolder` layout: `DIR/<class>/**/<image>`.
//!
//! Reproduces torchvision `datasets/folder.py` (`DatasetFolder.find_classes` and
//! `make_dataset`): the classes are the sub-folders of `DIR` sorted by name (label = position);
//! each class's files are found recursively, following symbolic links, visiting folders in
//! the sorted order of their paths and files in sorted name order within a folder. A file is
//! an image when its extension, compared case-insensitively, is one of [`IMAGE_EXTENSIONS`]
//! (the formats the project's decoder reads; torchvision also takes `.ppm`/`.pgm` and not
//! `.gif`). As in torchvision, a class folder without images is an error.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::{DataError, Record, Split};

/// File extensions read as images (lower case, without the dot).
pub const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"];

/// The ImageFolder dataset in `dir`, as one split called `name`.
pub fn load_image_folder(dir: &Path, name: &str) -> Result<Split, DataError> {
    let folders = class_folders(dir)?;
    if folders.is_empty() {
        return Err(DataError::NoClasses { path: dir.to_owned() });
    }
    let mut records = Vec::new();
    for (label, folder) in folders.iter().enumerate() {
        if folder.images.is_empty() {
            return Err(DataError::EmptyClass {
                path: dir.to_owned(),
                class: folder.name.clone(),
                extensions: IMAGE_EXTENSIONS.join(", "),
            });
        }
        records.extend(folder.records(label));
    }
    let classes = folders.into_iter().map(|folder| folder.name).collect();
    Ok(Split { name: name.to_owned(), classes, records, projection: None })
}

/// A class sub-folder and its image files in torchvision's order.
pub(crate) struct ClassFolder {
    pub name: String,
    /// `(id, path)`: the id is the path relative to the dataset folder, `/`-separated.
    pub images: Vec<(String, PathBuf)>,
}

impl ClassFolder {
    /// The folder's images as records labelled `label`.
    pub fn records(&self, label: usize) -> impl Iterator<Item = Record> + '_ {
        self.images.iter().map(move |(id, path)| Record {
            id: id.clone(),
            path: path.clone(),
            label,
            group: None,
            domain: None,
        })
    }
}

/// The sub-folders of `dir` sorted by name, each with its images.
pub(crate) fn class_folders(dir: &Path) -> Result<Vec<ClassFolder>, DataError> {
    let mut names: Vec<String> =
        read_dir_entries(dir)?.into_iter().filter(|entry| entry.is_dir).map(|entry| entry.name).collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let images = images_under(&dir.join(&name), &name)?;
            Ok(ClassFolder { name, images })
        })
        .collect()
}

/// Image files under `class_dir`, recursively: folders in the sorted order of their paths
/// (as Python sorts `os.walk`'s roots), files sorted by name within a folder.
fn images_under(class_dir: &Path, class_name: &str) -> Result<Vec<(String, PathBuf)>, DataError> {
    let mut folders = Vec::new();
    let mut visited = HashSet::new();
    collect_folders(class_dir, class_name.to_owned(), &mut folders, &mut visited)?;
    folders.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(folders.into_iter().flat_map(|(_, files)| files).collect())
}

/// Adds `(relative path, sorted image files)` for `dir` and every folder below it. Folders
/// already visited through another symbolic link are skipped, so link cycles terminate.
fn collect_folders(
    dir: &Path,
    relative: String,
    folders: &mut Vec<(String, Vec<(String, PathBuf)>)>,
    visited: &mut HashSet<PathBuf>,
) -> Result<(), DataError> {
    let canonical = fs::canonicalize(dir).map_err(|source| DataError::Io { path: dir.to_owned(), source })?;
    if !visited.insert(canonical) {
        return Ok(());
    }
    let mut files = Vec::new();
    let mut subfolders = Vec::new();
    for DirEntry { name, path, is_dir } in read_dir_entries(dir)? {
        if is_dir {
            subfolders.push((name, path));
        } else if is_image_file(&name) {
            files.push((format!("{relative}/{name}"), path));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    folders.push((relative.clone(), files));
    for (name, path) in subfolders {
        collect_folders(&path, format!("{relative}/{name}"), folders, visited)?;
    }
    Ok(())
}

/// An entry of a folder.
struct DirEntry {
    /// The file name (converted lossily when it is not UTF-8).
    name: String,
    path: PathBuf,
    /// Whether it is a folder, or a symbolic link to one.
    is_dir: bool,
}

/// Every entry of `dir`. Only symbolic links cost an extra `stat`.
fn read_dir_entries(dir: &Path) -> Result<Vec<DirEntry>, DataError> {
    let io_error = |source| DataError::Io { path: dir.to_owned(), source };
    fs::read_dir(dir)
        .map_err(io_error)?
        .map(|entry| {
            let entry = entry.map_err(io_error)?;
            let (path, file_type) = (entry.path(), entry.file_type().map_err(io_error)?);
            let is_dir = if file_type.is_symlink() { path.is_dir() } else { file_type.is_dir() };
            Ok(DirEntry { name: entry.file_name().to_string_lossy().into_owned(), path, is_dir })
        })
        .collect()
}

fn is_image_file(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| IMAGE_EXTENSIONS.iter().any(|known| ext.eq_ignore_ascii_case(known)))
}
