//! The synthetic ImageNet and iWildCam layouts are read by the loaders `train` uses, with the
//! benchmarks' class counts, every split and variant, and each image decodable; DRM's ImageNet
//! paper recipe resolves on the ImageNet layout with its descriptions paired to the classes.

use robustft::data::{
    load_imagenet_variant, load_iwildcam_split, write_synthetic, SynthImages, SynthLayout,
    DEFAULT_SYNTH_SIDE, IWILDCAM_SPLITS,
};
use robustft::experiment::Experiment;
use robustft::recipe::Recipe;

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("robustft-synth-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `per_class` tiny images per class (the default size), noise seed 0.
fn tiny(per_class: usize) -> SynthImages {
    SynthImages { per_class, seed: 0, size: (DEFAULT_SYNTH_SIDE, DEFAULT_SYNTH_SIDE) }
}

/// One synthetic ImageNet dataset (4513 files) serves both checks.
#[test]
fn imagenet_layout_serves_every_variant_and_the_drm_paper_recipe() {
    let root = scratch("imagenet");
    let written = write_synthetic(SynthLayout::Imagenet, &root, tiny(1)).unwrap();
    assert_eq!(written, 1000 * 4 + 200 * 2 + 113);
    assert_every_variant_has_its_label_space(&root);
    assert_drm_paper_recipe_pairs_its_descriptions_with_the_1000_classes(&root);
    std::fs::remove_dir_all(root).unwrap();
}

fn assert_every_variant_has_its_label_space(root: &std::path::Path) {
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
}

#[test]
fn iwildcam_layout_has_the_official_splits_and_182_classes() {
    let root = scratch("iwildcam");
    let written = write_synthetic(SynthLayout::Iwildcam, &root, tiny(2)).unwrap();
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

/// DRM's ImageNet paper recipe resolves on the ImageNet layout: its concept descriptions pair
/// with OpenAI's class names (which repeat "missile" and "sunglasses") in file order, so class
/// 744 gets the file's "projectile" entry, not a second copy of "missile"'s.
fn assert_drm_paper_recipe_pairs_its_descriptions_with_the_1000_classes(root: &std::path::Path) {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let descriptions = repo.join("assets/drm/prompts_imagenet_cd.json");
    let sets = [
        format!("data.root={:?}", root.to_str().unwrap()),
        format!("data.descriptions={:?}", descriptions.to_str().unwrap()),
        "model=\"bundled\"".to_string(),
    ];
    let recipe = Recipe::load(&repo.join("recipes/paper/drm-imagenet.toml"), &sets).unwrap();
    let experiment = Experiment::resolve(recipe, &candle_core::Device::Cpu).unwrap();
    let file: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&descriptions).unwrap()).unwrap();
    let resolved = experiment.descriptions.unwrap();
    assert_eq!(resolved.len(), 1000);
    let repeated = [
        (657, "missile", "missile"),
        (744, "missile", "projectile"),
        (836, "sunglasses", "sunglass"),
        (837, "sunglasses", "sunglasses"),
    ];
    for (class, name, key) in repeated {
        assert_eq!(experiment.classes[class], name);
        assert_eq!(resolved[class], [file[key].as_str().unwrap().trim()], "class {class}");
    }
}

#[test]
fn an_image_size_without_pixels_is_refused_before_anything_is_written() {
    let root = scratch("no-pixels");
    let spec = SynthImages { size: (0, 375), ..tiny(1) };
    let err = write_synthetic(SynthLayout::Iwildcam, &root, spec).unwrap_err().to_string();
    assert!(err.contains("synthetic image size") && err.contains("0x375"), "{err}");
    assert!(!root.exists(), "nothing is written");
}
