//! DiGraP (methods.md §3.6) against its NumPy reference (fixture `fixtures/constraints/digrap.json`
//! by `scripts/fixtures/constraints_digrap.py`): seven steps on small tensors of rank 0, 1, 2
//! and 4, with conflicting and non-conflicting gradients, for both conflict conventions and with
//! the optional regulariser gradient — the adjusted gradients and every layer's ω after each
//! step; a new head and an excluded layer keep their gradients. A constraint restored from the
//! state saved after step 3 (through a safetensors file, as a checkpoint) continues bit-exactly.
//!
//! The reference is float64 on the float32 inputs, so each difference is the float32 rounding
//! of robustft's computation (tensor arithmetic, and ω with its moments kept in float32); the
//! bound is 1e-6 with the measured maxima noted beside it.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use robustft::clip::checkpoint::write_safetensors;
use robustft::constraints::digrap::{Conflict, Digrap, DigrapOptions};
use robustft::constraints::Constraint;
use serde::Deserialize;

#[path = "support/nested.rs"]
mod nested;
use nested::Nested;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    mu: f64,
    lambda: f64,
    conflict: Conflict,
    exclude: Vec<String>,
    anchors: BTreeMap<String, Nested>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    values: BTreeMap<String, Nested>,
    grads: BTreeMap<String, Nested>,
    adjusted: BTreeMap<String, Nested>,
    omega: BTreeMap<String, f64>,
    conflict: BTreeMap<String, bool>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/constraints/digrap.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture readable")).expect("fixture parses")
}

/// The parameters (at the first step's values) and the anchors of a case.
struct Setup {
    params: Vec<(String, Var, bool)>,
    anchor: HashMap<String, Tensor>,
}

impl Setup {
    fn new(case: &Case) -> Self {
        let first = &case.steps[0].values;
        let params =
            first.iter().map(|(name, v)| (name.clone(), Var::from_tensor(&v.tensor()).unwrap(), true));
        let anchor = case.anchors.iter().map(|(name, a)| (name.clone(), a.tensor())).collect();
        Self { params: params.collect(), anchor }
    }

    /// Sets the step's parameter values; returns its gradients after `constraint` adjusted them.
    fn adjust(&self, constraint: &mut Digrap, step: &Step) -> GradStore {
        for (name, var, _) in &self.params {
            var.set(&step.values[name].tensor()).unwrap();
        }
        let mut grads = gradient_store(&self.params, &step.grads);
        constraint.adjust_gradients(&mut grads, &self.params, &self.anchor).unwrap();
        grads
    }

    fn grad(&self, grads: &GradStore, name: &str) -> Vec<f32> {
        let (_, var, _) = self.params.iter().find(|(n, _, _)| n == name).unwrap();
        grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }
}

/// Gradients `grads[name]` for the variables: the backward pass of `Σ ⟨var, grad⟩`.
fn gradient_store(vars: &[(String, Var, bool)], grads: &BTreeMap<String, Nested>) -> GradStore {
    let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    for (name, var, _) in vars {
        loss = (loss + (var.as_tensor() * grads[name].tensor()).unwrap().sum_all().unwrap()).unwrap();
    }
    loss.backward().unwrap()
}

fn digrap(case: &Case) -> Digrap {
    Digrap::new(DigrapOptions {
        mu: case.mu,
        lambda: case.lambda,
        conflict: case.conflict,
        exclude: case.exclude.iter().map(|p| regex::Regex::new(p).unwrap()).collect(),
    })
}

/// max |got − want|.
fn max_diff(got: &[f32], want: &Nested) -> f64 {
    let want = want.values();
    assert_eq!(got.len(), want.len(), "sizes differ");
    got.iter().zip(want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max)
}

/// Compares one step's adjusted gradients and ω with the reference; returns the largest errors.
fn check_step(setup: &Setup, constraint: &Digrap, grads: &GradStore, case: &Case, t: usize) -> (f64, f64) {
    let step = &case.steps[t];
    let (mut grad_err, mut omega_err) = (0f64, 0f64);
    for (name, want) in &step.adjusted {
        // Python (constraints_digrap.py, digrap_step): r = theta - theta0; d = (g * r).sum();
        //   q = (r * r).sum(); t >= 2: omega <- clamp(Adam(sum(unit(g + lam r) * unit(p_prev)), mu), 0, 1)
        //   p_prev = d / (q + 1e-8) * r; g' = g - omega * d / q * r if conflict else g; g' += lam * r
        grad_err = grad_err.max(max_diff(&setup.grad(grads, name), want));
        match step.omega.get(name) {
            Some(omega) => omega_err = omega_err.max((constraint.omega(name).unwrap() as f64 - omega).abs()),
            None => assert_eq!(constraint.omega(name), None, "{}: `{name}` is not constrained", case.name),
        }
    }
    let conflicted = step.conflict.values().filter(|c| **c).count();
    assert!(t == 0 || conflicted > 0, "{}: the fixture meets no conflict at step {}", case.name, t + 1);
    (grad_err, omega_err)
}

#[test]
fn digrap_projects_conflicting_gradients_and_learns_omega_as_numpy() {
    for case in fixture().cases {
        let setup = Setup::new(&case);
        let mut constraint = digrap(&case);
        for t in 0..case.steps.len() {
            let grads = setup.adjust(&mut constraint, &case.steps[t]);
            let (grad_err, omega_err) = check_step(&setup, &constraint, &grads, &case, t);
            // measured: 1.1e-7 (gradients), 2.1e-7 (ω)
            assert!(grad_err < 1e-6, "{} step {}: gradient error {grad_err:e}", case.name, t + 1);
            assert!(omega_err < 1e-6, "{} step {}: ω error {omega_err:e}", case.name, t + 1);
        }
    }
}

#[test]
fn unconstrained_layers_keep_their_gradients() {
    for case in fixture().cases {
        let setup = Setup::new(&case);
        let mut constraint = digrap(&case);
        for step in &case.steps {
            let grads = setup.adjust(&mut constraint, step);
            for name in ["head.weight", "visual.skip.weight"] {
                let raw: Vec<f32> = step.grads[name].values().iter().map(|&x| x as f32).collect();
                assert_eq!(setup.grad(&grads, name), raw, "{}: `{name}` was changed", case.name);
            }
        }
    }
}

/// The constraint's state written as checkpoints write it and read back on the CPU.
fn through_a_file(state: Vec<(String, Tensor)>, tag: &str) -> HashMap<String, Tensor> {
    let path = std::env::temp_dir().join(format!("robustft-digrap-{tag}-{}.safetensors", std::process::id()));
    write_safetensors(&path, &state, HashMap::new()).unwrap();
    let loaded = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    std::fs::remove_file(&path).unwrap();
    loaded
}

#[test]
fn a_restored_constraint_continues_bit_exactly() {
    for case in fixture().cases {
        let setup = Setup::new(&case);
        let mut whole = digrap(&case);
        for step in &case.steps[..3] {
            setup.adjust(&mut whole, step);
        }
        let mut resumed = digrap(&case);
        resumed.restore(&through_a_file(whole.state().unwrap(), &case.name)).unwrap();
        for (t, step) in case.steps.iter().enumerate().skip(3) {
            let (a, b) = (setup.adjust(&mut whole, step), setup.adjust(&mut resumed, step));
            for name in step.adjusted.keys() {
                assert_eq!(
                    setup.grad(&a, name),
                    setup.grad(&b, name),
                    "{} step {}: `{name}`",
                    case.name,
                    t + 1
                );
                assert_eq!(
                    whole.omega(name),
                    resumed.omega(name),
                    "{} step {}: ω of `{name}`",
                    case.name,
                    t + 1
                );
            }
            let (grad_err, omega_err) = check_step(&setup, &resumed, &b, &case, t);
            assert!(
                grad_err < 1e-6 && omega_err < 1e-6,
                "{} step {}: {grad_err:e} {omega_err:e}",
                case.name,
                t + 1
            );
        }
    }
}

#[test]
fn a_state_without_its_step_is_refused() {
    let case = &fixture().cases[0];
    let setup = Setup::new(case);
    let mut constraint = digrap(case);
    setup.adjust(&mut constraint, &case.steps[0]);
    let mut state: HashMap<String, Tensor> = constraint.state().unwrap().into_iter().collect();
    state.remove("step");
    let err = digrap(case).restore(&state).unwrap_err().to_string();
    assert!(err.contains("DiGraP") && err.contains("`step`"), "{err}");
}
