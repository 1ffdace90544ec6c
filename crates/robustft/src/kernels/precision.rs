//! The precision of the transformer's matrix products, one setting for the whole process
//! like PyTorch's `torch.set_float32_matmul_precision`: `fp32` (the default), or `bf16`.
//!
//! In bf16 on the CPU (the fused f32 kernels), both operands of every product of the linear
//! kernel (forward `x Wᵀ`, and the backward's `g W` and `gᵀ x`) and of the attention kernel
//! (forward `q kᵀ` and `P v`, and the five products of its backward) are rounded to bfloat16
//! and the products are summed in fp32, on the CPU's AMX tiles or AVX512-BF16 dot products
//! where it has them, into fp32 outputs. Weights (the optimiser's master copy), LayerNorm,
//! softmax and losses stay fp32, as under PyTorch's CPU autocast. In training, the output of
//! each branch's first linear layer (the q/k/v projection, the MLP's pre-activation) is kept
//! for the backward pass in bfloat16, as autocast stores a linear layer's output
//! ([`super::normed_attention`], [`super::mlp_residual`]); the other activations stay fp32.
//!
//! Elsewhere (CUDA: the primitive-op formulations of [`super::reference`]) bf16 is PyTorch's
//! autocast for these products: the linear layers' and attention's `q kᵀ` and `P v` cast both
//! operands to bfloat16, multiply with fp32 sums, round the product to bfloat16 and cast it
//! back to fp32, forward and backward; the fp32 master weights and every other op are as
//! above.
//!
//! On the CPU, [`F32Kernel`] and [`Bf16Kernel`] say which kernel runs each precision's
//! products: the fastest measured on this kind of CPU, or the one an environment variable
//! names ([`KernelChoice`]).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use super::matmul_bf16::Bf16Kernel;

/// How the transformer's matrix products multiply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    /// fp32 products (candle's gemm, or this crate's kernel: [`F32Kernel`]).
    #[default]
    Fp32,
    /// Operands rounded to bfloat16, products summed in fp32.
    Bf16,
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the precision of every later linear-layer product in the process. Setting bf16 on a
/// CPU without bfloat16 instructions (the [`Bf16Kernel::Portable`] kernel) says once on the
/// terminal that fp32 is faster there.
pub fn set_matmul_precision(precision: MatmulPrecision) {
    PRECISION.store(precision as u8, Ordering::Relaxed);
    if precision == MatmulPrecision::Bf16 && Bf16Kernel::on_this_cpu() == Bf16Kernel::Portable {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| eprintln!("{PORTABLE_BF16_NOTE}"));
    }
}

/// What [`set_matmul_precision`] says when bf16 is set on a CPU without bfloat16 instructions.
pub const PORTABLE_BF16_NOTE: &str =
    "note: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX-BF16): \
     bf16 products on the CPU round their operands and run on an f32 kernel, no faster than \
     fp32 (0.7-1.0x of its speed); fp32 is the faster setting here";

/// The precision set by [`set_matmul_precision`] (fp32 until then).
pub fn matmul_precision() -> MatmulPrecision {
    match PRECISION.load(Ordering::Relaxed) {
        0 => MatmulPrecision::Fp32,
        _ => MatmulPrecision::Bf16,
    }
}

impl MatmulPrecision {
    pub fn is_fp32(&self) -> bool {
        *self == MatmulPrecision::Fp32
    }

    /// The CPU kernel of the linear layers' products at this precision: in fp32 the f32
    /// kernel this CPU runs (`avx512f`, `avx2_fma` or `gemm`: [`F32Kernel`]), in bf16 the bf16
    /// kernel (`amx`, `avx512_bf16` or `portable`: [`Bf16Kernel`]).
    pub fn cpu_kernel(self) -> &'static str {
        match self {
            MatmulPrecision::Fp32 => F32Kernel::on_this_cpu().name(),
            MatmulPrecision::Bf16 => Bf16Kernel::on_this_cpu().name(),
        }
    }

    /// The name used in recipes and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            MatmulPrecision::Fp32 => "fp32",
            MatmulPrecision::Bf16 => "bf16",
        }
    }
}

/// The kernel that runs f32 products on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F32Kernel {
    /// This crate's packed kernel on AVX-512F vectors (`matmul_f32`).
    Avx512f,
    /// This crate's packed kernel on AVX2 vectors with FMA (`matmul_f32`).
    Avx2Fma,
    /// candle's `gemm` crate.
    Gemm,
}

impl F32Kernel {
    /// The kernel f32 products run on (chosen once): the fastest measured on this kind of
    /// CPU ([`KernelChoice::available`]), or the one named by the environment variable
    /// `ROBUSTFT_F32_KERNEL` (`avx512f`, `avx2_fma` or `gemm`) where it runs, to compare
    /// kernels on one machine.
    pub fn on_this_cpu() -> Self {
        static KERNEL: OnceLock<F32Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| Self::chosen(std::env::var(Self::VARIABLE).ok().as_deref()))
    }

    /// The vectors of this crate's kernel, or none for gemm.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn width(self) -> Option<super::matmul_f32::Width> {
        use super::matmul_f32::Width;
        match self {
            F32Kernel::Avx512f => Some(Width::Avx512),
            F32Kernel::Avx2Fma => Some(Width::Avx2),
            F32Kernel::Gemm => None,
        }
    }
}

impl KernelChoice for F32Kernel {
    const VARIABLE: &'static str = "ROBUSTFT_F32_KERNEL";
    const ALL: &'static [Self] = &[F32Kernel::Avx512f, F32Kernel::Avx2Fma, F32Kernel::Gemm];

    /// The fastest as measured (BENCHMARKS.md): this crate's AVX2 kernel on CPUs without
    /// AVX-512F (Zen 3: its products 1.11× MKL's, gemm's 0.92–0.99×); gemm on CPUs with
    /// AVX-512F, where this crate's AVX-512F kernel is level with it (Ice Lake: "Ice Lake: an
    /// f32 kernel on AVX-512"; Zen 4 unmeasured), and on other architectures.
    fn available() -> Vec<Self> {
        let mut kernels = own_f32_kernels_here();
        let gemm_first = kernels.first() == Some(&F32Kernel::Avx512f);
        kernels.insert(if gemm_first { 0 } else { kernels.len() }, F32Kernel::Gemm);
        kernels
    }

    fn name(self) -> &'static str {
        match self {
            F32Kernel::Avx512f => "avx512f",
            F32Kernel::Avx2Fma => "avx2_fma",
            F32Kernel::Gemm => "gemm",
        }
    }
}

/// This crate's f32 kernels that this CPU runs, the widest first.
fn own_f32_kernels_here() -> Vec<F32Kernel> {
    #[cfg(target_arch = "x86_64")]
    let kernels = [F32Kernel::Avx512f, F32Kernel::Avx2Fma]
        .into_iter()
        .filter(|kernel| kernel.width().is_some_and(|width| width.runs_here()))
        .collect();
    #[cfg(not(target_arch = "x86_64"))]
    let kernels = Vec::new();
    kernels
}

/// A family of kernels for one kind of product, of which this CPU runs some: one is chosen
/// per process, the fastest unless an environment variable names another.
pub trait KernelChoice: Copy + PartialEq + 'static {
    /// The environment variable that names the kernel to run instead of the fastest.
    const VARIABLE: &'static str;
    /// Every kernel of the family.
    const ALL: &'static [Self];

    /// The kernels this CPU runs, fastest first.
    fn available() -> Vec<Self>;

    /// The name in benchmark reports and in [`KernelChoice::VARIABLE`].
    fn name(self) -> &'static str;

    /// The kernel named `requested` where this CPU runs it, else the fastest (saying so on
    /// the terminal when a request is not followed).
    fn chosen(requested: Option<&str>) -> Self {
        let available = Self::available();
        let fastest = available[0];
        let Some(name) = requested else { return fastest };
        if let Some(&kernel) = available.iter().find(|kernel| kernel.name() == name) {
            return kernel;
        }
        let reason = if Self::ALL.iter().any(|kernel| kernel.name() == name) {
            "this CPU does not run it".to_string()
        } else {
            let names: Vec<&str> = Self::ALL.iter().map(|kernel| kernel.name()).collect();
            format!("not a kernel ({})", names.join(", "))
        };
        eprintln!("warning: {}={name}: {reason}; using {}", Self::VARIABLE, fastest.name());
        fastest
    }
}

#[cfg(test)]
mod tests {
    use super::{F32Kernel, KernelChoice};

    /// A kernel this CPU runs is chosen when named; an unknown name or none gives the fastest
    /// measured: gemm where the CPU has AVX-512F, this crate's AVX2 kernel where it has only
    /// AVX2 and FMA.
    #[test]
    fn a_named_f32_kernel_is_chosen_where_the_cpu_runs_it() {
        let fastest = F32Kernel::available()[0];
        assert_eq!(F32Kernel::chosen(None), fastest);
        assert_eq!(F32Kernel::chosen(Some("gemm")), F32Kernel::Gemm);
        assert_eq!(F32Kernel::chosen(Some("avx")), fastest);
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let avx512 = avx2 && is_x86_feature_detected!("avx512f");
            let expected = if avx512 || !avx2 { F32Kernel::Gemm } else { F32Kernel::Avx2Fma };
            assert_eq!(fastest, expected);
            if avx512 {
                assert_eq!(F32Kernel::chosen(Some("avx512f")), F32Kernel::Avx512f);
            }
            if avx2 {
                assert_eq!(F32Kernel::chosen(Some("avx2_fma")), F32Kernel::Avx2Fma);
            }
        }
    }
}
