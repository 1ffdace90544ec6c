//! Parity of the fused CPU kernels (`robustft::kernels`) with their primitive-op formulations
//! (`robustft::kernels::reference`): forward values and the gradients of every input (candle
//! backprop of a randomly weighted sum of the output) on awkward shapes, on both sides of the
//! kernels' serial/parallel threshold, including masked softmax with `-inf` entries. Also the
//! backward pass they run under (the vendored candle-core stores a tensor's first gradient and
//! adds the later ones) against gradients worked by hand.

use candle_core::{DType, Device, Result, Tensor, Var, D};
use robustft::clip::config::Activation;
use robustft::clip::layers::causal_mask;
use robustft::kernels::{self, reference, MatmulPrecision};
use robustft::rng::SplitMix64;

/// Largest deviation allowed, relative to the largest magnitude of the reference or 1,
/// whichever is larger (inputs and loss weights are O(1), so values far below 1, such as a
/// GELU slope near its zero where two O(1) terms cancel, are held to 1e-5 absolute).
const TOLERANCE: f32 = 1e-5;

/// Row counts and widths that exercise tails of the 16-lane sums, single rows and columns,
/// CLIP's widths, and blocks large enough to be split across threads (50 × 768, 256 × 129).
const ROWS: [usize; 5] = [1, 3, 17, 50, 256];
const WIDTHS: [usize; 5] = [1, 7, 64, 129, 768];

fn shapes() -> impl Iterator<Item = Vec<usize>> {
    let matrices = ROWS.into_iter().flat_map(|r| WIDTHS.into_iter().map(move |w| vec![r, w]));
    matrices.chain([vec![2, 25, 64], vec![4, 3, 17, 17]])
}

fn random(shape: &[usize], seed: u64, scale: f32, offset: f32) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let values: Vec<f32> = (0..shape.iter().product()).map(|_| offset + scale * rng.normal()).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// The output of `f` at `inputs` and the gradients of `Σ w ⊙ f(inputs)` (random `w`) for each.
fn value_and_grads(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors).unwrap();
    let weights = random(out.dims(), 99, 1.0, 0.0);
    let grads = (&out * &weights).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = tensors.iter().map(|t| flat(grads.get(t).expect("every input gets a gradient"))).collect();
    (flat(&out), grads)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let scale = expected.iter().filter(|v| v.is_finite()).fold(1f32, |m, v| m.max(v.abs()));
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let ok = if e.is_finite() { (a - e).abs() <= TOLERANCE * scale } else { a.to_bits() == e.to_bits() };
        assert!(ok, "{what}: element {i} is {a}, reference {e} (scale {scale})");
    }
}

/// Compares `fused` with `unfused` at `inputs`: outputs and every input's gradient.
fn assert_parity(
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    unfused: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    what: &str,
) {
    let (value, grads) = value_and_grads(fused, inputs);
    let (expected_value, expected_grads) = value_and_grads(unfused, inputs);
    assert_close(&value, &expected_value, &format!("{what} forward"));
    for (i, (g, e)) in grads.iter().zip(&expected_grads).enumerate() {
        assert_close(g, e, &format!("{what} gradient of input {i}"));
    }
}

#[test]
fn layer_norm_matches_primitive_ops() {
    for (seed, shape) in shapes().enumerate() {
        let width = *shape.last().unwrap();
        // An offset mean keeps the two-pass variance honest (a one-pass E[x²] − E[x]² would lose digits).
        let inputs = [
            random(&shape, seed as u64, 2.0, 3.0),
            random(&[width], 1000 + seed as u64, 0.5, 1.0),
            random(&[width], 2000 + seed as u64, 0.5, 0.0),
        ];
        assert_parity(
            |t| kernels::layer_norm(&t[0], &t[1], &t[2], 1e-5),
            |t| reference::layer_norm(&t[0], &t[1], &t[2], 1e-5),
            &inputs,
            &format!("layer_norm {shape:?}"),
        );
    }
}

#[test]
fn softmax_matches_primitive_ops() {
    for (seed, shape) in shapes().enumerate() {
        let inputs = [random(&shape, seed as u64, 3.0, 0.0)];
        assert_parity(
            |t| kernels::softmax_last_dim(&t[0]),
            |t| reference::softmax_last_dim(&t[0]),
            &inputs,
            &format!("softmax {shape:?}"),
        );
    }
}

#[test]
fn causally_masked_softmax_matches_primitive_ops() {
    for (seed, (batch, t)) in [(1, 1), (3, 7), (2, 17), (8, 77), (64, 17)].into_iter().enumerate() {
        let mask = causal_mask(t, &Device::Cpu).unwrap();
        let scores = random(&[batch, 4, t, t], seed as u64, 3.0, 0.0);
        assert_parity(
            |x| kernels::masked_softmax_last_dim(&x[0], &mask),
            |x| reference::masked_softmax_last_dim(&x[0], &mask),
            &[scores],
            &format!("causal softmax [{batch}, 4, {t}, {t}]"),
        );
    }
}

#[test]
fn masked_softmax_gives_zero_probability_to_minus_infinity_entries() {
    let mask = causal_mask(5, &Device::Cpu).unwrap();
    let probabilities = kernels::masked_softmax_last_dim(&random(&[2, 5, 5], 3, 1.0, 0.0), &mask).unwrap();
    let rows: Vec<Vec<Vec<f32>>> = probabilities.to_vec3().unwrap();
    for row in rows.iter().flatten() {
        let total: f32 = row.iter().sum();
        assert!((total - 1.0).abs() < 1e-6, "row {row:?} sums to {total}");
    }
    for (i, row) in rows[1].iter().enumerate() {
        assert!(row[i + 1..].iter().all(|&p| p == 0.0), "row {i} attends to the future: {row:?}");
        assert!(row[..=i].iter().all(|&p| p > 0.0), "row {i} ignores the past: {row:?}");
    }
}

#[test]
fn masked_softmax_passes_gradients_to_a_trainable_mask() {
    for (seed, shape) in [vec![1, 3, 3], vec![5, 17, 17], vec![2, 3, 50, 129]].into_iter().enumerate() {
        let mask_shape = &shape[shape.len() - 2..];
        let inputs = [random(&shape, seed as u64, 2.0, 0.0), random(mask_shape, 50 + seed as u64, 1.0, 0.0)];
        assert_parity(
            |t| kernels::masked_softmax_last_dim(&t[0], &t[1]),
            |t| reference::masked_softmax_last_dim(&t[0], &t[1]),
            &inputs,
            &format!("masked softmax {shape:?}"),
        );
    }
}

#[test]
fn masked_softmax_rejects_a_mask_of_the_wrong_shape() {
    let scores = random(&[2, 4, 4], 1, 1.0, 0.0);
    let err = kernels::masked_softmax_last_dim(&scores, &causal_mask(3, &Device::Cpu).unwrap()).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

#[test]
fn bias_activation_matches_primitive_ops() {
    for activation in [Activation::QuickGelu, Activation::Gelu] {
        for (seed, shape) in shapes().enumerate() {
            let width = *shape.last().unwrap();
            let inputs =
                [random(&shape, seed as u64, 2.0, 0.0), random(&[width], 500 + seed as u64, 1.0, 0.0)];
            assert_parity(
                |t| kernels::bias_activation(&t[0], &t[1], activation),
                |t| reference::bias_activation(&t[0], &t[1], activation),
                &inputs,
                &format!("bias_activation {activation:?} {shape:?}"),
            );
        }
    }
}

/// Without gradients the activation is written over the pre-activations' own storage, with the
/// fused kernel's values to the bit; a tracked input keeps its values and gets its gradients.
#[test]
fn bias_activation_in_place_overwrites_only_untracked_inputs() {
    for activation in [Activation::QuickGelu, Activation::Gelu] {
        for (seed, shape) in shapes().enumerate() {
            let what = format!("bias_activation_in_place {activation:?} {shape:?}");
            let width = *shape.last().unwrap();
            let (x, bias) =
                (random(&shape, seed as u64, 2.0, 0.0), random(&[width], 700 + seed as u64, 1.0, 0.0));
            let expected = flat(&kernels::bias_activation(&x, &bias, activation).unwrap());
            let fresh = x.copy().unwrap();
            let out = kernels::bias_activation_in_place(fresh.clone(), &bias, activation).unwrap();
            assert_bits_equal(&flat(&out), &expected, &what);
            assert_bits_equal(&flat(&fresh), &expected, &format!("{what}: the storage written over"));

            let inputs = [x.clone(), bias.clone()];
            assert_parity(
                |t| kernels::bias_activation_in_place(t[0].clone(), &t[1], activation),
                |t| reference::bias_activation(&t[0], &t[1], activation),
                &inputs,
                &format!("{what}, tracked"),
            );
        }
    }
    let x = Var::from_tensor(&random(&[3, 7], 1, 1.0, 0.0)).unwrap();
    let before = flat(x.as_tensor());
    kernels::bias_activation_in_place(x.as_tensor().clone(), &random(&[7], 2, 1.0, 0.0), Activation::Gelu)
        .unwrap();
    assert_bits_equal(&flat(x.as_tensor()), &before, "a tracked input");
}

#[test]
fn bias_residual_matches_primitive_ops() {
    for (seed, shape) in shapes().enumerate() {
        let width = *shape.last().unwrap();
        let inputs = [
            random(&shape, seed as u64, 1.0, 0.0),
            random(&[width], 700 + seed as u64, 1.0, 0.0),
            random(&shape, 900 + seed as u64, 1.0, 0.0),
        ];
        assert_parity(
            |t| kernels::bias_residual(&t[0], &t[1], &t[2]),
            |t| reference::bias_residual(&t[0], &t[1], &t[2]),
            &inputs,
            &format!("bias_residual {shape:?}"),
        );
    }
}

/// The activations of [`kernels::residual_linear`]: none (attention's output projection) and
/// the MLP's two.
const BRANCH_ACTIVATIONS: [Option<Activation>; 3] =
    [None, Some(Activation::QuickGelu), Some(Activation::Gelu)];

/// `[x, weight, bias, residual]` for `x` of `shape` and `fan_out` outputs.
fn residual_linear_inputs(shape: &[usize], fan_out: usize, seed: u64) -> [Tensor; 4] {
    let fan_in = *shape.last().unwrap();
    let mut out_shape = shape.to_vec();
    *out_shape.last_mut().unwrap() = fan_out;
    [
        random(shape, seed, 2.0, 0.0),
        random(&[fan_out, fan_in], 300 + seed, 0.5, 0.0),
        random(&[fan_out], 500 + seed, 1.0, 0.0),
        random(&out_shape, 700 + seed, 1.0, 0.0),
    ]
}

#[test]
fn residual_linear_matches_primitive_ops() {
    for activation in BRANCH_ACTIVATIONS {
        for (seed, shape) in shapes().enumerate() {
            for fan_out in [1, 7, 129] {
                assert_parity(
                    |t| kernels::residual_linear(&t[0], &t[1], Some(&t[2]), &t[3], activation),
                    |t| reference::residual_linear(&t[0], &t[1], Some(&t[2]), &t[3], activation),
                    &residual_linear_inputs(&shape, fan_out, seed as u64),
                    &format!("residual_linear {activation:?} {shape:?} -> {fan_out}"),
                );
            }
        }
    }
}

/// One node that recomputes the activation in its backward pass gives the values and
/// gradients of the chain of kernels that keeps it, to the bit (700 rows span several of the
/// gemm's depth blocks in the weight gradient).
#[test]
fn residual_linear_equals_the_chained_kernels_bit_for_bit() {
    for activation in BRANCH_ACTIVATIONS {
        for (seed, shape) in [vec![3, 17, 64], vec![2, 700, 33], vec![50, 768]].into_iter().enumerate() {
            let chained = |t: &[Tensor]| {
                let hidden = match activation {
                    Some(a) => kernels::bias_activation(
                        &t[0],
                        &Tensor::zeros(t[0].dim(D::Minus1)?, DType::F32, &Device::Cpu)?,
                        a,
                    )?,
                    None => t[0].clone(),
                };
                kernels::bias_residual(&kernels::linear(&hidden, &t[1], None)?, &t[2], &t[3])
            };
            assert_bit_parity(
                |t| kernels::residual_linear(&t[0], &t[1], Some(&t[2]), &t[3], activation),
                chained,
                &residual_linear_inputs(&shape, 48, seed as u64),
                &format!("residual_linear {activation:?} {shape:?}"),
            );
        }
    }
}

/// Compares `fused` with `chained` at `inputs` to the bit: outputs and every input's gradient.
fn assert_bit_parity(
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    chained: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    what: &str,
) {
    let (value, grads) = value_and_grads(fused, inputs);
    let (expected_value, expected_grads) = value_and_grads(chained, inputs);
    assert_bits_equal(&value, &expected_value, &format!("{what} forward"));
    for (i, (g, e)) in grads.iter().zip(&expected_grads).enumerate() {
        assert_bits_equal(g, e, &format!("{what} gradient of input {i}"));
    }
}

/// `[x, norm_weight, norm_bias, weight, bias]` for `x` of `shape` and `fan_out` outputs; the
/// rows have an offset mean, as LayerNorm's test's do.
fn layer_norm_linear_inputs(shape: &[usize], fan_out: usize, seed: u64) -> [Tensor; 5] {
    let fan_in = *shape.last().unwrap();
    [
        random(shape, seed, 2.0, 3.0),
        random(&[fan_in], 100 + seed, 0.5, 1.0),
        random(&[fan_in], 200 + seed, 0.5, 0.0),
        random(&[fan_out, fan_in], 300 + seed, 0.5, 0.0),
        random(&[fan_out], 500 + seed, 1.0, 0.0),
    ]
}

#[test]
fn layer_norm_linear_matches_primitive_ops() {
    for (seed, shape) in shapes().enumerate() {
        for fan_out in [1, 7, 129] {
            assert_parity(
                |t| kernels::layer_norm_linear(&t[0], (&t[1], &t[2], 1e-5), &t[3], Some(&t[4])),
                |t| reference::linear(&reference::layer_norm(&t[0], &t[1], &t[2], 1e-5)?, &t[3], Some(&t[4])),
                &layer_norm_linear_inputs(&shape, fan_out, seed as u64),
                &format!("layer_norm_linear {shape:?} -> {fan_out}"),
            );
        }
    }
}

/// One node that recomputes the LayerNorm in its backward pass gives the values and
/// gradients of the chain of kernels that keeps its output, to the bit.
#[test]
fn layer_norm_linear_equals_the_chained_kernels_bit_for_bit() {
    for (seed, shape) in [vec![3, 17, 64], vec![2, 700, 33], vec![50, 768]].into_iter().enumerate() {
        assert_bit_parity(
            |t| kernels::layer_norm_linear(&t[0], (&t[1], &t[2], 1e-5), &t[3], Some(&t[4])),
            |t| kernels::linear(&kernels::layer_norm(&t[0], &t[1], &t[2], 1e-5)?, &t[3], Some(&t[4])),
            &layer_norm_linear_inputs(&shape, 48, seed as u64),
            &format!("layer_norm_linear {shape:?}"),
        );
    }
}

/// Without a bias, and with a frozen LayerNorm and weight (an attack's input gradient), the
/// other inputs get the reference's gradients.
#[test]
fn layer_norm_linear_without_a_bias_or_with_constant_inputs_matches_primitive_ops() {
    let [x, norm_weight, norm_bias, weight, _] = layer_norm_linear_inputs(&[4, 9, 40], 24, 5);
    assert_parity(
        |t| kernels::layer_norm_linear(&t[0], (&t[1], &t[2], 1e-5), &t[3], None),
        |t| reference::linear(&reference::layer_norm(&t[0], &t[1], &t[2], 1e-5)?, &t[3], None),
        &[x.clone(), norm_weight.clone(), norm_bias.clone(), weight.clone()],
        "layer_norm_linear without a bias",
    );
    let x_var = Var::from_tensor(&x).unwrap();
    let loss_weights = random(&[4, 9, 24], 3, 1.0, 0.0);
    let grad_of = |y: Tensor| (y * &loss_weights).unwrap().sum_all().unwrap().backward().unwrap();
    let norm = (&norm_weight, &norm_bias, 1e-5);
    let grads = grad_of(kernels::layer_norm_linear(x_var.as_tensor(), norm, &weight, None).unwrap());
    let normed = reference::layer_norm(x_var.as_tensor(), &norm_weight, &norm_bias, 1e-5).unwrap();
    let expected = grad_of(reference::linear(&normed, &weight, None).unwrap());
    assert!(
        [&norm_weight, &norm_bias, &weight].iter().all(|t| grads.get(t).is_none()),
        "a constant got a gradient"
    );
    assert_close(
        &flat(grads.get(x_var.as_tensor()).unwrap()),
        &flat(expected.get(x_var.as_tensor()).unwrap()),
        "input gradient with a frozen LayerNorm and weight",
    );
}

#[test]
fn layer_norm_linear_rejects_parameters_that_do_not_fit() {
    let [x, norm_weight, norm_bias, weight, bias] = layer_norm_linear_inputs(&[4, 8], 3, 1);
    let short = random(&[7], 2, 1.0, 0.0);
    let cases = [
        (&short, &norm_bias, &weight, &bias, "LayerNorm weight [7] does not fit x [4, 8]"),
        (&norm_weight, &short, &weight, &bias, "LayerNorm bias [7] does not fit x [4, 8]"),
        (
            &norm_weight,
            &norm_bias,
            &random(&[3, 9], 3, 1.0, 0.0),
            &bias,
            "weight [3, 9] does not fit x [4, 8]",
        ),
        (&norm_weight, &norm_bias, &weight, &short, "bias [7] does not fit weight [3, 8]"),
    ];
    for (norm_weight, norm_bias, weight, bias, message) in cases {
        let err =
            kernels::layer_norm_linear(&x, (norm_weight, norm_bias, 1e-5), weight, Some(bias)).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
}

/// Without a bias, and with inputs that track no gradient (a frozen weight, constant
/// pixels), the other inputs get the reference's gradients.
#[test]
fn residual_linear_without_a_bias_or_with_constant_inputs_matches_primitive_ops() {
    let [x, weight, _, residual] = residual_linear_inputs(&[4, 9, 40], 24, 5);
    assert_parity(
        |t| kernels::residual_linear(&t[0], &t[1], None, &t[2], Some(Activation::QuickGelu)),
        |t| reference::residual_linear(&t[0], &t[1], None, &t[2], Some(Activation::QuickGelu)),
        &[x.clone(), weight.clone(), residual.clone()],
        "residual_linear without a bias",
    );
    let loss_weights = random(residual.dims(), 3, 1.0, 0.0);
    let grad_of = |y: Tensor| (y * &loss_weights).unwrap().sum_all().unwrap().backward().unwrap();
    let x_var = Var::from_tensor(&x).unwrap();
    let grads = grad_of(kernels::residual_linear(x_var.as_tensor(), &weight, None, &residual, None).unwrap());
    let expected =
        grad_of(reference::residual_linear(x_var.as_tensor(), &weight, None, &residual, None).unwrap());
    assert!(
        grads.get(&weight).is_none() && grads.get(&residual).is_none(),
        "a constant input got a gradient"
    );
    assert_close(
        &flat(grads.get(x_var.as_tensor()).unwrap()),
        &flat(expected.get(x_var.as_tensor()).unwrap()),
        "input gradient with a frozen weight",
    );
}

#[test]
fn residual_linear_rejects_a_weight_bias_or_residual_that_does_not_fit() {
    let [x, weight, bias, residual] = residual_linear_inputs(&[4, 8], 3, 1);
    let cases = [
        (random(&[3, 9], 2, 1.0, 0.0), bias.clone(), residual.clone(), "weight [3, 9] does not fit x [4, 8]"),
        (weight.clone(), random(&[4], 3, 1.0, 0.0), residual.clone(), "bias [4] does not fit weight [3, 8]"),
        (
            weight.clone(),
            bias.clone(),
            random(&[4, 4], 4, 1.0, 0.0),
            "residual [4, 4] does not fit the output [4, 3]",
        ),
    ];
    for (weight, bias, residual, message) in cases {
        let err = kernels::residual_linear(&x, &weight, Some(&bias), &residual, None).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
}

/// `[x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias]` for the MLP
/// branch on `x` of `shape` with `hidden` units.
fn mlp_inputs(shape: &[usize], hidden: usize, seed: u64) -> [Tensor; 7] {
    let width = *shape.last().unwrap();
    let [x, norm_weight, norm_bias, fc1_weight, fc1_bias] = layer_norm_linear_inputs(shape, hidden, seed);
    let fc2_weight = random(&[width, hidden], 900 + seed, 0.5, 0.0);
    let fc2_bias = random(&[width], 1100 + seed, 1.0, 0.0);
    [x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias]
}

fn mlp_branch(t: &[Tensor], activation: Activation) -> Result<Tensor> {
    kernels::mlp_residual(&t[0], (&t[1], &t[2], 1e-5), (&t[3], Some(&t[4])), (&t[5], Some(&t[6])), activation)
}

fn chained_mlp_branch(t: &[Tensor], activation: Activation) -> Result<Tensor> {
    let pre_activation = kernels::layer_norm_linear(&t[0], (&t[1], &t[2], 1e-5), &t[3], Some(&t[4]))?;
    kernels::residual_linear(&pre_activation, &t[5], Some(&t[6]), &t[0], Some(activation))
}

/// The whole MLP branch as one node (keeping the first layer's output inside itself) gives
/// the values and gradients of its two branch-end kernels chained, to the bit.
#[test]
fn mlp_residual_equals_the_chained_kernels_bit_for_bit() {
    for activation in [Activation::QuickGelu, Activation::Gelu] {
        for (seed, (shape, hidden)) in
            [(vec![3, 17, 64], 256), (vec![2, 300, 33], 7), (vec![50, 96], 129)].into_iter().enumerate()
        {
            assert_bit_parity(
                |t| mlp_branch(t, activation),
                |t| chained_mlp_branch(t, activation),
                &mlp_inputs(&shape, hidden, seed as u64),
                &format!("mlp_residual {activation:?} {shape:?} hidden {hidden}"),
            );
        }
    }
}

/// `[x, norm_weight, norm_bias, qkv_weight, qkv_bias]` for the attention branch on `x`:
/// `[batch, tokens, width]`.
fn normed_attention_inputs(batch: usize, tokens: usize, width: usize, seed: u64) -> [Tensor; 5] {
    layer_norm_linear_inputs(&[batch, tokens, width], 3 * width, seed)
}

/// The attention branch up to its output projection as one node (keeping the q/k/v
/// projection inside itself) gives the values and gradients of its two kernels chained, to
/// the bit, with and without the text tower's causal mask.
#[test]
fn normed_attention_equals_the_chained_kernels_bit_for_bit() {
    for (seed, (b, t, width, heads, causal)) in ATTENTION_CASES.into_iter().enumerate() {
        let mask = causal.then(|| causal_mask(t, &Device::Cpu).unwrap());
        assert_bit_parity(
            |x| {
                kernels::normed_attention(
                    &x[0],
                    (&x[1], &x[2], 1e-5),
                    (&x[3], Some(&x[4])),
                    heads,
                    mask.as_ref(),
                )
            },
            |x| {
                let qkv = kernels::layer_norm_linear(&x[0], (&x[1], &x[2], 1e-5), &x[3], Some(&x[4]))?;
                kernels::attention(&qkv, heads, mask.as_ref())
            },
            &normed_attention_inputs(b, t, width, seed as u64),
            &format!("normed_attention b={b} t={t} width={width} heads={heads} causal={causal}"),
        );
    }
}

/// With frozen parameters (an attack's input gradient) only `x` gets a gradient, and with a
/// constant `x` (the block after a frozen embedding) only the parameters do: the chain's
/// gradients, to the bit, for both whole-branch ops.
#[test]
fn whole_branch_ops_give_gradients_only_to_inputs_that_track_them() {
    let mlp = mlp_inputs(&[4, 9, 40], 24, 5);
    let attention = normed_attention_inputs(2, 9, 40, 6);
    let normed =
        |t: &[Tensor]| kernels::normed_attention(&t[0], (&t[1], &t[2], 1e-5), (&t[3], Some(&t[4])), 4, None);
    let chained_attention = |t: &[Tensor]| {
        kernels::attention(
            &kernels::layer_norm_linear(&t[0], (&t[1], &t[2], 1e-5), &t[3], Some(&t[4]))?,
            4,
            None,
        )
    };
    for x_tracks in [true, false] {
        assert_same_partial_grads(
            |t| mlp_branch(t, Activation::QuickGelu),
            |t| chained_mlp_branch(t, Activation::QuickGelu),
            &mlp,
            x_tracks,
            "mlp_residual",
        );
        assert_same_partial_grads(normed, chained_attention, &attention, x_tracks, "normed_attention");
    }
}

/// `fused` and `chained` at `inputs` with only `x` (`inputs[0]`) tracking gradients, or only
/// the others: the same gradients to the bit, and none for the constants.
fn assert_same_partial_grads(
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    chained: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    x_tracks: bool,
    what: &str,
) {
    let tracked: Vec<Tensor> =
        inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if (i == 0) == x_tracks {
                    Var::from_tensor(t).unwrap().as_tensor().clone()
                } else {
                    t.clone()
                }
            })
            .collect();
    let grads_of = |f: &dyn Fn(&[Tensor]) -> Result<Tensor>| {
        let out = f(&tracked).unwrap();
        let weights = random(out.dims(), 99, 1.0, 0.0);
        (&out * &weights).unwrap().sum_all().unwrap().backward().unwrap()
    };
    let (grads, expected) = (grads_of(&fused), grads_of(&chained));
    for (i, t) in tracked.iter().enumerate() {
        let what = format!("{what}, x tracking {x_tracks}, input {i}");
        match (grads.get(t), expected.get(t)) {
            (Some(g), Some(e)) => assert_bits_equal(&flat(g), &flat(e), &what),
            (None, None) => assert!(!t.track_op(), "{what}: a tracked input got no gradient"),
            _ => panic!("{what}: the fused op and the chain disagree on which inputs get gradients"),
        }
    }
}

#[test]
fn mlp_residual_rejects_a_second_layer_that_does_not_fit() {
    let [x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias] = mlp_inputs(&[4, 8], 5, 1);
    let cases = [
        (
            random(&[8, 6], 2, 1.0, 0.0),
            fc2_bias.clone(),
            "second weight [8, 6] does not fit x [4, 8] and first weight [5, 8]",
        ),
        (fc2_weight.clone(), random(&[5], 3, 1.0, 0.0), "second bias [5] does not fit x [4, 8]"),
    ];
    for (fc2_weight, fc2_bias, message) in cases {
        let err = kernels::mlp_residual(
            &x,
            (&norm_weight, &norm_bias, 1e-5),
            (&fc1_weight, Some(&fc1_bias)),
            (&fc2_weight, Some(&fc2_bias)),
            Activation::Gelu,
        )
        .unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
}

#[test]
fn other_dtypes_fall_back_to_primitive_ops() {
    let f64s = |shape: &[usize], seed: u64| random(shape, seed, 1.0, 0.5).to_dtype(DType::F64).unwrap();
    let (x, w, b, mask) = (f64s(&[2, 5, 12], 1), f64s(&[12], 2), f64s(&[12], 3), f64s(&[5, 12], 4));
    let causal = causal_mask(5, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
    let qkv = f64s(&[2, 5, 36], 5);
    let weight = f64s(&[9, 12], 6);
    let residual = f64s(&[2, 5, 9], 7);
    let fc2 = f64s(&[12, 9], 8);
    let attention_weight = f64s(&[36, 12], 9);
    let cases: [(&str, Tensor, Tensor); 11] = [
        (
            "linear",
            kernels::linear(&x, &weight, Some(&b.narrow(0, 0, 9).unwrap())).unwrap(),
            reference::linear(&x, &weight, Some(&b.narrow(0, 0, 9).unwrap())).unwrap(),
        ),
        (
            "layer_norm",
            kernels::layer_norm(&x, &w, &b, 1e-5).unwrap(),
            reference::layer_norm(&x, &w, &b, 1e-5).unwrap(),
        ),
        ("softmax", kernels::softmax_last_dim(&x).unwrap(), reference::softmax_last_dim(&x).unwrap()),
        (
            "masked softmax",
            kernels::masked_softmax_last_dim(&x, &mask).unwrap(),
            reference::masked_softmax_last_dim(&x, &mask).unwrap(),
        ),
        (
            "bias_activation",
            kernels::bias_activation(&x, &b, Activation::QuickGelu).unwrap(),
            reference::bias_activation(&x, &b, Activation::QuickGelu).unwrap(),
        ),
        (
            "bias_residual",
            kernels::bias_residual(&x, &b, &x).unwrap(),
            reference::bias_residual(&x, &b, &x).unwrap(),
        ),
        (
            "residual_linear",
            kernels::residual_linear(&x, &weight, None, &residual, Some(Activation::Gelu)).unwrap(),
            reference::residual_linear(&x, &weight, None, &residual, Some(Activation::Gelu)).unwrap(),
        ),
        (
            "layer_norm_linear",
            kernels::layer_norm_linear(&x, (&w, &b, 1e-5), &weight, None).unwrap(),
            reference::linear(&reference::layer_norm(&x, &w, &b, 1e-5).unwrap(), &weight, None).unwrap(),
        ),
        (
            "attention",
            kernels::attention(&qkv, 3, Some(&causal)).unwrap(),
            reference::attention(&qkv, 3, Some(&causal)).unwrap(),
        ),
        (
            "normed_attention",
            kernels::normed_attention(&x, (&w, &b, 1e-5), (&attention_weight, None), 3, Some(&causal))
                .unwrap(),
            reference::attention(
                &reference::linear(
                    &reference::layer_norm(&x, &w, &b, 1e-5).unwrap(),
                    &attention_weight,
                    None,
                )
                .unwrap(),
                3,
                Some(&causal),
            )
            .unwrap(),
        ),
        (
            "mlp_residual",
            kernels::mlp_residual(&x, (&w, &b, 1e-5), (&weight, None), (&fc2, None), Activation::Gelu)
                .unwrap(),
            reference::residual_linear(
                &reference::linear(&reference::layer_norm(&x, &w, &b, 1e-5).unwrap(), &weight, None).unwrap(),
                &fc2,
                None,
                &x,
                Some(Activation::Gelu),
            )
            .unwrap(),
        ),
    ];
    for (name, fallback, expected) in cases {
        assert_eq!(fallback.dtype(), DType::F64, "{name}");
        let deviation =
            (fallback - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(deviation < 1e-12, "f64 {name} deviates from its primitive-op formulation by {deviation}");
    }
}

/// (batch, tokens, width, heads, causal): single tokens and heads, head widths 1 and 3, the
/// text tower's causal mask, and ViT-B/32's 50 tokens × 12 heads of 64.
const ATTENTION_CASES: [(usize, usize, usize, usize, bool); 7] = [
    (1, 1, 8, 2, false),
    (3, 7, 12, 4, false),
    (2, 5, 7, 7, true),
    (2, 17, 128, 4, false),
    (16, 17, 128, 4, true),
    (2, 50, 768, 12, false),
    (3, 77, 64, 2, true),
];

#[test]
fn attention_matches_primitive_ops() {
    for (seed, (b, t, width, heads, causal)) in ATTENTION_CASES.into_iter().enumerate() {
        let mask = causal.then(|| causal_mask(t, &Device::Cpu).unwrap());
        let qkv = random(&[b, t, 3 * width], seed as u64, 1.5, 0.0);
        assert_parity(
            |x| kernels::attention(&x[0], heads, mask.as_ref()),
            |x| reference::attention(&x[0], heads, mask.as_ref()),
            &[qkv],
            &format!("attention b={b} t={t} width={width} heads={heads} causal={causal}"),
        );
    }
}

#[test]
fn attention_with_a_trainable_mask_passes_it_gradients() {
    let (b, t, width, heads) = (2, 6, 12, 3);
    let inputs = [random(&[b, t, 3 * width], 70, 1.0, 0.0), random(&[t, t], 80, 1.0, 0.0)];
    assert_parity(
        |x| kernels::attention(&x[0], heads, Some(&x[1])),
        |x| reference::attention(&x[0], heads, Some(&x[1])),
        &inputs,
        "attention with a trainable mask",
    );
}

#[test]
fn attention_rejects_a_width_that_does_not_split_into_heads() {
    let qkv = random(&[1, 3, 30], 1, 1.0, 0.0);
    let err = kernels::attention(&qkv, 4, None).unwrap_err();
    assert!(err.to_string().contains("does not split into 4 heads"), "{err}");
}

/// Where its fp32 products run on candle's gemm, the linear kernel runs it with candle's
/// operand layouts, so its output and its gradients equal `x.reshape(..).matmul(&w.t())`'s
/// to the bit (not just within the tolerance), for every leading shape of `x` and output
/// widths across the gemm's tile sizes; 1400 rows make the weight gradient's reduction span
/// several of the gemm's depth blocks. On CPUs where they run on the crate's own f32 kernel
/// (`avx2_fma` or `avx512f`), which sums in another order, they are held to the
/// tolerance (that kernel's own tests hold it to an f64 reference). With a bias, the bias
/// gradient is held to the tolerance (the kernel sums rows in blocks).
#[test]
fn linear_equals_the_primitive_matmul() {
    let on_gemm = MatmulPrecision::Fp32.cpu_kernel() == "gemm";
    let assert_equal = if on_gemm { assert_bits_equal } else { assert_close };
    for (seed, shape) in shapes().chain([vec![2, 700, 33]]).enumerate() {
        let fan_in = *shape.last().unwrap();
        for (fan_out, with_bias) in [(1, false), (7, true), (48, false), (129, true)] {
            let mut inputs = vec![
                random(&shape, seed as u64, 1.0, 0.0),
                random(&[fan_out, fan_in], 400 + seed as u64, 0.5, 0.0),
            ];
            if with_bias {
                inputs.push(random(&[fan_out], 600 + seed as u64, 1.0, 0.0));
            }
            let (value, grads) = value_and_grads(|t| kernels::linear(&t[0], &t[1], t.get(2)), &inputs);
            let (expected_value, expected_grads) =
                value_and_grads(|t| reference::linear(&t[0], &t[1], t.get(2)), &inputs);
            let what = format!("linear {shape:?} -> {fan_out}, bias {with_bias}");
            assert_equal(&value, &expected_value, &format!("{what} forward"));
            assert_equal(&grads[0], &expected_grads[0], &format!("{what} input gradient"));
            assert_equal(&grads[1], &expected_grads[1], &format!("{what} weight gradient"));
            if with_bias {
                assert_close(&grads[2], &expected_grads[2], &format!("{what} bias gradient"));
            }
        }
    }
}

fn assert_bits_equal(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(a.to_bits(), e.to_bits(), "{what}: element {i} is {a}, reference {e}");
    }
}

/// An input that tracks no gradient (the pixels under the patch embedding) gets none, and
/// the weight's gradient is unchanged by the skipped product.
#[test]
fn linear_skips_the_gradient_of_an_input_that_tracks_none() {
    let x = random(&[3, 17, 64], 1, 1.0, 0.0);
    let weight = Var::from_tensor(&random(&[7, 64], 2, 1.0, 0.0)).unwrap();
    let loss_weights = random(&[3, 17, 7], 3, 1.0, 0.0);
    let grad_of = |y: Tensor| (y * &loss_weights).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = grad_of(kernels::linear(&x, weight.as_tensor(), None).unwrap());
    assert!(grads.get(&x).is_none(), "a constant input got a gradient");
    let expected = grad_of(reference::linear(&x, weight.as_tensor(), None).unwrap());
    assert_close(
        &flat(grads.get(weight.as_tensor()).unwrap()),
        &flat(expected.get(weight.as_tensor()).unwrap()),
        "weight gradient",
    );
}

#[test]
fn linear_rejects_a_weight_or_bias_that_does_not_fit() {
    let (x, weight) = (random(&[4, 8], 1, 1.0, 0.0), random(&[3, 8], 2, 1.0, 0.0));
    let wide = random(&[3, 9], 3, 1.0, 0.0);
    let err = kernels::linear(&x, &wide, None).unwrap_err();
    assert!(err.to_string().contains("weight [3, 9] does not fit x [4, 8]"), "{err}");
    let err = kernels::linear(&x, &weight, Some(&random(&[4], 4, 1.0, 0.0))).unwrap_err();
    assert!(err.to_string().contains("bias [4] does not fit weight [3, 8]"), "{err}");
}

#[test]
fn backward_stores_first_gradients_and_adds_later_ones() {
    // y = Σ (x ⊙ w) + Σ x² + Σ xᵀ, with w: [3] broadcast over x: [2, 3]. x reaches y by three
    // paths (its gradient is stored, then added to twice), w by one through a broadcast (its
    // first gradient a sum over the rows), and the transpose's gradient is a strided view.
    // By hand, as PyTorch's autograd gives it:
    //   x = torch.tensor(X, requires_grad=True); w = torch.tensor(W, requires_grad=True)
    //   ((x * w).sum() + (x ** 2).sum() + x.t().sum()).backward()
    //   x.grad == w + 2 x + 1, w.grad == x.sum(0)
    let x = Var::from_vec(vec![0.5f32, -1.0, 2.0, 3.0, 0.25, -4.0], (2, 3), &Device::Cpu).unwrap();
    let w = Var::from_vec(vec![1.5f32, -2.0, 0.75], 3, &Device::Cpu).unwrap();
    let (xt, wt) = (x.as_tensor(), w.as_tensor());
    let y = (xt.broadcast_mul(wt).unwrap().sum_all().unwrap()
        + xt.sqr().unwrap().sum_all().unwrap()
        + xt.t().unwrap().sum_all().unwrap())
    .unwrap();
    let grads = y.backward().unwrap();
    let (xs, ws) = (flat(xt), flat(wt));
    let expected_x: Vec<f32> = xs.iter().enumerate().map(|(i, &v)| ws[i % 3] + 2.0 * v + 1.0).collect();
    let expected_w: Vec<f32> = (0..3).map(|j| xs[j] + xs[j + 3]).collect();
    assert_eq!(flat(grads.get(xt).unwrap()), expected_x);
    assert_eq!(flat(grads.get(wt).unwrap()), expected_w);
}
