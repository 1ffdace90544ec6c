//! `robustft shiftworld`: write a ShiftWorld benchmark suite to disk, or a grid of
//! pretraining samples to look at.

use std::path::PathBuf;

use anyhow::{bail, Context};
use robustft::shiftworld::{build_suite, sample_grid, write_suite, SUITE_NAMES};

/// The most samples `shiftworld sample` draws into one grid.
const MAX_SAMPLES: usize = 4096;

/// ShiftWorld: the bundled procedural benchmark of shape images with captions.
#[derive(clap::Args, Debug)]
pub struct ShiftworldArgs {
    #[command(subcommand)]
    command: ShiftworldCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ShiftworldCommand {
    /// Write a benchmark suite as an ImageFolder tree plus manifest.csv, classes.txt,
    /// concept_descriptions.json, scenes.jsonl and suite.json; prints a JSON summary.
    Generate {
        /// The suite: spurious (a background shortcut), rendition (drawing styles), corruption
        /// (noise, blur, contrast, occlusion) or domains (unseen cameras).
        #[arg(long, value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(SUITE_NAMES))]
        suite: String,

        /// Output directory: absent, empty, or a suite written earlier (replaced); written via
        /// OUT.tmp and renamed when complete.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,

        /// Seed of every image and split (same seed, same bytes).
        #[arg(long, default_value_t = 0, value_name = "N")]
        seed: u64,
    },
    /// Write a grid of pretraining samples as a PNG and print their captions, one JSON line
    /// per sample in grid order (row by row).
    Sample {
        /// The PNG file to write.
        #[arg(long, value_name = "FILE.png")]
        out: PathBuf,

        /// Seed of the samples.
        #[arg(long, default_value_t = 0, value_name = "N")]
        seed: u64,

        /// Number of samples (1 to 4096).
        #[arg(long, default_value_t = 64, value_name = "N")]
        count: usize,

        /// Magnification of every pixel in the grid (1 to 16).
        #[arg(long, default_value_t = 4, value_name = "N")]
        scale: u32,
    },
}

pub fn run(args: ShiftworldArgs) -> anyhow::Result<()> {
    match args.command {
        ShiftworldCommand::Generate { suite, out, seed } => generate(&suite, &out, seed),
        ShiftworldCommand::Sample { out, seed, count, scale } => sample(&out, seed, count, scale),
    }
}

fn generate(name: &str, out: &std::path::Path, seed: u64) -> anyhow::Result<()> {
    let suite = build_suite(name, seed)?;
    eprintln!("writing ShiftWorld suite {name} (seed {seed}) to {}", out.display());
    write_suite(&suite, out).with_context(|| format!("cannot write suite {name} to {}", out.display()))?;
    let splits: serde_json::Map<String, serde_json::Value> =
        suite.splits.iter().map(|s| (s.name.clone(), s.examples.len().into())).collect();
    let summary = serde_json::json!({
        "suite": suite.name,
        "seed": seed,
        "out": out.display().to_string(),
        "headline_metric": suite.headline_metric,
        "splits": splits,
    });
    println!("{summary}");
    Ok(())
}

fn sample(out: &std::path::Path, seed: u64, count: usize, scale: u32) -> anyhow::Result<()> {
    if !(1..=MAX_SAMPLES).contains(&count) {
        bail!("--count must be between 1 and {MAX_SAMPLES}, got {count}");
    }
    if !(1..=16).contains(&scale) {
        bail!("--scale must be between 1 and 16, got {scale}");
    }
    let (grid, captions) = sample_grid(seed, count, scale);
    grid.save(out).with_context(|| format!("cannot write the sample grid to {}", out.display()))?;
    for (index, caption) in captions.iter().enumerate() {
        println!("{}", serde_json::json!({ "index": index, "caption": caption }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: ShiftworldArgs,
    }

    #[test]
    fn unknown_suites_are_refused_while_parsing() {
        let err = Cli::try_parse_from(["t", "generate", "--suite", "waterbirds", "--out", "x"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn generate_defaults_to_seed_zero() {
        let cli = Cli::try_parse_from(["t", "generate", "--suite", "spurious", "--out", "x"]).unwrap();
        assert!(matches!(cli.args.command, ShiftworldCommand::Generate { seed: 0, .. }));
    }

    #[test]
    fn the_suite_flag_help_lists_every_suite() {
        use clap::CommandFactory;
        let mut command = Cli::command();
        let help = command.find_subcommand_mut("generate").unwrap().render_long_help().to_string();
        for name in SUITE_NAMES {
            assert!(help.contains(name), "--suite help lacks {name}: {help}");
        }
    }
}
