//! The prompt data layer: bundled template sets, class-name lists and the concept-description
//! (CD) files of DRM.
//!
//! What is implemented, and where it comes from:
//!
//! * **Template sets** ([`template_set`], [`TEMPLATE_SET_NAMES`]): OpenAI CLIP's 80 ImageNet
//!   templates, the 2 iWildCam and 16 FMoW templates of WiSE-FT (mlfoundations/wise-ft, whose
//!   sets FLYP reuses), the single "simple" template, and the single default ("df") template
//!   per dataset that DRM's released evaluation uses (github.com/vaynexie/DRM
//!   `src/templates/`). Each set cites its source file.
//! * **Templates** ([`validate_template`], [`load_templates`], [`fill`], [`class_prompts`]): a
//!   template holds exactly one class-name placeholder: `{}` (the class name verbatim; `{c}` is
//!   accepted in files and normalised to `{}`) or `{with_article}` (the class name with `_`
//!   turned into spaces and "a"/"an" in front, WiSE-FT's `append_proper_article`, used by two
//!   of the FMoW templates). Any other brace is an error.
//! * **Class names** ([`load_class_names`], [`iwildcam_class_names`], [`fmow_class_names`]).
//! * **Concept descriptions** ([`ConceptDescriptions`]) in the formats DRM released
//!   (github.com/vaynexie/DRM `prompts/*.json`, `concept_description/*.json`).
//! * **Describing classes** ([`describe_classes`], [`write_descriptions`]): new concept
//!   descriptions of a class list from an OpenAI-compatible chat-completions endpoint, with an
//!   editable prompt template and an answer cache (see the `describe` module).
//!
//! # Concept-description file format
//!
//! A JSON object with one entry per class, or a JSON list of entries in class order. Each value
//! is a string (one sentence) or a non-empty array of strings (several sentences, e.g. FMoW's 6
//! per class, whose embeddings the caller averages). Sentences are trimmed; an empty or
//! all-whitespace sentence is an error. The file must hold exactly as many entries as there are
//! classes, and no key twice. Entries are aligned with the class list as follows
//! ([`AlignmentPolicy::Auto`], the default):
//!
//! 1. [`Alignment::Position`]: a list's entry `k` is class `k`.
//! 2. [`Alignment::Name`]: every class name matches a distinct key, exactly or, failing that,
//!    case-insensitively after trimming (ImageNet, FMoW). File order does not matter.
//! 3. [`Alignment::Index`]: every key is a plain decimal index `"0"`..`"K-1"` (iWildCam's
//!    `prompts_iwildcam_cd.json`); any order in the file.
//!
//! Anything else is an error naming the first key that is neither a class name nor a plain
//! index (`"05"`, `"-1"`, a Latin species name), or the first index among name keys: an object
//! is never matched by file order on a guess, since a wrong guess silently gives every class
//! another class's description. DRM's evaluation code does pair `list(cd.keys())[k]` with class
//! `k`; the Latin-keyed `concept_description_result_cd_iwildcam.json` needs that, which
//! [`AlignmentPolicy::Position`] asks for explicitly.
//!
//! [`AlignmentPolicy::Name`] and [`AlignmentPolicy::Position`] force one rule. The alignment
//! used is reported by [`ConceptDescriptions::alignment`], and the key read for each class by
//! [`ConceptDescriptions::keys`]. The reader keeps the file's key order itself, independent of
//! serde_json's `preserve_order` feature.

mod class_names;
mod concepts;
mod describe;
mod templates;

use std::path::Path;

pub use class_names::{fmow_class_names, iwildcam_class_names, load_class_names};
pub use concepts::{Alignment, AlignmentPolicy, ConceptDescriptions};
pub use describe::{
    describe_classes, write_descriptions, DescribeConfig, DescribeError, DescribePrompt, DescribeSummary,
    DESCRIBE_CLASS_PLACEHOLDER,
};
pub use templates::{
    class_prompts, fill, load_templates, template_set, validate_template, ARTICLE_PLACEHOLDER,
    CLASS_PLACEHOLDER, TEMPLATE_SET_NAMES,
};

/// Errors of the prompt data layer. Each names the file (or inline source) and the offending
/// key, class, line or template. Positions of class names and template lines are 1-based;
/// class indices and file positions of CD entries are 0-based.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read {path}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: invalid JSON")]
    Json { path: String, source: serde_json::Error },
    #[error("{path}: expected a JSON object of class descriptions, found {found}")]
    NotAnObject { path: String, found: &'static str },
    #[error("{path}: key \"{key}\" appears more than once")]
    DuplicateKey { path: String, key: String },
    #[error("{path}: {found} entries for {expected} classes")]
    CountMismatch { path: String, expected: usize, found: usize },
    #[error("{path}: index key \"{key}\" is out of range for {num_classes} classes")]
    IndexOutOfRange { path: String, key: String, num_classes: usize },
    #[error("{path}: no key matches class \"{class}\"")]
    UnknownClass { path: String, class: String },
    #[error("{path}: class \"{class}\" does not match a single key of its own")]
    AmbiguousClass { path: String, class: String },
    #[error(
        "{path}: key \"{key}\" is neither a class name nor a class index 0..{num_classes}; to pair \
         descriptions with classes by position, write the file as a JSON list"
    )]
    UnrecognisedKey { path: String, key: String, num_classes: usize },
    #[error("{path}: key \"{key}\" is a class index, but other keys are class names; use one kind")]
    MixedKeys { path: String, key: String },
    #[error("{path}: class \"{class}\" (key \"{key}\") has an empty description")]
    EmptyDescription { path: String, key: String, class: String },
    #[error("{path}: class \"{class}\" (key \"{key}\") has an empty list of descriptions")]
    EmptyList { path: String, key: String, class: String },
    #[error(
        "{path}: class \"{class}\" (key \"{key}\"): expected a string or a list of strings, \
         found {found}"
    )]
    NotAString { path: String, key: String, class: String, found: &'static str },
    #[error("bad template \"{template}\": {reason}")]
    BadTemplate { template: String, reason: &'static str },
    #[error("{path}:{line}: bad template \"{template}\": {reason}")]
    BadTemplateLine { path: String, line: usize, template: String, reason: &'static str },
    #[error("{path}: no templates")]
    NoTemplates { path: String },
    #[error("{origin}: class name {position} is empty")]
    EmptyClassName { origin: String, position: usize },
    #[error("{origin}: class name \"{name}\" appears at positions {first} and {second}")]
    DuplicateClassName { origin: String, name: String, first: usize, second: usize },
    #[error("{origin}: no class names")]
    NoClassNames { origin: String },
}

fn read_text(path: &Path) -> Result<String, PromptError> {
    crate::files::read_regular_to_string(path)
        .map_err(|source| PromptError::Io { path: path.display().to_string(), source })
}
