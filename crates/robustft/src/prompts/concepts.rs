//! Concept descriptions (CD) of DRM: parsing and class alignment (format in the module doc
//! of [`super`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{read_text, PromptError};

/// How the entries of a CD file were paired with the class list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    /// Keys are the class names (exactly or case-insensitively after trimming).
    Name,
    /// Keys are the class indices "0".."K-1".
    Index,
    /// Entry `k` in file order is class `k` (a JSON list, or a forced policy).
    Position,
}

/// Which alignment [`ConceptDescriptions::load_with`] may use (in recipes:
/// `data.descriptions_alignment = "auto" | "name" | "position"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlignmentPolicy {
    /// A JSON list by position; an object by name if every class matches a key, else by index
    /// if every key is one. Any key that is neither a class name nor an index is an error.
    #[default]
    Auto,
    /// By name only; a class without a key of its own is an error.
    Name,
    /// By file order only, whatever the keys say, as DRM's evaluation code does.
    Position,
}

impl AlignmentPolicy {
    pub fn is_auto(&self) -> bool {
        *self == AlignmentPolicy::Auto
    }
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
        let (entries, is_list) = json_entries(json, source)?;
        if entries.len() != class_names.len() {
            return Err(PromptError::CountMismatch {
                path: source.to_owned(),
                expected: class_names.len(),
                found: entries.len(),
            });
        }
        let keys: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        let (alignment, entry_of_class) = match is_list {
            true => list_alignment(policy, entries.len(), source)?,
            false => align(&keys, class_names, policy, source)?,
        };
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

    /// `keys()[k]`: the JSON key class `k`'s sentences were read from (`[k]` in a list).
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

/// The `(key, value)` pairs of a top-level JSON object, in file order, keys unique, or the
/// entries of a top-level list keyed `[k]`; and whether it was a list.
fn json_entries(json: &str, source: &str) -> Result<(Vec<(String, Value)>, bool), PromptError> {
    let entries = match serde_json::from_str::<OrderedEntries>(json) {
        Ok(entries) => entries,
        Err(error) => {
            return Err(match serde_json::from_str::<Value>(json) {
                Ok(other) if !other.is_object() && !other.is_array() => {
                    PromptError::NotAnObject { path: source.to_owned(), found: json_kind(&other) }
                }
                _ => PromptError::Json { path: source.to_owned(), source: error },
            })
        }
    };
    let is_list = matches!(entries, OrderedEntries::List(_));
    let entries = match entries {
        OrderedEntries::Object(entries) => entries,
        OrderedEntries::List(values) => {
            values.into_iter().enumerate().map(|(k, value)| (format!("[{k}]"), value)).collect()
        }
    };
    let mut seen = HashSet::new();
    if let Some((key, _)) = entries.iter().find(|(key, _)| !seen.insert(key.as_str())) {
        return Err(PromptError::DuplicateKey { path: source.to_owned(), key: key.clone() });
    }
    Ok((entries, is_list))
}

/// A JSON object read entry by entry, so that file order and repeated keys are both visible,
/// or a JSON list.
enum OrderedEntries {
    Object(Vec<(String, Value)>),
    List(Vec<Value>),
}

impl<'de> Deserialize<'de> for OrderedEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OrderedEntriesVisitor)
    }
}

struct OrderedEntriesVisitor;

impl<'de> Visitor<'de> for OrderedEntriesVisitor {
    type Value = OrderedEntries;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object or list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedEntries, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(entry) = map.next_entry::<String, Value>()? {
            entries.push(entry);
        }
        Ok(OrderedEntries::Object(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OrderedEntries, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(value) = seq.next_element::<Value>()? {
            values.push(value);
        }
        Ok(OrderedEntries::List(values))
    }
}

/// A list is aligned by position; forcing names on it is an error.
fn list_alignment(
    policy: AlignmentPolicy,
    len: usize,
    source: &str,
) -> Result<(Alignment, Vec<usize>), PromptError> {
    match policy {
        AlignmentPolicy::Name => Err(PromptError::NotAnObject { path: source.to_owned(), found: "a list" }),
        AlignmentPolicy::Auto | AlignmentPolicy::Position => Ok((Alignment::Position, (0..len).collect())),
    }
}

/// The alignment used and, for each class, the index of its entry in file order.
fn align(
    keys: &[&str],
    class_names: &[String],
    policy: AlignmentPolicy,
    source: &str,
) -> Result<(Alignment, Vec<usize>), PromptError> {
    match policy {
        AlignmentPolicy::Position => Ok((Alignment::Position, (0..keys.len()).collect())),
        AlignmentPolicy::Name => match_names(keys, class_names)
            .map(|order| (Alignment::Name, order))
            .map_err(|failure| failure.into_error(source)),
        AlignmentPolicy::Auto => {
            let failure = match match_names(keys, class_names) {
                Ok(order) => return Ok((Alignment::Name, order)),
                Err(failure) => failure,
            };
            if let Some(order) = index_order(keys, source)? {
                return Ok((Alignment::Index, order));
            }
            Err(key_error(keys, class_names, failure, source))
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

/// Why an object's keys match neither every class name nor every index: the first key that is
/// neither a class name nor an index below the class count; else the first index among class
/// names (the kinds are mixed); else why the names did not match.
fn key_error(keys: &[&str], class_names: &[String], failure: NameMatchFailure, source: &str) -> PromptError {
    let names: HashSet<String> = class_names.iter().map(|class| loose(class)).collect();
    let is_name = |key: &str| names.contains(&loose(key));
    let is_index = |key: &str| canonical_index(key).is_some_and(|index| index < class_names.len());
    let path = source.to_owned();
    if let Some(key) = keys.iter().find(|key| !is_name(key) && !is_index(key)) {
        return PromptError::UnrecognisedKey { path, key: (*key).to_owned(), num_classes: class_names.len() };
    }
    match keys.iter().find(|key| !is_name(key)) {
        Some(key) => PromptError::MixedKeys { path, key: (*key).to_owned() },
        None => failure.into_error(source),
    }
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
