//! Tests of the prompt data layer: bundled template sets, class names, and the DRM
//! concept-description files in `assets/drm/` plus malformed inputs in `fixtures/prompts/`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use robustft::prompts::{
    class_prompts, fill, fmow_class_names, iwildcam_class_names, load_class_names, load_templates,
    template_set, validate_template, Alignment, AlignmentPolicy, ConceptDescriptions, PromptError,
    TEMPLATE_SET_NAMES,
};

const DRM_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/drm");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/prompts");

fn drm_file(name: &str) -> PathBuf {
    Path::new(DRM_DIR).join(name)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|&name| name.to_owned()).collect()
}

fn cat_dog_owl() -> Vec<String> {
    names(&["cat", "dog", "owl"])
}

fn set(name: &str) -> &'static [&'static str] {
    template_set(name).unwrap_or_else(|| panic!("template set {name} missing"))
}

/// Loads a fixture CD file against cat/dog/owl, expecting an error whose message names the file.
fn cd_fixture_error(file: &str) -> PromptError {
    let path = fixture(file);
    let error =
        ConceptDescriptions::load(&path, &cat_dog_owl()).expect_err("malformed CD file must be rejected");
    assert!(error.to_string().contains(file), "error does not name the file: {error}");
    error
}

// ---------------------------------------------------------------- templates

#[test]
fn template_sets_have_the_published_sizes() {
    let expected = [
        ("openai_imagenet", 80),
        ("iwildcam", 2),
        ("fmow", 16),
        ("simple", 1),
        ("drm_iwildcam", 1),
        ("drm_fmow", 1),
        ("drm_imagenet", 1),
        ("shiftworld", 2),
    ];
    assert_eq!(TEMPLATE_SET_NAMES.len(), expected.len());
    for (name, count) in expected {
        assert!(TEMPLATE_SET_NAMES.contains(&name), "{name} not listed");
        assert_eq!(set(name).len(), count, "size of {name}");
    }
    assert!(template_set("openai").is_none());
}

#[test]
fn template_sets_have_no_duplicates_and_one_placeholder_each() {
    for &name in TEMPLATE_SET_NAMES {
        let templates = set(name);
        let distinct: HashSet<_> = templates.iter().collect();
        assert_eq!(distinct.len(), templates.len(), "duplicate template in {name}");
        for template in templates {
            let placeholders = template.matches("{}").count() + template.matches("{with_article}").count();
            assert_eq!(placeholders, 1, "{name}: {template:?}");
            assert_eq!(validate_template(template).unwrap(), *template);
        }
    }
}

#[test]
fn template_sets_match_the_sources_verbatim() {
    let openai = set("openai_imagenet");
    assert_eq!(openai[0], "a bad photo of a {}.");
    assert_eq!(openai[3], "a photo of the hard to see {}.");
    assert_eq!(openai[35], "a {} in a video game.");
    assert_eq!(openai[59], "itap of the {}.");
    assert_eq!(openai[79], "a tattoo of the {}.");
    assert!(openai.contains(&"a good photo of the {}."));
    assert_eq!(set("iwildcam"), ["a photo of {}.", "{} in the wild."]);
    let fmow = set("fmow");
    assert_eq!(fmow[0], "satellite photo of a {}.");
    assert_eq!(fmow[2], "satellite photo of {with_article}.");
    assert_eq!(fmow[3], "aerial photo of {with_article}.");
    assert_eq!(fmow[8], "satellite photo of a {} in the americas.");
    assert_eq!(fmow[13], "aerial photo of a {} in oceania.");
    assert_eq!(fmow[14], "a photo of a {}.");
    assert_eq!(fmow[15], "{}.");
    assert_eq!(set("simple"), ["a photo of a {}."]);
    assert_eq!(set("drm_iwildcam"), ["a photo of {}."]);
    assert_eq!(set("drm_fmow"), ["satellite photo of a {}."]);
    assert_eq!(set("drm_imagenet"), ["a good photo of the {}."]);
}

#[test]
fn fill_substitutes_the_class_name() {
    assert_eq!(fill("a photo of a {}.", "tench"), "a photo of a tench.");
    assert_eq!(fill("{} in the wild.", "ocelot"), "ocelot in the wild.");
    // `{}` is verbatim (underscores stay, as in the reference code) ...
    assert_eq!(fill("satellite photo of a {}.", "airport_hangar"), "satellite photo of a airport_hangar.");
    // ... `{with_article}` is WiSE-FT's append_proper_article.
    let fmow = set("fmow");
    assert_eq!(fill(fmow[2], "airport_hangar"), "satellite photo of an airport hangar.");
    assert_eq!(fill(fmow[3], "barn"), "aerial photo of a barn.");
    assert_eq!(fill(fmow[2], "educational_institution"), "satellite photo of an educational institution.");
}

#[test]
fn class_prompts_fill_every_template_for_every_class() {
    let classes = names(&["cat", "dog"]);
    let prompts = class_prompts(&classes, set("iwildcam"));
    assert_eq!(
        prompts,
        vec![vec!["a photo of cat.", "cat in the wild."], vec!["a photo of dog.", "dog in the wild."],]
    );
    let owned = vec!["{}!".to_owned()];
    assert_eq!(class_prompts(&classes, &owned), vec![vec!["cat!"], vec!["dog!"]]);
    assert_eq!(class_prompts(&fmow_class_names(), set("fmow")).len(), 62);
}

#[test]
fn validate_template_normalises_and_rejects() {
    assert_eq!(validate_template("a photo of {c}.").unwrap(), "a photo of {}.");
    for (bad, reason_word) in [
        ("a photo.", "no class-name placeholder"),
        ("{} and {}", "more than one"),
        ("{c} and {with_article}", "more than one"),
        ("a photo of {class}.", "no class-name placeholder"),
        ("a {} photo }", "brace"),
    ] {
        match validate_template(bad) {
            Err(PromptError::BadTemplate { template, reason }) => {
                assert_eq!(template, bad);
                assert!(reason.contains(reason_word), "{bad:?}: {reason}");
            }
            other => panic!("{bad:?} gave {other:?}"),
        }
    }
}

#[test]
fn load_templates_skips_comments_and_blank_lines() {
    let templates = load_templates(&fixture("templates_good.txt")).unwrap();
    assert_eq!(templates, ["satellite photo of a {}.", "aerial photo of {with_article}.", "{}."]);
}

#[test]
fn load_templates_names_the_bad_line() {
    match load_templates(&fixture("templates_two_placeholders.txt")) {
        Err(error @ PromptError::BadTemplateLine { line: 3, .. }) => {
            let message = error.to_string();
            assert!(message.contains("templates_two_placeholders.txt:3"), "{message}");
            assert!(message.contains("a photo of {} and {}."), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        load_templates(&fixture("templates_comments_only.txt")),
        Err(PromptError::NoTemplates { path }) if path.ends_with("templates_comments_only.txt")
    ));
    assert!(matches!(
        load_templates(&fixture("no_such_templates.txt")),
        Err(PromptError::Io { path, .. }) if path.ends_with("no_such_templates.txt")
    ));
}

// ---------------------------------------------------------------- class names

#[test]
fn class_names_from_an_inline_list() {
    assert_eq!(load_class_names(" cat, dog ,owl").unwrap(), cat_dog_owl());
    assert!(matches!(
        load_class_names("cat,dog,cat"),
        Err(PromptError::DuplicateClassName { name, first: 1, second: 3, .. }) if name == "cat"
    ));
    assert!(matches!(load_class_names("cat,,owl"), Err(PromptError::EmptyClassName { position: 2, .. })));
    assert!(matches!(load_class_names("cat,dog,"), Err(PromptError::EmptyClassName { position: 3, .. })));
}

#[test]
fn a_single_inline_class_is_a_list_but_a_missing_file_is_an_error() {
    assert_eq!(load_class_names("circle").unwrap(), ["circle"]);
    assert_eq!(load_class_names("red fox").unwrap(), ["red fox"]);
    for missing in ["classes.txt", "data/names", "no_such_names.json"] {
        assert!(matches!(load_class_names(missing), Err(PromptError::Io { .. })), "{missing}");
    }
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_first_class() {
    let dir = std::env::temp_dir().join(format!("robustft-prompts-bom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in
        [("bom.txt", "\u{feff}cat\ndog\nowl\n"), ("bom.json", "\u{feff}[\"cat\", \"dog\", \"owl\"]")]
    {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        assert_eq!(load_class_names(path.to_str().unwrap()).unwrap(), cat_dog_owl(), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn class_names_from_files() {
    let text_file = fixture("classes.txt");
    assert_eq!(load_class_names(text_file.to_str().unwrap()).unwrap(), cat_dog_owl());
    let json_file = fixture("classes.json");
    assert_eq!(load_class_names(json_file.to_str().unwrap()).unwrap(), cat_dog_owl());
}

#[test]
fn bad_class_name_files_are_rejected_with_file_and_line() {
    let spec = |file: &str| fixture(file).to_str().unwrap().to_owned();
    match load_class_names(&spec("classes_blank_line.txt")) {
        Err(error @ PromptError::EmptyClassName { position: 2, .. }) => {
            assert!(error.to_string().contains("classes_blank_line.txt"), "{error}");
        }
        other => panic!("unexpected {other:?}"),
    }
    match load_class_names(&spec("classes_duplicate.txt")) {
        Err(error @ PromptError::DuplicateClassName { first: 1, second: 3, .. }) => {
            let message = error.to_string();
            assert!(message.contains("classes_duplicate.txt"), "{message}");
            assert!(message.contains("\"cat\""), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        load_class_names(&spec("classes_not_strings.json")),
        Err(PromptError::Json { path, .. }) if path.ends_with("classes_not_strings.json")
    ));
    assert!(matches!(
        load_class_names(&spec("no_such_classes.txt")),
        Err(PromptError::Io { path, .. }) if path.ends_with("no_such_classes.txt")
    ));
}

#[test]
fn iwildcam_class_names_follow_the_label_table() {
    let classes = iwildcam_class_names();
    assert_eq!(classes.len(), 182);
    assert_eq!(classes[0], "empty");
    assert_eq!(classes[1], "white-lipped peccary");
    assert_eq!(classes[2], "central american agouti");
    assert_eq!(classes[82], "unknown bird");
    assert_eq!(classes[181], "central american red brocket");
    assert!(classes.iter().all(|name| *name == name.to_lowercase()));
    assert!(!classes.iter().any(|name| name.is_empty()));
}

#[test]
fn fmow_class_names_are_the_wilds_categories() {
    let classes = fmow_class_names();
    assert_eq!(classes.len(), 62);
    assert_eq!(classes[0], "airport");
    assert_eq!(classes[30], "multi-unit_residential");
    assert_eq!(classes[61], "zoo");
    assert_eq!(classes.iter().collect::<HashSet<_>>().len(), 62);
}

// ---------------------------------------------------------------- DRM files

#[test]
fn drm_iwildcam_prompts_align_by_index() {
    let classes = iwildcam_class_names();
    let cds = ConceptDescriptions::load(&drm_file("prompts_iwildcam_cd.json"), &classes).unwrap();
    assert_eq!(cds.alignment(), Alignment::Index);
    assert_eq!(cds.num_classes(), 182);
    assert_eq!(cds.keys()[181], "181");
    assert!(cds.per_class().iter().all(|sentences| sentences.len() == 1));
    assert_eq!(cds.per_class()[0], ["Empty wild environment without animal"]);
    assert!(cds.per_class()[1][0].starts_with("White-lipped peccary is "));
    // The "<common name> is <description>" sentences follow the class list.
    let named = (0..182)
        .filter(|&k| {
            let sentence = cds.per_class()[k][0].to_lowercase();
            sentence.starts_with(&format!("{} is ", classes[k]))
        })
        .count();
    assert!(named >= 170, "only {named} sentences start with their class name");
}

#[test]
fn drm_iwildcam_latin_concepts_align_by_position_only_when_asked() {
    let classes = iwildcam_class_names();
    let path = drm_file("concept_description_result_cd_iwildcam.json");
    // The Latin keys are neither class names nor indices: by default that is an error naming
    // the first of them ("Empty" matches the class "empty").
    assert!(matches!(
        ConceptDescriptions::load(&path, &classes),
        Err(PromptError::UnrecognisedKey { key, num_classes: 182, .. }) if key == "Tayassu pecari"
    ));
    let cds = ConceptDescriptions::load_with(&path, &classes, AlignmentPolicy::Position).unwrap();
    assert_eq!(cds.alignment(), Alignment::Position);
    assert_eq!(cds.num_classes(), 182);
    assert_eq!(cds.keys()[1], "Tayassu pecari");
    assert_eq!(cds.keys()[181], "Mazama temama1");
    assert_eq!(
        cds.per_class()[1],
        ["A sturdy, dark-brown animal with a long snout and circular, white-ringed tail."]
    );
    // Position k of the Latin file is the description inside entry "k" of the prompts file.
    let prompts = ConceptDescriptions::load(&drm_file("prompts_iwildcam_cd.json"), &classes).unwrap();
    let agreeing = (0..182).filter(|&k| prompts.per_class()[k][0].ends_with(&cds.per_class()[k][0])).count();
    assert!(agreeing >= 170, "only {agreeing} classes agree");
    // By name the Latin keys cannot be matched to the English class names.
    assert!(matches!(
        ConceptDescriptions::load_with(&path, &classes, AlignmentPolicy::Name),
        Err(PromptError::UnknownClass { class, .. }) if class == "white-lipped peccary"
    ));
}

#[test]
fn drm_fmow_concepts_align_by_name_with_six_sentences() {
    let classes = fmow_class_names();
    for file in ["concept_description_result_cd_fmow.json", "prompts_fmow_cd.json"] {
        let cds = ConceptDescriptions::load(&drm_file(file), &classes).unwrap();
        assert_eq!(cds.alignment(), Alignment::Name, "{file}");
        assert_eq!(cds.keys(), classes, "{file}: keys are not FMoW's classes in label order");
        assert!(cds.per_class().iter().all(|sentences| sentences.len() == 6));
        assert!(cds.per_class()[0][0].starts_with("Long, straight paved surfaces"));
        for sentence in cds.per_class().iter().flatten() {
            assert!(!sentence.is_empty() && sentence.trim() == sentence);
        }
    }
}

#[test]
fn name_alignment_follows_the_class_order_not_the_file_order() {
    let path = drm_file("concept_description_result_cd_fmow.json");
    let classes = fmow_class_names();
    let reversed: Vec<String> = classes.iter().rev().cloned().collect();
    let forward = ConceptDescriptions::load(&path, &classes).unwrap();
    let backward = ConceptDescriptions::load(&path, &reversed).unwrap();
    assert_eq!(backward.alignment(), Alignment::Name);
    let mut expected = forward.per_class().to_vec();
    expected.reverse();
    assert_eq!(backward.per_class(), expected);
    // Forcing position keeps the file order instead.
    let positional = ConceptDescriptions::load_with(&path, &reversed, AlignmentPolicy::Position).unwrap();
    assert_eq!(positional.alignment(), Alignment::Position);
    assert_eq!(positional.per_class(), forward.per_class());
}

fn imagenet_keys(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    object.keys().cloned().collect()
}

#[test]
fn drm_imagenet_concepts_are_descriptions_without_the_class_name() {
    for file in ["concept_description_result_cd_imagenet.json", "prompts_imagenet_cd.json"] {
        let path = drm_file(file);
        let classes = imagenet_keys(&path);
        assert_eq!(classes.len(), 1000);
        let cds = ConceptDescriptions::load(&path, &classes).unwrap();
        assert_eq!(cds.alignment(), Alignment::Name);
        assert_eq!(cds.num_classes(), 1000);
        assert_eq!(classes[0], "tench");
        assert_eq!(cds.per_class()[0], ["olive-green skin with dark spots, and a orange-yellow underbelly"]);
        assert!(cds.per_class().iter().all(|sentences| sentences.len() == 1));
        let with_name = (0..1000)
            .filter(|&k| cds.per_class()[k][0].to_lowercase().contains(&classes[k].to_lowercase()))
            .count();
        assert!(with_name < 20, "{with_name} descriptions contain their class name");
        // Leading blanks in the file (" a mesh of metal rings ...") are stripped.
        let chain_mail = classes.iter().position(|c| c == "chain mail").unwrap();
        assert!(cds.per_class()[chain_mail][0].starts_with("a mesh of metal"));
        // With one class fewer the counts disagree.
        assert!(matches!(
            ConceptDescriptions::load(&path, &classes[..999]),
            Err(PromptError::CountMismatch { expected: 999, found: 1000, path: p })
                if p.ends_with(file)
        ));
    }
}

/// OpenAI's ImageNet class names (what ImageNet runs use) repeat "missile" and "sunglasses",
/// so DRM's ImageNet files, which key the second ones "projectile" and "sunglass", cannot pair
/// by name; in file order (`data.descriptions_alignment = "position"`, as
/// recipes/paper/drm-imagenet.toml sets) entry k is class k.
#[test]
fn drm_imagenet_concepts_pair_with_openai_imagenet_class_names_by_position() {
    let classes: Vec<String> = robustft::data::IMAGENET_CLASS_NAMES.iter().map(|&n| n.to_owned()).collect();
    assert_eq!((classes[657].as_str(), classes[744].as_str()), ("missile", "missile"));
    for file in ["concept_description_result_cd_imagenet.json", "prompts_imagenet_cd.json"] {
        let path = drm_file(file);
        assert!(matches!(
            ConceptDescriptions::load(&path, &classes),
            Err(PromptError::UnrecognisedKey { key, .. }) if key == "projectile"
        ));
        let cds = ConceptDescriptions::load_with(&path, &classes, AlignmentPolicy::Position).unwrap();
        let keys = imagenet_keys(&path);
        assert_eq!(cds.keys(), keys, "{file}");
        let unique_names_agree = (0..1000).filter(|&k| keys[k] == classes[k]).count();
        assert_eq!(unique_names_agree, 998, "{file}: every key but the two renamed ones is its class's name");
    }
}

// ---------------------------------------------------------------- alignment rules

#[test]
fn names_match_case_insensitively_after_trimming() {
    let classes = names(&["Golden Retriever", "tabby cat"]);
    let json = r#"{" tabby CAT ": "striped fur", "golden retriever": "golden coat"}"#;
    let cds = ConceptDescriptions::from_json_str(json, "inline.json", &classes).unwrap();
    assert_eq!(cds.alignment(), Alignment::Name);
    assert_eq!(cds.per_class(), [vec!["golden coat"], vec!["striped fur"]]);
    assert_eq!(cds.keys(), ["golden retriever", " tabby CAT "]);
}

#[test]
fn index_keys_in_any_order_and_lists_are_trimmed() {
    let cds = ConceptDescriptions::load(&fixture("cd_shuffled_index.json"), &cat_dog_owl()).unwrap();
    assert_eq!(cds.alignment(), Alignment::Index);
    assert_eq!(
        cds.per_class(),
        [vec!["a small feline"], vec!["a loyal canine"], vec!["a nocturnal bird", "it hoots"],]
    );
}

#[test]
fn unrelated_keys_are_an_error_naming_the_key() {
    let json = r#"{"Felis catus": "a small feline", "Canis familiaris": "a loyal canine",
                   "Strix aluco": "a nocturnal bird"}"#;
    let error = ConceptDescriptions::from_json_str(json, "latin.json", &cat_dog_owl()).unwrap_err();
    assert!(matches!(&error, PromptError::UnrecognisedKey { key, .. } if key == "Felis catus"), "{error}");
    assert!(error.to_string().contains("latin.json") && error.to_string().contains("JSON list"), "{error}");
}

#[test]
fn keys_that_are_not_plain_indices_are_errors_not_file_order() {
    // "05" and "-1" once made the whole file fall back to file order: every class got another
    // class's description.
    for (json, bad) in [
        (r#"{"1": "a loyal canine", "05": "a small feline", "2": "a nocturnal bird"}"#, "05"),
        (r#"{"1": "a loyal canine", "-1": "a small feline", "2": "a nocturnal bird"}"#, "-1"),
        (r#"{"cat": "a small feline", "dog": "a loyal canine", "3": "a nocturnal bird"}"#, "3"),
    ] {
        assert!(
            matches!(ConceptDescriptions::from_json_str(json, "cd.json", &cat_dog_owl()),
                Err(PromptError::UnrecognisedKey { key, num_classes: 3, .. }) if key == bad),
            "{json}"
        );
    }
    let mixed = r#"{"cat": "a small feline", "1": "a loyal canine", "owl": "a nocturnal bird"}"#;
    assert!(matches!(
        ConceptDescriptions::from_json_str(mixed, "cd.json", &cat_dog_owl()),
        Err(PromptError::MixedKeys { key, .. }) if key == "1"
    ));
}

#[test]
fn a_json_list_aligns_by_position() {
    let cds = ConceptDescriptions::load(&fixture("cd_list.json"), &cat_dog_owl()).unwrap();
    assert_eq!(cds.alignment(), Alignment::Position);
    assert_eq!(cds.per_class(), [vec!["a small feline"], vec!["a loyal canine"], vec!["a nocturnal bird"]]);
    assert_eq!(cds.keys(), ["[0]", "[1]", "[2]"]);
    assert!(matches!(
        ConceptDescriptions::load_with(&fixture("cd_list.json"), &cat_dog_owl(), AlignmentPolicy::Name),
        Err(PromptError::NotAnObject { found: "a list", .. })
    ));
}

#[test]
fn repeated_class_names_cannot_align_by_name() {
    let classes = names(&["Cat", "cat"]);
    let json = r#"{"CAT": "one", "lynx": "two"}"#;
    assert!(matches!(
        ConceptDescriptions::from_json_str_with(json, "dup.json", &classes, AlignmentPolicy::Name),
        Err(PromptError::AmbiguousClass { class, .. }) if class == "cat"
    ));
    assert!(matches!(
        ConceptDescriptions::from_json_str(json, "dup.json", &classes),
        Err(PromptError::UnrecognisedKey { key, .. }) if key == "lynx"
    ));
}

// ---------------------------------------------------------------- malformed CD files

#[test]
fn cd_count_mismatch() {
    assert!(matches!(
        cd_fixture_error("cd_count_mismatch.json"),
        PromptError::CountMismatch { expected: 3, found: 2, .. }
    ));
}

#[test]
fn cd_empty_string() {
    let error = cd_fixture_error("cd_empty_string.json");
    assert!(matches!(&error, PromptError::EmptyDescription { key, class, .. }
        if key == "dog" && class == "dog"));
    assert!(cd_fixture_error("cd_empty_sentence_in_list.json").to_string().contains("\"dog\""));
}

#[test]
fn cd_empty_list() {
    assert!(matches!(
        cd_fixture_error("cd_empty_list.json"),
        PromptError::EmptyList { key, .. } if key == "dog"
    ));
}

#[test]
fn cd_non_string_values() {
    assert!(matches!(
        cd_fixture_error("cd_number_value.json"),
        PromptError::NotAString { key, found: "a number", .. } if key == "dog"
    ));
    assert!(matches!(
        cd_fixture_error("cd_non_string_in_list.json"),
        PromptError::NotAString { key, found: "null", .. } if key == "dog"
    ));
}

#[test]
fn cd_top_level_must_be_an_object_or_a_list() {
    assert!(matches!(
        ConceptDescriptions::from_json_str("\"cat\"", "string.json", &cat_dog_owl()),
        Err(PromptError::NotAnObject { path, found: "a string" }) if path == "string.json"
    ));
}

#[test]
fn cd_invalid_json() {
    assert!(matches!(cd_fixture_error("cd_invalid.json"), PromptError::Json { .. }));
}

#[test]
fn cd_duplicate_key() {
    assert!(matches!(
        cd_fixture_error("cd_duplicate_key.json"),
        PromptError::DuplicateKey { key, .. } if key == "cat"
    ));
}

#[test]
fn cd_index_out_of_range() {
    assert!(matches!(
        cd_fixture_error("cd_index_out_of_range.json"),
        PromptError::IndexOutOfRange { key, num_classes: 3, .. } if key == "3"
    ));
}

#[test]
fn cd_keys_in_another_order_with_an_unknown_key_name_it() {
    assert!(matches!(
        cd_fixture_error("cd_order_conflict.json"),
        PromptError::UnrecognisedKey { key, .. } if key == "zebra"
    ));
}

#[test]
fn cd_missing_file() {
    assert!(matches!(cd_fixture_error("no_such_cd.json"), PromptError::Io { .. }));
}
