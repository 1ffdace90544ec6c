//! Concept descriptions asked of a language model: DRM (Li et al., "Dual Risk Minimization:
//! Towards Next-Level Robustness in Fine-tuning Zero-Shot Models", NeurIPS 2024) describes each
//! class by its *core* features, those intrinsic to the object, and writes them to a
//! concept-description file; this module obtains such descriptions from any OpenAI-compatible
//! chat-completions endpoint.
//!
//! For each class the prompt template (by default `describe_prompt.txt` beside this file, which
//! asks for one sentence on shape, parts and texture and forbids background, surroundings and
//! photography conditions) is filled in at `{class}` and sent as a single user message with
//! temperature 0 to `POST {endpoint}/chat/completions`; the answer is
//! `choices[0].message.content`. Answers are cleaned (whitespace collapsed, surrounding quotes
//! removed); an empty answer is asked again up to `retries` times. Every answer is cached in a
//! JSON file under an FNV-1a 64 hash of endpoint, model and prompt text, rewritten atomically
//! after each new answer, so a second run, or a run after an interruption, asks only what is
//! missing. The output is a name-keyed concept-description file in class order (the format of
//! [`super::ConceptDescriptions`]), written atomically and only once every class has an answer.
//!
//! Secrets never reach a message: the endpoint is shown with any `user:password@` credentials
//! replaced by `***@`, and the API key and those credentials are replaced by `***` wherever they
//! appear in a quoted response body or a transport error (a server may echo the
//! `Authorization` header).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

/// The placeholder a describe prompt template must contain.
pub const DESCRIBE_CLASS_PLACEHOLDER: &str = "{class}";

const BUNDLED_PROMPT: &str = include_str!("describe_prompt.txt");

/// How much of an error response's body an error message quotes.
const QUOTED_BODY_CHARS: usize = 200;

/// Errors of `describe`; each names the file, or the endpoint and the class, at fault.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    #[error("cannot read {path}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}")]
    Write { path: String, source: std::io::Error },
    #[error("{path}: the prompt template has no {DESCRIBE_CLASS_PLACEHOLDER} placeholder")]
    NoPlaceholder { path: String },
    #[error("{path}: not a describe cache (a JSON object of strings)")]
    BadCache { path: String, source: serde_json::Error },
    #[error("{url}: request for class \"{class}\" failed: {reason}")]
    Request { url: String, class: String, reason: String },
    #[error("{url}: HTTP status {status} for class \"{class}\": {body}")]
    Status { url: String, class: String, status: u16, body: String },
    #[error("{url}: the answer for class \"{class}\" is not JSON: {body}")]
    NotJson { url: String, class: String, body: String },
    #[error("{url}: the answer for class \"{class}\" has no string at choices[0].message.content")]
    NoContent { url: String, class: String },
    #[error("{url}: empty description for class \"{class}\" after {attempts} attempts")]
    EmptyDescription { url: String, class: String, attempts: u32 },
}

/// A describe prompt template: text with at least one `{class}` placeholder.
#[derive(Debug, Clone)]
pub struct DescribePrompt {
    text: String,
}

impl DescribePrompt {
    /// The bundled template (`crates/robustft/src/prompts/describe_prompt.txt`).
    pub fn bundled() -> Self {
        Self { text: BUNDLED_PROMPT.to_owned() }
    }

    /// A template from a file; it must contain `{class}`.
    pub fn load(path: &Path) -> Result<Self, DescribeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| DescribeError::Read { path: path.display().to_string(), source })?;
        if !text.contains(DESCRIBE_CLASS_PLACEHOLDER) {
            return Err(DescribeError::NoPlaceholder { path: path.display().to_string() });
        }
        Ok(Self { text })
    }

    /// The prompt for `class`: every `{class}` replaced by the class name verbatim.
    pub fn for_class(&self, class: &str) -> String {
        self.text.replace(DESCRIBE_CLASS_PLACEHOLDER, class)
    }
}

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct DescribeConfig {
    /// Base URL of the API, e.g. `https://api.openai.com/v1` (a trailing `/` is ignored).
    pub endpoint: String,
    pub model: String,
    /// Sent as `Authorization: Bearer KEY` when present.
    pub api_key: Option<String>,
    pub prompt: DescribePrompt,
    /// The answer cache (created when missing).
    pub cache: PathBuf,
    /// How many times an empty answer is asked again.
    pub retries: u32,
    /// Limit on each request, connection to last byte.
    pub timeout: Duration,
}

/// What a run did: classes described, of which answered by the endpoint and taken from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescribeSummary {
    pub classes: usize,
    pub requested: usize,
    pub cached: usize,
}

/// One cleaned, non-empty description per class, in class order. `on_class` is called with each
/// class once it has its description. Nothing is asked for classes whose answer is cached.
pub fn describe_classes(
    class_names: &[String],
    config: &DescribeConfig,
    on_class: &mut dyn FnMut(&str),
) -> Result<(Vec<String>, DescribeSummary), DescribeError> {
    let endpoint = config.endpoint.trim_end_matches('/');
    let url = format!("{endpoint}/chat/completions");
    let redactor = Redactor::new(endpoint, config.api_key.as_deref());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(config.timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut cache = AnswerCache::load(&config.cache)?;
    let mut summary = DescribeSummary { classes: class_names.len(), requested: 0, cached: 0 };
    let mut descriptions = Vec::with_capacity(class_names.len());
    for class in class_names {
        let prompt = config.prompt.for_class(class);
        let key = cache_key(endpoint, &config.model, &prompt);
        let description = match cache.answer(&key) {
            Some(cached) => {
                summary.cached += 1;
                cached
            }
            None => {
                let chat = Chat { agent: &agent, url: &url, config, class, redactor: &redactor };
                let answer = chat.non_empty_answer(&prompt)?;
                cache.insert(key, answer.clone())?;
                summary.requested += 1;
                answer
            }
        };
        descriptions.push(description);
        on_class(class);
    }
    Ok((descriptions, summary))
}

/// Writes `{class: description}` in class order to `path`, atomically.
pub fn write_descriptions(
    path: &Path,
    class_names: &[String],
    descriptions: &[String],
) -> Result<(), DescribeError> {
    let object: Map<String, Value> = class_names
        .iter()
        .zip(descriptions)
        .map(|(class, description)| (class.clone(), Value::String(description.clone())))
        .collect();
    write_json_atomic(path, &Value::Object(object))
}

/// One class's conversation with the endpoint.
struct Chat<'a> {
    agent: &'a ureq::Agent,
    url: &'a str,
    config: &'a DescribeConfig,
    class: &'a str,
    redactor: &'a Redactor,
}

impl Chat<'_> {
    fn non_empty_answer(&self, prompt: &str) -> Result<String, DescribeError> {
        let attempts = self.config.retries + 1;
        for _ in 0..attempts {
            let answer = clean_answer(&self.ask(prompt)?);
            if !answer.is_empty() {
                return Ok(answer);
            }
        }
        Err(DescribeError::EmptyDescription {
            url: self.redactor.url(self.url),
            class: self.class.to_owned(),
            attempts,
        })
    }

    fn ask(&self, prompt: &str) -> Result<String, DescribeError> {
        let body = json!({
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
        });
        let mut request = self.agent.post(self.url).header("Content-Type", "application/json");
        if let Some(key) = &self.config.api_key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = request.send(body.to_string()).map_err(|e| self.request_error(e))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|e| self.request_error(e))?;
        let (url, class) = (self.redactor.url(self.url), self.class.to_owned());
        if !(200..300).contains(&status) {
            return Err(DescribeError::Status { url, class, status, body: self.quoted(&text) });
        }
        let Ok(answer) = serde_json::from_str::<Value>(&text) else {
            return Err(DescribeError::NotJson { url, class, body: self.quoted(&text) });
        };
        match answer.pointer("/choices/0/message/content").and_then(Value::as_str) {
            Some(content) => Ok(content.to_owned()),
            None => Err(DescribeError::NoContent { url, class }),
        }
    }

    fn request_error(&self, source: ureq::Error) -> DescribeError {
        DescribeError::Request {
            url: self.redactor.url(self.url),
            class: self.class.to_owned(),
            reason: self.redactor.text(&source.to_string()),
        }
    }

    /// The start of a response body, secrets redacted.
    fn quoted(&self, body: &str) -> String {
        quoted(&self.redactor.text(body))
    }
}

/// Removes the API key and an endpoint's URL credentials from text shown to the user.
struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    const MASK: &'static str = "***";

    fn new(endpoint: &str, api_key: Option<&str>) -> Self {
        let mut secrets: Vec<String> = api_key.into_iter().map(str::to_owned).collect();
        if let Some(userinfo) = userinfo(endpoint) {
            secrets.push(userinfo.to_owned());
            secrets.extend(userinfo.split(':').map(str::to_owned));
        }
        secrets.retain(|secret| !secret.is_empty());
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        Self { secrets }
    }

    /// `url` with its `user:password@` part replaced by `***@`.
    fn url(&self, url: &str) -> String {
        match userinfo(url) {
            Some(userinfo) => url.replacen(&format!("{userinfo}@"), &format!("{}@", Self::MASK), 1),
            None => url.to_owned(),
        }
    }

    fn text(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |text, secret| text.replace(secret, Self::MASK))
    }
}

/// The `user:password` of `scheme://user:password@host/...`, if any.
fn userinfo(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.rsplit_once('@').map(|(userinfo, _)| userinfo)
}

/// Whitespace runs collapsed to one space, then one pair of surrounding quotes removed.
fn clean_answer(raw: &str) -> String {
    let collapsed = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    let unquoted = [('"', '"'), ('\'', '\''), ('“', '”'), ('‘', '’')]
        .iter()
        .find_map(|&(open, close)| collapsed.strip_prefix(open)?.strip_suffix(close))
        .unwrap_or(&collapsed);
    unquoted.trim().to_owned()
}

/// The start of a response body, for error messages.
fn quoted(body: &str) -> String {
    let mut start: String = body.chars().take(QUOTED_BODY_CHARS).collect();
    if start.len() < body.len() {
        start.push_str("...");
    }
    start
}

/// FNV-1a 64 of endpoint, model and prompt (separated by NUL), as 16 hex digits.
fn cache_key(endpoint: &str, model: &str, prompt: &str) -> String {
    let hash = crate::rng::fnv1a([endpoint, model, prompt].join("\0").as_bytes());
    format!("{hash:016x}")
}

/// Answers by cache key, mirrored to a JSON file after every insertion.
struct AnswerCache {
    path: PathBuf,
    answers: BTreeMap<String, String>,
}

impl AnswerCache {
    fn load(path: &Path) -> Result<Self, DescribeError> {
        let answers = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|source| DescribeError::BadCache { path: path.display().to_string(), source })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(DescribeError::Read { path: path.display().to_string(), source }),
        };
        Ok(Self { path: path.to_path_buf(), answers })
    }

    /// The cached answer, cleaned; `None` when missing or empty.
    fn answer(&self, key: &str) -> Option<String> {
        self.answers.get(key).map(|answer| clean_answer(answer)).filter(|answer| !answer.is_empty())
    }

    fn insert(&mut self, key: String, answer: String) -> Result<(), DescribeError> {
        self.answers.insert(key, answer);
        write_json_atomic(&self.path, &json!(self.answers))
    }
}

/// Pretty JSON to `path` through a temporary file beside it and a rename.
fn write_json_atomic(path: &Path, value: &Value) -> Result<(), DescribeError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let text = serde_json::to_string_pretty(value).expect("a JSON value serialises") + "\n";
    std::fs::write(&tmp, text)
        .map_err(|source| DescribeError::Write { path: tmp.display().to_string(), source })?;
    std::fs::rename(&tmp, path)
        .map_err(|source| DescribeError::Write { path: path.display().to_string(), source })
}
