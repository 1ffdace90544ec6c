//! Synthetic datasets in the on-disk layouts of the paper benchmarks, to rehearse a paper
//! recipe end to end (train, evaluation, WiSE-FT) without the data: JPEGs (tiny by default;
//! any size, to time decoding at a real dataset's image size) whose colour depends on the
//! class (plus per-pixel noise), written where the real loaders look.
//!
//! * [`SynthLayout::Imagenet`]: `train/<wnid>/` and the variant folders `data.root` holds for
//!   the ImageNet recipes (`data/imagenet.rs`): `imagenet/<wnid>/` (validation),
//!   `imagenet-sketch/<wnid>/`, `imagenet-v2/0..999/`, `imagenet-r/` and `imagenet-a/` (their
//!   200 WordNet ids), and `objectnet/` with `images/<folder>/` and the four `mappings/` files of
//!   the release, made self-consistent: 113 synthetic classes, ObjectNet class `k` pooling
//!   ImageNet classes `k` and `k + 500` (the label texts are synthetic, `class <index>`).
//! * [`SynthLayout::Iwildcam`]: `iwildcam_v2.0/metadata.csv` (`split`, `filename`, `y`,
//!   `location_remapped`) and `iwildcam_v2.0/train/<filename>`, with `per_class` images of each
//!   of the 182 classes in each of the five official splits; the ID splits (`train`, `id_val`,
//!   `id_test`) share camera locations 0–9, the OOD splits use 10–14 (`val`) and 15–19 (`test`).

use std::path::{Path, PathBuf};

use image::{codecs::jpeg::JpegEncoder, RgbImage};

use super::{IMAGENET_A_CLASS_INDICES, IMAGENET_R_CLASS_INDICES, IMAGENET_WNIDS, IWILDCAM_SPLITS};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Side of a synthetic image unless a size is asked for, in pixels.
pub const DEFAULT_SYNTH_SIDE: u32 = 24;
/// iWildCam's class count (the WILDS label table).
const IWILDCAM_CLASSES: usize = 182;
/// ObjectNet classes that overlap ImageNet, as in the release.
const OBJECTNET_CLASSES: usize = 113;

/// Which benchmark layout to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthLayout {
    Imagenet,
    Iwildcam,
}

impl std::str::FromStr for SynthLayout {
    type Err = String;

    /// `imagenet` or `iwildcam`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "imagenet" => Ok(Self::Imagenet),
            "iwildcam" => Ok(Self::Iwildcam),
            _ => Err(format!("unknown layout {s:?} (expected imagenet or iwildcam)")),
        }
    }
}

/// What [`write_synthetic`] writes besides the layout.
#[derive(Clone, Copy, Debug)]
pub struct SynthImages {
    /// Images per class in each split or variant.
    pub per_class: usize,
    /// Seed of the per-pixel noise.
    pub seed: u64,
    /// Width and height of every image, in pixels.
    pub size: (u32, u32),
}

/// Writes a synthetic dataset in `layout` under `out` with `images.per_class` images per class
/// and split; returns the number of images written.
pub fn write_synthetic(layout: SynthLayout, out: &Path, images: SynthImages) -> Result<usize> {
    let (width, height) = images.size;
    if width == 0 || height == 0 {
        return Err(Error::Invalid {
            what: "synthetic image size".into(),
            reason: format!("{width}x{height} has no pixels"),
        });
    }
    let mut writer = Writer {
        rng: SplitMix64::new(images.seed),
        per_class: images.per_class,
        size: images.size,
        images: 0,
    };
    match layout {
        SynthLayout::Imagenet => writer.imagenet(out)?,
        SynthLayout::Iwildcam => writer.iwildcam(out)?,
    }
    Ok(writer.images)
}

struct Writer {
    rng: SplitMix64,
    per_class: usize,
    size: (u32, u32),
    images: usize,
}

impl Writer {
    fn imagenet(&mut self, out: &Path) -> Result<()> {
        for split in ["train", "imagenet", "imagenet-sketch"] {
            for (class, wnid) in IMAGENET_WNIDS.iter().enumerate() {
                self.class_folder(&out.join(split).join(wnid), class, wnid)?;
            }
        }
        for class in 0..IMAGENET_WNIDS.len() {
            self.class_folder(&out.join("imagenet-v2").join(class.to_string()), class, "v2")?;
        }
        for (split, subset) in
            [("imagenet-r", &IMAGENET_R_CLASS_INDICES), ("imagenet-a", &IMAGENET_A_CLASS_INDICES)]
        {
            for &class in subset.iter() {
                self.class_folder(
                    &out.join(split).join(IMAGENET_WNIDS[class]),
                    class,
                    IMAGENET_WNIDS[class],
                )?;
            }
        }
        self.objectnet(&out.join("objectnet"))
    }

    fn objectnet(&mut self, root: &Path) -> Result<()> {
        let mappings = root.join("mappings");
        let folder = |k: usize| format!("object_{k:03}");
        let label = |index: usize| format!("class {index}");
        let folders: serde_json::Map<String, serde_json::Value> =
            (0..OBJECTNET_CLASSES).map(|k| (folder(k), format!("Object {k}").into())).collect();
        let overlap: serde_json::Map<String, serde_json::Value> = (0..OBJECTNET_CLASSES)
            .map(|k| (format!("Object {k}"), format!("{}; {}", label(k), label(k + 500)).into()))
            .collect();
        let ids: serde_json::Map<String, serde_json::Value> =
            (0..IMAGENET_WNIDS.len()).map(|i| (i.to_string(), i.into())).collect();
        let labels: String = (0..IMAGENET_WNIDS.len()).map(|i| label(i) + "\n").collect();
        for (name, map) in [
            ("folder_to_objectnet_label.json", folders),
            ("objectnet_to_imagenet_1k.json", overlap),
            ("pytorch_to_imagenet_2012_id.json", ids),
        ] {
            write_file(&mappings.join(name), serde_json::Value::Object(map).to_string().as_bytes())?;
        }
        write_file(&mappings.join("imagenet_to_label_2012_v2"), labels.as_bytes())?;
        for k in 0..OBJECTNET_CLASSES {
            self.class_folder(&root.join("images").join(folder(k)), k, &folder(k))?;
        }
        Ok(())
    }

    fn iwildcam(&mut self, out: &Path) -> Result<()> {
        let root = out.join("iwildcam_v2.0");
        let mut metadata = String::from("split,filename,y,location_remapped\n");
        for (s, split) in IWILDCAM_SPLITS.iter().enumerate() {
            let locations = match *split {
                "val" => 10..15,
                "test" => 15..20,
                _ => 0..10,
            };
            for class in 0..IWILDCAM_CLASSES {
                for i in 0..self.per_class {
                    let filename = format!("{split}_{class:03}_{i}.jpg");
                    let location = locations.start + (class + i + s) % locations.len();
                    metadata.push_str(&format!("{split},{filename},{class},{location}\n"));
                    self.image(&root.join("train").join(&filename), class)?;
                }
            }
        }
        write_file(&root.join("metadata.csv"), metadata.as_bytes())
    }

    /// `per_class` images of `class` in `dir`, named `<stem>_<i>.JPEG`.
    fn class_folder(&mut self, dir: &Path, class: usize, stem: &str) -> Result<()> {
        for i in 0..self.per_class {
            self.image(&dir.join(format!("{stem}_{i}.JPEG")), class)?;
        }
        Ok(())
    }

    /// A JPEG whose mean colour encodes `class`, with uniform noise per pixel.
    fn image(&mut self, path: &Path, class: usize) -> Result<()> {
        let base = [(class * 37) % 256, (class * 101) % 256, (class * 173) % 256];
        let mut pixels = RgbImage::new(self.size.0, self.size.1);
        for pixel in pixels.pixels_mut() {
            for (channel, &mean) in pixel.0.iter_mut().zip(&base) {
                let noise = (self.rng.uniform() * 48.0) as usize;
                *channel = (mean + noise).saturating_sub(24).min(255) as u8;
            }
        }
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(&pixels)
            .map_err(|e| invalid(path, e.to_string()))?;
        write_file(path, &bytes)?;
        self.images += 1;
        Ok(())
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| invalid(dir, e.to_string()))?;
    }
    std::fs::write(path, bytes).map_err(|e| invalid(path, e.to_string()))
}

fn invalid(path: &Path, reason: String) -> Error {
    Error::Invalid { what: format!("cannot write {}", PathBuf::from(path).display()), reason }
}
