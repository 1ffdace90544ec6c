//! Tiny on-disk manifest datasets for end-to-end recipe tests: 32×32 images whose colour is the
//! class (red, green, blue) plus Gaussian noise, with a concept-description file.

#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};

use robustft::rng::SplitMix64;

pub const CLASSES: [&str; 3] = ["circle", "square", "triangle"];

/// A fresh scratch directory for one test.
pub fn scratch(prefix: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("robustft-{prefix}-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One split: its name, image count, brightness factor and noise standard deviation.
pub struct SplitSpec(pub &'static str, pub usize, pub f32, pub f32);

/// Writes `manifest.csv`, `classes.txt`, `cd.json` and the images of `splits` into `dir`
/// (image `i` has class `i mod 3`), plus an unreadable `broken.png` in train when `corrupt`.
pub fn write_dataset(dir: &Path, seed: u64, splits: &[SplitSpec], corrupt: bool) {
    let mut rng = SplitMix64::new(seed);
    let mut manifest = String::from("path,label,split\n");
    for SplitSpec(split, count, brightness, noise) in splits {
        for i in 0..*count {
            let label = i % 3;
            let image = image::RgbImage::from_fn(32, 32, |_, _| {
                let base = [[200f32, 40.0, 40.0], [40.0, 200.0, 40.0], [40.0, 40.0, 200.0]][label];
                image::Rgb(base.map(|c| (c * brightness + noise * rng.normal()).clamp(0.0, 255.0) as u8))
            });
            let path = format!("{split}_{i}.png");
            image.save(dir.join(&path)).unwrap();
            manifest.push_str(&format!("{path},{label},{split}\n"));
        }
    }
    if corrupt {
        std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
        manifest.push_str("broken.png,0,train\n");
    }
    std::fs::write(dir.join("manifest.csv"), manifest).unwrap();
    std::fs::write(dir.join("classes.txt"), CLASSES.join("\n")).unwrap();
    let descriptions: serde_json::Map<String, serde_json::Value> =
        CLASSES.iter().map(|c| (c.to_string(), format!("a round or angular {c} outline").into())).collect();
    std::fs::write(dir.join("cd.json"), serde_json::to_string(&descriptions).unwrap()).unwrap();
}
