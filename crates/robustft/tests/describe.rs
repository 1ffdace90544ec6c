//! Tests of `describe` (concept descriptions from an OpenAI-compatible chat endpoint) against a
//! mock server on 127.0.0.1: request shape, answer cleaning, class order, the answer cache,
//! retries of empty answers and the errors of a failing endpoint or a bad template.

mod support {
    pub mod mock_chat;
    pub mod scratch;
}

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use robustft::prompts::{
    describe_classes, write_descriptions, Alignment, ConceptDescriptions, DescribeConfig, DescribeError,
    DescribePrompt, DescribeSummary,
};
use serde_json::Value;
use support::mock_chat::{chat_completion, MockChat};

const TEMPLATE: &str = "Describe the {class}. One sentence.";

fn scratch(tag: &str) -> PathBuf {
    support::scratch::scratch_dir(&format!("describe-{tag}"))
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|&name| name.to_owned()).collect()
}

/// The class a prompt filled from [`TEMPLATE`] asks about.
fn class_of(prompt: &str) -> &str {
    prompt
        .strip_prefix("Describe the ")
        .and_then(|rest| rest.strip_suffix(". One sentence."))
        .unwrap_or(prompt)
}

/// A quoted, badly spaced answer about the class, as language models give.
fn raw_answer(prompt: &str) -> (u16, String) {
    chat_completion(&format!("  \"A {}   with its own\n core shape.\" \n", class_of(prompt)))
}

fn clean_answer(class: &str) -> String {
    format!("A {class} with its own core shape.")
}

fn config(server: &MockChat, dir: &Path) -> DescribeConfig {
    let template = dir.join("prompt.txt");
    std::fs::write(&template, TEMPLATE).unwrap();
    DescribeConfig {
        endpoint: server.url.clone(),
        model: "mock-model".to_owned(),
        api_key: None,
        prompt: DescribePrompt::load(&template).unwrap(),
        cache: dir.join("cd.json.cache.json"),
        retries: 2,
        timeout: Duration::from_secs(20),
    }
}

fn describe(
    classes: &[String],
    config: &DescribeConfig,
) -> Result<(Vec<String>, DescribeSummary), DescribeError> {
    describe_classes(classes, config, &mut |_| {})
}

#[test]
fn descriptions_follow_the_class_order_and_load_as_concept_descriptions() {
    let dir = scratch("order");
    let server = MockChat::start(raw_answer);
    let classes = names(&["owl", "cat", "red fox"]);
    let mut seen = Vec::new();
    let (descriptions, summary) =
        describe_classes(&classes, &config(&server, &dir), &mut |class| seen.push(class.to_owned())).unwrap();
    assert_eq!(seen, classes);
    assert_eq!(summary, DescribeSummary { classes: 3, requested: 3, cached: 0 });
    let out = dir.join("cd.json");
    write_descriptions(&out, &classes, &descriptions).unwrap();

    let raw: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(raw.keys().cloned().collect::<Vec<_>>(), classes, "file order is class order");
    let loaded = ConceptDescriptions::load(&out, &classes).unwrap();
    assert_eq!(loaded.alignment(), Alignment::Name);
    let want: Vec<Vec<String>> = classes.iter().map(|class| vec![clean_answer(class)]).collect();
    assert_eq!(loaded.per_class(), want.as_slice());

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    for (request, class) in requests.iter().zip(&classes) {
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.body["model"], "mock-model");
        assert_eq!(request.body["temperature"], 0);
        assert_eq!(request.body["messages"][0]["role"], "user");
        assert_eq!(request.prompt(), TEMPLATE.replace("{class}", class));
        assert_eq!(request.authorization, None, "no key, no Authorization header");
    }
}

#[test]
fn the_api_key_is_sent_as_a_bearer_token() {
    let dir = scratch("key");
    let server = MockChat::start(raw_answer);
    let config = DescribeConfig { api_key: Some("sk-test-123".to_owned()), ..config(&server, &dir) };
    describe(&names(&["cat"]), &config).unwrap();
    assert_eq!(server.requests()[0].authorization.as_deref(), Some("Bearer sk-test-123"));
}

#[test]
fn the_bundled_prompt_is_filled_with_the_class() {
    let dir = scratch("bundled");
    let server = MockChat::start(|_| chat_completion("A long-bodied cat with a spotted coat."));
    let config = DescribeConfig { prompt: DescribePrompt::bundled(), ..config(&server, &dir) };
    describe(&names(&["snow leopard"]), &config).unwrap();
    let prompt = server.requests()[0].prompt().to_owned();
    assert!(prompt.contains("\"snow leopard\""), "{prompt}");
    assert!(!prompt.contains("{class}"), "{prompt}");
}

#[test]
fn cached_answers_are_not_requested_again() {
    let dir = scratch("cache");
    let server = MockChat::start(raw_answer);
    let classes = names(&["owl", "cat", "red fox"]);
    let config = config(&server, &dir);
    let (first, _) = describe(&classes, &config).unwrap();
    assert_eq!(server.requests().len(), 3);

    let (second, summary) = describe(&classes, &config).unwrap();
    assert_eq!(server.requests().len(), 3, "a second run asks nothing");
    assert_eq!(summary, DescribeSummary { classes: 3, requested: 0, cached: 3 });
    assert_eq!(second, first);

    let other_model = DescribeConfig { model: "other-model".to_owned(), ..config };
    let (_, summary) = describe(&classes, &other_model).unwrap();
    assert_eq!(summary.requested, 3, "the model is part of the cache key");
    assert_eq!(server.requests().len(), 6);
}

#[test]
fn an_interrupted_run_keeps_its_answers() {
    let dir = scratch("interrupted");
    let healthy = Arc::new(AtomicBool::new(false));
    let switch = Arc::clone(&healthy);
    let server = MockChat::start(move |prompt| match class_of(prompt) {
        "red fox" if !switch.load(Ordering::SeqCst) => (503, "overloaded".to_owned()),
        _ => raw_answer(prompt),
    });
    let classes = names(&["owl", "cat", "red fox"]);
    let config = config(&server, &dir);
    describe(&classes, &config).expect_err("the third class fails");
    healthy.store(true, Ordering::SeqCst);
    let (descriptions, summary) = describe(&classes, &config).unwrap();
    assert_eq!(summary, DescribeSummary { classes: 3, requested: 1, cached: 2 });
    assert_eq!(descriptions[2], clean_answer("red fox"));
    let prompts: Vec<String> = server.requests().iter().map(|r| class_of(r.prompt()).to_owned()).collect();
    assert_eq!(prompts, ["owl", "cat", "red fox", "red fox"]);
}

#[test]
fn an_empty_answer_is_asked_again() {
    let dir = scratch("retry");
    let calls = AtomicUsize::new(0);
    let server = MockChat::start(move |prompt| match calls.fetch_add(1, Ordering::SeqCst) {
        0 => chat_completion("  \"  \"  "),
        _ => raw_answer(prompt),
    });
    let (descriptions, _) = describe(&names(&["cat"]), &config(&server, &dir)).unwrap();
    assert_eq!(descriptions, [clean_answer("cat")]);
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn an_always_empty_answer_names_the_class_after_the_retries() {
    let dir = scratch("empty");
    let server = MockChat::start(|prompt| match class_of(prompt) {
        "cat" => chat_completion(" \n "),
        _ => raw_answer(prompt),
    });
    let error = describe(&names(&["owl", "cat", "red fox"]), &config(&server, &dir)).unwrap_err();
    assert!(matches!(&error, DescribeError::EmptyDescription { class, attempts: 3, .. } if class == "cat"));
    assert!(error.to_string().contains("\"cat\""), "{error}");
    let asked: Vec<String> = server.requests().iter().map(|r| class_of(r.prompt()).to_owned()).collect();
    assert_eq!(asked, ["owl", "cat", "cat", "cat"], "1 try + 2 retries, then stop");
}

fn error_with_reply(tag: &str, reply: (u16, &'static str)) -> (String, DescribeError) {
    let dir = scratch(tag);
    let server = MockChat::start(move |_| (reply.0, reply.1.to_owned()));
    let error = describe(&names(&["owl"]), &config(&server, &dir)).unwrap_err();
    (format!("{}/chat/completions", server.url), error)
}

#[test]
fn endpoint_failures_name_the_endpoint_and_the_class() {
    let (url, error) = error_with_reply("status", (500, "{\"error\": \"internal\"}"));
    assert!(matches!(error, DescribeError::Status { status: 500, .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&url) && message.contains("\"owl\"") && message.contains("internal"),
        "{message}"
    );

    let (url, error) = error_with_reply("html", (200, "<html>busy</html>"));
    assert!(matches!(error, DescribeError::NotJson { .. }), "{error:?}");
    assert!(error.to_string().contains(&url) && error.to_string().contains("\"owl\""), "{error}");

    let (_, error) = error_with_reply("nochoice", (200, "{\"choices\": []}"));
    assert!(matches!(error, DescribeError::NoContent { ref class, .. } if class == "owl"), "{error:?}");

    let dir = scratch("refused");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{closed_port}/v1/");
    let server = MockChat::start(raw_answer);
    let config = DescribeConfig { endpoint, ..config(&server, &dir) };
    let error = describe(&names(&["owl"]), &config).unwrap_err();
    assert!(matches!(error, DescribeError::Request { .. }), "{error:?}");
    let want_url = format!("http://127.0.0.1:{closed_port}/v1/chat/completions");
    assert!(error.to_string().contains(&want_url), "{error}");
}

/// An error and all its sources, as the binary prints them.
fn whole_chain(error: &DescribeError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[test]
fn secrets_are_redacted_from_every_message() {
    const KEY: &str = "sk-test-0123456789abcdef";
    const PASSWORD: &str = "pa55-w0rd-secret";
    // A server that echoes the Authorization header in its error body.
    let dir = scratch("redact");
    let server =
        MockChat::start(|_| (401, format!("{{\"error\": \"bad header Authorization: Bearer {KEY}\"}}")));
    let config = DescribeConfig { api_key: Some(KEY.to_owned()), ..config(&server, &dir) };
    let error = describe(&names(&["owl"]), &config).unwrap_err();
    assert!(matches!(error, DescribeError::Status { status: 401, .. }), "{error:?}");
    let message = whole_chain(&error);
    assert!(!message.contains(KEY) && message.contains("Bearer ***"), "{message}");
    assert_eq!(server.requests()[0].authorization.as_deref(), Some(format!("Bearer {KEY}").as_str()));

    // Credentials in the endpoint URL, reachable or not: never shown.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let with_credentials = |base: &str| base.replacen("http://", &format!("http://alice:{PASSWORD}@"), 1);
    for endpoint in
        [with_credentials(&server.url), with_credentials(&format!("http://127.0.0.1:{closed_port}/v1"))]
    {
        let config = DescribeConfig { endpoint, api_key: Some(KEY.to_owned()), ..config.clone() };
        let message = whole_chain(&describe(&names(&["owl"]), &config).unwrap_err());
        assert!(!message.contains(PASSWORD) && !message.contains(KEY), "{message}");
        assert!(message.contains("http://***@127.0.0.1:"), "{message}");
    }
}

#[test]
fn a_template_without_the_placeholder_names_the_file() {
    let dir = scratch("template");
    let template = dir.join("no_placeholder.txt");
    std::fs::write(&template, "Describe the {} in one sentence.").unwrap();
    let error = DescribePrompt::load(&template).unwrap_err();
    assert!(matches!(error, DescribeError::NoPlaceholder { .. }), "{error:?}");
    assert!(error.to_string().contains(&template.display().to_string()), "{error}");
}

#[test]
fn a_corrupt_cache_names_the_file() {
    let dir = scratch("badcache");
    let server = MockChat::start(raw_answer);
    let config = config(&server, &dir);
    std::fs::write(&config.cache, "{\"0123\": 7}").unwrap();
    let error = describe(&names(&["owl"]), &config).unwrap_err();
    assert!(matches!(error, DescribeError::BadCache { .. }), "{error:?}");
    assert!(error.to_string().contains(&config.cache.display().to_string()), "{error}");
    assert!(server.requests().is_empty());
}
