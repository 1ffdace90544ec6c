//! Predictors: how image features become class probabilities at evaluation time (the
//! "Predictor" part of a method, docs/design.md). A predictor is one or more linear heads over
//! L2-normalised image features, each with a mixing weight; the probabilities are
//! `Σ_h w_h · softmax(project(z_h))`. One head with weight 1 is the ordinary classifier
//! (zero-shot, LP, FT); DRM's inference (methods.md §1, step 5, DRM `src/eval_helper.py`) is
//! `β · softmax(z_df) + (1 − β) · softmax(z_cd)`, mixed in probability space, with a dataset's
//! logit projection (ImageNet-R/-A, ObjectNet) applied to each head **before** its softmax.
//! A trained head is stored beside its model as `head.safetensors` (`head.weight`
//! `[classes, embed_dim]`, optional `head.bias` `[classes]`).
//!
//! Evaluation asks an [`ImagePredictor`] for the probabilities of preprocessed images under the
//! evaluated model: a [`Predictor`] reads that model's image features only; a predictor that
//! also needs another model's features (VRF's zero-shot side, `crate::methods::vrf`) encodes
//! the images with it too.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::clip::checkpoint::write_safetensors;
use crate::clip::layers::{l2_normalize, softmax_last_dim};
use crate::clip::{CheckpointError, ClipModel};
use crate::data::LogitProjection;
use crate::error::{Error, Result};
use crate::zeroshot::ZeroShotHead;

/// A fixed linear head over normalised features: `z = normalize(f) · Wᵀ + b`.
#[derive(Clone, Debug)]
pub struct Head {
    /// `[classes, embed_dim]`.
    pub weight: Tensor,
    /// `[classes]`, absent for zero-shot heads.
    pub bias: Option<Tensor>,
}

impl Head {
    /// `features`: `[n, embed_dim]` (unnormalised) -> `[n, classes]`.
    pub fn logits(&self, features: &Tensor) -> Result<Tensor> {
        let logits = l2_normalize(features)?.matmul(&self.weight.t()?)?;
        Ok(match &self.bias {
            Some(bias) => logits.broadcast_add(bias)?,
            None => logits,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.weight.dim(0).unwrap_or(0)
    }

    /// The zero-shot head of `model`'s text tower over `prompts` (methods.md §0.1).
    pub fn zero_shot(model: &ClipModel, prompts: &[Vec<String>]) -> Result<Head> {
        Ok(Head::from(&ZeroShotHead::build(model, &crate::zeroshot::tokenizer_for(model)?, prompts)?))
    }

    /// WiSE-FT of two heads over the same classes: `(1 − α)·self + α·other` (a missing bias
    /// counts as zeros).
    pub fn lerp(&self, other: &Head, alpha: f64) -> Result<Head> {
        let weight = crate::train::wiseft::lerp(&self.weight, &other.weight, alpha)?;
        let bias = match (&self.bias, &other.bias) {
            (None, None) => None,
            (a, b) => {
                let zeros = Tensor::zeros(self.num_classes(), self.weight.dtype(), self.weight.device())?;
                let (a, b) = (a.clone().unwrap_or(zeros.clone()), b.clone().unwrap_or(zeros));
                Some(crate::train::wiseft::lerp(&a, &b, alpha)?)
            }
        };
        Ok(Head { weight, bias })
    }

    /// Writes the head as `head.weight` (and `head.bias`) with `metadata`, atomically.
    pub fn save(&self, path: &Path, metadata: HashMap<String, String>) -> Result<()> {
        let mut tensors = vec![("head.weight".to_string(), self.weight.clone())];
        tensors.extend(self.bias.iter().map(|b| ("head.bias".to_string(), b.clone())));
        Ok(write_safetensors(path, &tensors, metadata)?)
    }

    /// [`Head::save`] with the class names it was trained on, in label order, stored in the
    /// metadata under [`HEAD_CLASSES_KEY`] (a JSON list) so that [`Head::check_classes`] can
    /// compare them with a dataset's.
    pub fn save_with_classes(
        &self,
        path: &Path,
        mut metadata: HashMap<String, String>,
        classes: &[String],
    ) -> Result<()> {
        let rows = self.weight.dims().first().copied().unwrap_or(0);
        if rows != classes.len() {
            return Err(Error::Invalid {
                what: format!("head {}", path.display()),
                reason: format!("{rows} rows for {} class names", classes.len()),
            });
        }
        metadata.insert(HEAD_CLASSES_KEY.into(), serde_json::to_string(classes).expect("serialisable"));
        self.save(path, metadata)
    }

    /// Refuses to apply the head stored at `path` to a dataset with classes `classes`: its row
    /// count must be the class count, and when the file names its classes (heads saved by
    /// [`Head::save_with_classes`]) they must be the dataset's, in the same order.
    pub fn check_classes(&self, path: &Path, classes: &[String]) -> Result<()> {
        let invalid = |reason: String| Error::Invalid { what: format!("head {}", path.display()), reason };
        let rows = self.weight.dims()[0];
        if rows != classes.len() {
            return Err(invalid(format!("has {rows} classes, but the dataset has {}", classes.len())));
        }
        let Some(stored) = stored_classes(path)? else { return Ok(()) };
        match stored.iter().zip(classes).position(|(a, b)| a != b) {
            None => Ok(()),
            Some(k) => Err(invalid(format!(
                "class {k} is \"{}\" in the head but \"{}\" in the dataset (the class lists differ in \
                 names or order)",
                stored[k], classes[k]
            ))),
        }
    }

    /// Reads a head written by [`Head::save`]: `head.weight` `[classes, dim]` and an optional
    /// `head.bias` `[classes]`, nothing else.
    pub fn load(path: &Path, device: &Device) -> Result<Head> {
        let mut tensors = candle_core::safetensors::load(path, device)
            .map_err(|e| CheckpointError::from(e).in_file(path))?;
        let invalid = |reason: String| Error::Invalid { what: format!("head {}", path.display()), reason };
        let weight =
            tensors.remove("head.weight").ok_or_else(|| invalid("has no `head.weight` tensor".into()))?;
        let bias = tensors.remove("head.bias");
        if let Some(key) = tensors.keys().next() {
            return Err(invalid(format!("unexpected tensor `{key}`")));
        }
        let classes = match weight.dims() {
            [classes, _] => *classes,
            dims => return Err(invalid(format!("`head.weight` has shape {dims:?}, not [classes, dim]"))),
        };
        if let Some(dims) = bias.as_ref().map(Tensor::dims).filter(|dims| *dims != [classes]) {
            return Err(invalid(format!("`head.bias` has shape {dims:?}, not [{classes}]")));
        }
        let f32 = |t: Tensor| t.to_dtype(DType::F32);
        Ok(Head { weight: f32(weight)?, bias: bias.map(f32).transpose()? })
    }
}

/// Metadata key of the class names a saved head was trained on (a JSON list, label order).
pub const HEAD_CLASSES_KEY: &str = "robustft.classes";

/// The class names stored in a head file's metadata, if any.
fn stored_classes(path: &Path) -> Result<Option<Vec<String>>> {
    let bytes =
        std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
    let invalid = |reason: String| Error::Invalid { what: format!("head {}", path.display()), reason };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
    let Some(text) = header.metadata().as_ref().and_then(|m| m.get(HEAD_CLASSES_KEY)) else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| invalid(format!("metadata `{HEAD_CLASSES_KEY}` is not a list of class names: {e}")))
}

impl From<&ZeroShotHead> for Head {
    fn from(head: &ZeroShotHead) -> Self {
        Head { weight: head.weights().clone(), bias: None }
    }
}

/// How a trained model predicts through its own text tower — FLYP's default-prompt head, or
/// DRM's mixture of the default-prompt and concept-description heads — kept beside its weights
/// as [`TEXT_PREDICTOR_FILE`] so that `robustft eval` predicts exactly as the run did.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextPredictor {
    /// Default prompts of each class.
    pub prompts: Vec<Vec<String>>,
    /// Concept descriptions of each class, for DRM's mixture.
    pub descriptions: Option<Vec<Vec<String>>>,
    /// Weight of the default-prompt head in the mixture.
    pub beta: f64,
}

/// The file a [`TextPredictor`] is kept in, beside the model's weights.
pub const TEXT_PREDICTOR_FILE: &str = "predictor.json";

impl TextPredictor {
    /// The predictor of `model`: its heads rebuilt from its text tower.
    pub fn build(&self, model: &ClipModel) -> Result<Predictor> {
        let defaults = Head::zero_shot(model, &self.prompts)?;
        match &self.descriptions {
            None => Ok(Predictor::single(defaults)),
            Some(descriptions) => {
                Predictor::mixture(defaults, Head::zero_shot(model, descriptions)?, self.beta)
            }
        }
    }

    /// Writes it into the model directory `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("serialisable") + "\n";
        Ok(crate::clip::checkpoint::write_atomic(&dir.join(TEXT_PREDICTOR_FILE), text.as_bytes())?)
    }

    /// Reads the one kept in the model directory `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(TEXT_PREDICTOR_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
        serde_json::from_str(&text).map(Some).map_err(|e| Error::Invalid {
            what: path.display().to_string(),
            reason: format!("is not a saved predictor: {e}"),
        })
    }

    /// The number of classes it predicts.
    pub fn num_classes(&self) -> usize {
        self.prompts.len()
    }
}

/// Heads with mixing weights summing to 1.
#[derive(Clone, Debug)]
pub struct Predictor {
    heads: Vec<(f64, Head)>,
}

impl Predictor {
    /// One head.
    pub fn single(head: Head) -> Self {
        Self { heads: vec![(1.0, head)] }
    }

    /// DRM's mixture: `β · softmax(z_df) + (1 − β) · softmax(z_cd)`.
    pub fn mixture(df: Head, cd: Head, beta: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&beta) {
            return Err(Error::Invalid {
                what: format!("beta = {beta}"),
                reason: "must lie in [0, 1]".into(),
            });
        }
        if df.num_classes() != cd.num_classes() {
            return Err(Error::Invalid {
                what: "the DRM heads".into(),
                reason: format!(
                    "{} default-prompt vs {} description classes",
                    df.num_classes(),
                    cd.num_classes()
                ),
            });
        }
        Ok(Self { heads: vec![(beta, df), (1.0 - beta, cd)] })
    }

    /// The number of classes the heads predict (before any projection).
    pub fn num_classes(&self) -> usize {
        self.heads[0].1.num_classes()
    }

    /// `features` `[n, embed_dim]` -> probabilities `[n, classes']`, where `classes'` is the
    /// projection's class count when one is given.
    pub fn probabilities(&self, features: &Tensor, projection: Option<&LogitProjection>) -> Result<Tensor> {
        let mut mixed: Option<Tensor> = None;
        for (weight, head) in &self.heads {
            let logits = project(head.logits(features)?, projection)?;
            let part = (softmax_last_dim(&logits)? * *weight)?;
            mixed = Some(match mixed {
                Some(sum) => (sum + part)?,
                None => part,
            });
        }
        Ok(mixed.expect("a predictor has at least one head"))
    }

    /// The log of [`Predictor::probabilities`], differentiable: one head's log-softmax, or
    /// the log of the mixture (floored at 1e-30 so a vanished probability stays finite).
    pub fn log_probabilities(
        &self,
        features: &Tensor,
        projection: Option<&LogitProjection>,
    ) -> Result<Tensor> {
        match self.heads.as_slice() {
            [(_, head)] => Ok(crate::losses::log_softmax(&project(head.logits(features)?, projection)?)?),
            _ => mixture_log(&self.probabilities(features, projection)?),
        }
    }
}

/// Added to a mixture's probabilities before the log, so a vanished probability stays finite.
const MIXTURE_FLOOR: f64 = 1e-30;

/// The log of mixed probabilities (DRM's β-mixture, VRF's), floored at [`MIXTURE_FLOOR`].
pub fn mixture_log(probabilities: &Tensor) -> Result<Tensor> {
    Ok((probabilities + MIXTURE_FLOOR)?.log()?)
}

/// How evaluation turns a batch of preprocessed images into class probabilities.
pub trait ImagePredictor {
    /// `pixels` `[n, 3, s, s]` -> probabilities `[n, classes']` under the evaluated `model` (no
    /// gradient to its weights), with the split's logit `projection` applied before every
    /// softmax.
    fn image_probabilities(
        &self,
        model: &ClipModel,
        pixels: &Tensor,
        projection: Option<&LogitProjection>,
    ) -> Result<Tensor>;

    /// The log of [`ImagePredictor::image_probabilities`] with a graph back to `pixels` when
    /// they track one (the attacks of `crate::perturb` differentiate through it).
    fn image_log_probabilities(
        &self,
        model: &ClipModel,
        pixels: &Tensor,
        projection: Option<&LogitProjection>,
    ) -> Result<Tensor>;
}

impl ImagePredictor for Predictor {
    fn image_probabilities(
        &self,
        model: &ClipModel,
        pixels: &Tensor,
        projection: Option<&LogitProjection>,
    ) -> Result<Tensor> {
        self.probabilities(&model.no_grad().encode_image(pixels)?, projection)
    }

    fn image_log_probabilities(
        &self,
        model: &ClipModel,
        pixels: &Tensor,
        projection: Option<&LogitProjection>,
    ) -> Result<Tensor> {
        self.log_probabilities(&model.no_grad().encode_image(pixels)?, projection)
    }
}

/// Applies a logit projection, if any, to the columns of `logits` `[n, classes]`
/// (differentiable: a subset is an index selection, a max-pool the maximum of each group's
/// columns; an empty group is `-inf`).
pub fn project(logits: Tensor, projection: Option<&LogitProjection>) -> Result<Tensor> {
    let Some(projection) = projection else { return Ok(logits) };
    let columns = |indices: &[usize]| -> Result<Tensor> {
        let indices: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        Ok(logits.index_select(&Tensor::new(indices, logits.device())?, 1)?)
    };
    match projection {
        LogitProjection::Subset(indices) => columns(indices),
        LogitProjection::MaxPool(groups) => {
            let n = logits.dim(0)?;
            let pooled = groups
                .iter()
                .map(|group| match group.is_empty() {
                    true => Ok(Tensor::full(f32::NEG_INFINITY, (n, 1), logits.device())?),
                    false => Ok(columns(group)?.max_keepdim(1)?),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&pooled, 1)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn head(rows: &[[f32; 2]]) -> Head {
        Head { weight: Tensor::from_vec(rows.concat(), (rows.len(), 2), &Device::Cpu).unwrap(), bias: None }
    }

    #[test]
    fn mixture_is_the_weighted_sum_of_softmaxes() {
        let features = Tensor::new(&[[3.0f32, 4.0]], &Device::Cpu).unwrap();
        let (df, cd) = (head(&[[5.0, 0.0], [0.0, 5.0]]), head(&[[0.0, 1.0], [1.0, 0.0]]));
        let mixed = Predictor::mixture(df.clone(), cd.clone(), 0.25).unwrap();
        let p = mixed.probabilities(&features, None).unwrap().to_vec2::<f32>().unwrap();
        let softmax = |z: [f32; 2]| {
            let e = [z[0].exp(), z[1].exp()];
            [e[0] / (e[0] + e[1]), e[1] / (e[0] + e[1])]
        };
        // normalised feature (0.6, 0.8): z_df = (3, 4), z_cd = (0.8, 0.6)
        let (p_df, p_cd) = (softmax([3.0, 4.0]), softmax([0.8, 0.6]));
        for k in 0..2 {
            assert!((p[0][k] - (0.25 * p_df[k] + 0.75 * p_cd[k])).abs() < 1e-6);
        }
    }

    #[test]
    fn projection_comes_before_the_softmax() {
        let features = Tensor::new(&[[1.0f32, 0.0]], &Device::Cpu).unwrap();
        let three = Head {
            weight: Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0], [2.0, 0.0]], &Device::Cpu).unwrap(),
            bias: None,
        };
        let p = Predictor::single(three)
            .probabilities(&features, Some(&LogitProjection::Subset(vec![2, 1])))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // softmax over the kept logits (2, 0) only
        let expected = 2f32.exp() / (2f32.exp() + 1.0);
        assert!((p[0][0] - expected).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn head_lerp_treats_a_missing_bias_as_zero() {
        let a = head(&[[1.0, 0.0]]);
        let b = Head { bias: Some(Tensor::new(&[2.0f32], &Device::Cpu).unwrap()), ..head(&[[3.0, 0.0]]) };
        let mid = a.lerp(&b, 0.5).unwrap();
        assert_eq!(mid.weight.to_vec2::<f32>().unwrap(), vec![vec![2.0, 0.0]]);
        assert_eq!(mid.bias.unwrap().to_vec1::<f32>().unwrap(), vec![1.0]);
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("robustft-head-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("head.safetensors")
    }

    #[test]
    fn a_saved_head_loads_back() {
        let path = scratch("roundtrip");
        let saved = Head {
            bias: Some(Tensor::new(&[0.5f32, -1.0], &Device::Cpu).unwrap()),
            ..head(&[[1.0, 2.0], [3.0, 4.0]])
        };
        saved.save(&path, HashMap::new()).unwrap();
        let loaded = Head::load(&path, &Device::Cpu).unwrap();
        assert_eq!(loaded.weight.to_vec2::<f32>().unwrap(), vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
        assert_eq!(loaded.bias.unwrap().to_vec1::<f32>().unwrap(), vec![0.5, -1.0]);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_malformed_head_file_is_refused_naming_the_file() {
        let path = scratch("malformed");
        let bias = Tensor::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let one_class = head(&[[1.0, 0.0]]).weight;
        let cases = [
            (vec![("weights".to_string(), bias.clone())], "no `head.weight`"),
            (vec![("head.weight".to_string(), bias.clone())], "not [classes, dim]"),
            (vec![("head.weight".to_string(), one_class), ("head.bias".to_string(), bias)], "not [1]"),
        ];
        for (tensors, reason) in cases {
            write_safetensors(&path, &tensors, HashMap::new()).unwrap();
            let err = Head::load(&path, &Device::Cpu).unwrap_err().to_string();
            assert!(err.contains(reason) && err.contains("head.safetensors"), "{err}");
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn beta_outside_the_unit_interval_is_refused() {
        assert!(Predictor::mixture(head(&[[1.0, 0.0]]), head(&[[1.0, 0.0]]), 1.5).is_err());
    }
}
