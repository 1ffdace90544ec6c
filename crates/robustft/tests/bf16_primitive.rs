//! bf16 in the primitive-op formulations (`robustft::kernels::reference`), the form every
//! kernel takes off the CPU (CUDA), run here on the CPU: the linear layer's and attention's
//! products cast both operands to bfloat16 and come back as f32 (`MatmulPrecision::Bf16`,
//! autocast-style). Checked against fp32 references within bf16's tolerance, above fp32's
//! level of error (bf16 is really used), against the fused CPU bf16 linear kernel (the same
//! rounded operands, an fp32 rather than a bf16-rounded product), and with gradients flowing
//! back through the casts; and the fused branch ends (`kernels::residual_linear`,
//! `kernels::layer_norm_linear`) against the chains of fused kernels they replace. A test binary of its own, because the precision is a process-wide
//! setting: every test here sets bf16, and the fp32 references are computed without the
//! setting (plain candle matmuls, and the fused attention kernel, whose products are fp32).

use candle_core::{DType, Device, Result, Tensor, Var};
use robustft::clip::config::Activation;
use robustft::clip::layers::causal_mask;
use robustft::kernels::{self, reference, set_matmul_precision, MatmulPrecision};
use robustft::rng::SplitMix64;

/// bf16 against fp32, relative to the largest magnitude of the reference: an operand rounded
/// to bfloat16 is off by up to 2⁻⁹ of itself, the product by up to 2⁻⁹ more. Measured on
/// these inputs: 4.2e-3 (linear), 5.5e-3 (its gradients), 6.6e-3 (attention), 4.5e-3 (its
/// gradients).
const BF16_TOLERANCE: f32 = 1e-2;

/// Below this error (relative, as above) the bf16 path was not taken: fp32 gives about 1e-7.
const FP32_LEVEL: f32 = 1e-4;

/// The primitive form against the fused CPU kernel, both on the same bf16 operands: the
/// primitive's product is rounded to bfloat16 (half a unit in the last place: at most 2⁻⁸ of
/// each element), and the two sum in different orders (1e-5 of the largest magnitude).
const ROUNDED_PRODUCT: f32 = 1.0 / 256.0;
const SUM_ORDER: f32 = 1e-5;

fn random(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let values: Vec<f32> = (0..shape.iter().product()).map(|_| scale * rng.normal()).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    assert_eq!(t.dtype(), DType::F32, "bf16 products come back as f32");
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// The output of `f` at `inputs` and the gradient of `Σ w ⊙ f(inputs)` (fixed random `w`)
/// with respect to each input.
fn value_and_grads(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors).unwrap();
    let weights = random(out.dims(), 99, 1.0);
    let grads = (&out * &weights).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = tensors.iter().map(|t| flat(grads.get(t).expect("every input gets a gradient"))).collect();
    (flat(&out), grads)
}

/// The largest deviation of `actual` from `expected`, relative to `expected`'s largest magnitude.
fn relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len());
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    actual.iter().zip(expected).fold(0f32, |m, (a, e)| m.max((a - e).abs())) / scale
}

/// `actual` is a bf16 computation of `expected` (fp32): within bf16's tolerance, and further
/// from it than fp32 rounding would be.
fn assert_bf16_of(actual: &[f32], expected: &[f32], what: &str) {
    let error = relative_error(actual, expected);
    assert!(error <= BF16_TOLERANCE, "{what}: {error} from fp32, beyond bf16's tolerance");
    assert!(error > FP32_LEVEL, "{what}: {error} from fp32, so bf16 was not used");
}

/// `x Wᵀ + b` in fp32 from candle's plain ops, whatever the process's precision.
fn fp32_linear(t: &[Tensor]) -> Result<Tensor> {
    let (x, weight, bias) = (&t[0], &t[1], &t[2]);
    let (rows, fan_in) = (x.elem_count() / x.dim(2)?, x.dim(2)?);
    let y = x.reshape((rows, fan_in))?.matmul(&weight.t()?)?;
    y.reshape((x.dim(0)?, x.dim(1)?, weight.dim(0)?))?.broadcast_add(bias)
}

fn linear_inputs() -> [Tensor; 3] {
    [random(&[4, 9, 96], 1, 1.0), random(&[40, 96], 2, 0.1), random(&[40], 3, 0.1)]
}

#[test]
fn bf16_primitive_linear_is_within_bf16_of_fp32_and_not_fp32() {
    set_matmul_precision(MatmulPrecision::Bf16);
    let inputs = linear_inputs();
    let (value, grads) = value_and_grads(|t| reference::linear(&t[0], &t[1], Some(&t[2])), &inputs);
    let (expected, expected_grads) = value_and_grads(fp32_linear, &inputs);
    assert_bf16_of(&value, &expected, "forward");
    assert_bf16_of(&grads[0], &expected_grads[0], "input gradient");
    assert_bf16_of(&grads[1], &expected_grads[1], "weight gradient");
    let bias_error = relative_error(&grads[2], &expected_grads[2]);
    assert!(bias_error <= BF16_TOLERANCE, "bias gradient: {bias_error} from fp32");
}

/// Both bf16 forms round the same operands (forward `x`, `W`; backward `g`, `W`, `x`) to
/// bfloat16; the primitive form also rounds each product to bfloat16 (compared without a
/// bias, which is added after that rounding).
#[test]
fn bf16_primitive_linear_agrees_with_the_fused_bf16_kernel_up_to_the_rounded_product() {
    set_matmul_precision(MatmulPrecision::Bf16);
    let [x, weight, _] = linear_inputs();
    let inputs = [x, weight];
    let (value, grads) = value_and_grads(|t| reference::linear(&t[0], &t[1], None), &inputs);
    let (fused, fused_grads) = value_and_grads(|t| kernels::linear(&t[0], &t[1], None), &inputs);
    assert_rounded_product_of(&value, &fused, "forward");
    assert_rounded_product_of(&grads[0], &fused_grads[0], "input gradient");
    assert_rounded_product_of(&grads[1], &fused_grads[1], "weight gradient");
}

/// Every element of `actual` is `expected`'s rounded to bfloat16, up to the order of the sums.
fn assert_rounded_product_of(actual: &[f32], expected: &[f32], what: &str) {
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let bound = ROUNDED_PRODUCT * e.abs() + SUM_ORDER * scale;
        assert!((a - e).abs() <= bound, "{what}: element {i} is {a}, the fused bf16 kernel's {e}");
    }
}

#[test]
fn bf16_primitive_attention_is_within_bf16_of_fp32_and_not_fp32() {
    set_matmul_precision(MatmulPrecision::Bf16);
    let (batch, tokens, width, heads) = (2, 13, 48, 4);
    let mask = causal_mask(tokens, &Device::Cpu).unwrap();
    for mask in [None, Some(&mask)] {
        let qkv = [random(&[batch, tokens, 3 * width], 4, 1.0)];
        let (value, grads) = value_and_grads(|t| reference::attention(&t[0], heads, mask), &qkv);
        // The fused CPU kernel's products are fp32 in either precision.
        let (expected, expected_grads) = value_and_grads(|t| kernels::attention(&t[0], heads, mask), &qkv);
        let what = if mask.is_some() { "causal attention" } else { "attention" };
        assert_bf16_of(&value, &expected, &format!("{what} forward"));
        assert_bf16_of(&grads[0], &expected_grads[0], &format!("{what} gradient"));
    }
}

/// The fused branch ends (`residual + f(x) Wᵀ + b` and `LN(x) Wᵀ + b`, each one node that
/// recomputes its activation or LayerNorm in the backward pass) round the same operands in
/// bf16 as the chains of fused kernels they replace, so values and gradients are the
/// chains' to the bit; and their products are bf16 ones (beyond fp32's level from fp32).
#[test]
fn bf16_branch_ends_equal_the_chained_fused_kernels_bit_for_bit() {
    set_matmul_precision(MatmulPrecision::Bf16);
    let [x, weight, bias] = linear_inputs();
    let zeros = Tensor::zeros(96, DType::F32, &Device::Cpu).unwrap();
    let quick_gelu = |x: &Tensor| reference::bias_activation(x, &zeros, Activation::QuickGelu);
    assert_bf16_bit_parity(
        |t| kernels::residual_linear(&t[0], &t[1], Some(&t[2]), &t[3], Some(Activation::QuickGelu)),
        |t| {
            let hidden = kernels::bias_activation(&t[0], &zeros, Activation::QuickGelu)?;
            kernels::bias_residual(&kernels::linear(&hidden, &t[1], None)?, &t[2], &t[3])
        },
        |t| &t[3] + fp32_linear(&[quick_gelu(&t[0])?, t[1].clone(), t[2].clone()])?,
        &[x.clone(), weight.clone(), bias.clone(), random(&[4, 9, 40], 5, 1.0)],
        "residual_linear",
    );
    let norm = [random(&[96], 6, 0.5), random(&[96], 7, 0.5)];
    assert_bf16_bit_parity(
        |t| kernels::layer_norm_linear(&t[0], (&t[3], &t[4], 1e-5), &t[1], Some(&t[2])),
        |t| kernels::linear(&kernels::layer_norm(&t[0], &t[3], &t[4], 1e-5)?, &t[1], Some(&t[2])),
        |t| fp32_linear(&[reference::layer_norm(&t[0], &t[3], &t[4], 1e-5)?, t[1].clone(), t[2].clone()]),
        &[x, weight, bias, norm[0].clone(), norm[1].clone()],
        "layer_norm_linear",
    );
}

/// `fused` equals `chained` to the bit at `inputs` (value and gradients), and its value is
/// further from `fp32`'s than fp32 rounding would be.
fn assert_bf16_bit_parity(
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    chained: impl Fn(&[Tensor]) -> Result<Tensor>,
    fp32: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    what: &str,
) {
    let (value, grads) = value_and_grads(fused, inputs);
    let (expected, expected_grads) = value_and_grads(chained, inputs);
    for (actual, expected) in std::iter::once((&value, &expected)).chain(grads.iter().zip(&expected_grads)) {
        let same_bits = actual.iter().zip(expected).all(|(a, e)| a.to_bits() == e.to_bits());
        assert!(same_bits, "{what}: the fused branch end differs from the chained kernels");
    }
    let (fp32_value, _) = value_and_grads(fp32, inputs);
    assert!(relative_error(&value, &fp32_value) > FP32_LEVEL, "{what}: the products were not bf16");
}
