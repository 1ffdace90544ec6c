//! Common corruptions against the `imagecorruptions` package 1.1.2 (fixture
//! `fixtures/perturb/corruptions.json` by `scripts/fixtures/corruptions.py`): every
//! deterministic corruption at severities 1 to 5 on a 16×16 and a 20×24 image, gaussian and
//! impulse noise with the package's random draws replaced by stored ones; JPEG (whose encoder
//! differs from Pillow's) by its properties; seeds and errors.
//!
//! Tolerance: one uint8 level (1/255 + 1e-6). Both sides truncate float64 results to uint8
//! levels; OpenCV sums its float32 disk kernel and its DFT-based correlation in another order,
//! and NumPy's means are pairwise, so a value within rounding of a level boundary may land one
//! level away. On these images every value matches exactly (the test prints the counts).

use robustft::perturb::corruptions::{corrupt, gaussian_noise_with, impulse_noise_with, Corruption};
use serde::Deserialize;

const LEVEL_TOL: f32 = 1.0 / 255.0 + 1e-6;

#[derive(Deserialize)]
struct Fixture {
    images: Vec<Image>,
    deterministic: Vec<Case>,
    noise: Noise,
}

#[derive(Deserialize)]
struct Image {
    height: usize,
    width: usize,
    levels: Vec<u8>,
}

#[derive(Deserialize)]
struct Case {
    image: usize,
    corruption: String,
    severity: u8,
    levels: Vec<u8>,
}

#[derive(Deserialize)]
struct Noise {
    image: usize,
    normal: Vec<f32>,
    flip_draws: Vec<f64>,
    salt_draws: Vec<f64>,
    gaussian_noise: Vec<Vec<u8>>,
    impulse_noise: Vec<Vec<u8>>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/perturb/corruptions.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn pixels(levels: &[u8]) -> Vec<f32> {
    levels.iter().map(|&l| f32::from(l) / 255.0).collect()
}

/// The largest `|got − level/255|` and how many values differ at all.
fn compare(got: &[f32], expected: &[u8]) -> (f32, usize) {
    assert_eq!(got.len(), expected.len());
    got.iter().zip(pixels(expected)).fold((0.0, 0), |(worst, differing), (g, e)| {
        let diff = (g - e).abs();
        (worst.max(diff), differing + usize::from(diff > 1e-6))
    })
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

/// A smooth test image (gradients and a disc) with values on the 1/255 grid.
fn smooth_image(height: usize, width: usize) -> Vec<f32> {
    (0..3 * height * width)
        .map(|i| {
            let (c, y, x) = (i / (height * width), (i / width) % height, i % width);
            let (dy, dx) = (y as f32 - height as f32 / 2.0, x as f32 - width as f32 / 2.0);
            let disc = if dy * dy + dx * dx < (height * width) as f32 / 10.0 { 0.4 } else { 0.0 };
            let value = 0.1 + 0.5 * (x + c * y) as f32 / (width + 2 * height) as f32 + disc;
            (value * 255.0).round() / 255.0
        })
        .collect()
}

#[test]
fn deterministic_corruptions_match_the_package() {
    let fixture = fixture();
    let mut worst_by_name = std::collections::BTreeMap::new();
    for case in &fixture.deterministic {
        let image = &fixture.images[case.image];
        let corruption = Corruption::parse(&case.corruption).unwrap();
        let got =
            corrupt(&pixels(&image.levels), image.height, image.width, corruption, case.severity, 0).unwrap();
        let (worst, differing) = compare(&got, &case.levels);
        // Expected: np.uint8(imagecorruptions.<corruption>(PIL.Image.fromarray(image), severity))
        // with imagecorruptions 1.1.2 (scripts/fixtures/corruptions.py).
        assert!(
            worst <= LEVEL_TOL,
            "{} severity {} on image {}: max |diff| {worst} ({differing} values differ)",
            case.corruption,
            case.severity,
            case.image
        );
        let entry = worst_by_name.entry(case.corruption.clone()).or_insert((0.0f32, 0usize));
        *entry = (entry.0.max(worst), entry.1 + differing);
    }
    for (name, (worst, differing)) in worst_by_name {
        println!("{name}: max |diff| {worst:.6} ({differing} values one level off)");
    }
}

#[test]
fn noise_with_stored_draws_matches_the_package() {
    let fixture = fixture();
    let noise = &fixture.noise;
    let image = pixels(&fixture.images[noise.image].levels);
    for severity in 1..=5u8 {
        let index = usize::from(severity - 1);
        let gaussian = gaussian_noise_with(&image, &noise.normal, severity).unwrap();
        let (gaussian_worst, differing) = compare(&gaussian, &noise.gaussian_noise[index]);
        // Expected: imagecorruptions.gaussian_noise(image, severity) with np.random.normal
        // returning scale·normal (scripts/fixtures/corruptions.py).
        assert!(
            gaussian_worst <= LEVEL_TOL,
            "gaussian_noise severity {severity}: max |diff| {gaussian_worst}"
        );
        let impulse = impulse_noise_with(&image, &noise.flip_draws, &noise.salt_draws, severity).unwrap();
        let (worst, off) = compare(&impulse, &noise.impulse_noise[index]);
        // Expected: imagecorruptions.impulse_noise(image, severity) with skimage's generator
        // returning flip_draws, then salt_draws (scripts/fixtures/corruptions.py). Only
        // flipped values change, so the match is exact.
        assert_eq!((worst, off), (0.0, 0), "impulse_noise severity {severity}");
        println!(
            "gaussian_noise severity {severity}: max |diff| {gaussian_worst:.6} ({differing} off by one)"
        );
    }
}

#[test]
fn jpeg_keeps_shape_and_range_and_degrades_with_severity() {
    let (height, width) = (32, 40);
    let image = smooth_image(height, width);
    let errors: Vec<f32> = (1..=5)
        .map(|severity| {
            let out = corrupt(&image, height, width, Corruption::Jpeg, severity, 0).unwrap();
            assert_eq!(out.len(), image.len());
            assert!(out
                .iter()
                .all(|v| (0.0..=1.0).contains(v) && (v * 255.0 - (v * 255.0).round()).abs() < 1e-3));
            mean_abs_diff(&out, &image)
        })
        .collect();
    assert!(errors[0] > 0.0, "quality 25 left the image unchanged");
    assert!(errors[4] > errors[0], "mean |diff| by severity: {errors:?}");
    assert!(errors.windows(2).all(|w| w[1] >= w[0] * 0.9), "mean |diff| by severity: {errors:?}");
}

#[test]
fn every_corruption_grows_with_severity() {
    let (height, width) = (24, 24);
    let image = smooth_image(height, width);
    for corruption in Corruption::ALL {
        let errors: Vec<f32> = [1, 5]
            .into_iter()
            .map(|s| mean_abs_diff(&corrupt(&image, height, width, corruption, s, 3).unwrap(), &image))
            .collect();
        assert!(errors[1] > errors[0], "{}: mean |diff| at severity 1 and 5: {errors:?}", corruption.name());
    }
}

#[test]
fn seeds_drive_the_noises_only() {
    let (height, width) = (8, 12);
    let image = smooth_image(height, width);
    for corruption in Corruption::ALL {
        let run = |seed| corrupt(&image, height, width, corruption, 3, seed).unwrap();
        assert_eq!(run(1), run(1), "{}: same seed, different images", corruption.name());
        if corruption.is_random() {
            assert_ne!(run(1), run(2), "{}: seeds 1 and 2 gave the same image", corruption.name());
        } else {
            assert_eq!(run(1), run(2), "{}: the seed changed a deterministic corruption", corruption.name());
        }
    }
}

#[test]
fn invalid_arguments_are_refused() {
    let image = smooth_image(4, 4);
    for severity in [0, 6] {
        let err = corrupt(&image, 4, 4, Corruption::Contrast, severity, 0).unwrap_err().to_string();
        assert!(err.contains(&format!("severity {severity}")), "{err}");
    }
    let err = corrupt(&image[1..], 4, 4, Corruption::Contrast, 1, 0).unwrap_err().to_string();
    assert!(err.contains("[3, 4, 4]") && err.contains("47"), "{err}");
    let err = gaussian_noise_with(&image, &[0.0; 3], 1).unwrap_err().to_string();
    assert!(err.contains("3 normal draws"), "{err}");
    let err = Corruption::parse("fog").unwrap_err();
    assert!(err.contains("\"fog\"") && err.contains("jpeg_compression"), "{err}");
    for corruption in Corruption::ALL {
        assert_eq!(Corruption::parse(corruption.name()), Ok(corruption));
    }
}
