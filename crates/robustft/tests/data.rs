//! The dataset layer on small datasets written by each test into a scratch folder: CSV
//! manifests, ImageFolder ordering, synthetic WILDS iWildCam/FMoW and ImageNet-variant layouts,
//! logit projections, and the parallel loader (determinism, failures, bounded prefetch,
//! resuming).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use robustft::data::{
    epoch_order, imagenet_class_names, load_fmow_split, load_image_folder, load_imagenet_variant,
    load_iwildcam_split, load_manifest_split, manifest_splits, Batch, DataError, Loader, LoaderConfig,
    LogitProjection, Record, Split, Transform, IMAGENET_A_CLASS_INDICES, IMAGENET_R_CLASS_INDICES,
    IMAGENET_WNIDS,
};

/// An empty folder for one test under Cargo's scratch space.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("data-tests").join(test);
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap();
    }
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &Path, contents: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

/// A 2x2 PNG filled with one colour (PNG whatever the file's extension).
fn write_png(path: &Path, rgb: [u8; 3]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let image = image::RgbImage::from_pixel(2, 2, image::Rgb(rgb));
    image.save_with_format(path, image::ImageFormat::Png).unwrap();
}

/// Values per decoded 2x2 RGB image.
const IMAGE_LEN: usize = 12;

/// Decodes an image (format read from its content) into its RGB bytes as floats: the role
/// `ClipPreprocess::load` plays in practice.
fn png_transform() -> Transform {
    Arc::new(|path: &Path| {
        let decode = || image::ImageReader::open(path)?.with_guessed_format()?.decode();
        let image = decode().map_err(|e| format!("cannot decode: {e}"))?.to_rgb8();
        Ok(image.into_raw().into_iter().map(f32::from).collect())
    })
}

fn ids(split: &Split) -> Vec<&str> {
    split.records.iter().map(|r| r.id.as_str()).collect()
}

fn labels(split: &Split) -> Vec<usize> {
    split.records.iter().map(|r| r.label).collect()
}

// ---------------------------------------------------------------------------------------------
// CSV manifests

#[test]
fn manifest_with_index_labels_reads_optional_columns() {
    let dir = scratch("manifest_index");
    write(&dir.join("classes.txt"), "cat\ndog\nowl\n\n");
    write(
        &dir.join("manifest.csv"),
        "id,path,label,split,group,domain,notes\n\
         a,img/a.png,0,train,g1,d1,\"free, text\"\n\
         b,img/b.png,2,test,,d2,\n\
         c,\"img/c, d.png\",dog,train,g2,,x\n",
    );
    assert_eq!(manifest_splits(&dir).unwrap(), ["train", "test"]);
    let train = load_manifest_split(&dir, "train").unwrap();
    assert_eq!(train.name, "train");
    assert_eq!(train.classes, ["cat", "dog", "owl"]);
    assert!(train.projection.is_none());
    assert_eq!(
        train.records,
        [
            Record {
                id: "a".into(),
                path: dir.join("img/a.png"),
                label: 0,
                group: Some("g1".into()),
                domain: Some("d1".into()),
            },
            Record {
                id: "c".into(),
                path: dir.join("img/c, d.png"),
                label: 1,
                group: Some("g2".into()),
                domain: None,
            },
        ]
    );
    let test = load_manifest_split(&dir, "test").unwrap();
    assert_eq!((labels(&test), test.records[0].group.clone()), (vec![2], None));
}

#[test]
fn a_byte_order_mark_in_classes_txt_is_not_part_of_the_first_class() {
    let dir = scratch("manifest_bom");
    write(&dir.join("manifest.csv"), "path,label,split\na.png,cat,train\nb.png,1,train\n");
    write(&dir.join("classes.txt"), "\u{feff}cat\ndog\n");
    let train = load_manifest_split(&dir, "train").unwrap();
    assert_eq!(train.classes, ["cat", "dog"]);
    assert_eq!(labels(&train), [0, 1]);
}

#[test]
fn manifest_with_name_labels_shares_sorted_classes_across_splits() {
    let dir = scratch("manifest_names");
    write(
        &dir.join("manifest.csv"),
        "split,label,path,region\ntrain,zebra,z1.png,Asia\ntrain,ant,a1.png,Europe\ntest,moth,m1.png,\n",
    );
    let train = load_manifest_split(&dir, "train").unwrap();
    // "moth" only occurs in test, but both splits share one label space.
    assert_eq!(train.classes, ["ant", "moth", "zebra"]);
    assert_eq!(labels(&train), [2, 0]);
    assert_eq!(ids(&train), ["z1.png", "a1.png"], "the id defaults to the path");
    assert_eq!(train.records[0].group.as_deref(), Some("Asia"), "region stands in for group");
    let test = load_manifest_split(&dir, "test").unwrap();
    assert_eq!((test.classes.clone(), labels(&test)), (train.classes.clone(), vec![1]));
    assert_eq!(test.records[0].group, None);
}

#[test]
fn manifest_missing_column_names_the_column_and_the_file() {
    let dir = scratch("manifest_missing_column");
    write(&dir.join("manifest.csv"), "path,split\na.png,train\n");
    let error = load_manifest_split(&dir, "train").unwrap_err();
    match &error {
        DataError::MissingColumn { path, column, .. } => {
            assert_eq!((path.clone(), column.as_str()), (dir.join("manifest.csv"), "label"));
        }
        other => panic!("expected MissingColumn, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains("manifest.csv") && message.contains("`label`"), "{message}");
}

#[test]
fn manifest_unknown_class_and_bad_labels_name_the_line() {
    let dir = scratch("manifest_bad_labels");
    write(&dir.join("classes.txt"), "cat\ndog\n");
    write(&dir.join("manifest.csv"), "path,label,split\na.png,cat,train\nb.png,zebra,train\n");
    let error = load_manifest_split(&dir, "train").unwrap_err();
    assert!(matches!(&error, DataError::UnknownClass { class, .. } if class == "zebra"), "{error:?}");
    assert!(error.to_string().contains("manifest.csv:3"), "{error}");

    write(&dir.join("manifest.csv"), "path,label,split\na.png,2,train\n");
    let error = load_manifest_split(&dir, "train").unwrap_err();
    assert!(matches!(&error, DataError::BadLabel { value, .. } if value == "2"), "{error:?}");
    assert!(error.to_string().contains("only 2 classes"), "{error}");

    // Indices without classes.txt cannot be resolved.
    fs::remove_file(dir.join("classes.txt")).unwrap();
    write(&dir.join("manifest.csv"), "path,label,split\na.png,cat,train\nb.png,1,test\n");
    let error = load_manifest_split(&dir, "train").unwrap_err();
    assert!(
        error.to_string().contains("manifest.csv:3") && error.to_string().contains("classes.txt"),
        "{error}"
    );
}

#[test]
fn manifest_missing_split_lists_the_available_ones() {
    let dir = scratch("manifest_missing_split");
    write(&dir.join("manifest.csv"), "path,label,split\na.png,x,train\nb.png,y,ood_test\n");
    let error = load_manifest_split(&dir, "val").unwrap_err();
    match &error {
        DataError::MissingSplit { split, available, .. } => {
            assert_eq!(split, "val");
            assert!(available.contains("`train`") && available.contains("`ood_test`"), "{available}");
        }
        other => panic!("expected MissingSplit, got {other:?}"),
    }
}

#[test]
fn duplicate_class_in_class_list_names_both_lines() {
    let dir = scratch("manifest_duplicate_class");
    write(&dir.join("classes.txt"), "cat\ndog\ncat\n");
    write(&dir.join("manifest.csv"), "path,label,split\na.png,0,train\n");
    let error = load_manifest_split(&dir, "train").unwrap_err();
    assert!(
        matches!(&error, DataError::DuplicateClass { class, first_line: 1, at } if class == "cat" && at.line == Some(3)),
        "{error:?}"
    );
}

#[test]
fn missing_manifest_names_the_file() {
    let dir = scratch("manifest_absent");
    let error = manifest_splits(&dir).unwrap_err();
    assert!(matches!(&error, DataError::Io { path, .. } if *path == dir.join("manifest.csv")), "{error:?}");
}

// ---------------------------------------------------------------------------------------------
// ImageFolder

#[test]
fn image_folder_orders_classes_and_files_like_torchvision() {
    let dir = scratch("image_folder");
    for file in
        ["b/2.png", "b/1.JPG", "a/z.png", "a/sub/y.png", "a/sub-dir/x.png", "a/sub/inner/w.png", "A/v.webp"]
    {
        write_png(&dir.join(file), [0, 0, 0]);
    }
    write(&dir.join("a/notes.txt"), "not an image");
    write(&dir.join("README"), "not a class");
    let split = load_image_folder(&dir, "mine").unwrap();
    assert_eq!(split.name, "mine");
    assert_eq!(split.classes, ["A", "a", "b"], "sorted by code point, upper case first");
    // os.walk roots sorted as strings: "a" < "a/sub" < "a/sub-dir" < "a/sub/inner" ('-' < '/').
    assert_eq!(
        ids(&split),
        ["A/v.webp", "a/z.png", "a/sub/y.png", "a/sub-dir/x.png", "a/sub/inner/w.png", "b/1.JPG", "b/2.png"]
    );
    assert_eq!(labels(&split), [0, 1, 1, 1, 1, 2, 2]);
    assert_eq!(split.records[2].path, dir.join("a/sub/y.png"));
}

#[test]
fn image_folder_rejects_a_class_without_images() {
    let dir = scratch("image_folder_empty_class");
    write_png(&dir.join("full/1.png"), [0, 0, 0]);
    write(&dir.join("empty/readme.txt"), "");
    let error = load_image_folder(&dir, "x").unwrap_err();
    assert!(matches!(&error, DataError::EmptyClass { class, .. } if class == "empty"), "{error:?}");
    let error = load_image_folder(&dir.join("full"), "x").unwrap_err();
    assert!(matches!(error, DataError::NoClasses { .. }), "{error:?}");
}

// ---------------------------------------------------------------------------------------------
// WILDS

#[test]
fn iwildcam_reads_official_splits_from_metadata() {
    let root = scratch("iwildcam");
    let data = root.join("iwildcam_v2.0");
    // The layout WILDS downloads: an unnamed pandas index column, then the metadata.
    write(
        &data.join("metadata.csv"),
        ",split,location_remapped,filename,y,sequence_remapped,datetime\n\
         0,train,3,t0.jpg,0,0,2013-01-01 00:00:00.000\n\
         1,val,7,v0.jpg,181,1,2013-01-01 00:00:00.000\n\
         2,train,4,t1.jpg,5,2,2013-01-01 00:00:00.000\n\
         3,test,8,o0.jpg,2,3,2013-01-01 00:00:00.000\n\
         4,id_test,3,i0.jpg,1,4,2013-01-01 00:00:00.000\n\
         5,train,3,t2.jpg,99999,5,2013-01-01 00:00:00.000\n",
    );
    for (i, file) in ["t0.jpg", "v0.jpg", "t1.jpg", "o0.jpg", "i0.jpg", "t2.jpg"].iter().enumerate() {
        write_png(&data.join("train").join(file), [i as u8; 3]);
    }
    let train = load_iwildcam_split(&root, "train").unwrap();
    assert_eq!(train.classes.len(), 182);
    assert_eq!(train.classes[0], "empty");
    assert_eq!(ids(&train), ["t0.jpg", "t1.jpg"], "y = 99999 is dropped");
    assert_eq!(labels(&train), [0, 5]);
    assert_eq!(train.records[1].path, data.join("train/t1.jpg"));
    assert_eq!(
        (train.records[1].group.as_deref(), train.records[1].domain.as_deref()),
        (Some("4"), Some("4"))
    );
    assert_eq!(ids(&load_iwildcam_split(&root, "val").unwrap()), ["v0.jpg"]);
    assert_eq!(labels(&load_iwildcam_split(&root, "test").unwrap()), [2]);
    assert_eq!(ids(&load_iwildcam_split(&root, "id_test").unwrap()), ["i0.jpg"]);
    let error = load_iwildcam_split(&root, "id_val").unwrap_err();
    assert!(matches!(error, DataError::EmptySplit { .. }), "{error:?}");
    let error = load_iwildcam_split(&root, "ood_test").unwrap_err();
    assert!(error.to_string().contains("`id_val`"), "{error}");

    // The records point at decodable files.
    let mut loader = Loader::new(Arc::new(train), png_transform(), IMAGE_LEN, config(8, None, 2, 2));
    let batch = loader.next().unwrap();
    assert_eq!((batch.pixels[0], batch.pixels[IMAGE_LEN]), (0.0, 2.0), "t0.jpg and t1.jpg, files 0 and 2");
    assert!(loader.skipped().is_empty());
}

#[test]
fn iwildcam_label_out_of_range_is_an_error() {
    let root = scratch("iwildcam_bad_label");
    write(
        &root.join("iwildcam_v2.0/metadata.csv"),
        "split,filename,y,location_remapped\ntrain,a.jpg,182,0\n",
    );
    let error = load_iwildcam_split(&root, "train").unwrap_err();
    assert!(matches!(&error, DataError::BadLabel { value, .. } if value == "182"), "{error:?}");
    assert!(error.to_string().contains("metadata.csv:2"), "{error}");
}

const FMOW_HEADER: &str = "split,img_filename,img_path,spatial_reference,epsg,category,visible,img_width,\
                           img_height,country_code,cloud_cover,timestamp,lat,lon";

fn fmow_row(split: &str, category: &str, country: &str, timestamp: &str) -> String {
    format!("{split},f.jpg,p/f.jpg,WGS84,4326,{category},True,224,224,{country},0,{timestamp},1.0,2.0")
}

#[test]
fn fmow_splits_follow_time_after_2016_with_regions_and_years() {
    let root = scratch("fmow");
    let data = root.join("fmow_v1.1");
    write(
        &data.join("country_code_mapping.csv"),
        "name,alpha-2,alpha-3,country-code,region,sub-region\n\
         United States,US,USA,840,Americas,Northern America\n\
         France,FR,FRA,250,Europe,Western Europe\n\
         Antarctica,AQ,ATA,010,,\n",
    );
    let rows = [
        fmow_row("train", "airport", "USA", "2010-05-01T10:00:00Z"), // 0: train
        fmow_row("seq", "airport", "USA", "2011-05-01T10:00:00Z"),   // 1: never used
        fmow_row("train", "zoo", "USA", "2014-05-01T10:00:00Z"),     // 2: train after 2013: unused
        fmow_row("val", "dam", "FRA", "2012-12-31T23:00:00-02:00"),  // 3: UTC 2013: OOD val
        fmow_row("val", "park", "FRA", "2011-01-01T00:00:00Z"),      // 4: id_val
        fmow_row("test", "port", "USA", "2016-01-01T00:00:00Z"),     // 5: OOD test
        fmow_row("test", "port", "USA", "2015-06-01T00:00:00Z"),     // 6: OOD-val years: unused
        fmow_row("test", "barn", "XKX", "2012-06-01T08:00:00.5Z"),   // 7: id_test, unmapped code
        fmow_row("test", "tower", "ATA", "2017-03-01T00:00:00Z"),    // 8: OOD test, empty region
        fmow_row("val", "zoo", "", "2015-12-31T23:59:59Z"),          // 9: OOD val, no code
    ];
    write(&data.join("rgb_metadata.csv"), format!("{FMOW_HEADER}\n{}\n", rows.join("\n")));
    for i in 0..rows.len() {
        write_png(&data.join(format!("images/rgb_img_{i}.png")), [i as u8; 3]);
    }

    let split = |name: &str| load_fmow_split(&root, name).unwrap();
    assert_eq!(ids(&split("train")), ["rgb_img_0"]);
    assert_eq!(ids(&split("id_val")), ["rgb_img_4"]);
    assert_eq!(ids(&split("val")), ["rgb_img_3", "rgb_img_9"]);
    assert_eq!(ids(&split("id_test")), ["rgb_img_7"]);
    let test = split("test");
    assert_eq!(ids(&test), ["rgb_img_5", "rgb_img_8"]);
    assert_eq!(test.classes.len(), 62);
    assert_eq!((test.classes[38].as_str(), test.classes[56].as_str()), ("port", "tower"));
    assert_eq!(labels(&test), [38, 56]);
    assert_eq!(test.records[0].path, data.join("images/rgb_img_5.png"));

    let regions_and_years = |split: &Split| -> Vec<(String, String)> {
        split.records.iter().map(|r| (r.group.clone().unwrap(), r.domain.clone().unwrap())).collect()
    };
    let pair = |region: &str, year: &str| (region.to_owned(), year.to_owned());
    assert_eq!(regions_and_years(&test), [pair("Americas", "2016"), pair("Other", "2017")]);
    assert_eq!(regions_and_years(&split("val")), [pair("Europe", "2013"), pair("Other", "2015")]);
    assert_eq!(regions_and_years(&split("id_test")), [pair("Other", "2012")]);

    // Image i is row i of the metadata, seq rows included.
    let mut loader =
        Loader::new(Arc::new(split("id_test")), png_transform(), IMAGE_LEN, config(4, None, 1, 1));
    assert_eq!(loader.next().unwrap().pixels[0], 7.0);
}

#[test]
fn fmow_unknown_category_and_bad_timestamp_name_the_line() {
    let root = scratch("fmow_errors");
    let data = root.join("fmow_v1.1");
    write(&data.join("country_code_mapping.csv"), "alpha-3,region\nUSA,Americas\n");
    let rows = [
        fmow_row("train", "airport", "USA", "2010-05-01T10:00:00Z"),
        fmow_row("train", "castle", "USA", "2010-05-01"),
    ];
    write(&data.join("rgb_metadata.csv"), format!("{FMOW_HEADER}\n{}\n", rows.join("\n")));
    let error = load_fmow_split(&root, "train").unwrap_err();
    assert!(matches!(&error, DataError::UnknownClass { class, .. } if class == "castle"), "{error:?}");
    assert!(error.to_string().contains("rgb_metadata.csv:3"), "{error}");

    let rows = [fmow_row("val", "airport", "USA", "05/01/2010")];
    write(&data.join("rgb_metadata.csv"), format!("{FMOW_HEADER}\n{}\n", rows.join("\n")));
    let error = load_fmow_split(&root, "val").unwrap_err();
    assert!(matches!(&error, DataError::BadValue { column, .. } if column == "timestamp"), "{error:?}");
}

// ---------------------------------------------------------------------------------------------
// Logit projections

#[test]
fn logit_projections_pick_and_max_pool_columns() {
    let row = [0.5, -1.0, 3.0, 2.0, -4.0];
    let subset = LogitProjection::Subset(vec![3, 0, 4]);
    assert_eq!(subset.apply(&row), [2.0, 0.5, -4.0]);
    assert_eq!((subset.num_classes(), subset.input_len()), (3, 5));
    let pooled = LogitProjection::MaxPool(vec![vec![1, 2], vec![4], vec![0, 3, 4], vec![]]);
    assert_eq!(pooled.apply(&row), [3.0, -4.0, 2.0, f32::NEG_INFINITY]);
    assert_eq!((pooled.num_classes(), pooled.input_len()), (4, 5));
}

// ---------------------------------------------------------------------------------------------
// ImageNet variants

#[test]
fn bundled_imagenet_table_agrees_with_the_cited_sources() {
    let names = imagenet_class_names();
    assert_eq!((names.len(), names[0].as_str(), names[999].as_str()), (1000, "tench", "toilet paper"));
    assert!(IMAGENET_WNIDS.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    // hendrycks/imagenet-r eval.py: imagenet_r_wnids, here at wise-ft's CLASS_SUBLIST positions.
    let imagenet_r = [
        (0, "n01443537"),
        (1, "n01484850"),
        (2, "n01494475"),
        (15, "n01748264"),
        (193, "n07873807"),
        (196, "n09472597"),
        (199, "n12267677"),
    ];
    for (position, wnid) in imagenet_r {
        assert_eq!(IMAGENET_WNIDS[IMAGENET_R_CLASS_INDICES[position]], wnid, "ImageNet-R class {position}");
    }
    // The first ImageNet-A wnids (hendrycks/natural-adv-examples).
    let imagenet_a = ["n01498041", "n01531178", "n01534433", "n01558993", "n01580077"];
    for (position, wnid) in imagenet_a.iter().enumerate() {
        assert_eq!(IMAGENET_WNIDS[IMAGENET_A_CLASS_INDICES[position]], *wnid, "ImageNet-A class {position}");
    }
}

/// Writes one tiny image into each of `folders` under `root`.
fn class_dirs(root: &Path, folders: &[&str]) {
    for folder in folders {
        write_png(&root.join(folder).join("img.png"), [1, 2, 3]);
    }
}

#[test]
fn imagenet_r_keeps_its_200_columns_and_reindexes_labels() {
    let root = scratch("imagenet_r");
    class_dirs(&root, &["n12267677", "n01484850", "n01443537"]);
    let split = load_imagenet_variant(&root, "ImageNet_R").unwrap();
    assert_eq!(split.name, "imagenet-r");
    assert_eq!(split.classes.len(), 200);
    assert_eq!((split.classes[0].as_str(), split.classes[1].as_str()), ("goldfish", "great white shark"));
    assert_eq!(labels(&split), [0, 1, 199]);
    assert_eq!(ids(&split), ["n01443537/img.png", "n01484850/img.png", "n12267677/img.png"]);
    assert_eq!(split.projection, Some(LogitProjection::Subset(IMAGENET_R_CLASS_INDICES.to_vec())));
    assert_eq!(IMAGENET_R_CLASS_INDICES[..3], [1, 2, 4]);

    class_dirs(&root, &["n01440764"]); // tench: ImageNet, but not ImageNet-R
    let error = load_imagenet_variant(&root, "imagenet-r").unwrap_err();
    assert!(matches!(&error, DataError::UnknownClass { class, .. } if class == "n01440764"), "{error:?}");
}

#[test]
fn imagenet_a_uses_its_own_subset() {
    let root = scratch("imagenet_a");
    class_dirs(&root, &["n01531178", "n01498041"]);
    let split = load_imagenet_variant(&root, "imagenet-a").unwrap();
    assert_eq!(labels(&split), [0, 1]);
    assert_eq!(split.classes[..2], ["stingray", "goldfinch"]);
    assert_eq!(split.projection.as_ref().map(LogitProjection::num_classes), Some(200));
    assert_eq!(IMAGENET_A_CLASS_INDICES[..2], [6, 11]);
}

#[test]
fn imagenet_and_sketch_map_wnid_folders_to_the_1000_classes() {
    let root = scratch("imagenet_val");
    class_dirs(&root, &["n15075141", "n01440764"]);
    for variant in ["imagenet", "imagenet-sketch"] {
        let split = load_imagenet_variant(&root, variant).unwrap();
        assert_eq!((split.classes.len(), labels(&split), split.projection), (1000, vec![0, 999], None));
    }
    class_dirs(&root, &["train"]);
    let error = load_imagenet_variant(&root, "imagenet").unwrap_err();
    assert!(error.to_string().contains("WordNet id"), "{error}");
}

#[test]
fn imagenet_v2_labels_are_folder_numbers() {
    let root = scratch("imagenet_v2");
    class_dirs(&root, &["999", "0", "10"]);
    let split = load_imagenet_variant(&root, "imagenet-v2").unwrap();
    // Folders in string order, labels by number.
    assert_eq!(labels(&split), [0, 10, 999]);
    assert_eq!(split.classes.len(), 1000);
    class_dirs(&root, &["1000"]);
    let error = load_imagenet_variant(&root, "imagenet-v2").unwrap_err();
    assert!(matches!(&error, DataError::UnknownClass { class, .. } if class == "1000"), "{error:?}");
}

/// A miniature ObjectNet 1.0 release (the four `mappings/` files and `images/`).
fn write_objectnet(root: &Path, overlap: &str) {
    let mappings = root.join("mappings");
    // 2012 ids 0..3, and the PyTorch class indices of those ids.
    write(
        &mappings.join("imagenet_to_label_2012_v2"),
        "kit fox, Vulpes macrotis\nanalog clock\ndigital clock\nbanana\n",
    );
    write(&mappings.join("pytorch_to_imagenet_2012_id.json"), r#"{"278": 0, "409": 1, "530": 2, "954": 3}"#);
    write(
        &mappings.join("folder_to_objectnet_label.json"),
        r#"{"squeegee": "Squeegee", "banana": "Banana", "alarm_clock": "Alarm clock"}"#,
    );
    write(&mappings.join("objectnet_to_imagenet_1k.json"), overlap);
    class_dirs(&root.join("images"), &["squeegee", "banana", "alarm_clock"]);
}

#[test]
fn objectnet_max_pools_its_imagenet_classes() {
    let root = scratch("objectnet");
    write_objectnet(&root, r#"{"Banana": "banana", "Alarm clock": "analog clock; digital clock"}"#);
    let split = load_imagenet_variant(&root, "objectnet").unwrap();
    assert_eq!(split.classes, ["alarm clock", "banana"], "sorted by folder, lower-cased names");
    assert_eq!(ids(&split), ["alarm_clock/img.png", "banana/img.png"], "squeegee maps to no ImageNet class");
    assert_eq!(labels(&split), [0, 1]);
    assert_eq!(split.projection, Some(LogitProjection::MaxPool(vec![vec![409, 530], vec![954]])));

    write_objectnet(&root, r#"{"Banana": "plantain"}"#);
    let error = load_imagenet_variant(&root, "objectnet").unwrap_err();
    assert!(matches!(&error, DataError::UnknownClass { class, .. } if class == "plantain"), "{error:?}");
}

#[test]
fn unknown_variant_lists_the_known_ones() {
    let error = load_imagenet_variant(Path::new("/nonexistent"), "imagenet-c").unwrap_err();
    assert!(
        matches!(&error, DataError::UnknownVariant { variant, .. } if variant == "imagenet-c"),
        "{error:?}"
    );
    assert!(error.to_string().contains("`objectnet`"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Loader

fn config(
    batch_size: usize,
    shuffle_seed: Option<u64>,
    workers: usize,
    prefetch_batches: usize,
) -> LoaderConfig {
    LoaderConfig { batch_size, shuffle_seed, workers, prefetch_batches, drop_last: false }
}

/// A split of `n` PNGs; record `i` is filled with colour `[i, 2i, 3i]` and labelled `i % 3`.
fn png_split(test: &str, n: usize) -> Arc<Split> {
    let dir = scratch(test);
    let records = (0..n)
        .map(|i| {
            let path = dir.join(format!("{i}.png"));
            write_png(&path, [i as u8, (2 * i) as u8, (3 * i) as u8]);
            Record { id: i.to_string(), path, label: i % 3, group: None, domain: None }
        })
        .collect();
    let classes = vec!["a".into(), "b".into(), "c".into()];
    Arc::new(Split { name: test.into(), classes, records, projection: None })
}

#[test]
fn loader_batches_depend_on_the_seed_only() {
    let split = png_split("loader_determinism", 23);
    let run = |workers: usize, seed: u64| {
        let loader =
            Loader::new(Arc::clone(&split), png_transform(), IMAGE_LEN, config(4, Some(seed), workers, 2));
        let order = loader.order().to_vec();
        (order, loader.collect::<Vec<Batch>>())
    };
    let (order, batches) = run(1, 7);
    assert_eq!(run(3, 7), (order.clone(), batches.clone()), "3 workers give the same batches as 1");
    assert_eq!(order, epoch_order(23, Some(7)));
    assert_ne!(order, (0..23).collect::<Vec<_>>());
    assert_ne!(run(3, 8).0, order, "another seed, another order");

    assert_eq!(batches.len(), 6);
    assert_eq!(batches[5].len(), 3);
    let flattened: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(flattened, order, "batches follow the order");
    for batch in &batches {
        assert_eq!(batch.pixels.len(), batch.len() * IMAGE_LEN);
        for (k, &index) in batch.indices.iter().enumerate() {
            let first_pixel = &batch.pixels[k * IMAGE_LEN..k * IMAGE_LEN + 3];
            assert_eq!(first_pixel, [index as f32, (2 * index) as f32, (3 * index) as f32]);
            assert_eq!(batch.labels[k], (index % 3) as u32);
        }
    }
}

#[test]
fn loader_skips_and_reports_undecodable_records() {
    let split = png_split("loader_failures", 7);
    fs::write(&split.records[2].path, b"definitely not a png").unwrap();
    fs::remove_file(&split.records[5].path).unwrap();
    let panicking = split.records[6].path.clone();
    let transform = png_transform();
    let guarded: Transform = Arc::new(move |path: &Path| {
        if path == panicking {
            panic!("boom");
        }
        transform(path)
    });
    let mut loader = Loader::new(Arc::clone(&split), guarded, IMAGE_LEN, config(3, None, 2, 1));
    let batches: Vec<Batch> = loader.by_ref().collect();
    assert_eq!(
        batches.iter().map(|b| b.indices.clone()).collect::<Vec<_>>(),
        [vec![0, 1], vec![3, 4], vec![]]
    );
    let skipped = loader.skipped();
    let paths: Vec<&PathBuf> = skipped.iter().map(|(path, _)| path).collect();
    assert_eq!(paths, [&split.records[2].path, &split.records[5].path, &split.records[6].path]);
    assert!(skipped[0].1.contains("cannot decode"), "{}", skipped[0].1);
    assert!(skipped[2].1.contains("panicked: boom"), "{}", skipped[2].1);

    // A transform returning the wrong number of values is a failure too.
    let short: Transform = Arc::new(|_: &Path| Ok(vec![0.0; 5]));
    let mut loader = Loader::new(split, short, IMAGE_LEN, config(10, None, 1, 1));
    assert!(loader.next().unwrap().is_empty());
    assert!(loader.skipped()[0].1.contains("returned 5 values, expected 12"), "{:?}", loader.skipped());
}

/// Waits until `counter` reaches `target` (or 10 s pass), then a little longer, and returns it.
fn settle(counter: &AtomicUsize, target: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter.load(Ordering::SeqCst) < target && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(200));
    counter.load(Ordering::SeqCst)
}

#[test]
fn loader_never_decodes_more_than_prefetch_batches_ahead() {
    let split = png_split("loader_prefetch", 40);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let counting: Transform = Arc::new(move |_: &Path| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(vec![0.0; IMAGE_LEN])
    });
    let (batch_size, prefetch) = (2, 3);
    let mut loader = Loader::new(split, counting, IMAGE_LEN, config(batch_size, Some(1), 4, prefetch));
    assert_eq!(settle(&calls, prefetch * batch_size), prefetch * batch_size, "before any batch is taken");
    for taken in 1..=3 {
        assert_eq!(loader.next().map(|b| b.len()), Some(batch_size));
        let expected = (taken + prefetch) * batch_size;
        assert_eq!(settle(&calls, expected), expected, "after {taken} batches taken");
    }
}

#[test]
fn resumed_loader_continues_the_same_epoch() {
    let split = png_split("loader_resume", 11);
    let settings = || config(3, Some(42), 2, 2);
    let full: Vec<Batch> = Loader::new(Arc::clone(&split), png_transform(), IMAGE_LEN, settings()).collect();
    assert_eq!(full.len(), 4);

    let mut first = Loader::new(Arc::clone(&split), png_transform(), IMAGE_LEN, settings());
    first.next();
    first.next();
    let position = first.position();
    assert_eq!(position, 2);
    drop(first); // interrupted mid-epoch

    let resumed = Loader::resume(Arc::clone(&split), png_transform(), IMAGE_LEN, settings(), position);
    assert_eq!((resumed.len(), resumed.num_batches()), (2, 4));
    assert_eq!(resumed.collect::<Vec<_>>(), full[2..]);
    let past_the_end = Loader::resume(split, png_transform(), IMAGE_LEN, settings(), 9);
    assert_eq!(past_the_end.count(), 0);
}

#[test]
fn drop_last_leaves_out_the_short_batch() {
    let split = png_split("loader_drop_last", 10);
    let sizes = |drop_last: bool| -> Vec<usize> {
        let settings = LoaderConfig { drop_last, ..config(4, Some(5), 2, 2) };
        Loader::new(Arc::clone(&split), png_transform(), IMAGE_LEN, settings).map(|b| b.len()).collect()
    };
    assert_eq!(sizes(false), [4, 4, 2]);
    assert_eq!(sizes(true), [4, 4]);
}

#[test]
fn a_prefetched_training_batch_equals_one_decoded_on_demand_and_reports_its_failures_once() {
    use robustft::clip::preprocess::ClipPreprocess;
    use robustft::train::images::DiskSet;
    use robustft::train::supervised::TrainSource;
    let dir = scratch("prefetch");
    let mut manifest = String::from("path,label,split\n");
    for i in 0..6u8 {
        let image = image::RgbImage::from_fn(20, 12, |x, y| image::Rgb([i * 40, x as u8 * 9, y as u8 * 17]));
        image.save(dir.join(format!("{i}.png"))).unwrap();
        manifest.push_str(&format!("{i}.png,{},train\n", i % 2));
    }
    write(&dir.join("broken.png"), b"not a png");
    manifest.push_str("broken.png,0,train\n");
    write(&dir.join("manifest.csv"), manifest);
    write(&dir.join("classes.txt"), "a\nb\n");
    let split = Arc::new(load_manifest_split(&dir, "train").unwrap());
    let preprocess = ClipPreprocess::openai(16);
    let on_demand = DiskSet::new(split.clone(), preprocess.clone());
    let prefetched = DiskSet::new(split, preprocess);
    let (first, next) = ([0, 1, 2], [6, 3, 5, 4]);
    prefetched.prefetch(&next);
    assert_eq!(
        prefetched.load(&first).unwrap(),
        on_demand.load(&first).unwrap(),
        "another batch: decoded now"
    );
    prefetched.prefetch(&next);
    let (pixels, kept) = prefetched.load(&next).unwrap();
    assert_eq!((pixels, kept.clone()), on_demand.load(&next).unwrap());
    assert_eq!(kept, [3, 5, 4], "the unreadable image is left out");
    assert_eq!(prefetched.skipped().len(), 1, "{:?}", prefetched.skipped());
}
