//! Differentiable transformer building blocks shared by both CLIP towers: linear layers,
//! LayerNorm, the MLP activations, multi-head self-attention and the pre-LayerNorm residual
//! block of OpenAI CLIP (`clip/model.py: ResidualAttentionBlock`; HF `CLIPEncoderLayer`).
//!
//! Every op here has a backward pass. candle-nn's fused `layer_norm` and `softmax_last_dim`
//! have none (gradients silently stop there), so LayerNorm, the attention softmax, the MLP
//! activation and the residual adds run through this crate's fused kernels
//! ([`crate::kernels`], custom ops with backward passes, falling back to differentiable
//! primitives off the CPU); the gradient parity test against PyTorch
//! (`tests/model_parity.rs`) guards this.

use candle_core::{Device, Result, Tensor, D};

use super::config::Activation;
use super::params::WeightView;
use super::CheckpointError;
use crate::kernels;
pub use crate::kernels::softmax_last_dim;

/// Fetches the tensor of parameter `name` from `params`.
pub(crate) fn param(params: WeightView<'_>, name: &str) -> std::result::Result<Tensor, CheckpointError> {
    params.tensor(name).ok_or_else(|| CheckpointError::MissingKey { key: name.to_string() })
}

/// `y = x Wᵀ + b` over the last dimension of `x` (any leading shape).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(params: WeightView<'_>, prefix: &str) -> std::result::Result<Self, CheckpointError> {
        Ok(Self {
            weight: param(params, &format!("{prefix}.weight"))?,
            bias: Some(param(params, &format!("{prefix}.bias"))?),
        })
    }

    /// A projection without bias whose weight is stored as `[out, in]`.
    pub fn load_no_bias(params: WeightView<'_>, name: &str) -> std::result::Result<Self, CheckpointError> {
        Ok(Self { weight: param(params, name)?, bias: None })
    }

    /// `x`: `[..., in]` -> `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        kernels::linear(x, &self.weight, self.bias.as_ref())
    }

    /// The linear map whose outputs are those of `parts` side by side: weights stacked by
    /// rows, biases concatenated (zeros for a part without bias). Gradients flow back to
    /// every part's parameters.
    fn stacked(parts: &[&Linear]) -> Result<Self> {
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let biases = parts.iter().map(|p| p.bias_or_zeros()).collect::<Result<Vec<_>>>()?;
        Ok(Self { weight: Tensor::cat(&weights, 0)?, bias: Some(Tensor::cat(&biases, 0)?) })
    }

    /// The bias, or zeros of the output width for a projection without one.
    fn bias_or_zeros(&self) -> Result<Tensor> {
        match &self.bias {
            Some(b) => Ok(b.clone()),
            None => Tensor::zeros(self.weight.dim(0)?, self.weight.dtype(), self.weight.device()),
        }
    }

    /// `activation(x Wᵀ + b)`, the bias add fused into the activation (written over the
    /// product when no gradient is tracked).
    pub fn forward_activated(&self, x: &Tensor, activation: Activation) -> Result<Tensor> {
        kernels::bias_activation_in_place(self.project(x)?, &self.bias_or_zeros()?, activation)
    }

    /// `residual + x Wᵀ + b`. With gradients one graph node that keeps `x`, not the
    /// product, for the backward pass; without, the product and then the bias and residual
    /// adds fused in one pass.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if x.track_op() || residual.track_op() || self.tracks_gradient() {
            return kernels::residual_linear(x, &self.weight, self.bias.as_ref(), residual, None);
        }
        let y = self.project(x)?;
        match &self.bias {
            Some(b) => kernels::bias_residual(&y, b, residual),
            None => residual + y,
        }
    }

    /// Whether the weight or the bias tracks a gradient.
    fn tracks_gradient(&self) -> bool {
        self.weight.track_op() || self.bias.as_ref().is_some_and(Tensor::track_op)
    }

    /// The weight and the bias, as the fused kernels take them.
    fn parameters(&self) -> (&Tensor, Option<&Tensor>) {
        (&self.weight, self.bias.as_ref())
    }

    /// `x Wᵀ` without the bias: `[..., in]` -> `[..., out]`.
    fn project(&self, x: &Tensor) -> Result<Tensor> {
        kernels::linear(x, &self.weight, None)
    }
}

/// LayerNorm over the last dimension (the fused kernel of [`kernels::layer_norm`]).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn load(
        params: WeightView<'_>,
        prefix: &str,
        eps: f64,
    ) -> std::result::Result<Self, CheckpointError> {
        Ok(Self {
            weight: param(params, &format!("{prefix}.weight"))?,
            bias: param(params, &format!("{prefix}.bias"))?,
            eps,
        })
    }

    /// `x`: `[..., width]` -> same shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        kernels::layer_norm(x, &self.weight, &self.bias, self.eps)
    }

    /// Whether the weight or the bias tracks a gradient.
    fn tracks_gradient(&self) -> bool {
        self.weight.track_op() || self.bias.track_op()
    }

    /// The weight, the bias and eps, as the fused kernels take them.
    fn parameters(&self) -> (&Tensor, &Tensor, f64) {
        (&self.weight, &self.bias, self.eps)
    }
}

/// The additive causal mask of the text tower: `[t, t]`, 0 on and below the diagonal,
/// `-inf` above it.
pub fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> =
        (0..t).flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (t, t), device)
}

/// Multi-head self-attention with separate q/k/v projections (HF layout; OpenCLIP's fused
/// `in_proj_weight` is split at load time), run as one stacked projection per forward pass
/// and the fused attention kernel ([`kernels::attention`]).
#[derive(Clone, Debug)]
pub struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl SelfAttention {
    pub fn load(
        params: WeightView<'_>,
        prefix: &str,
        heads: usize,
    ) -> std::result::Result<Self, CheckpointError> {
        Ok(Self {
            q: Linear::load(params, &format!("{prefix}.q_proj"))?,
            k: Linear::load(params, &format!("{prefix}.k_proj"))?,
            v: Linear::load(params, &format!("{prefix}.v_proj"))?,
            out: Linear::load(params, &format!("{prefix}.out_proj"))?,
            heads,
        })
    }

    /// `x + attention(norm(x))` with `x`: `[b, t, width]` and `mask`: optional additive
    /// `[t, t]`. The LayerNorm, the stacked q/k/v projection and attention run as one graph
    /// node, which keeps `x` and the projection (in bf16 under bf16 precision) for the
    /// backward pass, where the LayerNorm is recomputed ([`kernels::normed_attention`]).
    pub fn forward_residual(&self, norm: &LayerNorm, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let qkv = Linear::stacked(&[&self.q, &self.k, &self.v])?;
        let merged = kernels::normed_attention(x, norm.parameters(), qkv.parameters(), self.heads, mask)?;
        self.out.forward_residual(&merged, x)
    }
}

/// The pre-LayerNorm residual block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Clone, Debug)]
pub struct ResidualBlock {
    ln1: LayerNorm,
    attn: SelfAttention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl ResidualBlock {
    pub fn load(
        params: WeightView<'_>,
        prefix: &str,
        heads: usize,
        activation: Activation,
        eps: f64,
    ) -> std::result::Result<Self, CheckpointError> {
        Ok(Self {
            ln1: LayerNorm::load(params, &format!("{prefix}.layer_norm1"), eps)?,
            attn: SelfAttention::load(params, &format!("{prefix}.self_attn"), heads)?,
            ln2: LayerNorm::load(params, &format!("{prefix}.layer_norm2"), eps)?,
            fc1: Linear::load(params, &format!("{prefix}.mlp.fc1"))?,
            fc2: Linear::load(params, &format!("{prefix}.mlp.fc2"))?,
            activation,
        })
    }

    /// `x`: `[b, t, width]` -> same shape.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = self.attn.forward_residual(&self.ln1, x, mask)?;
        self.mlp_residual(&x)
    }

    /// `x + mlp(ln2(x))`. With gradients one graph node that keeps `x` and the first layer's
    /// output (in bf16 under bf16 precision) for the backward pass, where the LayerNorm and
    /// the activation are recomputed ([`kernels::mlp_residual`]). Without, the activation is
    /// written over the first layer's product.
    fn mlp_residual(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op()
            || self.ln2.tracks_gradient()
            || self.fc1.tracks_gradient()
            || self.fc2.tracks_gradient()
        {
            let (fc1, fc2) = (self.fc1.parameters(), self.fc2.parameters());
            return kernels::mlp_residual(x, self.ln2.parameters(), fc1, fc2, self.activation);
        }
        let hidden = self.fc1.forward_activated(&self.ln2.forward(x)?, self.activation)?;
        self.fc2.forward_residual(&hidden, x)
    }
}

/// A stack of residual blocks (`<prefix>.layers.N`).
#[derive(Clone, Debug)]
pub struct Encoder {
    blocks: Vec<ResidualBlock>,
}

impl Encoder {
    pub fn load(
        params: WeightView<'_>,
        prefix: &str,
        layers: usize,
        heads: usize,
        activation: Activation,
        eps: f64,
    ) -> std::result::Result<Self, CheckpointError> {
        let blocks = (0..layers)
            .map(|i| ResidualBlock::load(params, &format!("{prefix}.layers.{i}"), heads, activation, eps))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Self { blocks })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.blocks.iter().try_fold(x.clone(), |h, block| block.forward(&h, mask))
    }
}

/// L2-normalises the rows of `x` (`[n, d]`).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{Activation, ResidualBlock};
    use crate::clip::params::ParamStore;
    use crate::rng::SplitMix64;

    fn random(shape: &[usize], rng: &mut SplitMix64) -> Tensor {
        let values: Vec<f32> = (0..shape.iter().product()).map(|_| 0.3 * rng.normal()).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// A block of width 64, 4 heads and an MLP of 256, with random parameters.
    fn block_params(rng: &mut SplitMix64) -> ParamStore {
        let (width, mlp) = (64, 256);
        let mut shapes = vec![
            ("layer_norm1".to_string(), vec![width], vec![width]),
            ("layer_norm2".to_string(), vec![width], vec![width]),
            ("mlp.fc1".to_string(), vec![mlp, width], vec![mlp]),
            ("mlp.fc2".to_string(), vec![width, mlp], vec![width]),
        ];
        for projection in ["q", "k", "v", "out"] {
            shapes.push((format!("self_attn.{projection}_proj"), vec![width, width], vec![width]));
        }
        let tensors = shapes.into_iter().flat_map(|(name, weight, bias)| {
            let weight = (format!("block.{name}.weight"), random(&weight, rng));
            [weight, (format!("block.{name}.bias"), random(&bias, rng))]
        });
        ParamStore::from_tensors(tensors.collect::<Vec<_>>()).unwrap()
    }

    /// With gradients the block runs its branch ends as nodes that recompute LayerNorm and the
    /// activation in the backward pass; without, as chained kernels written in place. Both give
    /// the same output to the bit.
    #[test]
    fn a_block_gives_the_same_output_with_and_without_gradients() {
        let mut rng = SplitMix64::new(7);
        let params = block_params(&mut rng);
        let x = random(&[2, 5, 64], &mut rng);
        for activation in [Activation::QuickGelu, Activation::Gelu] {
            let [tracked, detached] = [params.tracked(), params.detached()]
                .map(|view| ResidualBlock::load(view, "block", 4, activation, 1e-5).unwrap());
            let trained = tracked.forward(&x, None).unwrap();
            assert!(trained.track_op(), "the tracked block builds a graph");
            let inferred = detached.forward(&x, None).unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
            };
            assert_eq!(bits(&trained), bits(&inferred), "{activation:?}");
        }
    }
}
