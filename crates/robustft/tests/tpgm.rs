//! Parity of the TPGM constraint (methods.md §3.2) with a PyTorch autograd reference of the
//! TPGM release's projection and radius training (fixture `fixtures/constraints/tpgm.json` by
//! `scripts/fixtures/constraints_tpgm.py`): a tiny classifier's 2-d, 1-d and 0-d parameters —
//! plus a new head and an excluded bias, never projected — move by fixed steps, the constraint
//! built from a `[constraint] name = "tpgm"` recipe runs after each, learning its radii on the
//! classifier's cross-entropy over fixed validation batches, and every parameter and radius is
//! compared after every step, for MARS and L2 norms, across a state restore.
//!
//! The references are float64 computations on the float32 inputs, so each difference is the
//! float32 rounding of robustft's computation: tolerance 1e-6, measured maxima beside each
//! bound.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use robustft::constraints::tpgm::{TpgmNorm, TpgmSection};
use robustft::constraints::{ConstraintSpec, StepContext, Validation};
use robustft::losses::cross_entropy;
use serde::Deserialize;

#[path = "support/nested.rs"]
mod nested;
use nested::{max_diff, Nested};
#[path = "support/radii.rs"]
mod radii;
use radii::radius_error;

#[derive(Deserialize)]
struct Fixture {
    tpgm: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    norm: TpgmNorm,
    mu: f64,
    every: u64,
    proj_steps: u64,
    exclude: Vec<String>,
    params: BTreeMap<String, Param>,
    /// What each step adds to every parameter (standing in for the optimiser step).
    deltas: Vec<BTreeMap<String, Nested>>,
    batches: Vec<Batch>,
    /// Every parameter after each step.
    expected: Vec<BTreeMap<String, Nested>>,
    /// γ of every projected parameter after each step.
    expected_gamma: Vec<BTreeMap<String, f64>>,
}

#[derive(Deserialize)]
struct Param {
    theta0: Option<Nested>,
    start: Nested,
}

#[derive(Deserialize)]
struct Batch {
    x: Nested,
    y: Vec<u32>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/constraints/tpgm.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture readable")).expect("fixture parses")
}

/// The classifier's validation loss on the fixture's batches, at the variables' current values.
struct Classifier<'a> {
    vars: HashMap<String, Var>,
    batches: &'a [Batch],
}

impl Validation for Classifier<'_> {
    fn gradients(&self, draw: u64) -> robustft::Result<GradStore> {
        // Python (loss_fn): scale * (tanh(x @ w1.T + b1) @ head.T + b2), mean cross-entropy
        let batch = &self.batches[draw as usize];
        let p = |name: &str| self.vars[name].as_tensor();
        let hidden = batch.x.tensor().matmul(&p("w1").t()?)?.broadcast_add(p("b1"))?.tanh()?;
        let logits = hidden.matmul(&p("head").t()?)?.broadcast_add(p("b2"))?.broadcast_mul(p("scale"))?;
        let labels = Tensor::new(batch.y.as_slice(), &Device::Cpu)?;
        Ok(cross_entropy(&logits, &labels)?.backward()?)
    }
}

fn section(case: &Case) -> TpgmSection {
    TpgmSection {
        exclude: case.exclude.clone(),
        mu: case.mu,
        every: case.every,
        proj_steps: case.proj_steps,
        norm: case.norm,
        ..Default::default()
    }
}

#[test]
fn tpgm_matches_pytorch_autograd_radii_and_projections_across_a_restore() {
    for case in fixture().tpgm {
        let params: Vec<(String, Var, bool)> =
            case.params.iter().map(|(name, p)| (name.clone(), p.start.var(), true)).collect();
        let anchor: HashMap<String, Tensor> = case
            .params
            .iter()
            .filter_map(|(name, p)| p.theta0.as_ref().map(|t| (name.clone(), t.tensor())))
            .collect();
        let vars = params.iter().map(|(name, var, _)| (name.clone(), var.clone())).collect();
        let classifier = Classifier { vars, batches: &case.batches };
        let no_grads = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap().backward().unwrap();
        let mut constraint = section(&case).build().unwrap();
        for (index, delta) in case.deltas.iter().enumerate() {
            let step = index as u64 + 1;
            if step == 4 {
                // A resumed run: a fresh constraint from the saved state continues the same path.
                let state: HashMap<String, Tensor> = constraint.state().unwrap().into_iter().collect();
                constraint = section(&case).build().unwrap();
                constraint.restore(&state).unwrap();
            }
            for (name, var, _) in &params {
                var.set(&(var.as_tensor() + delta[name].tensor()).unwrap()).unwrap();
            }
            let context = StepContext {
                params: &params,
                anchor: &anchor,
                grads: &no_grads,
                previous: &HashMap::new(),
                lr: 0.0,
                step,
                validation: Some(&classifier),
            };
            constraint.after_step(&context).unwrap();
            // Python (tpgm_run): theta += delta; c = theta - theta0; n = norms(c); gamma = n.min()/2 once
            //   if (t - 1) % every == 0: for i in range(proj_steps):
            //     gamma.copy_(clamp(gamma, 1e-8, n.max())); loss = loss_fn(theta0 + clamp(gamma/(n+1e-8), 0, 1)*c)
            //     loss.backward(); torch.optim.Adam(gammas, lr=mu).step()
            //   gamma.copy_(clamp(gamma, 1e-8, n.max())); theta = theta0 + clamp(gamma/(n+1e-8), 0, 1)*c
            let expected = &case.expected[index];
            let err =
                params.iter().map(|(n, v, _)| max_diff(v.as_tensor(), &expected[n])).fold(0.0, f64::max);
            let gamma_err = radius_error(constraint.as_ref(), &case.expected_gamma[index]);
            // measured: weights 1.7e-7, radii 1.7e-7
            assert!(err < 1e-6, "{} step {step}: max weight error {err:e}", case.name);
            assert!(gamma_err < 1e-6, "{} step {step}: max radius error {gamma_err:e}", case.name);
        }
    }
}

#[test]
fn tpgm_without_validation_data_is_refused_naming_it() {
    let case = &fixture().tpgm[0];
    let params: Vec<(String, Var, bool)> =
        case.params.iter().map(|(name, p)| (name.clone(), p.start.var(), true)).collect();
    let anchor: HashMap<String, Tensor> =
        case.params.iter().filter_map(|(n, p)| p.theta0.as_ref().map(|t| (n.clone(), t.tensor()))).collect();
    let no_grads = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap().backward().unwrap();
    let context = StepContext {
        params: &params,
        anchor: &anchor,
        grads: &no_grads,
        previous: &HashMap::new(),
        lr: 0.0,
        step: 1,
        validation: None,
    };
    let err = section(case).build().unwrap().after_step(&context).unwrap_err().to_string();
    assert!(err.contains("tpgm") && err.contains("validation"), "{err}");
}
