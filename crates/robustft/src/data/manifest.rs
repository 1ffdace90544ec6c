//! CSV manifest datasets: the project's own format, written by `robustft shiftworld generate`
//! and easy to write by hand for any image collection.
//!
//! A manifest dataset is a directory `DIR` holding
//!
//! * `DIR/manifest.csv` (RFC 4180, see `csv.rs`) with a header naming at least the columns
//!   `path` (image file, relative to `DIR`; an absolute path is used as is), `label` and
//!   `split`, in any order, and optionally `id` (default: the `path` value), `group`,
//!   `region` (read as the group when there is no `group` column: FMoW-style manifests) and
//!   `domain`. Other columns are ignored; an empty optional value is `None`.
//! * `DIR/classes.txt` (optional): one class name per line, in label order; a leading UTF-8
//!   byte-order mark and surrounding whitespace are removed and trailing blank lines ignored.
//!
//! A `label` made only of ASCII digits is a class index into `classes.txt` (which is then
//! required); any other label is a class name, looked up in `classes.txt` when it exists.
//! Without `classes.txt` the classes are the sorted distinct label names of the whole manifest
//! (all splits), so every split of a dataset shares one label space.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::csv::{CsvFile, CsvRow};
use super::{describe_known, read_text, DataError, Location, Record, Split};

const MANIFEST_FILE: &str = "manifest.csv";
const CLASSES_FILE: &str = "classes.txt";

/// The split names of the manifest dataset in `dir`, in order of first appearance.
pub fn manifest_splits(dir: &Path) -> Result<Vec<String>, DataError> {
    let manifest = CsvFile::open(&dir.join(MANIFEST_FILE))?;
    let split_column = manifest.column("split")?;
    let mut splits: Vec<String> = Vec::new();
    for row in manifest.rows() {
        let split = &row?.fields[split_column];
        if !splits.contains(split) {
            splits.push(split.clone());
        }
    }
    Ok(splits)
}

/// Split `split` of the manifest dataset in `dir` (format: see the module docs). Records keep
/// the manifest's row order.
pub fn load_manifest_split(dir: &Path, split: &str) -> Result<Split, DataError> {
    let manifest = CsvFile::open(&dir.join(MANIFEST_FILE))?;
    let columns = ManifestColumns::find(&manifest)?;
    let declared = read_declared_classes(&dir.join(CLASSES_FILE))?;

    let mut splits_seen: Vec<String> = Vec::new();
    let mut label_names = BTreeSet::new();
    let mut rows = Vec::new();
    for row in manifest.rows() {
        let row = row?;
        let row_split = required_value(&manifest, &row, columns.split, "split")?;
        if !splits_seen.iter().any(|s| s == row_split) {
            splits_seen.push(row_split.to_owned());
        }
        let label = required_value(&manifest, &row, columns.label, "label")?;
        if declared.is_none() {
            reject_index_without_class_list(&manifest, &row, label, dir)?;
            label_names.insert(label.to_owned());
        }
        if row_split == split {
            rows.push(row);
        }
    }
    if rows.is_empty() {
        return Err(DataError::MissingSplit {
            dataset: manifest.path().display().to_string(),
            split: split.to_owned(),
            available: describe_known(&splits_seen),
        });
    }

    let classes = match declared {
        Some(declared) => declared,
        None => ClassList::from_names(label_names.into_iter().collect()),
    };
    let records = rows
        .iter()
        .map(|row| columns.record(&manifest, row, dir, &classes))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Split { name: split.to_owned(), classes: classes.names, records, projection: None })
}

/// Positions of the manifest's columns.
struct ManifestColumns {
    path: usize,
    label: usize,
    split: usize,
    id: Option<usize>,
    group: Option<usize>,
    domain: Option<usize>,
}

impl ManifestColumns {
    fn find(manifest: &CsvFile) -> Result<Self, DataError> {
        Ok(Self {
            path: manifest.column("path")?,
            label: manifest.column("label")?,
            split: manifest.column("split")?,
            id: manifest.optional_column("id"),
            group: manifest.optional_column("group").or_else(|| manifest.optional_column("region")),
            domain: manifest.optional_column("domain"),
        })
    }

    fn record(
        &self,
        manifest: &CsvFile,
        row: &CsvRow,
        dir: &Path,
        classes: &ClassList,
    ) -> Result<Record, DataError> {
        let path = required_value(manifest, row, self.path, "path")?;
        let label = required_value(manifest, row, self.label, "label")?;
        let optional =
            |column: Option<usize>| column.map(|c| row.fields[c].clone()).filter(|value| !value.is_empty());
        Ok(Record {
            id: optional(self.id).unwrap_or_else(|| path.to_owned()),
            path: dir.join(path),
            label: classes.resolve(label, &Location::line(manifest.path(), row.line))?,
            group: optional(self.group),
            domain: optional(self.domain),
        })
    }
}

/// The value of `column` (called `name`) in `row`, which must not be empty.
fn required_value<'r>(
    manifest: &CsvFile,
    row: &'r CsvRow,
    column: usize,
    name: &str,
) -> Result<&'r str, DataError> {
    let value = row.fields[column].as_str();
    if value.is_empty() {
        return Err(DataError::BadValue {
            at: Location::line(manifest.path(), row.line),
            column: name.to_owned(),
            value: String::new(),
            reason: "the value is empty".to_owned(),
        });
    }
    Ok(value)
}

/// Labels that are class indices need `classes.txt`.
fn reject_index_without_class_list(
    manifest: &CsvFile,
    row: &CsvRow,
    label: &str,
    dir: &Path,
) -> Result<(), DataError> {
    if is_class_index(label) {
        return Err(DataError::BadLabel {
            at: Location::line(manifest.path(), row.line),
            value: label.to_owned(),
            reason: format!(
                "a class index needs a class list, but {} does not exist",
                dir.join(CLASSES_FILE).display()
            ),
        });
    }
    Ok(())
}

fn is_class_index(label: &str) -> bool {
    label.bytes().all(|b| b.is_ascii_digit())
}

/// The label space: class names in label order and where they came from.
struct ClassList {
    names: Vec<String>,
    index: HashMap<String, usize>,
    origin: Option<std::path::PathBuf>,
}

impl ClassList {
    fn from_names(names: Vec<String>) -> Self {
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        Self { names, index, origin: None }
    }

    /// The label of a `label` value: an index (digits only) or a class name.
    fn resolve(&self, label: &str, at: &Location) -> Result<usize, DataError> {
        if is_class_index(label) {
            let bad_label =
                |reason: String| DataError::BadLabel { at: at.clone(), value: label.to_owned(), reason };
            let index: usize =
                label.parse().map_err(|_| bad_label("the class index is too large".to_owned()))?;
            if index >= self.names.len() {
                return Err(bad_label(format!("there are only {} classes", self.names.len())));
            }
            return Ok(index);
        }
        self.index.get(label).copied().ok_or_else(|| DataError::UnknownClass {
            at: at.clone(),
            class: label.to_owned(),
            hint: match &self.origin {
                Some(origin) => format!("{} lists {}", origin.display(), describe_known(&self.names)),
                None => format!("known: {}", describe_known(&self.names)),
            },
        })
    }
}

/// `classes.txt`, when it exists.
fn read_declared_classes(path: &Path) -> Result<Option<ClassList>, DataError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read_text(path)?;
    let lines: Vec<&str> = crate::files::strip_bom(&text).lines().collect();
    let kept = lines.len() - lines.iter().rev().take_while(|line| line.trim().is_empty()).count();
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    for (i, name) in lines[..kept].iter().map(|line| line.trim()).enumerate() {
        let at = Location::line(path, i + 1);
        if name.is_empty() {
            return Err(DataError::BadClassList { at, reason: "blank line between class names".to_owned() });
        }
        if let Some(&first) = first_line.get(name) {
            return Err(DataError::DuplicateClass { at, class: name.to_owned(), first_line: first });
        }
        first_line.insert(name, i + 1);
    }
    if kept == 0 {
        let reason = "the class list is empty".to_owned();
        return Err(DataError::BadClassList { at: Location::file(path), reason });
    }
    let names = lines[..kept].iter().map(|line| line.trim().to_owned()).collect();
    Ok(Some(ClassList { origin: Some(path.to_owned()), ..ClassList::from_names(names) }))
}
