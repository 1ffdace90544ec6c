//! `robustft describe`: concept descriptions of a class list (one sentence on each class's core
//! features, as in the DRM paper) from an OpenAI-compatible chat-completions endpoint, written
//! as a concept-description JSON file, with an answer cache and a progress bar.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use robustft::prompts::{
    describe_classes, load_class_names, write_descriptions, DescribeConfig, DescribePrompt,
};

use crate::progress;

const DEFAULT_ENDPOINT: &str = "https://api.openai.com/v1";
const ENDPOINT_ENV: &str = "OPENAI_BASE_URL";

/// Writes OUT as a JSON object `{class: description}` in class order, loadable by
/// `--descriptions` of `zeroshot` and `eval`. OUT is written only once every class has a
/// description; the answers obtained so far stay in the cache.
#[derive(clap::Args, Debug)]
pub struct DescribeArgs {
    /// The classes: a file (one name per line, or a JSON array of names) or an inline
    /// comma-separated list such as "cat,dog,bird".
    #[arg(long, value_name = "FILE|a,b,c")]
    classes: String,

    /// The concept-description file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    /// Base URL of the OpenAI-compatible API (requests go to URL/chat/completions); default
    /// $OPENAI_BASE_URL, else https://api.openai.com/v1.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,

    /// The chat model to ask.
    #[arg(long, default_value = "gpt-4o-mini", value_name = "NAME")]
    model: String,

    /// Prompt template with a {class} placeholder, sent once per class; default: the bundled
    /// template (crates/robustft/src/prompts/describe_prompt.txt), which asks for one sentence
    /// on the object's shape, parts and texture and nothing about background or photography.
    #[arg(long, value_name = "FILE")]
    prompt: Option<PathBuf>,

    /// Answer cache (JSON), reused across runs: cached answers are not asked again; default
    /// OUT.cache.json.
    #[arg(long, value_name = "FILE")]
    cache: Option<PathBuf>,

    /// Environment variable holding the API key, sent as a Bearer token when set.
    #[arg(long, default_value = "OPENAI_API_KEY", value_name = "VAR")]
    api_key_env: String,

    /// How many times to ask again when the answer is empty.
    #[arg(long, default_value_t = 2, value_name = "N")]
    retries: u32,

    /// Limit on each request, in seconds.
    #[arg(long, default_value_t = 60, value_name = "N")]
    timeout_s: u64,
}

pub fn run(args: DescribeArgs) -> anyhow::Result<()> {
    let classes = load_class_names(&args.classes)?;
    let config = config(&args)?;
    if let Some(dir) = args.out.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let bar = progress::bar(Some(classes.len() as u64), "classes");
    let (descriptions, summary) = describe_classes(&classes, &config, &mut |class| {
        bar.inc(1);
        bar.set_message(class.to_owned());
    })
    .with_context(|| format!("describing the classes of {} with {}", args.classes, config.model))?;
    bar.finish_and_clear();
    write_descriptions(&args.out, &classes, &descriptions)?;
    eprintln!(
        "{} classes: {} requested, {} cached; wrote {} (cache {})",
        summary.classes,
        summary.requested,
        summary.cached,
        args.out.display(),
        config.cache.display()
    );
    Ok(())
}

fn config(args: &DescribeArgs) -> anyhow::Result<DescribeConfig> {
    let prompt = match &args.prompt {
        Some(path) => DescribePrompt::load(path)?,
        None => DescribePrompt::bundled(),
    };
    let endpoint = args
        .endpoint
        .clone()
        .or_else(|| std::env::var(ENDPOINT_ENV).ok().filter(|url| !url.is_empty()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    Ok(DescribeConfig {
        endpoint,
        model: args.model.clone(),
        api_key: std::env::var(&args.api_key_env).ok().filter(|key| !key.is_empty()),
        prompt,
        cache: args.cache.clone().unwrap_or_else(|| default_cache(&args.out)),
        retries: args.retries,
        timeout: Duration::from_secs(args.timeout_s),
    })
}

/// `OUT.cache.json` beside OUT.
fn default_cache(out: &Path) -> PathBuf {
    let mut name = OsString::from(out.as_os_str());
    name.push(".cache.json");
    PathBuf::from(name)
}
