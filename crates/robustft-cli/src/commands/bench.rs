//! `robustft bench`: image-tower throughput, one JSON line (compare with
//! `bench/pytorch_bench.py`, or run both with `bench/run.sh`).

use anyhow::Context;
use robustft::bench::{self, BenchMode};
use robustft::clip::ClipConfig;
use robustft::device::DeviceChoice;
use robustft::pretrain::shiftworld_model;

/// Prints `{"arch","mode","batch","steps","images_per_s","peak_rss_mb","engine"}`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Architecture, randomly initialised: a preset (ViT-B-32, ViT-B-16, ViT-L-14,
    /// ViT-L-14-336) or `shiftworld` (the bundled tiny model's architecture).
    #[arg(long, default_value = "ViT-B-32")]
    arch: String,

    /// `infer`: encode_image without gradients; `train`: forward, 1000-class head with
    /// cross-entropy, backward and an AdamW step over the image tower and head.
    #[arg(long, value_enum, default_value = "infer")]
    mode: Mode,

    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,

    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,

    /// Untimed steps before timing starts.
    #[arg(long, default_value_t = 1)]
    warmup: usize,

    /// Where to compute: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Mode {
    Train,
    Infer,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let config = match args.arch.as_str() {
        "shiftworld" => shiftworld_model(),
        name => ClipConfig::preset(name).with_context(|| {
            format!(
                "unknown --arch {name:?} (known: shiftworld, {})",
                robustft::clip::config::PRESET_NAMES.join(", ")
            )
        })?,
    };
    if args.batch == 0 || args.steps == 0 {
        anyhow::bail!("--batch and --steps must be at least 1");
    }
    let mode = match args.mode {
        Mode::Train => BenchMode::Train,
        Mode::Infer => BenchMode::Infer,
    };
    let device = args.device.open()?;
    let report = bench::run(&args.arch, config, mode, args.batch, args.steps, args.warmup, &device)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
