//! Throughput benchmark of the CLIP image tower, the workload every method's training and
//! evaluation is dominated by: inference (`encode_image`, no gradient) or a full training step
//! (forward, a 1000-class linear head with cross-entropy, backward, AdamW over the image tower
//! and the head), with fp32 or bf16 matmuls ([`MatmulPrecision`]). `bench/pytorch_bench.py`
//! runs the identical workload in PyTorch (bf16: under CPU autocast) so the two can be compared
//! side by side (`bench/run.sh`); every report names the CPU and its vector, bf16 and AMX
//! features ([`CpuInfo`]), since speed ratios hold only on one CPU.
//!
//! [`method_step_ms`] times the training steps of a whole method (objective + constraint) from a
//! recipe, to measure a method's overhead over plain fine-tuning on the same data.
//! [`time_products`] times the matrix products alone: the forward `x Wᵀ` of each linear layer
//! of an image-tower block, through the linear kernel the model runs, and the block's attention
//! (`q kᵀ` and `P v` of every head, the softmax between), in GFLOP/s, beside the CPU's
//! multiply-add ceiling measured in the same run ([`peak`]).

pub mod peak;

use std::time::Instant;

use candle_core::{Device, Tensor, Var};

use crate::clip::config::VisionConfig;
use crate::clip::{ClipConfig, ClipModel};
use crate::kernels::{attention, attention_kernel, linear, set_matmul_precision, MatmulPrecision};
use crate::losses::cross_entropy;
use crate::optim::{default_groups, AdamW, AdamWConfig};
use crate::rng::SplitMix64;

/// Classes of the benchmark's linear head.
const HEAD_CLASSES: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchMode {
    Train,
    Infer,
}

/// What one benchmark runs.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The architecture's name, for the report.
    pub arch: String,
    pub config: ClipConfig,
    pub mode: BenchMode,
    pub batch: usize,
    /// Timed steps, after `warmup` untimed ones.
    pub steps: usize,
    pub warmup: usize,
    pub precision: MatmulPrecision,
}

/// One benchmark result, printed as a JSON line.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    pub arch: String,
    pub mode: BenchMode,
    pub batch: usize,
    pub steps: usize,
    pub precision: MatmulPrecision,
    /// The linear layers' CPU kernel ([`MatmulPrecision::cpu_kernel`]).
    pub kernel: &'static str,
    pub images_per_s: f64,
    pub peak_rss_mb: f64,
    pub engine: &'static str,
    /// The threads of the pool the work ran on (the CLI's `--threads`, else
    /// `RAYON_NUM_THREADS`, else every logical CPU).
    pub threads: usize,
    /// The CPU it ran on.
    pub cpu: CpuInfo,
}

/// The CPU a benchmark ran on: its model name, its family and model numbers (a virtual
/// machine's model name may hide the generation: `AMD EPYC` is family 25 for Zen 3 and Zen 4,
/// 26 for Zen 5), its cores and logical CPUs (two vCPUs may be two cores, or one core's two
/// hyper-threads sharing its vector units and caches), and the features its kernels' speed
/// depends on.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CpuInfo {
    pub model: String,
    /// `cpu family` in `/proc/cpuinfo` (`None` where it is not reported).
    pub family: Option<u32>,
    /// `model` in `/proc/cpuinfo`, the model number within the family.
    pub model_number: Option<u32>,
    /// `cpu cores` in `/proc/cpuinfo`: the physical cores of the first processor's package.
    pub cores: Option<u32>,
    /// `siblings` in `/proc/cpuinfo`: the logical CPUs of that package (twice the cores where
    /// each core runs two hyper-threads).
    pub logical_cpus: Option<u32>,
    /// Which of [`REPORTED_FEATURES`] the CPU has.
    pub features: Vec<String>,
}

/// The CPU features a benchmark reports, as Linux's `/proc/cpuinfo` flags name them: the
/// vector units of the fp32 kernels, the bf16 dot products, and the AMX tiles.
pub const REPORTED_FEATURES: [&str; 7] =
    ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"];

impl CpuInfo {
    /// This machine's CPU, from `/proc/cpuinfo` (model `unknown` and no features elsewhere).
    pub fn detect() -> Self {
        Self::parse(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
    }

    /// The first processor's `model name`, `cpu family`, `model`, `cpu cores`, `siblings` and
    /// flags in `/proc/cpuinfo` text.
    pub fn parse(cpuinfo: &str) -> Self {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
        };
        let flags = field("flags").unwrap_or_default();
        let flags: Vec<&str> = flags.split_whitespace().collect();
        let features =
            REPORTED_FEATURES.iter().filter(|f| flags.contains(f)).map(|f| f.to_string()).collect();
        let number = |name: &str| field(name).and_then(|value| value.parse().ok());
        Self {
            model: field("model name").unwrap_or_else(|| "unknown".into()),
            family: number("cpu family"),
            model_number: number("model"),
            cores: number("cpu cores"),
            logical_cpus: number("siblings"),
            features,
        }
    }

    /// `AMD EPYC, family 25 model 17, 2 cores (avx2, fma, avx512f, avx512_bf16)`, or `…, 1 core
    /// × 2 threads (…)` where the cores run hyper-threads.
    pub fn summary(&self) -> String {
        let numbers = match (self.family, self.model_number) {
            (Some(family), Some(model)) => format!(", family {family} model {model}"),
            _ => String::new(),
        };
        let cores = match (self.cores, self.logical_cpus) {
            (Some(cores), Some(logical)) if logical > cores && cores > 0 && logical % cores == 0 => {
                format!(", {} × {}", counted(cores, "core"), counted(logical / cores, "thread"))
            }
            (Some(cores), _) => format!(", {}", counted(cores, "core")),
            (None, _) => String::new(),
        };
        format!("{}{numbers}{cores} ({})", self.model, self.features.join(", "))
    }
}

/// `1 core`, `2 threads`: a count and its noun, plural unless the count is 1.
pub fn counted(count: impl Into<u64>, noun: &str) -> String {
    let count = count.into();
    format!("{count} {noun}{}", if count == 1 { "" } else { "s" })
}

/// Runs the workload's untimed and timed iterations on a randomly initialised model (the
/// matmul precision is set for the process).
pub fn run(workload: &Workload, device: &Device) -> crate::Result<BenchReport> {
    let Workload { batch, steps, mode, .. } = *workload;
    set_matmul_precision(workload.precision);
    let model = ClipModel::random(workload.config.clone(), 0, device)?;
    let pixels = random_tensor(
        &[batch, 3, model.config.vision.image_size, model.config.vision.image_size],
        1,
        device,
    )?;
    let mut step: Box<dyn FnMut() -> candle_core::Result<()>> = match mode {
        BenchMode::Infer => Box::new(|| model.no_grad().encode_image(&pixels).map(|_| ())),
        BenchMode::Train => train_step(&model, &pixels, device)?,
    };
    for _ in 0..workload.warmup {
        step()?;
    }
    let start = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(BenchReport {
        arch: workload.arch.clone(),
        mode,
        batch,
        steps,
        precision: workload.precision,
        kernel: workload.precision.cpu_kernel(),
        images_per_s: (batch * steps) as f64 / seconds,
        peak_rss_mb: peak_rss_mb(),
        engine: "robustft",
        threads: rayon::current_num_threads(),
        cpu: CpuInfo::detect(),
    })
}

fn train_step<'a>(
    model: &'a ClipModel,
    pixels: &'a Tensor,
    device: &Device,
) -> crate::Result<Box<dyn FnMut() -> candle_core::Result<()> + 'a>> {
    let batch = pixels.dim(0)?;
    let head =
        Var::from_tensor(&(random_tensor(&[HEAD_CLASSES, model.config.embed_dim], 2, device)? * 0.02)?)?;
    let mut rng = SplitMix64::new(3);
    let labels: Vec<u32> = (0..batch).map(|_| (rng.next_u64() % HEAD_CLASSES as u64) as u32).collect();
    let labels = Tensor::new(labels, device)?;
    let mut params = default_groups(model.image_tower_params());
    params.push(("head.weight".into(), head.clone(), true));
    let mut optimizer =
        AdamW::new(params, AdamWConfig { lr: 1e-5, weight_decay: 0.1, ..Default::default() })?;
    Ok(Box::new(move || {
        let logits = model.encode_image(pixels)?.matmul(&head.as_tensor().t()?)?;
        let grads = cross_entropy(&logits, &labels)?.backward()?;
        optimizer.step(&grads)
    }))
}

fn random_tensor(shape: &[usize], seed: u64, device: &Device) -> candle_core::Result<Tensor> {
    let mut rng = SplitMix64::new(seed);
    let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.normal()).collect();
    Tensor::from_vec(values, shape, device)
}

/// One timed linear-layer product `x Wᵀ` (`x`: `rows × fan_in`, `W`: `fan_out × fan_in`), or
/// one attention (`layer` = `attention`: `rows` queries, each against `fan_out` = tokens keys
/// of its own image, over `fan_in` = width columns summed over the heads).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProductReport {
    /// The layer: `qkv`, `out` (attention's output projection), `fc1`, `fc2` or `attention`.
    pub layer: &'static str,
    pub rows: usize,
    pub fan_out: usize,
    pub fan_in: usize,
    pub precision: MatmulPrecision,
    /// The products' kernel ([`MatmulPrecision::cpu_kernel`]; attention's, [`attention_kernel`]).
    pub kernel: &'static str,
    /// The products' floating-point operations per call, `2 · rows · fan_out · fan_in` (twice
    /// that for attention's two products), over the mean time of one call.
    pub gflops: f64,
    /// The threads of the pool the products ran on.
    pub threads: usize,
    /// GFLOP/s of independent multiply-adds on those threads, the higher of two measurements,
    /// before and after the products ([`peak::fma_peak_gflops`]; `None` off the CPU or without
    /// AVX2 and FMA).
    pub fma_peak_gflops: Option<f64>,
    pub cpu: CpuInfo,
}

impl ProductReport {
    /// The products, in words: `x Wᵀ 3200×2304×768`, or `attention q kᵀ and P v 3200×50×768`.
    pub fn products(&self) -> String {
        let what = if self.layer == "attention" { "q kᵀ and P v" } else { "x Wᵀ" };
        format!("{what} {}×{}×{}", self.rows, self.fan_out, self.fan_in)
    }
}

/// The forward products of one image-tower block at `batch` images (`rows` = batch × tokens):
/// each linear layer's through [`linear`], then the attention through [`attention`], in
/// `precision`, each run once untimed, then timed over `reps` runs.
pub fn time_products(
    vision: &VisionConfig,
    batch: usize,
    precision: MatmulPrecision,
    reps: usize,
    device: &Device,
) -> candle_core::Result<Vec<ProductReport>> {
    set_matmul_precision(precision);
    let (tokens, width, mlp) = (vision.tokens(), vision.width, vision.mlp_dim);
    let rows = batch * tokens;
    let layers = [("qkv", 3 * width, width), ("out", width, width), ("fc1", mlp, width), ("fc2", width, mlp)];
    let (kernel, threads, cpu) = (precision.cpu_kernel(), rayon::current_num_threads(), CpuInfo::detect());
    let measure_peak = || if device.is_cpu() { peak::fma_peak_gflops() } else { None };
    let peak_before = measure_peak();
    let mut timings = Vec::new();
    for (i, (layer, fan_out, fan_in)) in layers.into_iter().enumerate() {
        let x = random_tensor(&[rows, fan_in], 10 + i as u64, device)?;
        let weight = random_tensor(&[fan_out, fan_in], 20 + i as u64, device)?;
        let seconds = seconds_per_call(reps, || linear(&x, &weight, None).map(drop))?;
        timings.push((layer, fan_out, fan_in, seconds));
    }
    let qkv = random_tensor(&[batch, tokens, 3 * width], 30, device)?;
    let seconds = seconds_per_call(reps, || attention(&qkv, vision.heads, None).map(drop))?;
    timings.push(("attention", tokens, width, seconds));
    let fma_peak_gflops = peak_before.zip(measure_peak()).map(|(before, after)| before.max(after));
    let report = |(layer, fan_out, fan_in, seconds): (&'static str, usize, usize, f64)| {
        let flops = if layer == "attention" { 4.0 } else { 2.0 } * (rows * fan_out * fan_in) as f64;
        let gflops = flops / seconds / 1e9;
        let cpu = cpu.clone();
        let kernel = if layer == "attention" { attention_kernel(precision) } else { kernel };
        ProductReport {
            layer,
            rows,
            fan_out,
            fan_in,
            precision,
            kernel,
            gflops,
            threads,
            fma_peak_gflops,
            cpu,
        }
    };
    Ok(timings.into_iter().map(report).collect())
}

/// The mean wall time of `reps` calls of `call` (at least one), after one untimed call.
fn seconds_per_call(reps: usize, call: impl Fn() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    call()?;
    let start = Instant::now();
    for _ in 0..reps {
        call()?;
    }
    Ok(start.elapsed().as_secs_f64() / reps.max(1) as f64)
}

/// The process's peak resident set size (`VmHWM`), in MiB; 0 where /proc is unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Wall time (ms) of each of the first `steps` training steps of `recipe`, run in `out`
/// (interrupted after `steps`: nothing is evaluated).
pub fn method_step_ms(
    recipe: crate::recipe::Recipe,
    steps: u64,
    out: &std::path::Path,
) -> crate::Result<Vec<f64>> {
    let experiment = crate::experiment::Experiment::resolve(recipe, &Device::Cpu)?;
    let settings = crate::experiment::RunSettings {
        out: out.to_path_buf(),
        resume: false,
        force: true,
        stop_after: Some(steps),
    };
    let batch = experiment.recipe.train.batch_size as f64;
    let mut times = Vec::new();
    experiment.run(&settings, &mut |event| {
        if let crate::experiment::Event::Step(report) = event {
            times.push(1000.0 * batch / report.images_per_s);
        }
    })?;
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_products_are_those_of_one_image_tower_block() {
        let vision = crate::pretrain::shiftworld_model().vision;
        let reports = time_products(&vision, 3, MatmulPrecision::Fp32, 1, &Device::Cpu).unwrap();
        let shapes: Vec<_> = reports.iter().map(|r| (r.layer, r.rows, r.fan_out, r.fan_in)).collect();
        let (t, w, mlp) = (vision.tokens(), vision.width, vision.mlp_dim);
        let rows = 3 * t;
        assert_eq!(
            shapes,
            [
                ("qkv", rows, 3 * w, w),
                ("out", rows, w, w),
                ("fc1", rows, mlp, w),
                ("fc2", rows, w, mlp),
                ("attention", rows, t, w)
            ]
        );
        assert!(reports.iter().all(|r| r.gflops.is_finite() && r.gflops > 0.0), "{reports:?}");
        #[cfg(target_arch = "x86_64")]
        let has_fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let has_fma = false;
        let peaks: Vec<Option<f64>> = reports.iter().map(|r| r.fma_peak_gflops).collect();
        assert!(peaks.iter().all(|p| *p == peaks[0]), "one peak, measured once: {peaks:?}");
        assert_eq!(peaks[0].is_some(), has_fma, "{peaks:?}");
    }

    #[test]
    fn the_cpu_model_and_its_reported_features_are_read_from_cpuinfo() {
        let cpuinfo = "processor\t: 0\ncpu family\t: 6\nmodel\t\t: 143\n\
                       model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n\
                       siblings\t: 2\ncpu cores\t: 1\n\
                       flags\t\t: fpu avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8\n\n\
                       processor\t: 1\nmodel name\t: other\n";
        let cpu = CpuInfo::parse(cpuinfo);
        assert_eq!(cpu.model, "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz");
        assert_eq!((cpu.family, cpu.model_number), (Some(6), Some(143)));
        assert_eq!((cpu.cores, cpu.logical_cpus), (Some(1), Some(2)));
        assert_eq!(
            cpu.features,
            ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"]
        );
        assert_eq!(
            cpu.summary(),
            "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz, family 6 model 143, 1 core × 2 threads \
             (avx2, fma, avx512f, avx512_bf16, amx_tile, amx_bf16, amx_int8)"
        );
        let amd = CpuInfo::parse(
            "cpu family : 25\nmodel : 17\nmodel name : AMD EPYC\nsiblings : 2\ncpu cores : 2\n\
             flags : avx2 fma avx512f avx512_bf16\n",
        );
        assert_eq!(amd.summary(), "AMD EPYC, family 25 model 17, 2 cores (avx2, fma, avx512f, avx512_bf16)");
        let unnumbered = CpuInfo::parse("model name : AMD EPYC 9B14\nflags : avx2\n");
        assert_eq!(unnumbered.summary(), "AMD EPYC 9B14 (avx2)");
        let unknown = CpuInfo {
            model: "unknown".into(),
            family: None,
            model_number: None,
            cores: None,
            logical_cpus: None,
            features: Vec::new(),
        };
        assert_eq!(CpuInfo::parse(""), unknown);
    }
}
