//! The `robustft` command-line program: argument parsing, progress and error reporting over
//! the `robustft` library. Results go to stdout (JSON); diagnostics go to stderr; any error
//! prints its whole cause chain and exits non-zero.

mod commands;
mod progress;

use clap::{Parser, Subcommand};

/// Robust fine-tuning of zero-shot vision-language models (CLIP and its kin).
#[derive(Parser, Debug)]
#[command(name = "robustft", version)]
struct Cli {
    /// Threads for the computation, for any command (default: RAYON_NUM_THREADS if set, else
    /// every logical CPU). Results do not depend on it.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure image-tower throughput (inference or a training step), as a line of text or one
    /// JSON line, on every logical CPU (or --threads N).
    Bench(commands::bench::BenchArgs),
    /// The headline comparison on ShiftWorld with the bundled model (zero-shot, FT, LP-FT,
    /// FLYP, DRM, each with WiSE-FT): a table and runs/demo/report.html.
    Demo(commands::demo::DemoArgs),
    /// Ask an OpenAI-compatible chat endpoint for concept descriptions (one sentence on each
    /// class's core features) and write them as a concept-description JSON file.
    Describe(commands::describe::DescribeArgs),
    /// Print L2-normalised CLIP embeddings of images and texts as JSON.
    Embed(commands::embed::EmbedArgs),
    /// Zero-shot metrics of a model on every split of a dataset on disk or a ShiftWorld
    /// suite (results.jsonl rows, per-example predictions).
    Eval(commands::eval::EvalArgs),
    /// Pretrain the tiny ShiftWorld CLIP from scratch (contrastive loss, checkpoints,
    /// --resume).
    Pretrain(commands::pretrain::PretrainArgs),
    /// Gather results.jsonl files into a table (mean ± std over seeds) and report.html.
    Report(commands::report::ReportArgs),
    /// Clean and robust top-1 of a model or a trained run under attacks (PGD ℓ∞/ℓ2/ℓ1,
    /// APGD), common corruptions and small rotations and shifts, on every split.
    Robustness(commands::robustness::RobustnessArgs),
    /// Generate ShiftWorld benchmark suites on disk or look at pretraining samples.
    Shiftworld(commands::shiftworld::ShiftworldArgs),
    /// Run a recipe over a grid of settings and seeds and select the settings on a validation
    /// split, reported beside the best-on-test choice.
    Sweep(commands::sweep::SweepArgs),
    /// Write a synthetic dataset in the ImageNet or WILDS iWildCam layout (tiny JPEGs), to
    /// rehearse a paper recipe without the data.
    SynthData(commands::synth_data::SynthDataArgs),
    /// Print the CLIP BPE token ids of each text, one JSON array per line.
    Tokenize(commands::tokenize::TokenizeArgs),
    /// Run a recipe: train a method (zero-shot, LP, FT, LP-FT, FLYP, L2-SP, DRM; m²-mix and
    /// function-space terms), evaluate it (optionally through VRF) and its WiSE-FT
    /// interpolations on every ID and OOD split.
    Train(commands::train::TrainArgs),
    /// WiSE-FT of two checkpoints: evaluate (and optionally save) the weight-space
    /// interpolations (1 − α)·zero-shot + α·fine-tuned over a grid of α.
    Wiseft(commands::wiseft::WiseftArgs),
    /// Zero-shot classification: image files from class names and prompt templates (or
    /// concept descriptions), one JSON line per image; or, with --suite, a model's zero-shot
    /// metrics on a ShiftWorld suite.
    Zeroshot(commands::zeroshot::ZeroshotArgs),
}

/// Freed blocks above glibc's mmap threshold are kept for reuse (see the type).
#[global_allocator]
static ALLOCATOR: robustft::allocator::CachedSystem = robustft::allocator::CachedSystem;

fn main() -> std::process::ExitCode {
    robustft::allocator::keep_freed_memory();
    let cli = Cli::parse();
    match robustft::threads::run_on_one_pool(cli.threads, || run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Bench(args) => commands::bench::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Describe(args) => commands::describe::run(args),
        Command::Embed(args) => commands::embed::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Pretrain(args) => commands::pretrain::run(args),
        Command::Robustness(args) => commands::robustness::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::Shiftworld(args) => commands::shiftworld::run(args),
        Command::Sweep(args) => commands::sweep::run(args),
        Command::SynthData(args) => commands::synth_data::run(args),
        Command::Tokenize(args) => commands::tokenize::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Wiseft(args) => commands::wiseft::run(args),
        Command::Zeroshot(args) => commands::zeroshot::run(args),
    }
}
