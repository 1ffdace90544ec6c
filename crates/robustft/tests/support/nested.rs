//! Reading the reference fixtures' tensors: a JSON number or nested list of numbers (any rank),
//! as written by `scripts/fixtures/*.py` (inputs as the shortest decimals of float32 values).

#![allow(dead_code)] // each test crate uses its own subset

use candle_core::{DType, Device, Tensor, Var};
use serde::Deserialize;

/// A JSON number or nested list of numbers: a tensor of any rank.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Nested {
    Scalar(f64),
    List(Vec<Nested>),
}

impl Nested {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Nested::Scalar(_) => vec![],
            Nested::List(items) => {
                let mut shape = vec![items.len()];
                shape.extend(items.first().map(Nested::shape).unwrap_or_default());
                shape
            }
        }
    }

    pub fn values(&self) -> Vec<f64> {
        match self {
            Nested::Scalar(x) => vec![*x],
            Nested::List(items) => items.iter().flat_map(Nested::values).collect(),
        }
    }

    pub fn f32s(&self) -> Vec<f32> {
        self.values().iter().map(|&x| x as f32).collect()
    }

    /// The float32 tensor (inputs are written as float32 values).
    pub fn tensor(&self) -> Tensor {
        self.tensor_on(&Device::Cpu)
    }

    /// The float32 tensor on `device`.
    pub fn tensor_on(&self, device: &Device) -> Tensor {
        Tensor::from_vec(self.f32s(), self.shape(), device).unwrap()
    }

    pub fn var(&self) -> Var {
        self.var_on(&Device::Cpu)
    }

    /// A variable on `device`.
    pub fn var_on(&self, device: &Device) -> Var {
        Var::from_tensor(&self.tensor_on(device)).unwrap()
    }
}

/// The value of a one-element tensor, as f64.
pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// max |got − want| over a tensor of `want`'s shape.
pub fn max_diff(got: &Tensor, want: &Nested) -> f64 {
    assert_eq!(got.dims(), want.shape().as_slice(), "shapes differ");
    let got = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    got.iter().zip(want.values()).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max)
}
