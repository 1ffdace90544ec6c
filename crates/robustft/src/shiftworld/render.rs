//! Rendering a [`Scene`] into a 32×32 RGB image.
//!
//! Order: background pattern → object (style-dependent coverage from the supersampled mask,
//! alpha-composited) → pixelation (the `Pixelated` style) → lighting → corruption → rounding
//! to 8 bits. Pixel arithmetic is `f32` with IEEE basic operations only; every random
//! texture comes from a seed stored in the scene.
//!
//! Corruptions follow ImageNet-C (Hendrycks & Dietterich 2019) scaled to 32 px: Gaussian-like
//! additive noise, Gaussian-like blur, contrast reduction, plus an occluding grey patch
//! (cutout-style occlusion), each at severities 1–5.

use image::RgbImage;

use super::scene::{
    Background, Color, Corruption, CorruptionKind, Lighting, Orientation, Pattern, Scene, Style,
};
use super::shapes::{downsample, erode, shape_mask, Placement, FULL_COVERAGE, MASK_SIDE};
use super::IMAGE_SIZE;
use crate::rng::SplitMix64;

const SIDE: usize = IMAGE_SIZE as usize;

/// Stroke width of the `Outline` style, in mask samples (the erosion radius; 7 ≈ 1.75 px).
const OUTLINE_ERODE: usize = 7;
/// Stroke width of the `Sketch` style (5 samples ≈ 1.25 px).
const SKETCH_ERODE: usize = 5;
/// Dash-and-gap cycles of the `Sketch` stroke per quarter turn around the object's centre;
/// each cycle is `SKETCH_DASH` parts dash and one part gap.
const SKETCH_CYCLES_PER_QUADRANT: f64 = 3.0;
const SKETCH_DASH: i64 = 3;
/// Hatching of the `Sketch` interior: one diagonal line `HATCH_WIDTH` samples wide every
/// `HATCH_PERIOD` samples.
const HATCH_PERIOD: i64 = 28;
const HATCH_WIDTH: i64 = 2;
/// Block side, in pixels, of the `Pixelated` style.
const PIXEL_BLOCK: usize = 3;

/// Noise standard deviation per severity, as a fraction of the 0–255 range.
const NOISE_SIGMA: [f32; 5] = [0.06, 0.10, 0.15, 0.22, 0.30];
/// Passes of the [1, 2, 1]/4 binomial filter per severity (σ ≈ √(passes/2) px).
const BLUR_PASSES: [usize; 5] = [1, 2, 3, 5, 8];
/// Remaining contrast per severity.
const CONTRAST_FACTOR: [f32; 5] = [0.55, 0.42, 0.32, 0.22, 0.14];
/// Occluder area per severity, as a fraction of the object's bounding square.
const OCCLUDER_AREA: [f64; 5] = [0.12, 0.2, 0.3, 0.4, 0.5];
/// Occluder colours: the one farthest from both the object and the background is used, so the
/// occluder never blends into either (a ring must not turn into a crescent).
const OCCLUDER_GREYS: [[u8; 3]; 3] = [[40, 40, 40], [128, 128, 128], [210, 210, 210]];

/// Renders the scene: `IMAGE_SIZE`×`IMAGE_SIZE` RGB.
pub fn render(scene: &Scene) -> RgbImage {
    let mut canvas = Canvas::with_background(&scene.background);
    canvas.composite(&object_coverage(scene), scene.color);
    if scene.style == Style::Pixelated {
        canvas.pixelate(PIXEL_BLOCK);
    }
    canvas.light(scene.lighting);
    if let Some(corruption) = &scene.corruption {
        canvas.corrupt(corruption, scene);
    }
    canvas.into_image()
}

/// Where the scene's object is drawn.
fn placement(scene: &Scene) -> Placement {
    Placement {
        center: [scene.center[0] as f64, scene.center[1] as f64],
        radius: scene.size as f64 / 2.0,
        rotation_degrees: scene.rotation as f64,
    }
}

/// Per-pixel object coverage (`0..=FULL_COVERAGE`) for the scene's style.
fn object_coverage(scene: &Scene) -> Vec<u8> {
    let placement = placement(scene);
    let mask = shape_mask(scene.shape, &placement);
    let drawn = match scene.style {
        Style::Filled | Style::Pixelated => mask,
        Style::Outline => stroke(&mask, &erode(&mask, OUTLINE_ERODE)),
        Style::Sketch => sketch(&mask, &placement),
    };
    downsample(&drawn)
}

/// The samples of `mask` that are not in its erosion `interior`.
fn stroke(mask: &[u8], interior: &[u8]) -> Vec<u8> {
    mask.iter().zip(interior).map(|(&m, &i)| m & (1 - i)).collect()
}

/// A dashed thin stroke plus sparse diagonal hatching of the interior.
fn sketch(mask: &[u8], placement: &Placement) -> Vec<u8> {
    let interior = erode(mask, SKETCH_ERODE);
    let outline = stroke(mask, &interior);
    let [cx, cy] = placement.mask_center();
    let mut out = vec![0u8; mask.len()];
    for (i, value) in out.iter_mut().enumerate() {
        let (x, y) = ((i % MASK_SIDE) as f64 + 0.5, (i / MASK_SIDE) as f64 + 0.5);
        let cycle_part =
            diamond_angle(x - cx, y - cy) * SKETCH_CYCLES_PER_QUADRANT * (SKETCH_DASH + 1) as f64;
        let dash = (cycle_part.floor() as i64) % (SKETCH_DASH + 1) < SKETCH_DASH;
        let diagonal = (x - cx + y - cy).floor() as i64;
        let hatch = diagonal.rem_euclid(HATCH_PERIOD) < HATCH_WIDTH;
        *value = (outline[i] & u8::from(dash)) | (interior[i] & u8::from(hatch));
    }
    out
}

/// A monotone stand-in for the polar angle in `[0, 4)` (one unit per quadrant) computed with
/// division only (no `atan2`, whose last bits are platform-dependent).
fn diamond_angle(dx: f64, dy: f64) -> f64 {
    let norm = dx.abs() + dy.abs();
    if norm == 0.0 {
        return 0.0;
    }
    match (dx >= 0.0, dy >= 0.0) {
        (true, true) => dy / norm,
        (false, true) => 1.0 - dx / norm,
        (false, false) => 2.0 - dy / norm,
        (true, false) => 3.0 + dx / norm,
    }
}

/// Bilinear value noise on a grid of `cell`-pixel cells, values in `[0, 1)`.
struct ValueNoise {
    cell: usize,
    columns: usize,
    values: Vec<f32>,
}

impl ValueNoise {
    fn new(seed: u64, cell: usize) -> Self {
        let columns = SIDE / cell + 2;
        let mut rng = SplitMix64::new(seed);
        let values = (0..columns * columns).map(|_| rng.uniform() as f32).collect();
        Self { cell, columns, values }
    }

    fn at(&self, x: usize, y: usize) -> f32 {
        let (gx, gy) = (x / self.cell, y / self.cell);
        let fx = (x % self.cell) as f32 / self.cell as f32;
        let fy = (y % self.cell) as f32 / self.cell as f32;
        let v = |i: usize, j: usize| self.values[(gy + j) * self.columns + gx + i];
        let top = v(0, 0) + (v(1, 0) - v(0, 0)) * fx;
        let bottom = v(0, 1) + (v(1, 1) - v(0, 1)) * fx;
        top + (bottom - top) * fy
    }
}

/// Position along the pattern's orientation.
fn along(orientation: Orientation, x: usize, y: usize) -> usize {
    match orientation {
        Orientation::Horizontal => y,
        Orientation::Vertical => x,
        Orientation::Diagonal => x + y,
        Orientation::AntiDiagonal => x + SIDE - 1 - y,
    }
}

/// The largest value of [`along`] for an orientation.
fn along_max(orientation: Orientation) -> usize {
    along(orientation, SIDE - 1, if orientation == Orientation::AntiDiagonal { 0 } else { SIDE - 1 })
}

/// The weight of the shade colour at pixel `(x, y)`: 0 (base colour) to 1 (shade).
fn pattern_weight(background: &Background, noise: Option<&ValueNoise>, x: usize, y: usize) -> f32 {
    let period = background.period.max(2) as usize;
    let phase = background.phase as usize;
    match background.pattern {
        Pattern::Solid => 0.0,
        Pattern::Stripes => {
            let t = along(background.orientation, x, y) + phase;
            f32::from(u8::from(t % period < period / 2))
        }
        Pattern::Checker => {
            let cell = (period / 2).max(2);
            f32::from(u8::from(((x + phase) / cell + (y + phase) / cell) % 2 == 1))
        }
        Pattern::Dots => {
            // Offsets from the dot centre in half pixels.
            let offset = |v: usize| 2 * ((v + phase) % period) as i64 + 1 - period as i64;
            let (dx, dy) = (offset(x), offset(y));
            f32::from(u8::from(10 * (dx * dx + dy * dy) <= 4 * (period * period) as i64))
        }
        Pattern::Gradient => {
            along(background.orientation, x, y) as f32 / along_max(background.orientation) as f32
        }
        Pattern::Noise => noise.map_or(0.0, |n| n.at(x, y)),
    }
}

/// The grey of [`OCCLUDER_GREYS`] whose smaller distance to the object colour and to the
/// background colour is largest.
fn occluder_color(scene: &Scene) -> [u8; 3] {
    let distance =
        |a: [u8; 3], b: [u8; 3]| -> i32 { a.iter().zip(b).map(|(&x, y)| (x as i32 - y as i32).pow(2)).sum() };
    let separation = |grey: &[u8; 3]| {
        distance(*grey, scene.color.rgb()).min(distance(*grey, scene.background.color.rgb()))
    };
    OCCLUDER_GREYS.into_iter().max_by_key(separation).unwrap_or(OCCLUDER_GREYS[1])
}

/// Lighting as a per-channel gain and offset.
fn lighting_transform(lighting: Lighting) -> ([f32; 3], [f32; 3]) {
    match lighting {
        Lighting::Neutral => ([1.0; 3], [0.0; 3]),
        Lighting::Bright => ([1.2; 3], [30.0; 3]),
        Lighting::Dim => ([0.55; 3], [0.0; 3]),
        Lighting::Warm => ([1.1, 0.95, 0.7], [12.0, 0.0, 0.0]),
        Lighting::Cool => ([0.75, 0.95, 1.15], [0.0, 0.0, 12.0]),
    }
}

/// The image being rendered: row-major RGB in `f32` on the 0–255 scale.
struct Canvas {
    pixels: Vec<[f32; 3]>,
}

impl Canvas {
    fn with_background(background: &Background) -> Self {
        let base = background.color.rgb().map(f32::from);
        let second = background.color.shade().map(f32::from);
        let noise = (background.pattern == Pattern::Noise)
            .then(|| ValueNoise::new(background.texture_seed, background.period.max(2) as usize));
        let pixels = (0..SIDE * SIDE)
            .map(|i| {
                let w = pattern_weight(background, noise.as_ref(), i % SIDE, i / SIDE);
                [0, 1, 2].map(|c| base[c] + (second[c] - base[c]) * w)
            })
            .collect();
        Self { pixels }
    }

    /// Alpha-composites `color` with per-pixel coverage.
    fn composite(&mut self, coverage: &[u8], color: Color) {
        let fg = color.rgb().map(f32::from);
        for (pixel, &c) in self.pixels.iter_mut().zip(coverage) {
            let alpha = f32::from(c) / f32::from(FULL_COVERAGE);
            *pixel = [0, 1, 2].map(|k| pixel[k] + (fg[k] - pixel[k]) * alpha);
        }
    }

    /// Replaces every `block`×`block` tile by its mean colour.
    fn pixelate(&mut self, block: usize) {
        for by in (0..SIDE).step_by(block) {
            for bx in (0..SIDE).step_by(block) {
                let (ys, xs) = (by..(by + block).min(SIDE), bx..(bx + block).min(SIDE));
                let mut sum = [0.0f32; 3];
                for y in ys.clone() {
                    for x in xs.clone() {
                        (0..3).for_each(|k| sum[k] += self.pixels[y * SIDE + x][k]);
                    }
                }
                let mean = sum.map(|s| s / (ys.len() * xs.len()) as f32);
                for y in ys.clone() {
                    for x in xs.clone() {
                        self.pixels[y * SIDE + x] = mean;
                    }
                }
            }
        }
    }

    fn light(&mut self, lighting: Lighting) {
        let (gain, offset) = lighting_transform(lighting);
        for pixel in &mut self.pixels {
            *pixel = [0, 1, 2].map(|k| pixel[k] * gain[k] + offset[k]);
        }
    }

    fn corrupt(&mut self, corruption: &Corruption, scene: &Scene) {
        let level = (corruption.severity.clamp(1, 5) - 1) as usize;
        match corruption.kind {
            CorruptionKind::Noise => self.add_noise(NOISE_SIGMA[level] * 255.0, corruption.seed),
            CorruptionKind::Blur => (0..BLUR_PASSES[level]).for_each(|_| self.binomial_blur()),
            CorruptionKind::Contrast => self.reduce_contrast(CONTRAST_FACTOR[level]),
            CorruptionKind::Occlusion => self.occlude(scene, OCCLUDER_AREA[level], corruption.seed),
        }
    }

    /// Adds zero-mean unit-variance noise (sum of four uniforms, rescaled) times `sigma`.
    fn add_noise(&mut self, sigma: f32, seed: u64) {
        const SQRT_3: f64 = 1.732_050_807_568_877_2;
        let mut rng = SplitMix64::new(seed);
        for pixel in &mut self.pixels {
            for value in pixel.iter_mut() {
                let sum: f64 = (0..4).map(|_| rng.uniform()).sum();
                *value += ((sum - 2.0) * SQRT_3) as f32 * sigma;
            }
        }
    }

    /// One pass of the separable [1, 2, 1]/4 filter, edges clamped.
    fn binomial_blur(&mut self) {
        for (dx, dy) in [(1usize, 0usize), (0, 1)] {
            let source = self.pixels.clone();
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let prev = source[(y.saturating_sub(dy)) * SIDE + x.saturating_sub(dx)];
                    let next = source[(y + dy).min(SIDE - 1) * SIDE + (x + dx).min(SIDE - 1)];
                    let here = source[y * SIDE + x];
                    self.pixels[y * SIDE + x] = [0, 1, 2].map(|k| (prev[k] + 2.0 * here[k] + next[k]) * 0.25);
                }
            }
        }
    }

    /// Scales each channel's deviation from its image mean by `factor`.
    fn reduce_contrast(&mut self, factor: f32) {
        let mut mean = [0.0f32; 3];
        for pixel in &self.pixels {
            (0..3).for_each(|k| mean[k] += pixel[k]);
        }
        let mean = mean.map(|m| m / self.pixels.len() as f32);
        for pixel in &mut self.pixels {
            *pixel = [0, 1, 2].map(|k| mean[k] + (pixel[k] - mean[k]) * factor);
        }
    }

    /// Paints a grey square of `area` × the object's bounding square, centred at a random
    /// point within a quarter of the object's extent from its centre.
    fn occlude(&mut self, scene: &Scene, area: f64, seed: u64) {
        let color = occluder_color(scene).map(f32::from);
        let mut rng = SplitMix64::new(seed);
        let extent = scene.size as f64 * SIDE as f64;
        let side = (area.sqrt() * extent).max(1.0);
        let jitter = |rng: &mut SplitMix64| (rng.uniform() - 0.5) * 0.5 * extent;
        let cx = scene.center[0] as f64 * SIDE as f64 + jitter(&mut rng);
        let cy = scene.center[1] as f64 * SIDE as f64 + jitter(&mut rng);
        let range = |c: f64| {
            let start = (c - side / 2.0).round().clamp(0.0, SIDE as f64) as usize;
            start..((c + side / 2.0).round().clamp(0.0, SIDE as f64) as usize)
        };
        for y in range(cy) {
            for x in range(cx) {
                self.pixels[y * SIDE + x] = color;
            }
        }
    }

    fn into_image(self) -> RgbImage {
        let bytes: Vec<u8> =
            self.pixels.iter().flat_map(|p| p.map(|v| (v.clamp(0.0, 255.0) + 0.5) as u8)).collect();
        RgbImage::from_raw(IMAGE_SIZE, IMAGE_SIZE, bytes).expect("buffer length is IMAGE_SIZE² × 3")
    }
}

/// Lays images out in a grid, `columns` wide, with a 1-pixel dark gutter, each pixel
/// repeated `scale`×`scale` (nearest neighbour) so small images can be inspected.
pub fn tile(images: &[RgbImage], columns: usize, scale: u32) -> RgbImage {
    let columns = columns.max(1);
    let rows = images.len().div_ceil(columns).max(1);
    let cell = IMAGE_SIZE + 1;
    let mut grid = RgbImage::from_pixel(
        (columns as u32 * cell + 1) * scale,
        (rows as u32 * cell + 1) * scale,
        image::Rgb([40, 40, 40]),
    );
    for (i, img) in images.iter().enumerate() {
        let (ox, oy) = ((i % columns) as u32 * cell + 1, (i / columns) as u32 * cell + 1);
        for (x, y, pixel) in img.enumerate_pixels() {
            for (sx, sy) in (0..scale).flat_map(|sy| (0..scale).map(move |sx| (sx, sy))) {
                grid.put_pixel((ox + x) * scale + sx, (oy + y) * scale + sy, *pixel);
            }
        }
    }
    grid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shiftworld::scene::{sample_any_background, Shape};

    fn scene(seed: u64) -> Scene {
        Scene::sample_pretraining(&mut SplitMix64::new(seed))
    }

    #[test]
    fn rendering_is_a_pure_function_of_the_scene() {
        for seed in 0..50 {
            let s = scene(seed);
            assert_eq!(render(&s).into_raw(), render(&s.clone()).into_raw());
        }
    }

    #[test]
    fn every_style_and_corruption_changes_the_image() {
        let base = Scene::sample_on(
            &mut SplitMix64::new(1),
            Shape::Star,
            sample_any_background(&mut SplitMix64::new(2)),
        );
        let plain = render(&base).into_raw();
        for style in [Style::Outline, Style::Sketch, Style::Pixelated] {
            assert_ne!(render(&Scene { style, ..base.clone() }).into_raw(), plain, "{style:?}");
        }
        for kind in CorruptionKind::ALL {
            let corruption = Some(Corruption { kind, severity: 3, seed: 5 });
            assert_ne!(render(&Scene { corruption, ..base.clone() }).into_raw(), plain, "{kind:?}");
        }
    }

    #[test]
    fn out_of_range_factors_do_not_panic() {
        let mut s = scene(4);
        s.size = f32::NAN;
        s.center = [f32::INFINITY, -3.0];
        s.background.period = 0;
        s.corruption = Some(Corruption { kind: CorruptionKind::Occlusion, severity: 200, seed: 1 });
        assert_eq!(render(&s).dimensions(), (IMAGE_SIZE, IMAGE_SIZE));
    }

    #[test]
    fn contrast_corruption_shrinks_the_spread() {
        let s = Scene { corruption: None, ..scene(8) };
        // The largest per-channel range of values.
        let spread = |img: &RgbImage| {
            (0..3)
                .map(|c| {
                    let channel = img.as_raw().iter().skip(c).step_by(3);
                    channel.clone().max().unwrap() - channel.min().unwrap()
                })
                .max()
                .unwrap()
        };
        let reduced = Scene {
            corruption: Some(Corruption { kind: CorruptionKind::Contrast, severity: 5, seed: 0 }),
            ..s.clone()
        };
        assert!(spread(&render(&reduced)) < spread(&render(&s)) / 3);
    }

    #[test]
    fn diamond_angle_is_monotone_around_the_circle() {
        let points = [
            (1.0, 0.0),
            (1.0, 1.0),
            (0.0, 1.0),
            (-1.0, 1.0),
            (-1.0, 0.0),
            (-1.0, -1.0),
            (0.0, -1.0),
            (1.0, -1.0),
        ];
        let angles: Vec<f64> = points.iter().map(|&(x, y)| diamond_angle(x, y)).collect();
        assert!(angles.windows(2).all(|w| w[0] < w[1]), "{angles:?}");
    }
}
