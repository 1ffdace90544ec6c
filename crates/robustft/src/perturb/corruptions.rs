//! Common corruptions (Hendrycks & Dietterich, ICLR 2019, ImageNet-C) for images of any size,
//! with the formulas and per-severity constants of the `imagecorruptions` package 1.1.2
//! (Michaelis et al. 2019, "Benchmarking Robustness in Object Detection", which generalises the
//! ImageNet-C code to any image size). Nine of its nineteen corruptions are here (eight of
//! ImageNet-C's fifteen and gaussian_blur, one of its four held-out ones):
//!
//! * gaussian_noise `clip(x + N(0, c²))`; shot_noise `clip(Poisson(x·c)/c)`; impulse_noise,
//!   scikit-image's `random_noise(mode='s&p', amount=c)`: every value flips with probability c,
//!   to 1 or 0 with equal odds;
//! * defocus_blur: the package's anti-aliased disk kernel (OpenCV's `GaussianBlur` of a 0/1
//!   disk, float32) correlated with every channel, OpenCV's default border (reflect-101);
//!   gaussian_blur: SciPy's `gaussian_filter` with σ = c per channel, truncated at 4σ, border
//!   `nearest` (scikit-image's default, which the package keeps);
//! * contrast `(x − m)·c + m`, m the mean of each channel over the image; brightness: V + c in
//!   scikit-image's HSV (`rgb2hsv`/`hsv2rgb`, ties of the maximum resolved as it does);
//! * jpeg_compression at quality c; pixelate: Pillow's `BOX` resize to `int(size·c)` (its 8-bit
//!   fixed-point filter, horizontal pass first) and `NEAREST` resize back.
//!
//! Blur, contrast, brightness, pixelate and JPEG are deterministic; the three noises draw from
//! a [`SplitMix64`] stream seeded by the caller (normals by Box–Muller, Poisson counts by
//! Knuth's product-of-uniforms method, which is exact; λ = x·c ≤ 60 here, so its O(λ) cost is
//! small), so the same seed gives the same image on every machine. They cannot reproduce
//! NumPy's random streams; [`gaussian_noise_with`] and [`impulse_noise_with`] take the draws
//! as arguments so that the formulas can be checked against the package with stored draws.
//!
//! Inputs and outputs are on the package's uint8 grid. It receives uint8 images and computes
//! in float64 from `level/255`; here a float32 value within 1e-3 of a level is read as that
//! level's float64 `level/255` (other values are used as they are), so that results on either
//! side of a level boundary agree with the package's. It returns `np.uint8(result)`, which
//! truncates, so every output value is `floor(255·clip(y, 0, 1))/255`. JPEG and pixelate work
//! on the input rounded to the nearest level, as Pillow does on uint8 images.
//!
//! JPEG uses the `image` crate's baseline encoder and decoder, not libjpeg through Pillow: the
//! quantisation tables are the same (the standard tables under libjpeg's quality scaling), but
//! the `image` encoder keeps chroma at full resolution (4:4:4) where Pillow subsamples it
//! (4:2:0), and its DCT and rounding differ, so the result is not bit-identical to the
//! package's and loses somewhat less colour detail.

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// One of the corruptions, by the package's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    GaussianNoise,
    ShotNoise,
    ImpulseNoise,
    DefocusBlur,
    GaussianBlur,
    Contrast,
    Brightness,
    Jpeg,
    Pixelate,
}

impl Corruption {
    pub const ALL: [Corruption; 9] = [
        Corruption::GaussianNoise,
        Corruption::ShotNoise,
        Corruption::ImpulseNoise,
        Corruption::DefocusBlur,
        Corruption::GaussianBlur,
        Corruption::Contrast,
        Corruption::Brightness,
        Corruption::Jpeg,
        Corruption::Pixelate,
    ];

    /// The name `imagecorruptions` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Corruption::GaussianNoise => "gaussian_noise",
            Corruption::ShotNoise => "shot_noise",
            Corruption::ImpulseNoise => "impulse_noise",
            Corruption::DefocusBlur => "defocus_blur",
            Corruption::GaussianBlur => "gaussian_blur",
            Corruption::Contrast => "contrast",
            Corruption::Brightness => "brightness",
            Corruption::Jpeg => "jpeg_compression",
            Corruption::Pixelate => "pixelate",
        }
    }

    /// The corruption of a name (as [`Corruption::name`] spells it).
    pub fn parse(name: &str) -> std::result::Result<Corruption, String> {
        let name = name.trim();
        Self::ALL.into_iter().find(|c| c.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
            format!("unknown corruption {name:?}; known: {}", known.join(", "))
        })
    }

    /// Whether it draws random numbers (so its result depends on the seed).
    pub fn is_random(self) -> bool {
        matches!(self, Corruption::GaussianNoise | Corruption::ShotNoise | Corruption::ImpulseNoise)
    }
}

/// Standard deviation of gaussian_noise per severity.
const GAUSSIAN_NOISE_SCALE: [f64; 5] = [0.08, 0.12, 0.18, 0.26, 0.38];
/// Photon count of a white value in shot_noise per severity.
const SHOT_NOISE_RATE: [f64; 5] = [60.0, 25.0, 12.0, 5.0, 3.0];
/// Fraction of values impulse_noise flips per severity.
const IMPULSE_AMOUNT: [f64; 5] = [0.03, 0.06, 0.09, 0.17, 0.27];
/// Probability that a flipped value becomes 1 (scikit-image's `salt_vs_pepper` default).
const SALT_VS_PEPPER: f64 = 0.5;
/// Disk radius and anti-aliasing σ of defocus_blur per severity.
const DEFOCUS_DISK: [(i64, f64); 5] = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)];
/// σ of gaussian_blur per severity.
const GAUSSIAN_BLUR_SIGMA: [f64; 5] = [1.0, 2.0, 3.0, 4.0, 6.0];
/// SciPy's `truncate`: the Gaussian kernel's radius is `int(4σ + 0.5)`.
const GAUSSIAN_TRUNCATE: f64 = 4.0;
/// Factor contrast scales deviations from the channel mean by, per severity.
const CONTRAST_FACTOR: [f64; 5] = [0.4, 0.3, 0.2, 0.1, 0.05];
/// Shift of the HSV value in brightness per severity.
const BRIGHTNESS_SHIFT: [f64; 5] = [0.1, 0.2, 0.3, 0.4, 0.5];
/// JPEG quality per severity.
const JPEG_QUALITY: [u8; 5] = [25, 18, 15, 10, 7];
/// Downsampling factor of pixelate per severity.
const PIXELATE_FACTOR: [f64; 5] = [0.6, 0.5, 0.4, 0.3, 0.25];
/// Distance (in uint8 levels) within which an input value is read as that level: float32
/// pixels of a uint8 image (or normalised and converted back) sit within ~1e-5 of theirs.
const LEVEL_SNAP: f64 = 1e-3;
/// Fractional bits of Pillow's 8-bit resampling weights (`32 − 8 − 2`).
const PRECISION_BITS: u32 = 22;

/// `image` `[3, height, width]` (channel-major, values in `[0, 1]`) under `corruption` at
/// `severity` (1 to 5), on the 1/255 grid; `seed` drives the noises.
pub fn corrupt(
    image: &[f32],
    height: usize,
    width: usize,
    corruption: Corruption,
    severity: u8,
    seed: u64,
) -> Result<Vec<f32>> {
    check_image(image, height, width)?;
    let level = severity_index(severity)?;
    let mut rng = SplitMix64::new(seed);
    let pixels = widen(image);
    Ok(match corruption {
        Corruption::GaussianNoise => {
            let noise: Vec<f32> = image.iter().map(|_| rng.normal()).collect();
            quantise(&add_gaussian(&pixels, &noise, GAUSSIAN_NOISE_SCALE[level]))
        }
        Corruption::ShotNoise => quantise(&shot_noise(&pixels, SHOT_NOISE_RATE[level], &mut rng)),
        Corruption::ImpulseNoise => {
            let flips: Vec<f64> = image.iter().map(|_| rng.uniform()).collect();
            let salts: Vec<f64> = image.iter().map(|_| rng.uniform()).collect();
            quantise(&salt_and_pepper(&pixels, &flips, &salts, IMPULSE_AMOUNT[level]))
        }
        Corruption::DefocusBlur => quantise(&defocus_blur(&pixels, height, width, DEFOCUS_DISK[level])),
        Corruption::GaussianBlur => {
            quantise(&gaussian_blur(&pixels, height, width, GAUSSIAN_BLUR_SIGMA[level]))
        }
        Corruption::Contrast => quantise(&contrast(&pixels, CONTRAST_FACTOR[level])),
        Corruption::Brightness => quantise(&brightness(&pixels, BRIGHTNESS_SHIFT[level])),
        Corruption::Jpeg => {
            from_levels(&jpeg_round_trip(&levels(image), height, width, JPEG_QUALITY[level])?)
        }
        Corruption::Pixelate => {
            from_levels(&pixelate(&levels(image), height, width, PIXELATE_FACTOR[level])?)
        }
    })
}

/// gaussian_noise with given standard normal draws `noise` (one per value of `image`):
/// `clip(x + c·noise)` on the 1/255 grid.
pub fn gaussian_noise_with(image: &[f32], noise: &[f32], severity: u8) -> Result<Vec<f32>> {
    check_draws("normal draws", noise.len(), image.len())?;
    let scale = GAUSSIAN_NOISE_SCALE[severity_index(severity)?];
    Ok(quantise(&add_gaussian(&widen(image), noise, scale)))
}

/// impulse_noise with given uniform draws in `[0, 1)`, one of each per value of `image`: a
/// value flips when its `flip_draw ≤ c`, to 1 when its `salt_draw ≤ 0.5` and to 0 otherwise
/// (scikit-image's Bernoulli trials `random(shape) <= p`, flips drawn first).
pub fn impulse_noise_with(
    image: &[f32],
    flip_draws: &[f64],
    salt_draws: &[f64],
    severity: u8,
) -> Result<Vec<f32>> {
    check_draws("flip draws", flip_draws.len(), image.len())?;
    check_draws("salt draws", salt_draws.len(), image.len())?;
    let amount = IMPULSE_AMOUNT[severity_index(severity)?];
    Ok(quantise(&salt_and_pepper(&widen(image), flip_draws, salt_draws, amount)))
}

fn invalid(reason: String) -> Error {
    Error::Invalid { what: "corruption".into(), reason }
}

fn severity_index(severity: u8) -> Result<usize> {
    match severity {
        1..=5 => Ok(usize::from(severity - 1)),
        _ => Err(invalid(format!("severity {severity} is not one of 1 to 5"))),
    }
}

fn check_image(image: &[f32], height: usize, width: usize) -> Result<()> {
    if height == 0 || width == 0 || image.len() != 3 * height * width {
        return Err(invalid(format!(
            "an image [3, {height}, {width}] has {} values; this one has {}",
            3 * height * width,
            image.len()
        )));
    }
    Ok(())
}

fn check_draws(what: &str, count: usize, values: usize) -> Result<()> {
    if count != values {
        return Err(invalid(format!("{count} {what} for an image of {values} values")));
    }
    Ok(())
}

/// The image in float64, values within [`LEVEL_SNAP`] of a uint8 level read as `level/255`.
fn widen(image: &[f32]) -> Vec<f64> {
    image
        .iter()
        .map(|&x| {
            let scaled = f64::from(x) * 255.0;
            let level = scaled.round();
            if (scaled - level).abs() <= LEVEL_SNAP {
                level / 255.0
            } else {
                f64::from(x)
            }
        })
        .collect()
}

/// `floor(255·clip(y, 0, 1))`, as `np.uint8` of the package's `clip(y, 0, 1)·255`.
fn quantise(values: &[f64]) -> Vec<f32> {
    let levels: Vec<u8> = values.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).floor() as u8).collect();
    from_levels(&levels)
}

/// The nearest uint8 level of every value.
fn levels(image: &[f32]) -> Vec<u8> {
    image.iter().map(|x| (x.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
}

fn from_levels(levels: &[u8]) -> Vec<f32> {
    levels.iter().map(|&l| f32::from(l) / 255.0).collect()
}

fn add_gaussian(pixels: &[f64], noise: &[f32], scale: f64) -> Vec<f64> {
    pixels.iter().zip(noise).map(|(x, z)| x + scale * f64::from(*z)).collect()
}

fn shot_noise(pixels: &[f64], rate: f64, rng: &mut SplitMix64) -> Vec<f64> {
    pixels.iter().map(|x| poisson(x.max(0.0) * rate, rng) as f64 / rate).collect()
}

/// A Poisson(λ) count by Knuth's method: the number of uniforms whose running product stays
/// above `e^{−λ}`, less one (exact while `e^{−λ}` is a normal float, λ < 708).
fn poisson(lambda: f64, rng: &mut SplitMix64) -> u64 {
    let threshold = (-lambda).exp();
    let mut product = rng.uniform();
    let mut count = 0;
    while product > threshold {
        product *= rng.uniform();
        count += 1;
    }
    count
}

fn salt_and_pepper(pixels: &[f64], flip_draws: &[f64], salt_draws: &[f64], amount: f64) -> Vec<f64> {
    pixels
        .iter()
        .zip(flip_draws.iter().zip(salt_draws))
        .map(|(&x, (&flip, &salt))| match (flip <= amount, salt <= SALT_VS_PEPPER) {
            (false, _) => x,
            (true, true) => 1.0,
            (true, false) => 0.0,
        })
        .collect()
}

/// The per-channel planes of a channel-major image.
fn planes(pixels: &[f64]) -> std::slice::Chunks<'_, f64> {
    pixels.chunks(pixels.len() / 3)
}

fn contrast(pixels: &[f64], factor: f64) -> Vec<f64> {
    planes(pixels)
        .flat_map(|plane| {
            let mean = plane.iter().sum::<f64>() / plane.len() as f64;
            plane.iter().map(move |x| (x - mean) * factor + mean)
        })
        .collect()
}

fn brightness(pixels: &[f64], shift: f64) -> Vec<f64> {
    let area = pixels.len() / 3;
    let mut out = vec![0.0; pixels.len()];
    for i in 0..area {
        let (h, s, v) = rgb_to_hsv([pixels[i], pixels[area + i], pixels[2 * area + i]]);
        let rgb = hsv_to_rgb(h, s, (v + shift).clamp(0.0, 1.0));
        for (c, value) in rgb.into_iter().enumerate() {
            out[c * area + i] = value;
        }
    }
    out
}

/// scikit-image's `rgb2hsv` of one pixel: a tie for the maximum takes blue's hue formula over
/// green's over red's (the later assignment wins there), and gray has hue and saturation 0.
fn rgb_to_hsv([r, g, b]: [f64; 3]) -> (f64, f64, f64) {
    let value = r.max(g).max(b);
    let delta = value - r.min(g).min(b);
    if delta == 0.0 {
        return (0.0, 0.0, value);
    }
    let sector = if b == value {
        4.0 + (r - g) / delta
    } else if g == value {
        2.0 + (b - r) / delta
    } else {
        (g - b) / delta
    };
    ((sector / 6.0).rem_euclid(1.0), delta / value, value)
}

/// scikit-image's `hsv2rgb` of one pixel.
fn hsv_to_rgb(hue: f64, saturation: f64, value: f64) -> [f64; 3] {
    let sector = (hue * 6.0).floor();
    let f = hue * 6.0 - sector;
    let p = value * (1.0 - saturation);
    let q = value * (1.0 - f * saturation);
    let t = value * (1.0 - (1.0 - f) * saturation);
    match (sector as i64).rem_euclid(6) {
        0 => [value, t, p],
        1 => [q, value, p],
        2 => [p, value, t],
        3 => [p, q, value],
        4 => [t, p, value],
        _ => [value, p, q],
    }
}

/// OpenCV's `BORDER_REFLECT_101` index of `i` in `0..len` (`gfedcb|abcdefgh|gfedcba`).
fn reflect_101(i: i64, len: usize) -> usize {
    let len = len as i64;
    if len == 1 {
        return 0;
    }
    let mut i = i;
    while i < 0 || i >= len {
        i = if i < 0 { -i } else { 2 * (len - 1) - i };
    }
    i as usize
}

/// SciPy's `nearest` border: the edge value repeats.
fn clamp_index(i: i64, len: usize) -> usize {
    i.clamp(0, len as i64 - 1) as usize
}

/// A 1-D correlation of every row (`along_rows`) or column of a `[height, width]` plane with
/// odd-length `taps`, `border` mapping out-of-range indices back into the plane.
fn correlate_1d<T>(
    plane: &[T],
    height: usize,
    width: usize,
    taps: &[T],
    along_rows: bool,
    border: fn(i64, usize) -> usize,
) -> Vec<T>
where
    T: Copy + Default + std::ops::Add<Output = T> + std::ops::Mul<Output = T>,
{
    let half = (taps.len() / 2) as i64;
    let mut out = vec![T::default(); plane.len()];
    for y in 0..height {
        for x in 0..width {
            let mut sum = T::default();
            for (k, &tap) in taps.iter().enumerate() {
                let offset = k as i64 - half;
                let (yy, xx) = if along_rows {
                    (y, border(x as i64 + offset, width))
                } else {
                    (border(y as i64 + offset, height), x)
                };
                sum = sum + tap * plane[yy * width + xx];
            }
            out[y * width + x] = sum;
        }
    }
    out
}

/// SciPy's `_gaussian_kernel1d` (order 0): `exp(−x²/2σ²)` for `|x| ≤ int(4σ + 0.5)`, normalised.
fn scipy_gaussian_taps(sigma: f64) -> Vec<f64> {
    let radius = (GAUSSIAN_TRUNCATE * sigma + 0.5) as i64;
    let taps: Vec<f64> =
        (-radius..=radius).map(|x| (-0.5 / (sigma * sigma) * (x * x) as f64).exp()).collect();
    let total: f64 = taps.iter().sum();
    taps.iter().map(|t| t / total).collect()
}

/// `scipy.ndimage.gaussian_filter` of every channel (σ on both image axes, rows of the image
/// — axis 0 — first), border `nearest`.
fn gaussian_blur(pixels: &[f64], height: usize, width: usize, sigma: f64) -> Vec<f64> {
    let taps = scipy_gaussian_taps(sigma);
    planes(pixels)
        .flat_map(|plane| {
            let down = correlate_1d(plane, height, width, &taps, false, clamp_index);
            correlate_1d(&down, height, width, &taps, true, clamp_index)
        })
        .collect()
}

/// OpenCV's `getGaussianKernel(size, sigma, CV_32F)`.
fn opencv_gaussian_taps(size: usize, sigma: f64) -> Vec<f32> {
    let centre = (size as f64 - 1.0) * 0.5;
    let raw: Vec<f32> =
        (0..size).map(|i| (-0.5 / (sigma * sigma) * (i as f64 - centre).powi(2)).exp() as f32).collect();
    let scale = 1.0 / raw.iter().map(|&t| f64::from(t)).sum::<f64>();
    raw.iter().map(|&t| (f64::from(t) * scale) as f32).collect()
}

/// The package's `disk(radius, alias_blur)`: a 0/1 disk on a `17×17` grid (`2r+1` past radius
/// 8) normalised to sum 1 in float32, then `cv2.GaussianBlur` with a `3×3` (`5×5` past radius
/// 8) kernel of σ `alias_blur`, border reflect-101. Returns the kernel and its side.
fn defocus_kernel(radius: i64, alias_blur: f64) -> (Vec<f32>, usize) {
    let half = radius.max(8);
    let side = (2 * half + 1) as usize;
    let inside: Vec<bool> = (0..side * side)
        .map(|i| {
            let (y, x) = ((i / side) as i64 - half, (i % side) as i64 - half);
            x * x + y * y <= radius * radius
        })
        .collect();
    let count = inside.iter().filter(|&&b| b).count() as f32;
    let disk: Vec<f32> = inside.iter().map(|&b| if b { 1.0 / count } else { 0.0 }).collect();
    let taps = opencv_gaussian_taps(if radius <= 8 { 3 } else { 5 }, alias_blur);
    let across = correlate_1d(&disk, side, side, &taps, true, reflect_101);
    (correlate_1d(&across, side, side, &taps, false, reflect_101), side)
}

/// `cv2.filter2D` of every channel (float64) with the defocus kernel, border reflect-101.
fn defocus_blur(pixels: &[f64], height: usize, width: usize, (radius, alias_blur): (i64, f64)) -> Vec<f64> {
    let (kernel, side) = defocus_kernel(radius, alias_blur);
    let half = (side / 2) as i64;
    planes(pixels)
        .flat_map(|plane| {
            let kernel = &kernel;
            (0..height * width).map(move |i| {
                let (y, x) = ((i / width) as i64, (i % width) as i64);
                let mut sum = 0.0;
                for (k, &weight) in kernel.iter().enumerate() {
                    let yy = reflect_101(y + (k / side) as i64 - half, height);
                    let xx = reflect_101(x + (k % side) as i64 - half, width);
                    sum += f64::from(weight) * plane[yy * width + xx];
                }
                sum
            })
        })
        .collect()
}

/// Pillow's `precompute_coeffs` for `BOX` from `input` to `output` samples, in its 8-bit fixed
/// point (22 fractional bits): for every output sample, its first input index and weights.
fn box_coefficients(input: usize, output: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = 0.5 * filter_scale;
    (0..output)
        .map(|o| {
            let centre = (o as f64 + 0.5) * scale;
            let first = ((centre - support + 0.5) as i64).max(0) as usize;
            let last = ((centre + support + 0.5) as i64).min(input as i64) as usize;
            let weights: Vec<f64> = (first..last)
                .map(|i| {
                    let t = (i as f64 - centre + 0.5) / filter_scale;
                    if t > -0.5 && t <= 0.5 {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    (0.5 + w * f64::from(1u32 << PRECISION_BITS)) as i32
                })
                .collect();
            (first, fixed)
        })
        .collect()
}

/// One 8-bit pass of Pillow's resampling along rows (`along_rows`) or columns of a
/// `[height, width]` plane, to `output` samples on that axis.
fn box_resample_axis(plane: &[u8], height: usize, width: usize, output: usize, along_rows: bool) -> Vec<u8> {
    let (input, (out_h, out_w)) =
        if along_rows { (width, (height, output)) } else { (height, (output, width)) };
    let coefficients = box_coefficients(input, output);
    let mut out = vec![0u8; out_h * out_w];
    for y in 0..out_h {
        for x in 0..out_w {
            let (first, weights) = &coefficients[if along_rows { x } else { y }];
            let mut sum: i32 = 1 << (PRECISION_BITS - 1);
            for (k, &w) in weights.iter().enumerate() {
                let value =
                    if along_rows { plane[y * width + first + k] } else { plane[(first + k) * width + x] };
                sum += i32::from(value) * w;
            }
            out[y * out_w + x] = (sum >> PRECISION_BITS).clamp(0, 255) as u8;
        }
    }
    out
}

/// Pillow's `NEAREST` source index for each of `output` samples from `input`: `int(a/2 + k·a)`,
/// `a = input/output`, accumulated as Pillow does.
fn nearest_indices(input: usize, output: usize) -> Vec<usize> {
    let step = input as f64 / output as f64;
    let mut position = step * 0.5;
    (0..output)
        .map(|_| {
            let index = (position as usize).min(input - 1);
            position += step;
            index
        })
        .collect()
}

/// The package's pixelate: `BOX` resize to `(int(width·c), int(height·c))`, `NEAREST` back.
fn pixelate(levels: &[u8], height: usize, width: usize, factor: f64) -> Result<Vec<u8>> {
    let (small_h, small_w) = ((height as f64 * factor) as usize, (width as f64 * factor) as usize);
    if small_h == 0 || small_w == 0 {
        return Err(invalid(format!("a {height}×{width} image is too small to pixelate by {factor}")));
    }
    let rows = nearest_indices(small_h, height);
    let columns = nearest_indices(small_w, width);
    let mut out = Vec::with_capacity(levels.len());
    for plane in levels.chunks(height * width) {
        let narrow = box_resample_axis(plane, height, width, small_w, true);
        let small = box_resample_axis(&narrow, height, small_w, small_h, false);
        out.extend(
            rows.iter()
                .flat_map(|&y| columns.iter().map(move |&x| (y, x)))
                .map(|(y, x)| small[y * small_w + x]),
        );
    }
    Ok(out)
}

/// JPEG encoding at `quality` and decoding with the `image` crate.
fn jpeg_round_trip(levels: &[u8], height: usize, width: usize, quality: u8) -> Result<Vec<u8>> {
    let area = height * width;
    let interleaved: Vec<u8> = (0..area * 3).map(|i| levels[(i % 3) * area + i / 3]).collect();
    let failed = |e: image::ImageError| invalid(format!("JPEG round trip: {e}"));
    let mut encoded = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut encoded, quality)
        .encode(&interleaved, width as u32, height as u32, image::ExtendedColorType::Rgb8)
        .map_err(failed)?;
    let decoded =
        image::load_from_memory_with_format(&encoded, image::ImageFormat::Jpeg).map_err(failed)?.to_rgb8();
    let decoded = decoded.as_raw();
    Ok((0..area * 3).map(|i| decoded[(i % area) * 3 + i / area]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_counts_have_the_rate_as_mean_and_variance() {
        let mut rng = SplitMix64::new(11);
        for lambda in [0.5, 4.0, 30.0, 60.0] {
            let draws: Vec<f64> = (0..20000).map(|_| poisson(lambda, &mut rng) as f64).collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
            assert!((mean - lambda).abs() < 0.05 * lambda.max(1.0), "λ {lambda}: mean {mean}");
            assert!((var - lambda).abs() < 0.1 * lambda.max(1.0), "λ {lambda}: variance {var}");
        }
        assert_eq!(poisson(0.0, &mut rng), 0);
    }

    #[test]
    fn hsv_round_trip_restores_the_colour() {
        for rgb in [[0.2, 0.5, 0.9], [1.0, 0.0, 1.0], [0.3, 0.3, 0.3], [0.8, 0.8, 0.1], [0.0, 0.0, 0.0]] {
            let (h, s, v) = rgb_to_hsv(rgb);
            let back = hsv_to_rgb(h, s, v);
            for (a, b) in rgb.iter().zip(back) {
                assert!((a - b).abs() < 1e-12, "{rgb:?} -> {back:?}");
            }
        }
    }

    #[test]
    fn values_near_a_level_are_read_as_that_level() {
        let read = widen(&[100.0 / 255.0, 0.5, 1.0]);
        assert_eq!(read, [100.0 / 255.0, 0.5, 1.0]);
        assert_ne!(f64::from(100.0f32 / 255.0), 100.0 / 255.0);
    }

    #[test]
    fn reflect_101_mirrors_without_repeating_the_edge() {
        let mapped: Vec<usize> = (-3..8).map(|i| reflect_101(i, 5)).collect();
        assert_eq!(mapped, [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
        assert_eq!(reflect_101(-4, 1), 0);
    }

    #[test]
    fn defocus_kernels_have_the_packages_sums() {
        // `disk(r, a).sum()` in imagecorruptions 1.1.2: 1 while the disk stays clear of the
        // grid's edge; past that, reflect-101 folds the anti-aliasing blur back in.
        let expected = [1.0, 1.0, 1.0, 1.012_975_5, 1.010_785_8];
        for ((radius, alias_blur), want) in DEFOCUS_DISK.into_iter().zip(expected) {
            let (kernel, side) = defocus_kernel(radius, alias_blur);
            assert_eq!(side, 2 * radius.max(8) as usize + 1);
            let total: f32 = kernel.iter().sum();
            assert!((total - want).abs() < 1e-5, "radius {radius}: sum {total}, package {want}");
        }
    }

    #[test]
    fn box_downsampling_by_two_averages_pairs() {
        let plane = [10u8, 20, 30, 41];
        assert_eq!(box_resample_axis(&plane, 1, 4, 2, true), [15, 36]);
        assert_eq!(nearest_indices(2, 4), [0, 0, 1, 1]);
    }
}
