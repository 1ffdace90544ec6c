//! Training images for [`super::supervised::train`]: an in-memory set of preprocessed images
//! (ShiftWorld suites, rendered once) and an on-disk split decoded on demand in parallel with
//! OpenAI CLIP's preprocessing (unreadable images are left out of their batch, counted and
//! reported, never fatal).

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::supervised::TrainSource;
use crate::clip::preprocess::ClipPreprocess;
use crate::data::Split;
use crate::error::Result;

/// Preprocessed images (`[n, 3, s, s]` row-major) with their labels.
pub struct ImageSet {
    pub pixels: Vec<f32>,
    pub labels: Vec<u32>,
    pub image_size: usize,
}

impl TrainSource for ImageSet {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn label(&self, index: usize) -> u32 {
        self.labels[index]
    }

    fn load(&self, indices: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        let per_image = 3 * self.image_size * self.image_size;
        let mut pixels = Vec::with_capacity(indices.len() * per_image);
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i * per_image..(i + 1) * per_image]);
        }
        Ok((pixels, indices.to_vec()))
    }

    fn image_size(&self) -> usize {
        self.image_size
    }
}

/// A split on disk, decoded on demand.
pub struct DiskSet {
    pub split: Arc<Split>,
    pub preprocess: ClipPreprocess,
    skipped: Mutex<Vec<(String, String)>>,
}

impl DiskSet {
    pub fn new(split: Arc<Split>, preprocess: ClipPreprocess) -> Self {
        Self { split, preprocess, skipped: Mutex::new(Vec::new()) }
    }
}

impl TrainSource for DiskSet {
    fn len(&self) -> usize {
        self.split.records.len()
    }

    fn label(&self, index: usize) -> u32 {
        self.split.records[index].label as u32
    }

    fn load(&self, indices: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        let decoded: Vec<(usize, std::result::Result<Vec<f32>, String>)> = indices
            .par_iter()
            .map(|&i| (i, self.preprocess.load(&self.split.records[i].path).map_err(|e| e.to_string())))
            .collect();
        let (mut pixels, mut kept) = (Vec::new(), Vec::new());
        for (i, result) in decoded {
            match result {
                Ok(values) => {
                    pixels.extend(values);
                    kept.push(i);
                }
                Err(reason) => self
                    .skipped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((self.split.records[i].id.clone(), reason)),
            }
        }
        Ok((pixels, kept))
    }

    fn image_size(&self) -> usize {
        self.preprocess.image_size
    }

    fn skipped(&self) -> Vec<(String, String)> {
        self.skipped.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
