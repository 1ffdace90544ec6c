//! Class-name lists: from a file or an inline list, and the bundled iWildCam and FMoW lists.

use std::collections::HashMap;
use std::path::Path;

use super::{read_text, PromptError};

/// The iWildCam label table released with WILDS (as copied into vaynexie/DRM).
const IWILDCAM_LABELS_CSV: &str =
    include_str!("../../../../assets/drm/src_datasets_iwildcam_metadata_labels.csv");
/// Labels from this value up are not among iWildCam's 182 classes.
const IWILDCAM_FIRST_UNUSED_LABEL: u32 = 99_999;

// p-lambda/wilds wilds/datasets/fmow_dataset.py (`categories`), identical to
// vaynexie/DRM src/datasets/fmow.py (`self.classnames`); label order.
const FMOW_CLASS_NAMES: [&str; 62] = [
    "airport",
    "airport_hangar",
    "airport_terminal",
    "amusement_park",
    "aquaculture",
    "archaeological_site",
    "barn",
    "border_checkpoint",
    "burial_site",
    "car_dealership",
    "construction_site",
    "crop_field",
    "dam",
    "debris_or_rubble",
    "educational_institution",
    "electric_substation",
    "factory_or_powerplant",
    "fire_station",
    "flooded_road",
    "fountain",
    "gas_station",
    "golf_course",
    "ground_transportation_station",
    "helipad",
    "hospital",
    "impoverished_settlement",
    "interchange",
    "lake_or_pond",
    "lighthouse",
    "military_facility",
    "multi-unit_residential",
    "nuclear_powerplant",
    "office_building",
    "oil_or_gas_facility",
    "park",
    "parking_lot_or_garage",
    "place_of_worship",
    "police_station",
    "port",
    "prison",
    "race_track",
    "railway_bridge",
    "recreational_facility",
    "road_bridge",
    "runway",
    "shipyard",
    "shopping_mall",
    "single-unit_residential",
    "smokestack",
    "solar_farm",
    "space_facility",
    "stadium",
    "storage_tank",
    "surface_mine",
    "swimming_pool",
    "toll_booth",
    "tower",
    "tunnel_opening",
    "waste_disposal",
    "water_treatment_facility",
    "wind_farm",
    "zoo",
];

/// Class names from `spec`: a file, or else (when `spec` names no existing path and contains a
/// comma, or does not look like a file name) an inline comma-separated list such as
/// `"cat,dog,owl"` or the single class `"circle"`. A missing `classes.txt` or `dir/names` is an
/// error, not a class.
///
/// A leading UTF-8 byte-order mark is ignored. A file holding a JSON array of strings (its first non-blank character is `[`) is read as
/// such; any other file holds one name per line, trailing blank lines ignored. Names are
/// trimmed. An empty name (a blank line between names, `"a,,b"`), a repeated name or an empty
/// list is an error naming the source and the 1-based position (the line, for text files).
pub fn load_class_names(spec: &str) -> Result<Vec<String>, PromptError> {
    let path = Path::new(spec);
    if !path.exists() && (spec.contains(',') || !looks_like_a_file_name(spec)) {
        return validated_class_names(spec.split(','), "inline class list");
    }
    let text = read_text(path)?;
    let text = crate::files::strip_bom(&text);
    let origin = path.display().to_string();
    if text.trim_start().starts_with(['[', '{']) {
        let names: Vec<String> = serde_json::from_str(text)
            .map_err(|source| PromptError::Json { path: origin.clone(), source })?;
        validated_class_names(names.iter().map(String::as_str), &origin)
    } else {
        let lines: Vec<&str> = text.lines().collect();
        let kept = lines.len() - lines.iter().rev().take_while(|l| l.trim().is_empty()).count();
        validated_class_names(lines[..kept].iter().copied(), &origin)
    }
}

/// A path separator, or an extension of a class-list file (`.txt`, `.json`, `.csv`).
fn looks_like_a_file_name(spec: &str) -> bool {
    let extension = Path::new(spec).extension().and_then(|e| e.to_str()).unwrap_or_default();
    spec.contains(['/', '\\']) || ["txt", "json", "csv"].contains(&extension.to_ascii_lowercase().as_str())
}

fn validated_class_names<'a>(
    raw: impl Iterator<Item = &'a str>,
    origin: &str,
) -> Result<Vec<String>, PromptError> {
    let mut names = Vec::new();
    let mut first_position: HashMap<String, usize> = HashMap::new();
    for (index, name) in raw.enumerate() {
        let (name, position) = (name.trim(), index + 1);
        if name.is_empty() {
            return Err(PromptError::EmptyClassName { origin: origin.to_owned(), position });
        }
        if let Some(&first) = first_position.get(name) {
            return Err(PromptError::DuplicateClassName {
                origin: origin.to_owned(),
                name: name.to_owned(),
                first,
                second: position,
            });
        }
        first_position.insert(name.to_owned(), position);
        names.push(name.to_owned());
    }
    if names.is_empty() {
        return Err(PromptError::NoClassNames { origin: origin.to_owned() });
    }
    Ok(names)
}

/// iWildCam's 182 class names in label (`y`) order: the `english` column of the bundled WILDS
/// label table, rows with `y >= 99999` dropped, lower-cased as DRM, FLYP and WiSE-FT do
/// (`[s.lower() for s in df['english']]` in their `src/datasets/iwildcam.py`).
///
/// The list is not free of repeats: "lowland paca", "jaguarundi", "unknown bird" and
/// "central american red brocket" each name two labels.
pub fn iwildcam_class_names() -> Vec<String> {
    let mut labelled: Vec<(u32, &str)> = IWILDCAM_LABELS_CSV
        .lines()
        .skip(1)
        .filter_map(iwildcam_label_row)
        .filter(|&(y, _)| y < IWILDCAM_FIRST_UNUSED_LABEL)
        .collect();
    labelled.sort_by_key(|&(y, _)| y);
    labelled.into_iter().map(|(_, english)| english.to_lowercase()).collect()
}

/// `(y, english)` from a `y,category_id,name,english` row.
fn iwildcam_label_row(row: &str) -> Option<(u32, &str)> {
    let mut fields = row.splitn(4, ',');
    let y = fields.next()?.trim().parse().ok()?;
    let english = fields.nth(2)?.trim();
    Some((y, english))
}

/// FMoW's 62 class names in label order, as WILDS spells them (with underscores).
pub fn fmow_class_names() -> Vec<String> {
    FMOW_CLASS_NAMES.iter().map(|&name| name.to_owned()).collect()
}
