//! `robustft bench`: image-tower throughput, a line of text or (`--json`) one JSON line
//! (compare with `bench/pytorch_bench.py`, or run both with `bench/run.sh`).

use anyhow::Context;
use robustft::bench::{self, BenchMode, Workload};
use robustft::clip::ClipConfig;
use robustft::device::DeviceChoice;
use robustft::pretrain::shiftworld_model;

use super::Precision;

/// Prints a line of text, or with `--json`
/// `{"arch","mode","batch","steps","precision","kernel","images_per_s","peak_rss_mb","engine",
/// "threads","cpu":{"model","family","model_number","cores","logical_cpus","features"}}`
/// (kernel: the linear layers' CPU kernel, in fp32 `avx512f` or `avx2_fma` (this crate's) or
/// `gemm`, in bf16 `amx`, `avx512_bf16` or `portable`; `ROBUSTFT_F32_KERNEL` and
/// `ROBUSTFT_BF16_KERNEL` pick another that the CPU runs; threads:
/// the pool's, every logical CPU unless `--threads` or `RAYON_NUM_THREADS` says otherwise; family, model number, cores and logical CPUs (of the first package) as
/// `/proc/cpuinfo` gives them; the features: which of avx2, fma, avx512f, avx512_bf16,
/// amx_tile, amx_bf16, amx_int8 the CPU has).
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

    /// The transformer's products: fp32, or bf16 (operands rounded to bfloat16, fp32 sums). On
    /// the CPU: the linear layers' and attention's `q kᵀ` and `P v`, on AMX tiles or
    /// AVX512-BF16 dot products where the CPU has them, into fp32 outputs; compare with
    /// PyTorch's CPU autocast: `bench/pytorch_bench.py --precision bf16`. On CUDA: the same
    /// products autocast-style (operands cast to bfloat16, cuBLAS bf16 products cast back to
    /// fp32).
    #[arg(long, value_enum, default_value = "fp32")]
    precision: Precision,

    /// Where to compute: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,

    /// Instead of the image tower: time the training steps of these recipes (a method's
    /// objective + constraint), in turn, --rounds times, and print each recipe's median step
    /// time (the first 2 steps of a round are warm-up); --steps is the steps per round.
    #[arg(long, value_name = "FILE.toml", num_args = 1..)]
    recipes: Vec<std::path::PathBuf>,

    /// Instead of the image tower: time the forward products `x Wᵀ` of one block's linear
    /// layers (qkv, out, fc1, fc2; rows = --batch × tokens) through the model's linear kernel,
    /// and its attention (`q kᵀ` and `P v` of every head, the softmax between), in --precision,
    /// one untimed run then --steps timed ones each, and print GFLOP/s (and the kernel: in fp32
    /// `avx2_fma` on CPUs with AVX2 and FMA but no AVX-512F, `gemm` elsewhere, `avx512f` where
    /// `ROBUSTFT_F32_KERNEL` picks it, and for
    /// attention `avx512f` on CPUs with AVX-512F, `gemm` elsewhere; in bf16 `amx` on CPUs with
    /// AMX-BF16 tiles, `avx512_bf16` on AVX512-BF16 ones, `portable` elsewhere), each
    /// beside the fp32 FMA peak of the same threads (independent multiply-adds in registers,
    /// AVX-512 or AVX2, the higher of a measurement before and one after the products: what
    /// the cores could issue in that minute; `fma_peak_gflops` in --json).
    #[arg(long, conflicts_with = "recipes")]
    products: bool,

    /// Rounds over the recipes (with --recipes): alternating recipes spreads machine noise
    /// over all of them.
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Print one JSON line per result instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Mode {
    Train,
    Infer,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Train => "train",
            Mode::Infer => "infer",
        }
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !args.recipes.is_empty() {
        return bench_recipes(&args);
    }
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
    if args.products {
        return bench_products(&args, &config);
    }
    let mode = match args.mode {
        Mode::Train => BenchMode::Train,
        Mode::Infer => BenchMode::Infer,
    };
    let device = args.device.open()?;
    let workload = Workload {
        arch: args.arch.clone(),
        config,
        mode,
        batch: args.batch,
        steps: args.steps,
        warmup: args.warmup,
        precision: args.precision.setting(),
    };
    let report = bench::run(&workload, &device)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} {} batch {} {} ({}): {:.2} images/s over {} steps on {}, peak RSS {:.0} MB, on {}",
            report.arch,
            args.mode.name(),
            report.batch,
            report.precision.name(),
            report.kernel,
            report.images_per_s,
            report.steps,
            bench::counted(report.threads as u64, "thread"),
            report.peak_rss_mb,
            report.cpu.summary()
        );
    }
    Ok(())
}

/// GFLOP/s of each forward product of one image-tower block.
fn bench_products(args: &BenchArgs, config: &ClipConfig) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let reports =
        bench::time_products(&config.vision, args.batch, args.precision.setting(), args.steps, &device)?;
    for report in reports {
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            let of_peak = report.fma_peak_gflops.map_or(String::new(), |peak| {
                format!(" ({:.0}% of {peak:.0}, the FMA peak)", 100.0 * report.gflops / peak)
            });
            println!(
                "{} {} {} {} ({}): {:.0} GFLOP/s{of_peak} on {}, on {}",
                args.arch,
                report.layer,
                report.products(),
                report.precision.name(),
                report.kernel,
                report.gflops,
                bench::counted(report.threads as u64, "thread"),
                report.cpu.summary()
            );
        }
    }
    Ok(())
}

/// Median step time of each recipe's method, alternating recipes over rounds.
fn bench_recipes(args: &BenchArgs) -> anyhow::Result<()> {
    let out = std::env::temp_dir().join(format!("robustft-bench-{}", std::process::id()));
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); args.recipes.len()];
    for round in 0..args.rounds {
        for (k, path) in args.recipes.iter().enumerate() {
            let sets = ["train.epochs=100".to_string(), "eval.wiseft=[]".to_string()];
            let recipe = robustft::recipe::Recipe::load(path, &sets)?;
            eprintln!("round {} / {}: {}", round + 1, args.rounds, recipe.label());
            let steps = bench::method_step_ms(recipe, args.steps as u64 + 2, &out)?;
            times[k].extend(steps.into_iter().skip(2));
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    for (path, mut samples) in args.recipes.iter().zip(times) {
        samples.sort_by(f64::total_cmp);
        let median = samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN);
        let recipe = robustft::recipe::Recipe::load(path, &[])?;
        if args.json {
            let line = serde_json::json!({
                "recipe": path.display().to_string(),
                "method": recipe.label(),
                "batch": recipe.train.batch_size,
                "steps": samples.len(),
                "median_step_ms": median,
            });
            println!("{line}");
        } else {
            println!(
                "{}: median step {median:.1} ms over {} steps (batch {})",
                recipe.label(),
                samples.len(),
                recipe.train.batch_size
            );
        }
    }
    Ok(())
}
