//! Concept descriptions (CD) of DRM: parsing and class alignment (format in the module doc
//! of [`super`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::{read_text, PromptError};

/// How the entries of a CD file were paired with the class list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    /// Keys are the class names (exactly or case-insensitively after trimming).
    Name,
    /// Keys are the class indices "0".."K-1".
    Index,
    /// Entry `k` in file order is class `k`.
    Position,
}

/// Which alignment [`ConceptDescriptions::load_with`] may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlignmentPolicy {
    /// By name if every class matches a key, else by index if every key is one, else by
    /// position (refused when a key names a class at another position).
    #[default]
    Auto,
    /// By name only; a class without a key of its own is an error.
    Name,
    /// By file order only, as DRM's evaluation code does.
    Position,
}

/// Concept descriptions: one or more sentences per class, aligned to the class list by position.
#[derive(Debug, Clone)]
pub struct ConceptDescriptions {
    per_class: Vec<Vec<String>>,
    keys: Vec<String>,
    alignment: Alignment,
}

impl ConceptDescriptions {
    /// Reads a CD file and aligns it to `class_names` ([`AlignmentPolicy::Auto`]).
    pub fn load(path: &Path, class_names: &[String]) -> Result<Self, PromptError> {
        Self::load_with(path, class_names, AlignmentPolicy::Auto)
    }

    /// Reads a CD file and aligns it to `class_names` under `policy`.
    pub fn load_with(
        path: &Path,
        class_names: &[String],
        policy: AlignmentPolicy,
    ) -> Result<Self, PromptError> {
        let json = read_text(path)?;
        Self::from_json_str_with(&json, &path.display().to_string(), class_names, policy)
    }

    /// Parses CD JSON text; `source` names it in errors ([`AlignmentPolicy::Auto`]).
    pub fn from_json_str(json: &str, source: &str, class_names: &[String]) -> Result<Self, PromptError> {
        Self::from_json_str_with(json, source, class_names, AlignmentPolicy::Auto)
    }

    /// Parses CD JSON text under `policy`; `source` names it in errors.
    pub fn from_json_str_with(
        json: &str,
        source: &str,
        class_names: &[String],
        policy: AlignmentPolicy,
    ) -> Result<Self, PromptError> {
        let entries = json_object_entries(json, source)?;
        if entries.len() != class_names.len() {
            return Err(PromptError::CountMismatch {
                path: source.to_owned(),
                expected: class_names.len(),
                found: entries.len(),
            });
        }
        let keys: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        let (alignment, entry_of_class) = align(&keys, class_names, policy, source)?;
        let per_class = entry_of_class
            .iter()
            .zip(class_names)
            .map(|(&entry, class)| {
                let (key, value) = &entries[entry];
                sentences(value, &Culprit { source, key, class })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            per_class,
            keys: entry_of_class.iter().map(|&entry| entries[entry].0.clone()).collect(),
            alignment,
        })
    }

    /// `per_class()[k]`: the trimmed sentences describing class `k` (at least one).
    pub fn per_class(&self) -> &[Vec<String>] {
        &self.per_class
    }

    /// `keys()[k]`: the JSON key class `k`'s sentences were read from.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    pub fn num_classes(&self) -> usize {
        self.per_class.len()
    }

    pub fn alignment(&self) -> Alignment {
        self.alignment
    }
}

/// The `(key, value)` pairs of a top-level JSON object, in file order, keys unique.
fn json_object_entries(json: &str, source: &str) -> Result<Vec<(String, Value)>, PromptError> {
    let entries = match serde_json::from_str::<OrderedEntries>(json) {
        Ok(OrderedEntries(entries)) => entries,
        Err(error) => {
            return Err(match serde_json::from_str::<Value>(json) {
                Ok(other) if !other.is_object() => {
                    PromptError::NotAnObject { path: source.to_owned(), found: json_kind(&other) }
                }
                _ => PromptError::Json { path: source.to_owned(), source: error },
            })
        }
    };
    let mut seen = HashSet::new();
    if let Some((key, _)) = entries.iter().find(|(key, _)| !seen.insert(key.as_str())) {
        return Err(PromptError::DuplicateKey { path: source.to_owned(), key: key.clone() });
    }
    Ok(entries)
}

/// A JSON object read entry by entry, so that file order and repeated keys are both visible.
struct OrderedEntries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OrderedEntriesVisitor)
    }
}

struct OrderedEntriesVisitor;

impl<'de> Visitor<'de> for OrderedEntriesVisitor {
    type Value = OrderedEntries;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedEntries, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(entry) = map.next_entry::<String, Value>()? {
            entries.push(entry);
        }
        Ok(OrderedEntries(entries))
    }
}

/// The alignment used and, for each class, the index of its entry in file order.
fn align(
    keys: &[&str],
    class_names: &[String],
    policy: AlignmentPolicy,
    source: &str,
) -> Result<(Alignment, Vec<usize>), PromptError> {
    let file_order = || (0..keys.len()).collect();
    match policy {
        AlignmentPolicy::Position => Ok((Alignment::Position, file_order())),
        AlignmentPolicy::Name => match_names(keys, class_names)
            .map(|order| (Alignment::Name, order))
            .map_err(|failure| failure.into_error(source)),
        AlignmentPolicy::Auto => {
            if let Ok(order) = match_names(keys, class_names) {
                return Ok((Alignment::Name, order));
            }
            if let Some(order) = index_order(keys, source)? {
                return Ok((Alignment::Index, order));
            }
            check_file_order_agrees(keys, class_names, source)?;
            Ok((Alignment::Position, file_order()))
        }
    }
}

/// Trimmed and lower-cased, for case-insensitive name matching.
fn loose(name: &str) -> String {
    name.trim().to_lowercase()
}

enum NameMatchFailure {
    Unknown(String),
    Ambiguous(String),
}

impl NameMatchFailure {
    fn into_error(self, source: &str) -> PromptError {
        let path = source.to_owned();
        match self {
            Self::Unknown(class) => PromptError::UnknownClass { path, class },
            Self::Ambiguous(class) => PromptError::AmbiguousClass { path, class },
        }
    }
}

/// For each class, the entry whose key is its name (exact, else the single case-insensitive
/// match); no entry may serve two classes.
fn match_names(keys: &[&str], class_names: &[String]) -> Result<Vec<usize>, NameMatchFailure> {
    let exact: HashMap<&str, usize> = keys.iter().enumerate().map(|(i, &k)| (k, i)).collect();
    let mut by_loose_key: HashMap<String, Vec<usize>> = HashMap::new();
    for (entry, key) in keys.iter().enumerate() {
        by_loose_key.entry(loose(key)).or_default().push(entry);
    }
    let mut claimed = HashSet::new();
    let mut order = Vec::with_capacity(class_names.len());
    for class in class_names {
        let entry = match exact.get(class.as_str()) {
            Some(&entry) => entry,
            None => match by_loose_key.get(&loose(class)).map(Vec::as_slice) {
                Some(&[entry]) => entry,
                Some(_) => return Err(NameMatchFailure::Ambiguous(class.clone())),
                None => return Err(NameMatchFailure::Unknown(class.clone())),
            },
        };
        if !claimed.insert(entry) {
            return Err(NameMatchFailure::Ambiguous(class.clone()));
        }
        order.push(entry);
    }
    Ok(order)
}

/// When every key is a canonical decimal index, the entry of each class; `None` otherwise.
/// Keys are unique and as many as the classes, so in-range indices cover every class once.
fn index_order(keys: &[&str], source: &str) -> Result<Option<Vec<usize>>, PromptError> {
    let indices: Option<Vec<usize>> = keys.iter().map(|key| canonical_index(key)).collect();
    let Some(indices) = indices else {
        return Ok(None);
    };
    let mut order = vec![0; keys.len()];
    for (entry, &index) in indices.iter().enumerate() {
        let slot = order.get_mut(index).ok_or_else(|| PromptError::IndexOutOfRange {
            path: source.to_owned(),
            key: keys[entry].to_owned(),
            num_classes: keys.len(),
        })?;
        *slot = entry;
    }
    Ok(Some(order))
}

/// `"12"` → 12; `"012"`, `"+1"`, `" 1"` and non-numbers → `None`.
fn canonical_index(key: &str) -> Option<usize> {
    key.parse::<usize>().ok().filter(|index| index.to_string() == key)
}

/// Refuses positional alignment when a key names a class (case-insensitively) none of whose
/// occurrences in the class list is at the key's position in the file.
fn check_file_order_agrees(keys: &[&str], class_names: &[String], source: &str) -> Result<(), PromptError> {
    let mut class_positions: HashMap<String, Vec<usize>> = HashMap::new();
    for (index, class) in class_names.iter().enumerate() {
        class_positions.entry(loose(class)).or_default().push(index);
    }
    for (position, key) in keys.iter().enumerate() {
        match class_positions.get(&loose(key)) {
            Some(indices) if !indices.contains(&position) => {
                return Err(PromptError::OrderConflict {
                    path: source.to_owned(),
                    key: (*key).to_owned(),
                    position,
                    class: class_names[indices[0]].clone(),
                    class_index: indices[0],
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a bad value is reported against.
struct Culprit<'a> {
    source: &'a str,
    key: &'a str,
    class: &'a str,
}

impl Culprit<'_> {
    fn empty_description(&self) -> PromptError {
        PromptError::EmptyDescription {
            path: self.source.to_owned(),
            key: self.key.to_owned(),
            class: self.class.to_owned(),
        }
    }

    fn empty_list(&self) -> PromptError {
        PromptError::EmptyList {
            path: self.source.to_owned(),
            key: self.key.to_owned(),
            class: self.class.to_owned(),
        }
    }

    fn not_a_string(&self, found: &Value) -> PromptError {
        PromptError::NotAString {
            path: self.source.to_owned(),
            key: self.key.to_owned(),
            class: self.class.to_owned(),
            found: json_kind(found),
        }
    }
}

/// The trimmed sentences of one entry: a string, or a non-empty array of strings.
fn sentences(value: &Value, culprit: &Culprit) -> Result<Vec<String>, PromptError> {
    match value {
        Value::String(text) => Ok(vec![sentence(text, culprit)?]),
        Value::Array(items) if items.is_empty() => Err(culprit.empty_list()),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => sentence(text, culprit),
                other => Err(culprit.not_a_string(other)),
            })
            .collect(),
        other => Err(culprit.not_a_string(other)),
    }
}

fn sentence(text: &str, culprit: &Culprit) -> Result<String, PromptError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(culprit.empty_description());
    }
    Ok(text.to_owned())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
