//! Frozen image features of a whole training source, a chunk of images at a time: what the
//! linear probe's feature cache, DRM's core predictions and VRF's zero-shot side all read
//! (unreadable images are left out, as every [`TrainSource`] reports them).

use candle_core::Tensor;

use super::supervised::TrainSource;
use crate::clip::ClipModel;
use crate::error::Result;

/// Images encoded per forward pass.
pub const CHUNK: usize = 256;

/// Runs `visit(kept indices, image features [n, d])` over every readable image of `source`,
/// without a graph, in source order.
pub fn for_each_encoded(
    model: &ClipModel,
    source: &dyn TrainSource,
    visit: &mut dyn FnMut(&[usize], &Tensor) -> Result<()>,
) -> Result<()> {
    let size = source.image_size();
    let all: Vec<usize> = (0..source.len()).collect();
    for chunk in all.chunks(CHUNK) {
        let (pixels, kept) = source.load(chunk)?;
        if kept.is_empty() {
            continue;
        }
        let images = Tensor::from_vec(pixels, (kept.len(), 3, size, size), model.device())?;
        visit(&kept, &model.no_grad().encode_image(&images)?)?;
    }
    Ok(())
}
