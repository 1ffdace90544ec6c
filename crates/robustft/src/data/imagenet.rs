//! ImageNet and its distribution shifts, with the label spaces and logit projections of
//! mlfoundations/wise-ft `src/datasets/` (which FLYP and DRM reuse). `root` is the folder that
//! holds the class sub-folders (ObjectNet: the `objectnet-1.0` folder).
//!
//! | variant | layout under `root` | classes | projection |
//! |---|---|---|---|
//! | `imagenet` (val) | `<wnid>/` (torchvision ImageFolder) | 1000 | none |
//! | `imagenet-sketch` | `<wnid>/` (`imagenet_sketch.py`) | 1000 | none |
//! | `imagenet-v2` | `0/` .. `999/`, label = folder number (matched-frequency release; `imagenetv2.py`) | 1000 | none |
//! | `imagenet-r`, `imagenet-a` | `<wnid>/` of their 200 classes | 200 | `Subset` of the 1000 columns |
//! | `objectnet` | `images/<folder>/`, `mappings/*` (ObjectNet 1.0 release) | 113 | `MaxPool` |
//!
//! * Class index `k` of the 1000-class space is the `k`-th WordNet id in sorted order
//!   ([`IMAGENET_WNIDS`]); folders are mapped by their WordNet id, so a partial copy keeps the
//!   standard labels. Class names are OpenAI CLIP's ([`IMAGENET_CLASS_NAMES`]).
//! * ImageNet-R/-A (`imagenet_r.py`, `imagenet_a.py`, `imagenet.py: ImageNetSubsample`): the
//!   label space is the dataset's official 200-class list ([`IMAGENET_R_CLASS_INDICES`],
//!   [`IMAGENET_A_CLASS_INDICES`]), labels re-indexed 0..199 in that (ascending) order, and the
//!   logits projected onto those 200 columns. On a complete copy this is exactly the sorted set
//!   of WordNet ids present; a folder outside the list is an error.
//! * ObjectNet (`objectnet.py: get_metadata`, `ObjectNetBase`), from the four files of the
//!   release's `mappings/` folder: `folder_to_objectnet_label.json` (folder -> ObjectNet
//!   name), `objectnet_to_imagenet_1k.json` (ObjectNet name -> `"; "`-separated ImageNet label
//!   texts), `imagenet_to_label_2012_v2` (line `i` = label text of ImageNet 2012 id `i`; a
//!   repeated text keeps its last line, as Python's dict does) and
//!   `pytorch_to_imagenet_2012_id.json` (class index -> 2012 id). The 113 ObjectNet classes
//!   that map to ImageNet are the classes, in sorted folder order, named by their lower-cased
//!   ObjectNet names; images in the other folders are left out; each class's logit is the max
//!   over its ImageNet classes. wise-ft also crops [`OBJECTNET_BORDER_CROP`] pixels off every
//!   side of an ObjectNet image before the CLIP transform (`objectnet.py: crop`): that belongs
//!   to the caller's transform.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::de::DeserializeOwned;

use super::image_folder::class_folders;
use super::imagenet_classes::{
    IMAGENET_A_CLASS_INDICES, IMAGENET_CLASS_NAMES, IMAGENET_R_CLASS_INDICES, IMAGENET_WNIDS,
};
use super::{describe_known, read_text, DataError, Location, LogitProjection, Record, Split};

/// The variants [`load_imagenet_variant`] reads.
pub const IMAGENET_VARIANTS: [&str; 6] =
    ["imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet"];

/// Pixels wise-ft crops from each side of an ObjectNet image (removing its 1-2 px border)
/// before the CLIP transform.
pub const OBJECTNET_BORDER_CROP: u32 = 2;

/// OpenAI CLIP's names of the 1000 ImageNet classes, in class-index order: the zero-shot head
/// whose logits the ImageNet variants' projections read.
pub fn imagenet_class_names() -> Vec<String> {
    IMAGENET_CLASS_NAMES.iter().map(|&name| name.to_owned()).collect()
}

/// The images of an ImageNet variant (one of [`IMAGENET_VARIANTS`]; case-insensitive, `_` read
/// as `-`) stored under `root` (layouts: see the module docs), as one split named after the
/// variant. `imagenet` reads any WordNet-id folder tree: the validation set, or the training
/// set for fine-tuning.
pub fn load_imagenet_variant(root: &Path, variant: &str) -> Result<Split, DataError> {
    let canonical = variant.to_ascii_lowercase().replace('_', "-");
    match canonical.as_str() {
        "imagenet" | "imagenet-sketch" => load_full_wnid_folders(root, &canonical),
        "imagenet-v2" => load_numbered_folders(root, &canonical),
        "imagenet-r" => load_subset_wnid_folders(root, &canonical, &IMAGENET_R_CLASS_INDICES),
        "imagenet-a" => load_subset_wnid_folders(root, &canonical, &IMAGENET_A_CLASS_INDICES),
        "objectnet" => load_objectnet(root),
        _ => Err(DataError::UnknownVariant {
            variant: variant.to_owned(),
            known: describe_known(&IMAGENET_VARIANTS),
        }),
    }
}

/// WordNet-id folders over the 1000 classes (ImageNet val, ImageNet-Sketch).
fn load_full_wnid_folders(root: &Path, name: &str) -> Result<Split, DataError> {
    let records = labelled_folders(root, |folder| wnid_index(root, folder))?;
    finish(root, name, imagenet_class_names(), records, None)
}

/// Folders `0` .. `999` named by class index (ImageNet-V2).
fn load_numbered_folders(root: &Path, name: &str) -> Result<Split, DataError> {
    let records = labelled_folders(root, |folder| {
        let index = folder.parse::<usize>().ok().filter(|&i| i < IMAGENET_WNIDS.len());
        index.ok_or_else(|| DataError::UnknownClass {
            at: Location::file(root.join(folder)),
            class: folder.to_owned(),
            hint: "ImageNet-V2 class folders are named by class index, 0 to 999".to_owned(),
        })
    })?;
    finish(root, name, imagenet_class_names(), records, None)
}

/// WordNet-id folders of a 200-class subset (ImageNet-R, ImageNet-A).
fn load_subset_wnid_folders(root: &Path, name: &str, subset: &[usize]) -> Result<Split, DataError> {
    let records = labelled_folders(root, |folder| {
        let index = wnid_index(root, folder)?;
        subset.iter().position(|&i| i == index).ok_or_else(|| DataError::UnknownClass {
            at: Location::file(root.join(folder)),
            class: folder.to_owned(),
            hint: format!("not one of the {} classes of {name}", subset.len()),
        })
    })?;
    let classes = subset.iter().map(|&i| IMAGENET_CLASS_NAMES[i].to_owned()).collect();
    finish(root, name, classes, records, Some(LogitProjection::Subset(subset.to_vec())))
}

/// The class index of a WordNet-id folder.
fn wnid_index(root: &Path, folder: &str) -> Result<usize, DataError> {
    IMAGENET_WNIDS.binary_search(&folder).map_err(|_| DataError::UnknownClass {
        at: Location::file(root.join(folder)),
        class: folder.to_owned(),
        hint: "not an ImageNet-1k WordNet id such as `n01440764`".to_owned(),
    })
}

/// Records of every class folder under `root`, labelled by `label_of(folder name)`, in
/// ImageFolder order.
fn labelled_folders(
    root: &Path,
    mut label_of: impl FnMut(&str) -> Result<usize, DataError>,
) -> Result<Vec<Record>, DataError> {
    let mut records = Vec::new();
    for folder in class_folders(root)? {
        records.extend(folder.records(label_of(&folder.name)?));
    }
    Ok(records)
}

fn finish(
    root: &Path,
    name: &str,
    classes: Vec<String>,
    records: Vec<Record>,
    projection: Option<LogitProjection>,
) -> Result<Split, DataError> {
    if records.is_empty() {
        return Err(DataError::EmptySplit { dataset: root.display().to_string(), split: name.to_owned() });
    }
    Ok(Split { name: name.to_owned(), classes, records, projection })
}

/// ObjectNet 1.0: the 113 classes that overlap ImageNet, max-pooled.
fn load_objectnet(root: &Path) -> Result<Split, DataError> {
    let classes = objectnet_classes(&root.join("mappings"))?;
    let mut records = Vec::new();
    for folder in class_folders(&root.join("images"))? {
        if let Some(label) = classes.keys().position(|name| *name == folder.name) {
            records.extend(folder.records(label));
        }
    }
    let names = classes.values().map(|class| class.name.to_lowercase()).collect();
    let groups = classes.into_values().map(|class| class.imagenet_indices).collect();
    finish(root, "objectnet", names, records, Some(LogitProjection::MaxPool(groups)))
}

/// One ObjectNet class that overlaps ImageNet.
struct ObjectNetClass {
    /// The ObjectNet name, e.g. `Alarm clock`.
    name: String,
    /// The ImageNet class indices mapped to it, in the mapping file's order.
    imagenet_indices: Vec<usize>,
}

/// The overlapping classes keyed (and so sorted) by folder name.
fn objectnet_classes(mappings: &Path) -> Result<BTreeMap<String, ObjectNetClass>, DataError> {
    let folder_to_name: HashMap<String, String> =
        read_json(&mappings.join("folder_to_objectnet_label.json"))?;
    let name_to_folder: HashMap<&str, &str> =
        folder_to_name.iter().map(|(folder, name)| (name.as_str(), folder.as_str())).collect();
    let imagenet_index = imagenet_indices_by_label_text(mappings)?;

    let overlap_path = mappings.join("objectnet_to_imagenet_1k.json");
    let overlap: BTreeMap<String, String> = read_json(&overlap_path)?;
    let mut classes = BTreeMap::new();
    for (name, imagenet_labels) in overlap {
        let folder = name_to_folder.get(name.as_str()).ok_or_else(|| DataError::UnknownClass {
            at: Location::file(&overlap_path),
            class: name.clone(),
            hint: "no folder of folder_to_objectnet_label.json has this ObjectNet name".to_owned(),
        })?;
        let imagenet_indices = imagenet_labels
            .split("; ")
            .map(|label| {
                imagenet_index.get(label).copied().ok_or_else(|| DataError::UnknownClass {
                    at: Location::file(&overlap_path),
                    class: label.to_owned(),
                    hint: format!("not a line of imagenet_to_label_2012_v2 (mapped from `{name}`)"),
                })
            })
            .collect::<Result<_, _>>()?;
        classes.insert((*folder).to_owned(), ObjectNetClass { name, imagenet_indices });
    }
    Ok(classes)
}

/// ImageNet label text -> class index, from `imagenet_to_label_2012_v2` (2012 ids) and
/// `pytorch_to_imagenet_2012_id.json` (class index -> 2012 id).
fn imagenet_indices_by_label_text(mappings: &Path) -> Result<HashMap<String, usize>, DataError> {
    let ids_path = mappings.join("pytorch_to_imagenet_2012_id.json");
    let index_to_id: HashMap<String, usize> = read_json(&ids_path)?;
    let mut id_to_index = HashMap::new();
    for (index, id) in index_to_id {
        let parsed = index.parse::<usize>().ok().filter(|&i| i < IMAGENET_WNIDS.len());
        let index = parsed.ok_or_else(|| DataError::BadValue {
            at: Location::file(&ids_path),
            column: "class index".to_owned(),
            value: index.clone(),
            reason: "keys must be ImageNet class indices, 0 to 999".to_owned(),
        })?;
        id_to_index.insert(id, index);
    }
    let labels_path = mappings.join("imagenet_to_label_2012_v2");
    let mut by_text = HashMap::new();
    for (id, text) in read_text(&labels_path)?.lines().enumerate() {
        let index = id_to_index.get(&id).copied().ok_or_else(|| DataError::BadValue {
            at: Location::line(&labels_path, id + 1),
            column: "2012 id".to_owned(),
            value: id.to_string(),
            reason: format!("no class index maps to this 2012 id in {}", ids_path.display()),
        })?;
        by_text.insert(text.trim().to_owned(), index);
    }
    Ok(by_text)
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, DataError> {
    serde_json::from_str(&read_text(path)?)
        .map_err(|source| DataError::Json { path: path.to_owned(), source })
}
