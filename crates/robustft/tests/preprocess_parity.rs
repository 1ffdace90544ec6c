//! Parity of `robustft::clip::preprocess` with Pillow 13 + torchvision + open_clip.
//!
//! The fixtures in `fixtures/preprocess/` come from `scripts/fixtures/preprocess.py`:
//! small PNG inputs and `expected.safetensors` holding, per case and size n,
//! `<case>/n<n>/pixels` (the full CLIP transform, f32 [3, n, n]) and, for some RGB cases,
//! `<case>/n<n>/resized` (the uint8 [h, w, 3] bicubic resize before the crop).

use std::path::{Path, PathBuf};

use image::RgbImage;
use robustft::clip::preprocess::{
    center_crop, resize_bicubic, ClipPreprocess, PreprocessError, OPENAI_MEAN, OPENAI_STD,
};
use safetensors::{Dtype, SafeTensors};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/preprocess");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn read_expected() -> Vec<u8> {
    std::fs::read(fixture("expected.safetensors")).expect("run scripts/fixtures/preprocess.py")
}

/// An expected tensor named `<case>/n<size>/<kind>`, with its case and size.
struct Entry<'a> {
    case: &'a str,
    size: u32,
    view: safetensors::tensor::TensorView<'a>,
}

fn entries<'a>(tensors: &'a SafeTensors<'a>, kind: &str) -> Vec<Entry<'a>> {
    let mut found = Vec::new();
    for name in tensors.names() {
        let parts: Vec<&str> = name.split('/').collect();
        let [case, size, tensor_kind] = parts[..] else {
            panic!("unexpected tensor name {name}");
        };
        if tensor_kind != kind {
            continue;
        }
        let size = size
            .strip_prefix('n')
            .and_then(|size| size.parse().ok())
            .unwrap_or_else(|| panic!("unexpected tensor name {name}"));
        let view = tensors.tensor(name).unwrap();
        found.push(Entry { case, size, view });
    }
    found.sort_by_key(|entry| (entry.case, entry.size));
    found
}

fn input_path(case: &str) -> PathBuf {
    fixture(&format!("{case}.png"))
}

fn load_rgb(case: &str) -> RgbImage {
    match image::open(input_path(case)).unwrap() {
        image::DynamicImage::ImageRgb8(rgb) => rgb,
        other => panic!("{case}.png decodes as {:?}, not RGB8", other.color()),
    }
}

fn f32_values(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    assert_eq!(view.dtype(), Dtype::F32);
    view.data().chunks_exact(4).map(|bytes| f32::from_le_bytes(bytes.try_into().unwrap())).collect()
}

fn max_abs_difference(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len());
    actual.iter().zip(expected).map(|(a, e)| (a - e).abs()).fold(0.0, f32::max)
}

/// Index and values of the first differing byte, for assertion messages.
fn first_difference(actual: &[u8], expected: &[u8]) -> Option<(usize, u8, u8)> {
    actual.iter().zip(expected).enumerate().find(|(_, (a, e))| a != e).map(|(index, (&a, &e))| (index, a, e))
}

#[test]
fn bicubic_resize_is_pillow_exact() {
    let bytes = read_expected();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let cases = entries(&tensors, "resized");
    assert!(cases.len() >= 5, "expected at least 5 resize fixtures");
    for Entry { case, size, view } in cases {
        assert_eq!(view.dtype(), Dtype::U8);
        let [height, width, 3] = view.shape()[..] else {
            panic!("{case}: unexpected shape {:?}", view.shape());
        };
        let resized = resize_bicubic(&load_rgb(case), width as u32, height as u32);
        // Python: np.asarray(T.Resize(size, interpolation=BICUBIC)(Image.open(png)))
        //         == np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))
        assert_eq!(
            first_difference(resized.as_raw(), view.data()),
            None,
            "{case} at n={size}: (byte index, ours, Pillow's)"
        );
        assert_eq!(resized.as_raw().len(), view.data().len());
    }
}

#[test]
fn center_crop_matches_torchvision() {
    let bytes = read_expected();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    for Entry { case, size, view } in entries(&tensors, "resized") {
        let [height, width, 3] = view.shape()[..] else {
            panic!("{case}: unexpected shape {:?}", view.shape());
        };
        let resized = RgbImage::from_raw(width as u32, height as u32, view.data().to_vec()).unwrap();
        let cropped = center_crop(&resized, size);
        let pixels = f32_values(&tensors.tensor(&format!("{case}/n{size}/pixels")).unwrap());
        // Python: T.CenterCrop(size)(resized), recovered from the normalised tensor as
        //         round((pixels * std + mean) * 255)
        let plane = (size * size) as usize;
        let recovered: Vec<u8> = (0..plane * 3)
            .map(|index| {
                let (pixel, channel) = (index / 3, index % 3);
                let value = pixels[channel * plane + pixel];
                ((value * OPENAI_STD[channel] + OPENAI_MEAN[channel]) * 255.0).round() as u8
            })
            .collect();
        assert_eq!(
            first_difference(cropped.as_raw(), &recovered),
            None,
            "{case} at n={size}: (byte index, ours, torchvision's)"
        );
    }
}

#[test]
fn full_pipeline_matches_open_clip() {
    let bytes = read_expected();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let cases = entries(&tensors, "pixels");
    assert_eq!(cases.len(), 12, "one per case and size in the generator");
    for Entry { case, size, view } in cases {
        assert_eq!(view.shape(), [3, size as usize, size as usize]);
        let actual = ClipPreprocess::openai(size as usize).load(&input_path(case)).unwrap();
        // Python: open_clip.image_transform(size, is_train=False)(Image.open(png))
        //   = Resize(size, BICUBIC) -> CenterCrop(size) -> convert("RGB") -> ToTensor()
        //     -> Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
        let error = max_abs_difference(&actual, &f32_values(&view));
        assert!(error <= 1e-6, "{case} at n={size}: max |ours - torch| = {error}");
    }
}

#[test]
fn missing_file_error_names_the_path() {
    let path = fixture("no-such-image.png");
    // Python: Image.open("no-such-image.png") raises FileNotFoundError
    let error = ClipPreprocess::openai(32).load(&path).unwrap_err();
    assert!(matches!(error, PreprocessError::Open { .. }), "{error:?}");
    assert!(error.to_string().contains(&path.display().to_string()), "{error}");
}

#[test]
fn corrupt_files_give_decode_errors_naming_the_path() {
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join("preprocess_parity");
    std::fs::create_dir_all(&directory).unwrap();
    let valid = std::fs::read(input_path("rgb_300x250")).unwrap();
    let truncated = directory.join("truncated.png");
    std::fs::write(&truncated, &valid[..valid.len() / 2]).unwrap();
    let not_an_image = directory.join("not-an-image.png");
    std::fs::write(&not_an_image, b"this is not an image").unwrap();
    for path in [truncated, not_an_image] {
        // Python: Image.open(path).load() raises OSError / UnidentifiedImageError
        let error = ClipPreprocess::openai(32).load(&path).unwrap_err();
        assert!(matches!(error, PreprocessError::Decode { .. }), "{error:?}");
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
    }
}
