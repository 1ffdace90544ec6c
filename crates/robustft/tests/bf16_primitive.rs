//! bf16 in the primitive-op formulations (`robustft::kernels::reference`), the form every
//! kernel takes off the CPU (CUDA), run here on the CPU: the linear layer's and attention's
//! products cast both operands to bfloat16 and come back as f32 (`MatmulPrecision::Bf16`,
//! autocast-style). Checked against fp32 references within bf16's tolerance, above fp32's
//! level of error (bf16 is really used), against the fused CPU bf16 linear kernel (the same
//! rounded operands, an fp32 rather than a bf16-rounded product), and with gradients flowing
//! back through the casts. The fused CPU attention kernel in bf16: within bf16's tolerance of
//! fp32, and equal to its products written out on rounded operands up to the order of the
//! sums. The fused branch ends (`kernels::residual_linear`, `kernels::layer_norm_linear`)
//! against the chains of fused kernels they replace; the whole-branch ops
//! (`kernels::normed_attention`, `kernels::mlp_residual`) against those chains with the
//! first linear layer's output kept in bfloat16. A test binary of its own, because the
//! precision is a process-wide setting: every test here sets bf16, and the fp32 references
//! are computed from candle's plain ops, which the setting does not touch.

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

/// The sizes of the attention tests: batch, tokens, width, heads (head width 16, so the scale
/// 1/4 is exact and the primitive form's scaling of `q` before rounding it changes nothing).
const ATTENTION: (usize, usize, usize, usize) = (2, 13, 64, 4);

/// Both forms of attention in bf16 (the primitive ops, and the fused CPU kernel), values and
/// gradients, with and without the causal mask.
fn for_both_attention_forms(check: impl Fn(&str, &(Vec<f32>, Vec<Vec<f32>>), Option<&Tensor>, &Tensor)) {
    let (batch, tokens, width, heads) = ATTENTION;
    let mask = causal_mask(tokens, &Device::Cpu).unwrap();
    let qkv = random(&[batch, tokens, 3 * width], 4, 1.0);
    for mask in [None, Some(&mask)] {
        let inputs = [qkv.clone()];
        let primitive = value_and_grads(|t| reference::attention(&t[0], heads, mask), &inputs);
        let fused = value_and_grads(|t| kernels::attention(&t[0], heads, mask), &inputs);
        let masked = if mask.is_some() { "causal " } else { "" };
        check(&format!("primitive {masked}attention"), &primitive, mask, &qkv);
        check(&format!("fused {masked}attention"), &fused, mask, &qkv);
    }
}

#[test]
fn bf16_attention_in_both_forms_is_within_bf16_of_fp32_and_not_fp32() {
    set_matmul_precision(MatmulPrecision::Bf16);
    for_both_attention_forms(|what, (value, grads), mask, qkv| {
        let (expected, expected_grads) =
            value_and_grads(|t| fp32_attention(&t[0], mask), std::slice::from_ref(qkv));
        assert_bf16_of(value, &expected, &format!("{what} forward"));
        assert_bf16_of(&grads[0], &expected_grads[0], &format!("{what} gradient"));
    });
}

/// Attention from candle's plain fp32 ops, whatever the process's precision.
fn fp32_attention(qkv: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (batch, tokens, width, heads) = ATTENTION;
    let [q, k, v] = [0, 1, 2].map(|part| heads_of(&qkv.narrow(2, part * width, width).unwrap()));
    let scores = (q.matmul(&k.t()?)? * (width as f64 / heads as f64).powf(-0.5))?;
    let probabilities = match mask {
        Some(mask) => kernels::masked_softmax_last_dim(&scores, mask)?,
        None => kernels::softmax_last_dim(&scores)?,
    };
    probabilities.matmul(&v)?.transpose(1, 2)?.reshape((batch, tokens, width))
}

/// `[b, t, width]` -> `[b, heads, t, width / heads]`, contiguous.
fn heads_of(t: &Tensor) -> Tensor {
    let (batch, tokens, width, heads) = ATTENTION;
    t.reshape((batch, tokens, heads, width / heads)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
}

/// `t`'s elements rounded to bfloat16, as f32.
fn rounded(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
}

/// The fused kernel's bf16 attention written out: every product's operands rounded to
/// bfloat16 and multiplied exactly with fp32 sums (candle's fp32 matmul of the rounded
/// values), the scores, softmax and its backward in fp32. Forward
/// `O = r(softmax(s · r(q) r(k)ᵀ + mask)) r(v)`; backward from `dO`: `dv = r(P)ᵀ r(dO)`,
/// `dP = r(dO) r(v)ᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dq = s · r(dS) r(k)`,
/// `dk = s · r(dS)ᵀ r(q)`. Returns `O` and the packed `d(qkv)`.
fn rounded_operand_attention(qkv: &Tensor, mask: Option<&Tensor>, dout: &Tensor) -> Result<(Tensor, Tensor)> {
    let (batch, tokens, width, heads) = ATTENTION;
    let scale = (width as f64 / heads as f64).powf(-0.5);
    let [q, k, v] = [0, 1, 2].map(|part| rounded(&heads_of(&qkv.narrow(2, part * width, width).unwrap())));
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let p = match mask {
        Some(mask) => kernels::masked_softmax_last_dim(&scores, mask)?,
        None => kernels::softmax_last_dim(&scores)?,
    };
    let merged = |t: Tensor| t.transpose(1, 2)?.reshape((batch, tokens, width));
    let out = merged(rounded(&p).matmul(&v)?)?;
    let dout = rounded(&heads_of(dout));
    let dv = rounded(&p).t()?.matmul(&dout)?;
    let dp = dout.matmul(&v.t()?)?;
    let ds = (&p * dp.broadcast_sub(&(&dp * &p)?.sum_keepdim(3)?)?)?;
    let ds = rounded(&ds);
    let dq = (ds.matmul(&k)? * scale)?;
    let dk = (ds.t()?.matmul(&q)? * scale)?;
    Ok((out, Tensor::cat(&[merged(dq)?, merged(dk)?, merged(dv)?], 2)?))
}

/// The fused kernel's bf16 attention rounds exactly the operands the written-out form does:
/// they differ by the order of the fp32 sums (measured below 1e-7 of the largest magnitude), far below
/// the distance of either from fp32 (above 1e-3, checked above).
const ATTENTION_SUM_ORDER: f32 = 1e-6;

#[test]
fn fused_bf16_attention_rounds_the_operands_of_every_product_and_nothing_else() {
    set_matmul_precision(MatmulPrecision::Bf16);
    let (batch, tokens, width, _) = ATTENTION;
    let dout = random(&[batch, tokens, width], 99, 1.0);
    for_both_attention_forms(|what, (value, grads), mask, qkv| {
        if what.starts_with("primitive") {
            return;
        }
        let (expected, expected_grad) = rounded_operand_attention(qkv, mask, &dout).unwrap();
        let value_error = relative_error(value, &flat(&expected));
        assert!(
            value_error <= ATTENTION_SUM_ORDER,
            "{what} forward: {value_error} from the written-out form"
        );
        let grad_error = relative_error(&grads[0], &flat(&expected_grad));
        assert!(grad_error <= ATTENTION_SUM_ORDER, "{what} gradient: {grad_error} from the written-out form");
    });
}

/// `t` rounded to bfloat16 and widened back, forward, and the same for its gradient backward
/// (candle's casts, whose backward casts the gradient).
fn rounded_both_ways(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::BF16)?.to_dtype(DType::F32)
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
    let value = assert_same_bits(fused, chained, inputs, &format!("{what} against the chained kernels"));
    let (fp32_value, _) = value_and_grads(fp32, inputs);
    assert!(relative_error(&value, &fp32_value) > FP32_LEVEL, "{what}: the products were not bf16");
}

/// In bf16 the whole-branch ops keep their first linear layer's output in bfloat16, as
/// autocast stores a linear layer's output: `normed_attention` and `mlp_residual` give the
/// values and gradients of their chained kernels with that output (and its gradient) rounded
/// to bfloat16, to the bit, and not those of the chain that keeps it in f32.
#[test]
fn bf16_whole_branch_ops_keep_the_first_layer_output_in_bfloat16() {
    set_matmul_precision(MatmulPrecision::Bf16);
    let (batch, tokens, width, heads) = ATTENTION;
    let x = random(&[batch, tokens, width], 1, 1.0);
    let norm = [random(&[width], 6, 0.5), random(&[width], 7, 0.5)];
    let qkv = [random(&[3 * width, width], 2, 0.1), random(&[3 * width], 3, 0.1)];
    let mask = causal_mask(tokens, &Device::Cpu).unwrap();
    for mask in [None, Some(&mask)] {
        let first =
            |t: &[Tensor]| kernels::layer_norm_linear(&t[0], (&t[1], &t[2], 1e-5), &t[3], Some(&t[4]));
        assert_kept_in_bf16(
            |t| kernels::normed_attention(&t[0], (&t[1], &t[2], 1e-5), (&t[3], Some(&t[4])), heads, mask),
            |t, rounding| kernels::attention(&rounding(&first(t)?)?, heads, mask),
            &[x.clone(), norm[0].clone(), norm[1].clone(), qkv[0].clone(), qkv[1].clone()],
            &format!("normed_attention, mask {}", mask.is_some()),
        );
    }
    let fc1 = [random(&[40, width], 8, 0.1), random(&[40], 9, 0.1)];
    let fc2 = [random(&[width, 40], 10, 0.1), random(&[width], 11, 0.1)];
    for activation in [Activation::QuickGelu, Activation::Gelu] {
        assert_kept_in_bf16(
            |t| {
                kernels::mlp_residual(
                    &t[0],
                    (&t[1], &t[2], 1e-5),
                    (&t[3], Some(&t[4])),
                    (&t[5], Some(&t[6])),
                    activation,
                )
            },
            |t, rounding| {
                let pre_activation =
                    kernels::layer_norm_linear(&t[0], (&t[1], &t[2], 1e-5), &t[3], Some(&t[4]))?;
                kernels::residual_linear(
                    &rounding(&pre_activation)?,
                    &t[5],
                    Some(&t[6]),
                    &t[0],
                    Some(activation),
                )
            },
            &[
                x.clone(),
                norm[0].clone(),
                norm[1].clone(),
                fc1[0].clone(),
                fc1[1].clone(),
                fc2[0].clone(),
                fc2[1].clone(),
            ],
            &format!("mlp_residual {activation:?}"),
        );
    }
}

/// `fused` equals `chained` with its intermediate rounded to bfloat16 both ways, to the bit,
/// and that differs (in values or gradients) from `chained` with the intermediate left in
/// f32. (Attention's values alone would not tell: its bf16 products round q, k and v anyway.)
fn assert_kept_in_bf16(
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    chained: impl Fn(&[Tensor], &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor>,
    inputs: &[Tensor],
    what: &str,
) {
    assert_same_bits(&fused, |t| chained(t, &rounded_both_ways), inputs, what);
    let rounded = value_and_grads(|t| chained(t, &rounded_both_ways), inputs);
    let unrounded = value_and_grads(|t| chained(t, &|h| Ok(h.clone())), inputs);
    assert_ne!(
        rounded, unrounded,
        "{what}: rounding the kept output changes nothing, so the test tells nothing"
    );
}

/// `f` and `g` give the same values and gradients at `inputs`, to the bit; returns the values.
fn assert_same_bits(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    g: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    what: &str,
) -> Vec<f32> {
    let (value, grads) = value_and_grads(f, inputs);
    let (expected, expected_grads) = value_and_grads(g, inputs);
    for (actual, expected) in std::iter::once((&value, &expected)).chain(grads.iter().zip(&expected_grads)) {
        let same_bits = actual.iter().zip(expected).all(|(a, e)| a.to_bits() == e.to_bits());
        assert!(same_bits, "{what}: not the same bits");
    }
    value
}
