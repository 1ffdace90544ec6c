//! One module per subcommand, plus the options they share.

pub mod bench;
pub mod demo;
pub mod describe;
pub mod embed;
pub mod eval;
pub mod pretrain;
pub mod report;
pub mod robustness;
pub mod shiftworld;
pub mod sweep;
pub mod synth_data;
pub mod tokenize;
pub mod train;
pub mod wiseft;
pub mod zeroshot;

use anyhow::Context;
use candle_core::{Device, Tensor};
use robustft::clip::preprocess::ClipPreprocess;
use robustft::clip::{ClipModel, ConfigSource, LoadedCheckpointInfo};
use robustft::device::DeviceChoice;
use robustft::kernels::{set_matmul_precision, MatmulPrecision};

/// Options every model-running command takes.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// The CLIP checkpoint: `bundled` (the tiny ShiftWorld CLIP inside the binary), a
    /// directory or weights file in the HF layout (model.safetensors + config.json) or the
    /// OpenAI/OpenCLIP layout (open_clip_model.safetensors, .bin/.pt state dicts), or a hub id
    /// such as openai/clip-vit-base-patch32 already in the local Hugging Face cache (nothing is
    /// downloaded), or random:PRESET (random:ViT-B-32: a preset's architecture, randomly
    /// initialised, the same weights every time; for rehearsing and timing at full size).
    #[arg(long, default_value = "bundled", value_name = "bundled|PATH|HUB_ID|random:PRESET")]
    pub model: String,

    /// The architecture facts weights cannot tell (attention heads, activation), instead of the
    /// config beside the weights or OpenAI's conventions: an open_clip_config.json, an HF
    /// config.json, or a preset name (ViT-B-32, ViT-B-16, ViT-L-14, ViT-L-14-336).
    #[arg(long, value_name = "FILE|PRESET", value_parser = parse_config_source)]
    pub config: Option<ConfigSource>,

    /// Where to compute: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceChoice,

    /// The precision of the model's matrix products: fp32, or bf16 (operands rounded to
    /// bfloat16, fp32 sums; 1.5–1.9× faster on the AVX512-BF16 CPUs in BENCHMARKS.md, but
    /// no faster than fp32 on CPUs with neither AVX512-BF16 nor AMX; embeddings within about
    /// 1e-2 of fp32's). Rows computed in bf16 say so
    /// (`"precision": "bf16"`).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
}

/// The `--precision` choices, [`MatmulPrecision`] on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Precision {
    Fp32,
    Bf16,
}

impl Precision {
    pub fn setting(self) -> MatmulPrecision {
        match self {
            Precision::Fp32 => MatmulPrecision::Fp32,
            Precision::Bf16 => MatmulPrecision::Bf16,
        }
    }
}

impl ModelArgs {
    /// Sets the process's matmul precision, opens the device and loads the model.
    pub fn load(&self) -> anyhow::Result<(ClipModel, Device)> {
        set_matmul_precision(self.precision.setting());
        let device = self.device.open().with_context(|| format!("cannot open device {:?}", self.device))?;
        let (model, _) = load_model(&self.model, self.config.as_ref(), &device)?;
        Ok((model, device))
    }
}

/// Parses `--config`: a preset name or an existing file.
pub fn parse_config_source(spec: &str) -> Result<ConfigSource, String> {
    ConfigSource::parse(spec).map_err(|e| e.to_string())
}

/// Checks `--config` (a preset name or an existing file) and keeps it as given.
pub fn parse_config_spec(spec: &str) -> Result<String, String> {
    parse_config_source(spec).map(|_| spec.to_string())
}

/// Loads a model, printing on stderr each value the loader assumed from a convention.
pub fn load_model(
    spec: &str,
    config: Option<&ConfigSource>,
    device: &Device,
) -> anyhow::Result<(ClipModel, LoadedCheckpointInfo)> {
    let (model, info) = ClipModel::load_with_config(spec, config, device)
        .with_context(|| format!("cannot load model {spec}"))?;
    for notice in &info.notices {
        eprintln!("note: {notice}");
    }
    Ok((model, info))
}

/// Preprocesses image files into one `[n, 3, s, s]` batch.
pub fn load_images(
    preprocess: &ClipPreprocess,
    paths: &[std::path::PathBuf],
    device: &Device,
) -> anyhow::Result<Tensor> {
    let size = preprocess.image_size;
    let mut pixels = Vec::with_capacity(paths.len() * 3 * size * size);
    for path in paths {
        pixels.extend(preprocess.load(path)?);
    }
    Ok(Tensor::from_vec(pixels, (paths.len(), 3, size, size), device)?)
}

/// The template set of a zero-shot head on a dataset on disk or image files, when none is named.
pub const DATASET_TEMPLATES: &str = "openai_imagenet";

/// The template set of a zero-shot head on a ShiftWorld suite, when none is named.
pub const SUITE_TEMPLATES: &str = "shiftworld";

/// How a zero-shot head's prompts are chosen.
#[derive(clap::Args, Debug)]
pub struct PromptArgs {
    /// Prompt templates with a "{}" placeholder for the class name: a bundled set
    /// (openai_imagenet, iwildcam, fmow, simple, drm_iwildcam, drm_fmow, drm_imagenet,
    /// shiftworld) or a file with one template per line. Each class's prompt embeddings are
    /// averaged. [default: shiftworld on a ShiftWorld suite, otherwise openai_imagenet]
    #[arg(long, value_name = "NAME|FILE", conflicts_with = "descriptions")]
    pub templates: Option<String>,

    /// Use concept descriptions instead of templates: a JSON file in the DRM paper's formats
    /// (keyed by class name or index, or a list in class order; one sentence or a list of
    /// sentences per class) or, on a ShiftWorld suite, `shiftworld` (the classes' own core
    /// descriptions).
    #[arg(long, value_name = "FILE|NAME")]
    pub descriptions: Option<std::path::PathBuf>,
}

impl PromptArgs {
    /// Each class's prompts, and the name of the prompt set (for result rows); without
    /// --templates or --descriptions, the template set `default_templates`. A bundled
    /// ShiftWorld description set is resolved when `default_templates` is [`SUITE_TEMPLATES`]
    /// (a suite's head).
    pub fn prompts(
        &self,
        classes: &[String],
        default_templates: &str,
    ) -> anyhow::Result<(Vec<Vec<String>>, String)> {
        if let Some(path) = &self.descriptions {
            let name = path.to_string_lossy();
            let bundled =
                robustft::shiftworld::description_set(&name).filter(|_| default_templates == SUITE_TEMPLATES);
            if let Some(set) = bundled {
                return Ok((set, name.into_owned()));
            }
            let descriptions = robustft::prompts::ConceptDescriptions::load(path, classes)?;
            return Ok((descriptions.per_class().to_vec(), path.display().to_string()));
        }
        let name = self.templates.as_deref().unwrap_or(default_templates);
        let templates: Vec<String> = match robustft::prompts::template_set(name) {
            Some(set) => set.iter().map(|t| t.to_string()).collect(),
            None => robustft::prompts::load_templates(std::path::Path::new(name))?,
        };
        Ok((robustft::prompts::class_prompts(classes, &templates), name.to_string()))
    }
}

/// How a dataset directory is read (`--dataset DIR`).
#[derive(clap::Args, Debug)]
pub struct LayoutArgs {
    /// The layout of --dataset: manifest (manifest.csv + classes.txt), iwildcam (WILDS
    /// iwildcam_v2.0/ under DIR), fmow (WILDS fmow_v1.1/), imagenet (one directory per variant:
    /// imagenet, imagenet-v2, imagenet-sketch, imagenet-r, imagenet-a, objectnet).
    #[arg(long, default_value = "manifest", value_name = "FORMAT")]
    pub format: robustft::data::Layout,

    /// The splits to evaluate (comma-separated). [default: every manifest split; every WILDS
    /// split but train; every ImageNet variant present]
    #[arg(long, value_delimiter = ',', value_name = "SPLIT,...")]
    pub splits: Vec<String>,
}

/// A dataset on disk: its evaluated splits and the classes a head predicts over.
pub struct Dataset {
    pub splits: Vec<std::sync::Arc<robustft::data::Split>>,
    pub classes: Vec<String>,
}

impl LayoutArgs {
    /// Loads the evaluated splits of `dir`; each must share the head's classes or project onto
    /// them.
    pub fn load(&self, dir: &std::path::Path) -> anyhow::Result<Dataset> {
        let names = match self.splits.is_empty() {
            true => self.format.default_eval_splits(dir)?,
            false => self.splits.clone(),
        };
        let splits: Vec<robustft::data::Split> =
            names.iter().map(|name| self.format.load_split(dir, name)).collect::<Result<_, _>>()?;
        anyhow::ensure!(!splits.is_empty(), "the dataset {} has no splits", dir.display());
        let classes = self.format.head_classes(&splits);
        for split in &splits {
            let fits = match &split.projection {
                Some(projection) => projection.input_len() <= classes.len(),
                None => split.classes == classes,
            };
            anyhow::ensure!(
                fits,
                "{}: split `{}` has other classes than split `{}` ({} vs {})",
                dir.display(),
                split.name,
                splits[0].name,
                split.classes.len(),
                classes.len()
            );
        }
        Ok(Dataset { splits: splits.into_iter().map(std::sync::Arc::new).collect(), classes })
    }
}

/// Checks, before any work, that every given output file can be written.
pub fn check_write_targets(paths: &[Option<&std::path::Path>]) -> anyhow::Result<()> {
    for path in paths.iter().flatten() {
        robustft::error::check_writable(path)?;
    }
    Ok(())
}

/// Prints result rows as a table (or JSON lines) on stdout; a robustness row's method names
/// its perturbation (`ft [linf 2/255]`).
pub fn print_rows(rows: &[robustft::eval::evaluate::ResultRow], json: bool) -> anyhow::Result<()> {
    if json {
        for row in rows {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    println!(
        "{:<14} {:>6} {:<24} {:>6} {:>6} {:>8} {:>10} {:>6} {:>6}",
        "method", "alpha", "split", "top1", "top5", "f1_macro", "worst_grp", "ece", "n"
    );
    for row in rows {
        let m = &row.metrics;
        let worst = m.worst_group_acc.map_or("-".to_string(), |w| format!("{w:.3}"));
        let alpha = row.wiseft_alpha.map_or("-".to_string(), |a| format!("{a}"));
        let method = match &row.perturbation {
            None => row.method.clone(),
            Some(p) => format!("{} [{} {}]", row.method, p.threat, robustft::perturb::format_budget(p.eps)),
        };
        println!(
            "{:<14} {:>6} {:<24} {:>6.3} {:>6.3} {:>8.3} {:>10} {:>6.3} {:>6}",
            method, alpha, row.split, m.top1, m.top5, m.f1_macro, worst, m.ece, m.n
        );
    }
    Ok(())
}
