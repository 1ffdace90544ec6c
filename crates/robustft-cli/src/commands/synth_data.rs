//! `robustft synth-data --layout imagenet|iwildcam --out DIR [--per-class N] [--image-size WxH]`:
//! writes a synthetic dataset in a paper benchmark's layout (JPEGs, tiny unless a size is
//! given; the benchmark's classes, every split), so a paper recipe can be rehearsed with
//! `--set data.root=DIR`, and evaluation timed at a real dataset's image size.

use std::path::PathBuf;

use anyhow::Context;
use robustft::data::{write_synthetic, SynthImages, SynthLayout, DEFAULT_SYNTH_SIDE};

/// Writes the dataset and prints how many images it holds.
#[derive(clap::Args, Debug)]
pub struct SynthDataArgs {
    /// `imagenet` (DIR/train/ and DIR/<variant>/ for every ImageNet variant, 1000 classes) or
    /// `iwildcam` (DIR/iwildcam_v2.0/ with metadata.csv, 182 classes, the five WILDS splits).
    #[arg(long, value_name = "imagenet|iwildcam")]
    layout: SynthLayout,

    /// The dataset root (what a recipe's data.root points at).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Images per class in each split or variant.
    #[arg(long, default_value_t = 1, value_name = "N")]
    per_class: usize,

    /// Seed of the per-pixel noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Width and height of every image, e.g. 500x375 (a typical ImageNet photo, to time
    /// decoding and resizing as a real split costs them). [default: 24x24]
    #[arg(long, value_name = "WxH", value_parser = parse_image_size)]
    image_size: Option<(u32, u32)>,
}

/// `WxH` with both sides positive.
fn parse_image_size(text: &str) -> Result<(u32, u32), String> {
    let parse_side = |side: &str| side.trim().parse::<u32>().ok().filter(|&n| n > 0);
    text.split_once('x')
        .and_then(|(w, h)| Some((parse_side(w)?, parse_side(h)?)))
        .ok_or_else(|| format!("{text:?} is not WxH with positive sides, e.g. 500x375"))
}

pub fn run(args: SynthDataArgs) -> anyhow::Result<()> {
    let size = args.image_size.unwrap_or((DEFAULT_SYNTH_SIDE, DEFAULT_SYNTH_SIDE));
    let spec = SynthImages { per_class: args.per_class, seed: args.seed, size };
    let images = write_synthetic(args.layout, &args.out, spec).with_context(|| {
        format!("writing a synthetic {:?} dataset to {}", args.layout, args.out.display())
    })?;
    eprintln!("wrote {images} images under {}", args.out.display());
    Ok(())
}
