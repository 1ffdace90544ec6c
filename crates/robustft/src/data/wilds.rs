//! WILDS iWildCam v2.0 and FMoW v1.1 with their official splits, read from the layouts the
//! WILDS package downloads (`ROOT/iwildcam_v2.0/`, `ROOT/fmow_v1.1/`).
//!
//! Checked against p-lambda/wilds (`wilds/datasets/iwildcam_dataset.py` at a867a7c,
//! `wilds/datasets/fmow_dataset.py` at 8018dd0):
//!
//! * **iWildCam v2.0**: `metadata.csv` gives each image's `split` (`train`, `val`, `test`,
//!   `id_val`, `id_test`: `val`/`test` are the OOD camera traps), `filename` (the image is
//!   `train/<filename>` whatever the split), label `y` and camera `location_remapped`, which
//!   becomes the record's group and domain (WILDS's domain and evaluation grouper). WILDS
//!   takes `y` as is (182 classes, 0..181); rows with `y >= 99999` (not among the 182 classes
//!   of the label table) are dropped as FLYP's `datacreation_scripts/iwildcam.py` does, which
//!   changes nothing on the official file. Class names: the lower-cased English names of the
//!   WILDS label table, as DRM, FLYP and WiSE-FT use ([`crate::prompts::iwildcam_class_names`]).
//! * **FMoW v1.1**, split scheme `official` = `time_after_2016`: `rgb_metadata.csv` gives
//!   each image's original `split` (`train`, `val`, `test`, `seq`), `category` (one of the 62
//!   WILDS categories, label = position in that list), `country_code` and `timestamp`. With
//!   the UTC year of the timestamp, a `test` image is OOD `test` from 2016 on and `id_test`
//!   before 2013; a `val` image is OOD `val` in 2013–2015 and `id_val` before 2013; a `train`
//!   image is `train` before 2013 and unused after; `seq` images are never used. The image of
//!   data row `i` (0-based, counting every row including `seq`) is `images/rgb_img_<i>.png`.
//!   The region (the record's group) is the `region` of the `country_code` row whose
//!   `alpha-3` matches in `country_code_mapping.csv`, or `Other` when the code is missing
//!   from that file; a mapped-but-empty region is also taken as `Other` (pandas would read it
//!   as NaN and make it a group of its own). The record's domain is the UTC year, e.g.
//!   `"2014"` (WILDS's year grouper covers 2002–2017 and puts any other year in group -1).

use std::collections::HashMap;
use std::path::Path;

use super::csv::{CsvFile, CsvRow};
use super::{describe_known, DataError, Location, Record, Split};
use crate::prompts::{fmow_class_names, iwildcam_class_names};

/// iWildCam's official splits (`val`, `test`: OOD; `id_val`, `id_test`: ID).
pub const IWILDCAM_SPLITS: [&str; 5] = ["train", "id_val", "id_test", "val", "test"];
/// FMoW's splits under `time_after_2016` (`val`, `test`: OOD; `id_val`, `id_test`: ID).
pub const FMOW_SPLITS: [&str; 5] = ["train", "id_val", "id_test", "val", "test"];

const IWILDCAM_DIR: &str = "iwildcam_v2.0";
const FMOW_DIR: &str = "fmow_v1.1";
/// iWildCam labels from this value up are not classes (FLYP's filter on `y`).
const IWILDCAM_FIRST_UNUSED_LABEL: usize = 99_999;
/// `time_after_2016`: images from this year on are OOD test.
const FMOW_OOD_TEST_FROM_YEAR: i32 = 2016;
/// The three years before the OOD test years are OOD validation.
const FMOW_OOD_VAL_FROM_YEAR: i32 = FMOW_OOD_TEST_FROM_YEAR - 3;
const FMOW_OTHER_REGION: &str = "Other";

/// Split `split` (one of [`IWILDCAM_SPLITS`]) of WILDS iWildCam v2.0 under `root`.
pub fn load_iwildcam_split(root: &Path, split: &str) -> Result<Split, DataError> {
    check_split("WILDS iWildCam v2.0", &IWILDCAM_SPLITS, split)?;
    let data_dir = root.join(IWILDCAM_DIR);
    let metadata = CsvFile::open(&data_dir.join("metadata.csv"))?;
    let (split_column, file_column) = (metadata.column("split")?, metadata.column("filename")?);
    let (label_column, location_column) = (metadata.column("y")?, metadata.column("location_remapped")?);
    let classes = iwildcam_class_names();

    let mut records = Vec::new();
    for row in metadata.rows() {
        let row = row?;
        if row.fields[split_column] != split {
            continue;
        }
        let label = parse_iwildcam_label(&metadata, &row, label_column, classes.len())?;
        let Some(label) = label else { continue };
        let filename = &row.fields[file_column];
        let location = row.fields[location_column].clone();
        records.push(Record {
            id: filename.clone(),
            path: data_dir.join("train").join(filename),
            label,
            group: Some(location.clone()),
            domain: Some(location),
        });
    }
    finish_split(&metadata, split, classes, records)
}

/// The label of an iWildCam row, or `None` for a row FLYP drops (`y >= 99999`).
fn parse_iwildcam_label(
    metadata: &CsvFile,
    row: &CsvRow,
    column: usize,
    num_classes: usize,
) -> Result<Option<usize>, DataError> {
    let value = &row.fields[column];
    let bad_label = |reason: String| DataError::BadLabel {
        at: Location::line(metadata.path(), row.line),
        value: value.clone(),
        reason,
    };
    let label: usize = value.parse().map_err(|_| bad_label("not a non-negative integer".to_owned()))?;
    if label >= IWILDCAM_FIRST_UNUSED_LABEL {
        return Ok(None);
    }
    if label >= num_classes {
        return Err(bad_label(format!("iWildCam has {num_classes} classes")));
    }
    Ok(Some(label))
}

/// Split `split` (one of [`FMOW_SPLITS`]) of WILDS FMoW v1.1 under `root`, split scheme
/// `time_after_2016`.
pub fn load_fmow_split(root: &Path, split: &str) -> Result<Split, DataError> {
    check_split("WILDS FMoW v1.1", &FMOW_SPLITS, split)?;
    let data_dir = root.join(FMOW_DIR);
    let regions = read_country_regions(&data_dir.join("country_code_mapping.csv"))?;
    let metadata = CsvFile::open(&data_dir.join("rgb_metadata.csv"))?;
    let (split_column, category_column) = (metadata.column("split")?, metadata.column("category")?);
    let (country_column, time_column) = (metadata.column("country_code")?, metadata.column("timestamp")?);
    let classes = fmow_class_names();

    let mut records = Vec::new();
    for (image_index, row) in metadata.rows().enumerate() {
        let row = row?;
        let original_split = row.fields[split_column].as_str();
        if !could_belong_to(original_split, split) {
            continue;
        }
        let year = utc_year(&row.fields[time_column]).map_err(|reason| DataError::BadValue {
            at: Location::line(metadata.path(), row.line),
            column: "timestamp".to_owned(),
            value: row.fields[time_column].clone(),
            reason,
        })?;
        if fmow_split(original_split, year) != Some(split) {
            continue;
        }
        let category = &row.fields[category_column];
        let label = classes.iter().position(|c| c == category).ok_or_else(|| DataError::UnknownClass {
            at: Location::line(metadata.path(), row.line),
            class: category.clone(),
            hint: format!("FMoW's categories: {}", describe_known(&classes)),
        })?;
        let region = regions.get(&row.fields[country_column]).map_or(FMOW_OTHER_REGION, String::as_str);
        let id = format!("rgb_img_{image_index}");
        records.push(Record {
            path: data_dir.join("images").join(format!("{id}.png")),
            id,
            label,
            group: Some(region.to_owned()),
            domain: Some(year.to_string()),
        });
    }
    finish_split(&metadata, split, classes, records)
}

/// Whether an image of FMoW's original split `original` can land in WILDS split `wanted`
/// (a cheap test before the timestamp is parsed).
fn could_belong_to(original: &str, wanted: &str) -> bool {
    match wanted {
        "id_val" | "val" => original == "val",
        "id_test" | "test" => original == "test",
        _ => original == wanted,
    }
}

/// The WILDS split of an FMoW image of original split `original` taken in UTC year `year`
/// (`fmow_dataset.py`: the `test_ood_mask`/`val_ood_mask` logic), `None` when unused.
fn fmow_split(original: &str, year: i32) -> Option<&'static str> {
    let in_distribution = year < FMOW_OOD_VAL_FROM_YEAR;
    let ood_test = year >= FMOW_OOD_TEST_FROM_YEAR;
    match original {
        "train" if in_distribution => Some("train"),
        "val" if in_distribution => Some("id_val"),
        "test" if in_distribution => Some("id_test"),
        "val" if !ood_test => Some("val"),
        "test" if ood_test => Some("test"),
        _ => None,
    }
}

/// `alpha-3` -> `region` from FMoW's `country_code_mapping.csv`; empty regions are left out,
/// so those countries fall into `Other`.
fn read_country_regions(path: &Path) -> Result<HashMap<String, String>, DataError> {
    let mapping = CsvFile::open(path)?;
    let (code_column, region_column) = (mapping.column("alpha-3")?, mapping.column("region")?);
    let mut regions = HashMap::new();
    for row in mapping.rows() {
        let mut fields = row?.fields;
        let region = std::mem::take(&mut fields[region_column]);
        if !region.is_empty() {
            regions.insert(std::mem::take(&mut fields[code_column]), region);
        }
    }
    Ok(regions)
}

fn check_split(dataset: &str, known: &[&str], split: &str) -> Result<(), DataError> {
    if known.contains(&split) {
        return Ok(());
    }
    Err(DataError::MissingSplit {
        dataset: dataset.to_owned(),
        split: split.to_owned(),
        available: describe_known(known),
    })
}

fn finish_split(
    metadata: &CsvFile,
    split: &str,
    classes: Vec<String>,
    records: Vec<Record>,
) -> Result<Split, DataError> {
    if records.is_empty() {
        return Err(DataError::EmptySplit {
            dataset: metadata.path().display().to_string(),
            split: split.to_owned(),
        });
    }
    Ok(Split { name: split.to_owned(), classes, records, projection: None })
}

/// The UTC calendar year of an ISO 8601 timestamp as FMoW writes them
/// (`2016-02-29T10:10:48Z`, with optional fractional seconds and a `Z`, `±HH:MM`, `±HHMM` or
/// `±HH` offset; a timestamp without an offset, or a bare date, is taken as UTC).
pub(crate) fn utc_year(timestamp: &str) -> Result<i32, String> {
    let bad = |what: &str| format!("not an ISO 8601 timestamp ({what})");
    let (date, time) = match timestamp.find(['T', ' ']) {
        Some(i) => (&timestamp[..i], &timestamp[i + 1..]),
        None => (timestamp, ""),
    };
    let [year, month, day] = date_parts(date).ok_or_else(|| bad("expected YYYY-MM-DD"))?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(bad("month or day out of range"));
    }
    let (local_minutes, offset_minutes) =
        time_and_offset(time).ok_or_else(|| bad("bad time of day or offset"))?;
    let utc_minutes = local_minutes - offset_minutes;
    let year = year as i32;
    Ok(match (month, day) {
        (1, 1) if utc_minutes < 0 => year - 1,
        (12, 31) if utc_minutes >= 24 * 60 => year + 1,
        _ => year,
    })
}

/// `[year, month, day]` of `YYYY-MM-DD`.
fn date_parts(date: &str) -> Option<[u32; 3]> {
    let mut parts = date.split('-');
    let year = fixed_digits(parts.next()?, 4)?;
    let month = fixed_digits(parts.next()?, 2)?;
    let day = fixed_digits(parts.next()?, 2)?;
    parts.next().is_none().then_some([year, month, day])
}

/// `(minutes after local midnight, UTC offset in minutes)` of `HH:MM[:SS[.fff]][zone]`.
fn time_and_offset(time: &str) -> Option<(i32, i32)> {
    if time.is_empty() {
        return Some((0, 0));
    }
    let zone_start = time.find(['Z', 'z', '+', '-']).unwrap_or(time.len());
    let (clock, zone) = time.split_at(zone_start);
    let mut fields = clock.split(':');
    let hours = fixed_digits(fields.next()?, 2)?;
    let minutes = fixed_digits(fields.next()?, 2)?;
    if let Some(seconds) = fields.next() {
        let whole = seconds.split('.').next()?;
        fixed_digits(whole, 2)?;
    }
    if fields.next().is_some() || hours > 23 || minutes > 59 {
        return None;
    }
    Some(((hours * 60 + minutes) as i32, zone_offset_minutes(zone)?))
}

/// The offset of `Z`, `±HH:MM`, `±HHMM`, `±HH` or an empty zone, in minutes.
fn zone_offset_minutes(zone: &str) -> Option<i32> {
    if zone.is_empty() || zone.eq_ignore_ascii_case("z") {
        return Some(0);
    }
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let digits: String = zone[1..].chars().filter(|&c| c != ':').collect();
    let (hours, minutes) = match digits.len() {
        2 => (fixed_digits(&digits, 2)?, 0),
        4 => (fixed_digits(&digits[..2], 2)?, fixed_digits(&digits[2..], 2)?),
        _ => return None,
    };
    (hours < 24 && minutes < 60).then_some(sign * (hours * 60 + minutes) as i32)
}

/// `text` as a number when it is exactly `len` ASCII digits.
fn fixed_digits(text: &str, len: usize) -> Option<u32> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_year_follows_the_offset_across_new_year() {
        assert_eq!(utc_year("2016-02-29T10:10:48Z"), Ok(2016));
        assert_eq!(utc_year("2015-12-31T23:59:59.999Z"), Ok(2015));
        assert_eq!(utc_year("2016-01-01T00:30:00+01:00"), Ok(2015));
        assert_eq!(utc_year("2015-12-31T23:30:00-0100"), Ok(2016));
        assert_eq!(utc_year("2013-01-01"), Ok(2013));
        assert!(utc_year("2016/01/01").is_err());
        assert!(utc_year("2016-13-01T00:00:00Z").is_err());
        assert!(utc_year("2016-01-01T25:00:00Z").is_err());
    }

    #[test]
    fn fmow_split_boundaries_are_the_time_after_2016_ones() {
        assert_eq!(fmow_split("train", 2012), Some("train"));
        assert_eq!(fmow_split("train", 2013), None);
        assert_eq!(fmow_split("val", 2012), Some("id_val"));
        assert_eq!(fmow_split("val", 2013), Some("val"));
        assert_eq!(fmow_split("val", 2015), Some("val"));
        assert_eq!(fmow_split("val", 2016), None);
        assert_eq!(fmow_split("test", 2012), Some("id_test"));
        assert_eq!(fmow_split("test", 2015), None);
        assert_eq!(fmow_split("test", 2016), Some("test"));
        assert_eq!(fmow_split("seq", 2010), None);
    }
}
