//! `robustft zeroshot`: zero-shot classification of image files.

use std::path::PathBuf;

use anyhow::Context;
use robustft::clip::preprocess::ClipPreprocess;
use robustft::prompts::{class_prompts, load_class_names, load_templates, template_set, ConceptDescriptions};
use robustft::zeroshot::{probabilities, tokenizer_for, top_k, ZeroShotHead};
use serde_json::json;

use super::{load_images, ModelArgs};

/// Images encoded per image-tower call.
const IMAGE_BATCH: usize = 32;

/// Prints one line per image: `{"image": path, "top": [{"rank", "index", "class", "prob"}, ...]}`.
#[derive(clap::Args, Debug)]
pub struct ZeroshotArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// The classes: a file (one name per line, or a JSON array of names) or an inline
    /// comma-separated list such as "cat,dog,bird".
    #[arg(long, value_name = "FILE|a,b,c")]
    classes: String,

    /// Prompt templates with a "{}" placeholder for the class name: a bundled set
    /// (openai_imagenet, iwildcam, fmow, simple, drm_iwildcam, drm_fmow, drm_imagenet) or a
    /// file with one template per line. Each class's prompt embeddings are averaged.
    #[arg(
        long,
        default_value = "openai_imagenet",
        value_name = "NAME|FILE",
        conflicts_with = "descriptions"
    )]
    templates: String,

    /// Classify with concept descriptions instead of templates: a JSON file in the DRM
    /// paper's formats (index- or name-keyed; one sentence or a list per class).
    #[arg(long, value_name = "FILE")]
    descriptions: Option<PathBuf>,

    /// How many classes to print per image.
    #[arg(long, default_value_t = 5, value_name = "K")]
    top_k: usize,

    /// Image files to classify.
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<PathBuf>,
}

pub fn run(args: ZeroshotArgs) -> anyhow::Result<()> {
    let classes = load_class_names(&args.classes)?;
    let prompts = match &args.descriptions {
        Some(path) => ConceptDescriptions::load(path, &classes)?.per_class().to_vec(),
        None => class_prompts(&classes, &templates(&args.templates)?),
    };
    let (model, device) = args.model.load()?;
    let tokenizer = tokenizer_for(&model)?;
    let head =
        ZeroShotHead::build(&model, &tokenizer, &prompts).context("cannot build the zero-shot head")?;
    let preprocess = ClipPreprocess::openai(model.config.vision.image_size);
    for paths in args.images.chunks(IMAGE_BATCH) {
        let pixels = load_images(&preprocess, paths, &device)?;
        let probs = probabilities(&head.logits(&model.no_grad().encode_image(&pixels)?)?)?;
        for (path, row) in paths.iter().zip(&probs) {
            let top: Vec<_> = top_k(row, args.top_k)
                .into_iter()
                .enumerate()
                .map(|(rank, k)| json!({"rank": rank + 1, "index": k, "class": classes[k], "prob": row[k]}))
                .collect();
            println!("{}", json!({"image": path, "top": top}));
        }
    }
    Ok(())
}

fn templates(spec: &str) -> anyhow::Result<Vec<String>> {
    match template_set(spec) {
        Some(set) => Ok(set.iter().map(|t| t.to_string()).collect()),
        None => Ok(load_templates(std::path::Path::new(spec))?),
    }
}
