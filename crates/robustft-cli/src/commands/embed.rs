//! `robustft embed`: L2-normalised image and text embeddings as JSON.

use std::path::PathBuf;

use robustft::clip::layers::l2_normalize;
use robustft::clip::preprocess::ClipPreprocess;
use robustft::zeroshot::{encode_texts, tokenizer_for};
use serde_json::json;

use super::{load_images, ModelArgs};

/// Prints `{"image_embeds": [[..]], "text_embeds": [[..]], "logit_scale": f, "preprocess": id}`:
/// one L2-normalised row per input, in order; `logit_scale` is the multiplier exp(s) applied
/// to cosine similarities (what open_clip's forward returns).
#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// An image file to embed (repeatable). Preprocessed exactly as OpenAI CLIP: bicubic
    /// resize of the shorter side, centre crop, RGB, OpenAI mean/std.
    #[arg(long = "image", value_name = "PATH")]
    images: Vec<PathBuf>,

    /// A text to embed (repeatable); tokenised with the model's CLIP BPE vocabulary.
    #[arg(long = "text", value_name = "STR")]
    texts: Vec<String>,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    if args.images.is_empty() && args.texts.is_empty() {
        anyhow::bail!("nothing to embed: give at least one --image or --text");
    }
    let (model, device) = args.model.load()?;
    let preprocess = ClipPreprocess::openai(model.config.vision.image_size);
    let image_embeds: Vec<Vec<f32>> = if args.images.is_empty() {
        Vec::new()
    } else {
        let pixels = load_images(&preprocess, &args.images, &device)?;
        l2_normalize(&model.no_grad().encode_image(&pixels)?)?.to_vec2()?
    };
    let text_embeds: Vec<Vec<f32>> = if args.texts.is_empty() {
        Vec::new()
    } else {
        let tokenizer = tokenizer_for(&model)?;
        encode_texts(&model, &tokenizer, &args.texts)?.to_vec2()?
    };
    let logit_scale = model.logit_scale().exp()?.to_scalar::<f32>()?;
    let out = json!({
        "image_embeds": image_embeds,
        "text_embeds": text_embeds,
        "logit_scale": logit_scale,
        "preprocess": preprocess.id(),
    });
    println!("{out}");
    Ok(())
}
