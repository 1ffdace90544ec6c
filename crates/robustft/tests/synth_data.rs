//! The synthetic ImageNet and iWildCam layouts are read by the loaders `train` uses, with the
//! benchmarks' class counts, every split and variant, and each image decodable.

use robustft::data::{
    load_imagenet_variant, load_iwildcam_split, write_synthetic, SynthLayout, IWILDCAM_SPLITS,
};

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("robustft-synth-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn imagenet_layout_has_every_variant_with_its_label_space() {
    let root = scratch("imagenet");
    let written = write_synthetic(SynthLayout::Imagenet, &root, 1, 0).unwrap();
    assert_eq!(written, 1000 * 4 + 200 * 2 + 113);
    let train = load_imagenet_variant(&root.join("train"), "imagenet").unwrap();
    assert_eq!((train.classes.len(), train.records.len()), (1000, 1000));
    for (variant, classes, images) in [
        ("imagenet", 1000, 1000),
        ("imagenet-v2", 1000, 1000),
        ("imagenet-sketch", 1000, 1000),
        ("imagenet-r", 200, 200),
        ("imagenet-a", 200, 200),
        ("objectnet", 113, 113),
    ] {
        let split = load_imagenet_variant(&root.join(variant), variant).unwrap();
        assert_eq!((split.classes.len(), split.records.len()), (classes, images), "{variant}");
    }
    let first = &train.records[0];
    assert_eq!(image::open(&first.path).unwrap().into_rgb8().dimensions(), (24, 24));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn iwildcam_layout_has_the_official_splits_and_182_classes() {
    let root = scratch("iwildcam");
    let written = write_synthetic(SynthLayout::Iwildcam, &root, 2, 0).unwrap();
    assert_eq!(written, 182 * 2 * 5);
    for split in IWILDCAM_SPLITS {
        let loaded = load_iwildcam_split(&root, split).unwrap();
        assert_eq!((loaded.classes.len(), loaded.records.len()), (182, 364), "{split}");
        assert!(loaded.records.iter().all(|r| r.path.is_file()), "{split}");
    }
    let locations = |split| {
        let loaded = load_iwildcam_split(&root, split).unwrap();
        loaded.records.iter().map(|r| r.group.clone().unwrap()).collect::<std::collections::BTreeSet<_>>()
    };
    assert!(locations("train").is_disjoint(&locations("test")), "OOD cameras are new cameras");
    std::fs::remove_dir_all(root).unwrap();
}
