//! `robustft synth-data --layout imagenet|iwildcam --out DIR [--per-class N]`: writes a
//! synthetic dataset in a paper benchmark's layout (tiny JPEGs, the benchmark's classes, every
//! split), so a paper recipe can be rehearsed with `--set data.root=DIR`.

use std::path::PathBuf;

use anyhow::Context;
use robustft::data::{write_synthetic, SynthLayout};

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
}

pub fn run(args: SynthDataArgs) -> anyhow::Result<()> {
    let images = write_synthetic(args.layout, &args.out, args.per_class, args.seed).with_context(|| {
        format!("writing a synthetic {:?} dataset to {}", args.layout, args.out.display())
    })?;
    eprintln!("wrote {images} images under {}", args.out.display());
    Ok(())
}
