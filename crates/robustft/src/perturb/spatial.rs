//! The spatial attack of Engstrom et al. (ICML 2019, "Exploring the Landscape of Spatial
//! Robustness"): the worst of a grid of small rotations and translations. Each image is
//! rotated about its centre and shifted, sampled bilinearly with black (zero) fill outside the
//! source, as the paper's grid attack does; an example counts as broken when any transform is
//! misclassified, and otherwise the transform of highest cross-entropy is kept.
//!
//! The grid (this project's default, smaller than the paper's 31 × 5 × 5 for CIFAR) scales with
//! the budget θ (`eps`, default 30°): rotations of `−θ, −θ/2, 0, θ/2, θ` degrees and shifts of
//! `−s, 0, +s` pixels on both axes with `s = (θ/30°)·10%` of the image side (the paper's ±30°
//! and ±3 of 32 pixels at θ = 30°; θ = 0 is the identity): 45 transforms.

use candle_core::Tensor;

use super::{argmax_rows, per_example_loss, AttackLoss, PixelClassifier};
use crate::error::Result;

/// Rotations per grid (symmetric about 0).
const ROTATIONS: usize = 5;
/// Largest shift as a fraction of the image side at a 30° budget.
const SHIFT_AT_30_DEGREES: f32 = 0.1;
/// Shifts per axis (symmetric about 0).
const SHIFTS: usize = 3;

/// One rotation (degrees) and shift (pixels) of the grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transform {
    pub degrees: f32,
    pub dx: f32,
    pub dy: f32,
}

/// The grid for images of side `size` and largest rotation `max_degrees`.
pub fn grid(max_degrees: f32, size: usize) -> Vec<Transform> {
    let spread = |count: usize, extent: f32| -> Vec<f32> {
        (0..count).map(|i| extent * (2.0 * i as f32 / (count - 1) as f32 - 1.0)).collect()
    };
    let shifts = spread(SHIFTS, SHIFT_AT_30_DEGREES * max_degrees / 30.0 * size as f32);
    let mut transforms = Vec::new();
    for degrees in spread(ROTATIONS, max_degrees) {
        for &dx in &shifts {
            for &dy in &shifts {
                transforms.push(Transform { degrees, dx, dy });
            }
        }
    }
    transforms
}

/// `image` `[c, size, size]` rotated by `t.degrees` about its centre and shifted by
/// `(t.dx, t.dy)` pixels (bilinear; zero outside the source).
pub fn apply(image: &[f32], size: usize, t: Transform) -> Vec<f32> {
    let channels = image.len() / (size * size);
    let (sin, cos) = t.degrees.to_radians().sin_cos();
    let centre = (size as f32 - 1.0) / 2.0;
    let mut out = vec![0.0; image.len()];
    for y in 0..size {
        for x in 0..size {
            let (px, py) = (x as f32 - centre - t.dx, y as f32 - centre - t.dy);
            let u = cos * px + sin * py + centre;
            let v = -sin * px + cos * py + centre;
            for c in 0..channels {
                let plane = &image[c * size * size..(c + 1) * size * size];
                out[c * size * size + y * size + x] = bilinear(plane, size, u, v);
            }
        }
    }
    out
}

/// The bilinear sample of `plane` `[size, size]` at `(u, v)`, zero outside.
fn bilinear(plane: &[f32], size: usize, u: f32, v: f32) -> f32 {
    let (x0, y0) = (u.floor(), v.floor());
    let (fx, fy) = (u - x0, v - y0);
    let at = |x: f32, y: f32| -> f32 {
        let inside = x >= 0.0 && y >= 0.0 && x < size as f32 && y < size as f32;
        if inside {
            plane[y as usize * size + x as usize]
        } else {
            0.0
        }
    };
    let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1.0, y0) * fx;
    let bottom = at(x0, y0 + 1.0) * (1.0 - fx) + at(x0 + 1.0, y0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// The worst transform of the grid for each of `images` `[n, 3, s, s]` (pixels) of `labels`.
pub fn worst_of_grid(
    classifier: &dyn PixelClassifier,
    images: &Tensor,
    labels: &Tensor,
    max_degrees: f32,
) -> Result<Tensor> {
    let shape = images.dims().to_vec();
    let size = shape[3];
    let clean = images.flatten_from(1)?.to_vec2::<f32>()?;
    let targets = labels.to_vec1::<u32>()?;
    // Per example: (broken, loss, image) of the worst transform so far.
    let mut worst: Vec<(bool, f32, Vec<f32>)> =
        clean.iter().map(|x| (false, f32::NEG_INFINITY, x.clone())).collect();
    for transform in grid(max_degrees, size) {
        let moved: Vec<Vec<f32>> = clean.iter().map(|x| apply(x, size, transform)).collect();
        let batch = Tensor::from_vec(moved.concat(), shape.as_slice(), images.device())?;
        let logits = classifier.logits(&batch)?.detach();
        let losses = per_example_loss(AttackLoss::CrossEntropy, &logits, labels)?.to_vec1::<f32>()?;
        let predicted = argmax_rows(&logits.to_vec2::<f32>()?);
        for (i, image) in moved.into_iter().enumerate() {
            let broken = predicted[i] != targets[i] as usize;
            let (was_broken, was_loss, _) = &worst[i];
            if (broken, losses[i]) > (*was_broken, *was_loss) {
                worst[i] = (broken, losses[i], image);
            }
        }
    }
    let flat: Vec<f32> = worst.into_iter().flat_map(|(_, _, image)| image).collect();
    Ok(Tensor::from_vec(flat, shape.as_slice(), images.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_transform_keeps_the_image_and_a_quarter_turn_rotates_it() {
        let image: Vec<f32> = (0..9).map(|v| v as f32).collect();
        assert_eq!(apply(&image, 3, Transform { degrees: 0.0, dx: 0.0, dy: 0.0 }), image);
        // 90°: output (x, y) samples source (u, v) = (y, 2 − x) about the centre (1, 1).
        let turned = apply(&image, 3, Transform { degrees: 90.0, dx: 0.0, dy: 0.0 });
        let expected = [6.0, 3.0, 0.0, 7.0, 4.0, 1.0, 8.0, 5.0, 2.0];
        for (a, b) in turned.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{turned:?}");
        }
    }

    #[test]
    fn a_shift_moves_pixels_and_fills_with_zero() {
        let image: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let shifted = apply(&image, 3, Transform { degrees: 0.0, dx: 1.0, dy: 0.0 });
        assert_eq!(shifted, vec![0.0, 1.0, 2.0, 0.0, 4.0, 5.0, 0.0, 7.0, 8.0]);
    }

    #[test]
    fn the_grid_has_45_transforms_including_the_identity() {
        let transforms = grid(30.0, 32);
        assert_eq!(transforms.len(), 45);
        assert!(transforms.contains(&Transform { degrees: 0.0, dx: 0.0, dy: 0.0 }));
        assert!(transforms.iter().all(|t| t.degrees.abs() <= 30.0 && t.dx.abs() <= 3.2 + 1e-6));
        assert!(transforms.iter().any(|t| (t.dx - 3.2).abs() < 1e-5 && (t.degrees + 30.0).abs() < 1e-5));
        let identity = Transform { degrees: 0.0, dx: 0.0, dy: 0.0 };
        assert!(grid(0.0, 32).iter().all(|t| *t == identity));
    }
}
