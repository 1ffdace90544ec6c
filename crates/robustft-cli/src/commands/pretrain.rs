//! `robustft pretrain`: trains the tiny ShiftWorld CLIP from scratch with the contrastive
//! loss, with a progress bar, `metrics.jsonl`, checkpoints and `--resume`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use robustft::clip::tokenizer::Tokenizer;
use robustft::pretrain::{shiftworld_recipe, ShiftWorldPairs, SHIFTWORLD_MERGES};
use robustft::train::contrastive::{train, StepReport};
use robustft::train::run_dir::RunDir;

use crate::progress;

/// Writes `OUT/checkpoint/` during the run and the final model to `OUT/model/` (HF layout,
/// with the recipe, seed, steps and wall time in the safetensors metadata).
#[derive(clap::Args, Debug)]
pub struct PretrainArgs {
    /// Run directory (checkpoints, metrics.jsonl, the final model).
    #[arg(long, default_value = "runs/pretrain")]
    out: PathBuf,

    /// Optimiser steps (batch 256 each).
    #[arg(long, default_value_t = 3000)]
    steps: u64,

    /// Seed of the initialisation and of the data stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Continue from OUT's latest checkpoint (same flags as the interrupted run).
    #[arg(long)]
    resume: bool,
}

pub fn run(args: PretrainArgs) -> anyhow::Result<()> {
    let recipe = shiftworld_recipe(args.steps, args.seed);
    let tokenizer = Tokenizer::with_merges(SHIFTWORLD_MERGES)?;
    let run_dir = RunDir { root: args.out.clone() };
    let bar = progress::bar(Some(recipe.schedule.total_steps), "steps");
    let started = Instant::now();
    let model = train(
        &recipe,
        &ShiftWorldPairs::default(),
        &tokenizer,
        &run_dir,
        args.resume,
        None,
        &mut |r: &StepReport| {
            bar.set_position(r.step);
            bar.set_message(format!(
                "loss {:.3}  lr {:.2e}  scale {:.1}  {:.0} img/s",
                r.loss, r.lr, r.logit_scale, r.images_per_s
            ));
        },
    )
    .with_context(|| format!("pretraining in {} failed", args.out.display()))?;
    bar.finish();
    let wall = started.elapsed().as_secs_f64();
    let metadata = HashMap::from([
        ("robustft.recipe".to_string(), serde_json::to_string(&recipe)?),
        (
            "robustft.command".to_string(),
            format!("robustft pretrain --steps {} --seed {}", args.steps, args.seed),
        ),
        ("robustft.wall_seconds_this_call".to_string(), format!("{wall:.0}")),
    ]);
    let model_dir = args.out.join("model");
    model.save_hf(&model_dir, &metadata)?;
    eprintln!("saved {} after {:.1} min", model_dir.display(), wall / 60.0);
    Ok(())
}
