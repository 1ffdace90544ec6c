//! The feature cache of frozen-encoder work (the linear probe, LP-FT's first stage): a split's
//! L2-normalised image features under the pre-trained model, computed once and kept in
//! `<out>/cache/` under a key naming the model (and its `model_config`), the data (for data on
//! disk, the path, size and modification time of every image file), the split, the
//! preprocessing and the matmul precision.
//!
//! **Memory per example.** The feature, `d × 4` bytes, and the label (4 bytes), held whole in
//! memory by its users and on disk: for ImageNet's 1.28M training images 2.6 GB at d = 512
//! (ViT-B/16), 3.9 GB at d = 768 (ViT-L/14). Writing the file, or reading it back, holds a
//! second copy for that moment. Not compressed: the linear probe fits on every feature at
//! once, in `f32`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::data::files_fingerprint;
use super::Experiment;
use crate::clip::layers::l2_normalize;
use crate::clip::ClipModel;
use crate::error::Result;
use crate::kernels::MatmulPrecision;
use crate::methods::registry::SplitRole;
use crate::train::encode::for_each_encoded;
use crate::train::supervised::TrainSource;

impl Experiment {
    /// Frozen, normalised features of a split, computed once and kept in `cache` under a key
    /// naming the model (spec, config and a checksum of its weights), the data, the split, the
    /// preprocessing and (when not fp32) the matmul precision.
    pub(super) fn cached_features(&self, role: SplitRole, cache: &Path) -> Result<(Vec<f32>, Vec<u32>)> {
        let (source, split) = match role {
            SplitRole::Train => (self.data.train.as_ref(), &self.recipe.data.train_split),
            SplitRole::Validation => (self.val_source("the linear probe")?, &self.recipe.data.val_split),
        };
        let mut checksum = 0f64;
        for (_, tensor) in self.model.tensors() {
            checksum += tensor.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
        let data = &self.recipe.data;
        let dataset = match &data.suite {
            Some(suite) => format!("shiftworld/{suite}/seed{}", self.recipe.seed),
            None => data.root.as_deref().unwrap_or(Path::new("")).display().to_string(),
        };
        let precision = match self.recipe.train.matmul_precision {
            MatmulPrecision::Fp32 => String::new(),
            other => format!("|matmul {}", other.name()),
        };
        let files = self.data.files.as_ref().and_then(|(train, val)| match role {
            SplitRole::Train => Some(train),
            SplitRole::Validation => val.as_ref(),
        });
        let content =
            files.map(|split| format!("|files {:016x}", files_fingerprint(split))).unwrap_or_default();
        let config = self.recipe.model_config.as_ref().map(|c| format!("|config {c}")).unwrap_or_default();
        let key = format!(
            "{}{config}|{checksum:e}|{dataset}|{split}|{}|{}{precision}{content}",
            self.recipe.model,
            self.preprocess.id(),
            source.len()
        );
        let path = cache.join(format!("features-{:016x}.safetensors", crate::rng::fnv1a(key.as_bytes())));
        if let Ok(tensors) = candle_core::safetensors::load(&path, &Device::Cpu) {
            if let (Some(x), Some(y)) = (tensors.get("features"), tensors.get("labels")) {
                return Ok((x.flatten_all()?.to_vec1()?, y.to_dtype(candle_core::DType::U32)?.to_vec1()?));
            }
        }
        let (x, y) = features(&self.model, source)?;
        let n = y.len();
        let tensors = vec![
            ("features".to_string(), Tensor::from_slice(&x, (n, x.len() / n.max(1)), &Device::Cpu)?),
            ("labels".to_string(), Tensor::from_slice(&y, n, &Device::Cpu)?), // stored as f32 (exact below 2^24)
        ];
        std::fs::create_dir_all(cache).map_err(crate::train::run_dir::io_error(cache))?;
        let metadata = HashMap::from([("robustft.features".to_string(), key)]);
        crate::clip::checkpoint::write_safetensors(&path, &tensors, metadata)?;
        Ok((x, y))
    }
}

/// L2-normalised frozen image features `[n, d]` (flat) and labels of a whole source.
fn features(model: &ClipModel, source: &dyn TrainSource) -> Result<(Vec<f32>, Vec<u32>)> {
    let (mut values, mut labels) = (Vec::new(), Vec::new());
    for_each_encoded(model, source, &mut |kept, features| {
        values.extend(l2_normalize(features)?.flatten_all()?.to_vec1::<f32>()?);
        labels.extend(kept.iter().map(|&i| source.label(i)));
        Ok(())
    })?;
    Ok((values, labels))
}
