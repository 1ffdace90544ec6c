//! AdamW against `torch.optim.AdamW` (fixture by `scripts/fixtures/optim.py`): three steps,
//! one parameter with decoupled weight decay and one in a no-decay group, on the device
//! `ROBUSTFT_TEST_DEVICE` names (`support/device.rs`).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use robustft::optim::{AdamW, AdamWConfig};

#[path = "support/device.rs"]
mod device;
use device::{test_device, tolerance};

#[test]
fn adamw_matches_pytorch_over_three_steps() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/optim/adamw.safetensors");
    let f: HashMap<String, Tensor> = candle_core::safetensors::load(path, &test_device()).unwrap();
    let a = Var::from_tensor(&f["init.a"]).unwrap();
    let b = Var::from_tensor(&f["init.b"]).unwrap();
    let config = AdamWConfig { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
    let mut opt =
        AdamW::new(vec![("a".into(), a.clone(), true), ("b".into(), b.clone(), false)], config).unwrap();
    for t in 1..=3 {
        // Gradients fed as PyTorch's `p.grad = grad{t}` before `opt.step()`.
        let loss = ((a.as_tensor() * &f[&format!("grad{t}.a")]).unwrap().sum_all().unwrap()
            + (b.as_tensor() * &f[&format!("grad{t}.b")]).unwrap().sum_all().unwrap())
        .unwrap();
        let grads: GradStore = loss.backward().unwrap();
        opt.step(&grads).unwrap();
    }
    for (name, var) in [("a", &a), ("b", &b)] {
        // Python: torch.optim.AdamW([{a}, {b, weight_decay: 0}], lr=0.01, weight_decay=0.1, foreach=False); 3 x step()
        let want = &f[&format!("after.{name}")];
        let err = (var.as_tensor() - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let err = err.to_scalar::<f32>().unwrap() as f64;
        assert!(err < tolerance(1e-6), "{name}: max-abs error {err}");
    }
    assert_eq!(opt.steps(), 3);
}
