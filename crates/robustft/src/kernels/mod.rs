//! Fused CPU kernels for the hot path of the CLIP transformer, as candle custom ops with
//! backward passes: LayerNorm, softmax over the last dimension (optionally with an additive
//! mask fused in), bias add + MLP activation, bias add + residual add, and multi-head
//! attention read and written in the merged-head layout.
//!
//! Each public function runs its fused kernel on contiguous f32 CPU tensors (one pass per row
//! instead of one pass and one allocation per primitive op, parallel over blocks of rows) and
//! otherwise falls back to the primitive-op formulation in [`reference`], so CUDA and other
//! dtypes keep working with the same values and gradients.

mod activation;
mod attention;
mod layer_norm;
pub mod reference;
mod residual;
mod rows;
mod softmax;

pub use activation::bias_activation;
pub use attention::attention;
pub use layer_norm::layer_norm;
pub use residual::bias_residual;
pub use softmax::{masked_softmax_last_dim, softmax_last_dim};
