//! OpenAI CLIP image preprocessing, bit-exact with Pillow + torchvision on 8-bit images.
//!
//! CLIP's evaluation transform (OpenAI CLIP `clip/clip.py::_transform`, identical to
//! open_clip's `image_transform(n, is_train=False)` with its defaults) is
//!
//! ```text
//! Resize(n, interpolation=BICUBIC) -> CenterCrop(n) -> convert("RGB") -> ToTensor()
//!     -> Normalize(OPENAI_MEAN, OPENAI_STD)
//! ```
//!
//! applied to a PIL image. This module reimplements each step from its sources:
//!
//! * **Resize** (torchvision `transforms/functional.py`, `_compute_resized_output_size`): the
//!   shorter side becomes `n`, the longer one `int(n * long / short)` (truncated); when that
//!   is the input size the image is returned untouched, otherwise torchvision calls Pillow's
//!   `Image.resize(size, BICUBIC)` (`transforms/_functional_pil.py`).
//! * **Bicubic resampling** (Pillow `src/libImaging/Resample.c`): a separable convolution
//!   with the cubic kernel `a = -0.5` whose support (2.0) is stretched by the downscale
//!   factor, which is how Pillow antialiases. For every output pixel a window of input
//!   pixels is found from its centre, the weights are normalised to sum to one and turned
//!   into fixed point with 22 fractional bits (`PRECISION_BITS = 32 - 8 - 2`). One pass
//!   runs along each axis whose length changes; the first pass's result is rounded and
//!   clipped to `u8` before the second. The horizontal pass runs first, except that
//!   Pillow 13 (the version the fixtures pin) runs the vertical one first when the height
//!   shrinks by more than twice as many pixels as the width (read from Pillow 13's
//!   compiled `ImagingResample`, python-pillow/Pillow#9549; in CLIP's resize that is a
//!   portrait image more than twice as tall as wide). With Pillow 12 or older such images
//!   differ by rounding. All arithmetic after the `f64` weights is integer, so the result
//!   is exact.
//! * **CenterCrop** (torchvision): offsets `int(round((len - n) / 2.0))` with Python's
//!   round-half-to-even, zero padding when the image is smaller than the crop.
//! * **ToTensor / Normalize**: `(v as f32 / 255.0 - mean) / std` in `f32`, channel-major.
//!
//! # Colour modes and the order of resize and RGB conversion
//!
//! torchvision resizes the image in its own mode and converts to RGB afterwards.
//!
//! * RGB: no conversion.
//! * L (grayscale): Pillow resamples each channel with the same weights, so resizing
//!   the single channel and replicating it is identical to replicating first; this module
//!   resizes one channel (three times less work).
//! * RGBA and LA: order matters. Pillow resizes these premultiplied (`RGBA -> RGBa`,
//!   resize, `RGBa -> RGBA`, with `Convert.c`'s rounding), then `convert("RGB")` drops the
//!   alpha. This module does the same, so translucent pixels match Pillow. Fully opaque
//!   images give the same result either way. (Note that torchvision's `ImageFolder`
//!   loader calls `convert("RGB")` *before* the transform, which drops alpha without
//!   premultiplying; images with translucent pixels then differ from this module.)
//! * Palette and bilevel images ("P" and "1": GIF, indexed or 1-bit PNG): Pillow resizes
//!   them with NEAREST, whatever the transform asks for. The `image` crate expands them
//!   while decoding, so here they are converted first and resized bicubically: *not*
//!   Pillow's output (it is what a loader that converts first produces). PNGs with a
//!   `tRNS` colour key differ too: `image` decodes them with an alpha channel, which is
//!   then premultiplied, while Pillow resizes them as plain RGB/L.
//! * 16-bit and float images are reduced to 8 bits with `image`'s conversions (`v / 257`
//!   rounded), then handled as above. Not exact: Pillow reads 16-bit colour PNGs keeping
//!   the high byte, and 16-bit grayscale ones as "I;16", which `convert("RGB")` clamps to
//!   255 (nearly white); that clamping is deliberately not reproduced.
//!
//! Decoding is `image`'s; neither it nor Pillow applies EXIF orientation. PNG decodes to
//! the same pixels as Pillow (the parity fixtures are PNGs), as other lossless formats
//! should. JPEG does not: zune-jpeg's IDCT and chroma upsampling differ from Pillow's
//! libjpeg-turbo by a few levels (on 4:2:0 files up to 4, in about a quarter of the
//! bytes), and CMYK JPEGs are converted to RGB while decoding instead of being resized in
//! CMYK. Lossy WebP has not been compared.
//!
//! Only the cropped part of the resized image is computed; the values are the same as
//! resizing everything and cropping, since every output pixel has its own window.

use std::ops::Range;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageReader, RgbImage};

/// Per-channel mean of OpenAI's CLIP training data (`OPENAI_DATASET_MEAN`).
pub const OPENAI_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
/// Per-channel standard deviation of OpenAI's CLIP training data (`OPENAI_DATASET_STD`).
#[allow(clippy::excessive_precision)] // the literals as open_clip writes them
pub const OPENAI_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Why an image file could not be preprocessed.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The file could not be opened or read.
    #[error("cannot open image {}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    /// The file's contents are not a supported, well-formed image.
    #[error("cannot decode image {}", path.display())]
    Decode { path: PathBuf, source: image::ImageError },
}

/// CLIP's evaluation preprocessing: bicubic resize of the shorter side to `image_size`,
/// centre crop to `image_size` x `image_size`, RGB, scale to `[0, 1]`, normalise.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClipPreprocess {
    pub image_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ClipPreprocess {
    /// The transform OpenAI CLIP and open_clip use for `image_size` (224 for ViT-B/32).
    pub fn openai(image_size: usize) -> Self {
        Self { image_size, mean: OPENAI_MEAN, std: OPENAI_STD }
    }

    /// A stable name recorded in every result row, e.g. "clip-bicubic224-crop224-openai".
    pub fn id(&self) -> String {
        let n = self.image_size;
        format!("clip-bicubic{n}-crop{n}-{}", self.normalization_name())
    }

    fn normalization_name(&self) -> String {
        if self.mean == OPENAI_MEAN && self.std == OPENAI_STD {
            return "openai".to_owned();
        }
        let [m0, m1, m2] = self.mean;
        let [s0, s1, s2] = self.std;
        format!("mean{m0}_{m1}_{m2}-std{s0}_{s1}_{s2}")
    }

    /// Preprocesses a decoded image into a CHW `f32` tensor of length `3 * n * n`.
    ///
    /// An image with no pixels gives the normalised black image.
    ///
    /// # Panics
    ///
    /// If `image_size` does not fit in `u32` (image dimensions are `u32`).
    pub fn apply(&self, image: &DynamicImage) -> Vec<f32> {
        let size = u32::try_from(self.image_size).expect("image_size must fit in u32");
        let (width, height) = (image.width(), image.height());
        let (resized_width, resized_height) = shorter_side_resize(width, height, size);
        let columns = CropSpan::centred(resized_width, size);
        let rows = CropSpan::centred(resized_height, size);
        let needs_resampling = (resized_width, resized_height) != (width, height);
        let target = ResampleTarget {
            width: resized_width,
            height: resized_height,
            columns: columns.source_range(),
            rows: rows.source_range(),
        };
        let region = resample_to_rgb(image, &target, needs_resampling);
        let cropped = place_on_canvas(region, columns, rows, size);
        self.normalize(&cropped)
    }

    /// Decodes the image file at `path` (format sniffed from its contents) and applies
    /// [`ClipPreprocess::apply`].
    pub fn load(&self, path: &Path) -> Result<Vec<f32>, PreprocessError> {
        Ok(self.apply(&decode_image(path)?))
    }

    /// ToTensor then Normalize: channel-major, `(v / 255 - mean) / std` in `f32`.
    fn normalize(&self, image: &RgbImage) -> Vec<f32> {
        let lookup: [[f32; 256]; 3] = std::array::from_fn(|channel| {
            let (mean, std) = (self.mean[channel], self.std[channel]);
            std::array::from_fn(|value| (value as f32 / 255.0 - mean) / std)
        });
        let plane = image.as_raw().len() / 3;
        let mut tensor = vec![0.0; 3 * plane];
        for (index, pixel) in image.as_raw().chunks_exact(3).enumerate() {
            for (channel, &value) in pixel.iter().enumerate() {
                tensor[channel * plane + index] = lookup[channel][usize::from(value)];
            }
        }
        tensor
    }
}

/// Decodes a regular file (a FIFO or device is refused, never waited on).
fn decode_image(path: &Path) -> Result<DynamicImage, PreprocessError> {
    let reader = crate::files::open_regular(path)
        .and_then(|file| ImageReader::new(std::io::BufReader::new(file)).with_guessed_format())
        .map_err(|source| PreprocessError::Open { path: path.to_path_buf(), source })?;
    reader.decode().map_err(|source| PreprocessError::Decode { path: path.to_path_buf(), source })
}

/// Pillow-exact `Image.resize((width, height), Resampling.BICUBIC)` of an RGB8 image.
pub fn resize_bicubic(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let target = ResampleTarget { width, height, columns: 0..width, rows: 0..height };
    let pixels = resample::<3>(image.as_raw(), image.width(), image.height(), &target);
    rgb_image(width, height, pixels)
}

/// torchvision's `CenterCrop(size)` of an RGB8 image: a `size` x `size` crop at offsets
/// rounded half-to-even, zero-padded (centred) along an axis shorter than `size`.
pub fn center_crop(image: &RgbImage, size: u32) -> RgbImage {
    let columns = CropSpan::centred(image.width(), size);
    let rows = CropSpan::centred(image.height(), size);
    let mut region = RgbImage::new(columns.len, rows.len);
    for (x, y, pixel) in region.enumerate_pixels_mut() {
        *pixel = *image.get_pixel(columns.source_start + x, rows.source_start + y);
    }
    place_on_canvas(region, columns, rows, size)
}

/// torchvision's `Resize(size)` output for a `width` x `height` image: the shorter side
/// becomes `size`, the longer `int(size * long / short)`.
///
/// The integer floor equals Python's float quotient truncated for any realistic size;
/// an empty image keeps its size.
fn shorter_side_resize(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    if short == 0 {
        return (width, height);
    }
    let new_long = u64::from(size) * u64::from(long) / u64::from(short);
    let new_long = u32::try_from(new_long).unwrap_or(u32::MAX);
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Python's `int(round(margin / 2.0))`: half the margin, ties to the even integer.
fn centre_offset(margin: u32) -> u32 {
    let half = margin / 2;
    if margin % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Where a centred crop of `size` finds its pixels along one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CropSpan {
    /// First source index that is kept.
    source_start: u32,
    /// Index in the crop where that pixel lands (non-zero only when padding).
    target_start: u32,
    /// How many source pixels are kept.
    len: u32,
}

impl CropSpan {
    /// torchvision's `center_crop` along an axis of length `len`: crop if the axis is at
    /// least `size` long, otherwise pad `(size - len) // 2` zeros before it.
    fn centred(len: u32, size: u32) -> Self {
        if size <= len {
            Self { source_start: centre_offset(len - size), target_start: 0, len: size }
        } else {
            Self { source_start: 0, target_start: (size - len) / 2, len }
        }
    }

    fn source_range(self) -> Range<u32> {
        self.source_start..self.source_start + self.len
    }
}

/// Places `region` (the kept source pixels) on a black `size` x `size` image.
fn place_on_canvas(region: RgbImage, columns: CropSpan, rows: CropSpan, size: u32) -> RgbImage {
    if region.dimensions() == (size, size) {
        return region;
    }
    let mut canvas = RgbImage::new(size, size);
    for (x, y, pixel) in region.enumerate_pixels() {
        canvas.put_pixel(columns.target_start + x, rows.target_start + y, *pixel);
    }
    canvas
}

fn rgb_image(width: u32, height: u32, pixels: Vec<u8>) -> RgbImage {
    RgbImage::from_raw(width, height, pixels).expect("resampled buffer has width * height * 3 bytes")
}

/// The output of a resize, and the part of it to compute.
#[derive(Clone, Debug)]
struct ResampleTarget {
    width: u32,
    height: u32,
    columns: Range<u32>,
    rows: Range<u32>,
}

impl ResampleTarget {
    fn region_size(&self) -> (u32, u32) {
        (self.columns.end - self.columns.start, self.rows.end - self.rows.start)
    }
}

/// Resizes `image` the way Pillow does for its mode and converts the requested region to
/// RGB the way `convert("RGB")` does. `needs_resampling` is false when torchvision would
/// return the image untouched (then RGBA is not premultiplied either).
fn resample_to_rgb(image: &DynamicImage, target: &ResampleTarget, needs_resampling: bool) -> RgbImage {
    let (width, height) = (image.width(), image.height());
    let (region_width, region_height) = target.region_size();
    let pixels = match image {
        DynamicImage::ImageRgb8(rgb) => resample::<3>(rgb.as_raw(), width, height, target),
        DynamicImage::ImageLuma8(gray) => gray_to_rgb(&resample::<1>(gray.as_raw(), width, height, target)),
        DynamicImage::ImageRgba8(rgba) => {
            let rgba = resample_with_alpha::<4>(rgba.as_raw(), width, height, target, needs_resampling);
            rgba.chunks_exact(4).flat_map(|pixel| [pixel[0], pixel[1], pixel[2]]).collect()
        }
        DynamicImage::ImageLumaA8(gray_alpha) => {
            let gray_alpha =
                resample_with_alpha::<2>(gray_alpha.as_raw(), width, height, target, needs_resampling);
            gray_alpha.chunks_exact(2).flat_map(|pixel| [pixel[0]; 3]).collect()
        }
        other => return resample_to_rgb(&to_eight_bit(other), target, needs_resampling),
    };
    rgb_image(region_width, region_height, pixels)
}

/// The 8-bit image with the same channels as a 16-bit or float one.
fn to_eight_bit(image: &DynamicImage) -> DynamicImage {
    let color = image.color();
    match (color.has_color(), color.has_alpha()) {
        (true, true) => DynamicImage::ImageRgba8(image.to_rgba8()),
        (true, false) => DynamicImage::ImageRgb8(image.to_rgb8()),
        (false, true) => DynamicImage::ImageLumaA8(image.to_luma_alpha8()),
        (false, false) => DynamicImage::ImageLuma8(image.to_luma8()),
    }
}

fn gray_to_rgb(gray: &[u8]) -> Vec<u8> {
    gray.iter().flat_map(|&value| [value; 3]).collect()
}

/// Pillow's resize of "RGBA"/"LA" (`C` channels, alpha last): premultiply, resample,
/// unpremultiply. Without resampling the pixels are returned unchanged.
fn resample_with_alpha<const C: usize>(
    pixels: &[u8],
    width: u32,
    height: u32,
    target: &ResampleTarget,
    needs_resampling: bool,
) -> Vec<u8> {
    if !needs_resampling {
        return resample::<C>(pixels, width, height, target);
    }
    let mut premultiplied = pixels.to_vec();
    premultiplied.chunks_exact_mut(C).for_each(premultiply_alpha);
    let mut resampled = resample::<C>(&premultiplied, width, height, target);
    resampled.chunks_exact_mut(C).for_each(unpremultiply_alpha);
    resampled
}

/// Pillow's `MULDIV255(a, b)`: `a * b / 255` rounded, computed with shifts.
fn mul_div_255(a: u8, b: u8) -> u8 {
    let product = u32::from(a) * u32::from(b) + 128;
    (((product >> 8) + product) >> 8) as u8
}

/// Pillow's `RGBA -> RGBa` (and `LA -> La`) conversion of one pixel, alpha last.
fn premultiply_alpha(pixel: &mut [u8]) {
    if let Some((&mut alpha, colour)) = pixel.split_last_mut() {
        colour.iter_mut().for_each(|value| *value = mul_div_255(*value, alpha));
    }
}

/// Pillow's `RGBa -> RGBA` (and `La -> LA`) conversion of one pixel, alpha last:
/// `min(255, 255 * v / alpha)` with integer division, unchanged for alpha 0 and 255.
fn unpremultiply_alpha(pixel: &mut [u8]) {
    if let Some((&mut alpha, colour)) = pixel.split_last_mut() {
        if alpha != 0 && alpha != 255 {
            for value in colour {
                *value = (255 * u32::from(*value) / u32::from(alpha)).min(255) as u8;
            }
        }
    }
}

/// Fractional bits of Pillow's fixed-point weights for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Start value of every accumulator: one half, so the final shift rounds.
const ROUNDING_HALF: i32 = 1 << (PRECISION_BITS - 1);

/// The bicubic convolution kernel with `a = -0.5` (Pillow's `bicubic_filter`).
fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Support of [`bicubic_kernel`] at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// The input pixels contributing to one output pixel, and their fixed-point weights.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Window {
    start: usize,
    weights: Vec<i32>,
}

/// Weights for the output indices `outputs` of a resize from `in_size` to `out_size`
/// pixels along one axis (Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`).
///
/// Pillow skips the pass for an axis that keeps its size; a one-tap unit window per pixel
/// is the same copy and lets the caller still pick a sub-range.
fn axis_windows(in_size: u32, out_size: u32, outputs: Range<u32>) -> Vec<Window> {
    if in_size == out_size {
        return outputs
            .map(|index| Window { start: index as usize, weights: vec![1 << PRECISION_BITS] })
            .collect();
    }
    let scale = f64::from(in_size) / f64::from(out_size);
    let filter_scale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filter_scale;
    let inverse_filter_scale = 1.0 / filter_scale;
    outputs
        .map(|index| {
            let centre = (f64::from(index) + 0.5) * scale;
            // `as` truncates towards zero and saturates, like Pillow's `(int)` here.
            let first = ((centre - support + 0.5) as i64).max(0);
            let end = ((centre + support + 0.5) as i64).min(i64::from(in_size));
            let raw: Vec<f64> = (first..end.max(first))
                .map(|source| bicubic_kernel((source as f64 - centre + 0.5) * inverse_filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&weight| to_fixed_point(if total != 0.0 { weight / total } else { weight }))
                .collect();
            Window { start: first as usize, weights }
        })
        .collect()
}

/// A normalised weight in fixed point, rounded half away from zero.
fn to_fixed_point(weight: f64) -> i32 {
    let scaled = weight * f64::from(1u32 << PRECISION_BITS);
    if weight < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Drops the fractional bits of an accumulator and clamps to `u8` (Pillow's `clip8`).
fn clip_to_u8(accumulator: i32) -> u8 {
    (accumulator >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's two-pass 8-bit resampling of a `C`-channel interleaved image, computing only
/// `target.columns` x `target.rows` of the `target.width` x `target.height` output.
///
/// An empty input (which Pillow cannot resize) gives black pixels.
fn resample<const C: usize>(pixels: &[u8], width: u32, height: u32, target: &ResampleTarget) -> Vec<u8> {
    let (region_width, region_height) = target.region_size();
    if width == 0 || height == 0 || region_width == 0 || region_height == 0 {
        return vec![0; region_width as usize * region_height as usize * C];
    }
    let horizontal = axis_windows(width, target.width, target.columns.clone());
    let vertical = axis_windows(height, target.height, target.rows.clone());
    let vertical_first = vertical_pass_first(width, height, target.width, target.height);
    let width = width as usize;
    if vertical_first {
        let columns = resample_columns(pixels, width * C, 0, &vertical);
        return resample_rows::<C>(&columns, width, 0..vertical.len(), &horizontal);
    }
    // Only the input rows some vertical window reads go through the horizontal pass.
    let first_row = vertical.first().map_or(0, |window| window.start);
    let end_row = vertical.last().map_or(0, |window| window.start + window.weights.len());
    let rows = resample_rows::<C>(pixels, width, first_row..end_row, &horizontal);
    resample_columns(&rows, horizontal.len() * C, first_row, &vertical)
}

/// Pillow 13's pass order (python-pillow/Pillow#9549): the vertical pass runs first when
/// the height shrinks by more pixels than twice the width does. Because the intermediate
/// image is rounded to `u8`, the order changes the result. (Only matters when both axes
/// are resampled; Pillow 12 and earlier always ran the horizontal pass first.)
fn vertical_pass_first(width: u32, height: u32, out_width: u32, out_height: u32) -> bool {
    let height_shrink = i64::from(height) - i64::from(out_height);
    let width_shrink = i64::from(width) - i64::from(out_width);
    height_shrink > 0 && height_shrink > 2 * width_shrink
}

/// Horizontal pass over input rows `rows`: one output row of `windows.len()` pixels each.
fn resample_rows<const C: usize>(
    pixels: &[u8],
    width: usize,
    rows: Range<usize>,
    windows: &[Window],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * windows.len() * C);
    for row in pixels.chunks_exact(width * C).skip(rows.start).take(rows.len()) {
        for window in windows {
            let taps = &row[window.start * C..(window.start + window.weights.len()) * C];
            let mut sums = [ROUNDING_HALF; C];
            for (pixel, &weight) in taps.chunks_exact(C).zip(&window.weights) {
                for (sum, &value) in sums.iter_mut().zip(pixel) {
                    *sum += i32::from(value) * weight;
                }
            }
            out.extend(sums.map(clip_to_u8));
        }
    }
    out
}

/// Vertical pass over rows of `row_len` bytes, the first being input row `first_row`.
fn resample_columns(rows: &[u8], row_len: usize, first_row: usize, windows: &[Window]) -> Vec<u8> {
    let mut out = Vec::with_capacity(windows.len() * row_len);
    let mut sums = vec![0; row_len];
    for window in windows {
        sums.fill(ROUNDING_HALF);
        let taps = rows.chunks_exact(row_len).skip(window.start - first_row);
        for (row, &weight) in taps.zip(&window.weights) {
            for (sum, &value) in sums.iter_mut().zip(row) {
                *sum += i32::from(value) * weight;
            }
        }
        out.extend(sums.iter().map(|&sum| clip_to_u8(sum)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_match_hand_computed_downscale() {
        // 8 -> 4 pixels: scale 2, support 4. Output 0 is centred at 1.0, so Pillow's
        // window is [(int)(1 - 4 + 0.5) = -2 -> 0, (int)(1 + 4 + 0.5) = 5), and the
        // kernel is sampled at (x - 1 + 0.5) / 2 = -0.25, 0.25, 0.75, 1.25, 1.75.
        let windows = axis_windows(8, 4, 0..4);
        let raw: Vec<f64> = [-0.25, 0.25, 0.75, 1.25, 1.75].iter().map(|&x| bicubic_kernel(x)).collect();
        let total: f64 = raw.iter().sum();
        let expected: Vec<i32> = raw.iter().map(|&w| to_fixed_point(w / total)).collect();
        assert_eq!(windows[0], Window { start: 0, weights: expected });
        // Output 3 is centred at 7.0: window [3, min(11, 8)) = [3, 8).
        assert_eq!(windows[3].start, 3);
        assert_eq!(windows[3].weights.len(), 5);
    }

    #[test]
    fn windows_sum_to_one_in_fixed_point() {
        for (in_size, out_size) in [(45, 32), (20, 112), (300, 38), (250, 224), (7, 3)] {
            for window in axis_windows(in_size, out_size, 0..out_size) {
                let total: i32 = window.weights.iter().sum();
                assert!((total - (1 << PRECISION_BITS)).abs() <= window.weights.len() as i32);
                assert!(window.start + window.weights.len() <= in_size as usize);
            }
        }
    }

    #[test]
    fn sub_range_windows_equal_the_full_ones() {
        let full = axis_windows(300, 38, 0..38);
        assert_eq!(axis_windows(300, 38, 3..35), full[3..35].to_vec());
    }

    #[test]
    fn pass_order_follows_pillow_13() {
        // Height shrinks by more than twice the width's shrink: vertical first.
        assert!(vertical_pass_first(45, 120, 32, 85));
        assert!(vertical_pass_first(21, 1779, 400, 248));
        // CLIP's 500x375 -> 298x224 and 375x500 -> 224x298: horizontal first.
        assert!(!vertical_pass_first(500, 375, 298, 224));
        assert!(!vertical_pass_first(375, 500, 224, 298));
        // Growing height: horizontal first.
        assert!(!vertical_pass_first(40, 20, 10, 30));
    }

    #[test]
    fn kernel_has_pillow_values() {
        assert_eq!(bicubic_kernel(0.0), 1.0);
        assert_eq!(bicubic_kernel(1.0), 0.0);
        assert_eq!(bicubic_kernel(-0.5), 0.5625);
        assert_eq!(bicubic_kernel(1.5), -0.0625);
        assert_eq!(bicubic_kernel(2.0), 0.0);
    }

    #[test]
    fn fixed_point_rounds_half_away_from_zero() {
        let unit = f64::from(1u32 << PRECISION_BITS);
        assert_eq!(to_fixed_point(1.0), 1 << PRECISION_BITS);
        assert_eq!(to_fixed_point(2.5 / unit), 3);
        assert_eq!(to_fixed_point(-2.5 / unit), -3);
        assert_eq!(to_fixed_point(-2.4 / unit), -2);
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        // Python: [int(round(m / 2.0)) for m in range(8)] == [0, 0, 1, 2, 2, 2, 3, 4]
        let offsets: Vec<u32> = (0..8).map(centre_offset).collect();
        assert_eq!(offsets, [0, 0, 1, 2, 2, 2, 3, 4]);
    }

    #[test]
    fn crop_pads_like_torchvision() {
        // Python: np.asarray(T.CenterCrop(8)(Image.fromarray(np.full((5, 5, 3), 9, np.uint8))))
        // has 9s in rows and columns 1..6: padding is (8 - 5) // 2 = 1 before, 2 after.
        let span = CropSpan::centred(5, 8);
        assert_eq!((span.source_start, span.target_start, span.len), (0, 1, 5));
        let square = center_crop(&RgbImage::from_pixel(5, 5, image::Rgb([9; 3])), 8);
        let row: Vec<u8> = (0..8).map(|x| square.get_pixel(x, 3).0[0]).collect();
        assert_eq!(row, [0, 9, 9, 9, 9, 9, 0, 0]);
        // A 3x10 image cropped to 4: columns padded 0 before and 1 after.
        let tall = center_crop(&RgbImage::from_pixel(3, 10, image::Rgb([9; 3])), 4);
        let row: Vec<u8> = (0..4).map(|x| tall.get_pixel(x, 0).0[0]).collect();
        assert_eq!(row, [9, 9, 9, 0]);
    }

    #[test]
    fn resize_sizes_follow_torchvision() {
        // Python: _compute_resized_output_size((h, w), [n]) gives [h', w'].
        assert_eq!(shorter_side_resize(500, 375, 224), (298, 224));
        assert_eq!(shorter_side_resize(375, 500, 224), (224, 298));
        assert_eq!(shorter_side_resize(43, 37, 32), (37, 32));
        assert_eq!(shorter_side_resize(20, 70, 32), (32, 112));
        assert_eq!(shorter_side_resize(33, 33, 32), (32, 32));
        assert_eq!(shorter_side_resize(0, 7, 32), (0, 7));
    }

    #[test]
    fn alpha_conversions_follow_pillow() {
        assert_eq!(mul_div_255(200, 100), 78);
        assert_eq!(mul_div_255(255, 255), 255);
        assert_eq!(mul_div_255(1, 128), 1);
        let mut pixel = [78, 0, 255, 100];
        unpremultiply_alpha(&mut pixel);
        assert_eq!(pixel, [198, 0, 255, 100]);
        let mut transparent = [5, 6, 7, 0];
        unpremultiply_alpha(&mut transparent);
        assert_eq!(transparent, [5, 6, 7, 0]);
    }

    #[test]
    fn empty_and_degenerate_inputs_do_not_panic() {
        let preprocess = ClipPreprocess::openai(4);
        let black = preprocess.apply(&DynamicImage::new_rgb8(0, 0));
        assert_eq!(black.len(), 48);
        assert_eq!(black[0], -OPENAI_MEAN[0] / OPENAI_STD[0]);
        let thin = preprocess.apply(&DynamicImage::new_rgb8(1, 100_000));
        assert_eq!(thin.len(), 48);
        assert!(ClipPreprocess::openai(0).apply(&DynamicImage::new_rgb8(3, 3)).is_empty());
    }

    #[test]
    fn id_names_size_and_normalisation() {
        assert_eq!(ClipPreprocess::openai(224).id(), "clip-bicubic224-crop224-openai");
        let custom = ClipPreprocess { image_size: 32, mean: [0.5; 3], std: [0.25; 3] };
        assert_eq!(custom.id(), "clip-bicubic32-crop32-mean0.5_0.5_0.5-std0.25_0.25_0.25");
    }
}
