//! Bundled template sets; template validation, loading and filling.

use std::path::Path;

use super::{read_text, PromptError};

/// Placeholder replaced by the class name verbatim.
pub const CLASS_PLACEHOLDER: &str = "{}";
/// Placeholder replaced by the class name with `_` turned into spaces and the indefinite
/// article in front ("an airport hangar"), as WiSE-FT's `append_proper_article`.
pub const ARTICLE_PLACEHOLDER: &str = "{with_article}";
/// Accepted in template files for `{}`: the `{c}` of the FLYP/WiSE-FT f-strings.
const CLASS_PLACEHOLDER_ALIAS: &str = "{c}";

/// Names accepted by [`template_set`].
pub const TEMPLATE_SET_NAMES: &[&str] = &[
    "openai_imagenet",
    "iwildcam",
    "fmow",
    "simple",
    "drm_iwildcam",
    "drm_fmow",
    "drm_imagenet",
    "shiftworld",
];

// openai/CLIP notebooks/Prompt_Engineering_for_ImageNet.ipynb (`imagenet_templates`), identical
// to mlfoundations/wise-ft src/templates/openai_imagenet_template.py.
const OPENAI_IMAGENET: [&str; 80] = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
];

// mlfoundations/wise-ft src/templates/iwildcam_template.py (FLYP's iWildCam captions too).
const IWILDCAM: [&str; 2] = ["a photo of {}.", "{} in the wild."];

// mlfoundations/wise-ft src/templates/fmow_template.py. Entries 2 and 3 are
// `f"... of {append_proper_article(c)}."` there.
const FMOW: [&str; 16] = [
    "satellite photo of a {}.",
    "aerial photo of a {}.",
    "satellite photo of {with_article}.",
    "aerial photo of {with_article}.",
    "satellite photo of a {} in asia.",
    "aerial photo of a {} in asia.",
    "satellite photo of a {} in africa.",
    "aerial photo of a {} in africa.",
    "satellite photo of a {} in the americas.",
    "aerial photo of a {} in the americas.",
    "satellite photo of a {} in europe.",
    "aerial photo of a {} in europe.",
    "satellite photo of a {} in oceania.",
    "aerial photo of a {} in oceania.",
    "a photo of a {}.",
    "{}.",
];

// mlfoundations/wise-ft src/templates/simple_template.py.
const SIMPLE: [&str; 1] = ["a photo of a {}."];

// vaynexie/DRM src/templates/iwildcam_template.py (the df template of DRM's released eval).
const DRM_IWILDCAM: [&str; 1] = ["a photo of {}."];

// vaynexie/DRM src/templates/fmow_template.py.
const DRM_FMOW: [&str; 1] = ["satellite photo of a {}."];

// vaynexie/DRM src/templates/imagenet_template.py.
const DRM_IMAGENET: [&str; 1] = ["a good photo of the {}."];

// ShiftWorld's default prompts: the two plainest frames of its caption grammar
// (crate::shiftworld captions: "a star.", "a photo of an arrow.").
const SHIFTWORLD: [&str; 2] = ["{with_article}.", "a photo of {with_article}."];

/// A named, bundled template set (see [`TEMPLATE_SET_NAMES`]). Each template holds exactly one
/// placeholder, [`CLASS_PLACEHOLDER`] or [`ARTICLE_PLACEHOLDER`].
pub fn template_set(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "openai_imagenet" => Some(&OPENAI_IMAGENET),
        "iwildcam" => Some(&IWILDCAM),
        "fmow" => Some(&FMOW),
        "simple" => Some(&SIMPLE),
        "drm_iwildcam" => Some(&DRM_IWILDCAM),
        "drm_fmow" => Some(&DRM_FMOW),
        "drm_imagenet" => Some(&DRM_IMAGENET),
        "shiftworld" => Some(&SHIFTWORLD),
        _ => None,
    }
}

/// Checks that `template` holds exactly one class-name placeholder and no other brace, and
/// returns it with `{c}` normalised to `{}`.
pub fn validate_template(template: &str) -> Result<String, PromptError> {
    let normalised = template.replace(CLASS_PLACEHOLDER_ALIAS, CLASS_PLACEHOLDER);
    match template_problem(&normalised) {
        None => Ok(normalised),
        Some(reason) => Err(PromptError::BadTemplate { template: template.to_owned(), reason }),
    }
}

fn template_problem(template: &str) -> Option<&'static str> {
    let placeholders =
        template.matches(CLASS_PLACEHOLDER).count() + template.matches(ARTICLE_PLACEHOLDER).count();
    let without_placeholders = template.replace(CLASS_PLACEHOLDER, "").replace(ARTICLE_PLACEHOLDER, "");
    match placeholders {
        0 => Some("no class-name placeholder `{}`"),
        1 if without_placeholders.contains(['{', '}']) => Some("a brace outside the placeholder"),
        1 => None,
        _ => Some("more than one class-name placeholder"),
    }
}

/// Templates from a text file: one per line; blank lines and lines starting with `#` are
/// skipped, the others are trimmed and validated as by [`validate_template`].
pub fn load_templates(path: &Path) -> Result<Vec<String>, PromptError> {
    let text = read_text(path)?;
    let mut templates = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let template = line.replace(CLASS_PLACEHOLDER_ALIAS, CLASS_PLACEHOLDER);
        if let Some(reason) = template_problem(&template) {
            return Err(PromptError::BadTemplateLine {
                path: path.display().to_string(),
                line: index + 1,
                template: line.to_owned(),
                reason,
            });
        }
        templates.push(template);
    }
    if templates.is_empty() {
        return Err(PromptError::NoTemplates { path: path.display().to_string() });
    }
    Ok(templates)
}

/// Fills a (validated) template with a class name.
pub fn fill(template: &str, class_name: &str) -> String {
    if template.contains(ARTICLE_PLACEHOLDER) {
        template.replace(ARTICLE_PLACEHOLDER, &with_indefinite_article(class_name))
    } else {
        template.replace(CLASS_PLACEHOLDER, class_name)
    }
}

/// WiSE-FT's `append_proper_article`: "an" before a lower-case vowel, "a" otherwise.
fn with_indefinite_article(class_name: &str) -> String {
    let name = class_name.replace('_', " ");
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {name}")
}

/// Prompt strings per class: `class_prompts[k]` holds every template filled with class `k`'s
/// name, in template order.
pub fn class_prompts(class_names: &[String], templates: &[impl AsRef<str>]) -> Vec<Vec<String>> {
    class_names
        .iter()
        .map(|name| templates.iter().map(|template| fill(template.as_ref(), name)).collect())
        .collect()
}
