//! The device the parity suites run on: `ROBUSTFT_TEST_DEVICE` = `cpu` (the default), `cuda`
//! or `cuda:N` (a build with `--features cuda`), and the tolerances that device needs.
//!
//! On CUDA, cuBLAS and the parallel reductions sum in another order than the CPU kernels (fp32
//! throughout; candle does not use TF32 unless asked), so every bound is widened by
//! [`CUDA_TOLERANCE_FACTOR`].

#![allow(dead_code)] // each test crate uses its own subset

use std::sync::OnceLock;

use candle_core::Device;
use robustft::device::DeviceChoice;

/// How much wider a CPU tolerance is on CUDA.
pub const CUDA_TOLERANCE_FACTOR: f64 = 10.0;

/// The device named by `ROBUSTFT_TEST_DEVICE` (opened once per test binary); panics with the
/// reason when it cannot be opened, so a GPU run never silently tests the CPU.
pub fn test_device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let spec = std::env::var("ROBUSTFT_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
            let choice: DeviceChoice = spec.parse().unwrap_or_else(|e| panic!("ROBUSTFT_TEST_DEVICE: {e}"));
            choice
                .open()
                .unwrap_or_else(|e| panic!("ROBUSTFT_TEST_DEVICE={spec}: cannot open the device: {e}"))
        })
        .clone()
}

/// `cpu_bound` on the CPU, widened by [`CUDA_TOLERANCE_FACTOR`] on CUDA.
pub fn tolerance(cpu_bound: f64) -> f64 {
    if test_device().is_cuda() {
        cpu_bound * CUDA_TOLERANCE_FACTOR
    } else {
        cpu_bound
    }
}
