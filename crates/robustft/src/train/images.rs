//! Training images for [`super::supervised::train`]: an in-memory set of preprocessed images
//! (ShiftWorld suites, rendered once) and an on-disk split decoded on demand in parallel with
//! OpenAI CLIP's preprocessing, the next batch prefetched while a step runs (unreadable images
//! are left out of their batch, counted and reported, never fatal).

use std::path::Path;
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::supervised::TrainSource;
use crate::clip::preprocess::ClipPreprocess;
use crate::data::{decode_checked, Split};
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

/// A split on disk, decoded on demand on the thread pool, through the same checked decode as
/// evaluation ([`decode_checked`]: a decoder panic is a skipped image, never a crash). The
/// trainer announces the next batch ([`TrainSource::prefetch`]), which is then decoded in the
/// background while the current step runs; a batch is the same whichever way it was decoded.
pub struct DiskSet {
    pub split: Arc<Split>,
    pub preprocess: ClipPreprocess,
    skipped: Mutex<Vec<(String, String)>>,
    prefetched: Mutex<Option<Prefetch>>,
}

/// A batch being decoded in the background.
struct Prefetch {
    indices: Vec<usize>,
    decoded: Receiver<Vec<Decoded>>,
}

/// One image, decoded or the reason it could not be.
type Decoded = std::result::Result<Vec<f32>, String>;

impl DiskSet {
    pub fn new(split: Arc<Split>, preprocess: ClipPreprocess) -> Self {
        Self { split, preprocess, skipped: Mutex::new(Vec::new()), prefetched: Mutex::new(None) }
    }

    /// The batch `indices`, from the prefetch when it is that batch.
    fn decoded(&self, indices: &[usize]) -> Vec<Decoded> {
        let pending = self.prefetched.lock().unwrap_or_else(|e| e.into_inner()).take();
        match pending {
            Some(prefetch) if prefetch.indices == indices => wait_for(&prefetch.decoded)
                .unwrap_or_else(|| decode_all(&self.split, &self.preprocess, indices)),
            _ => decode_all(&self.split, &self.preprocess, indices),
        }
    }
}

/// Decodes `indices` of `split` in parallel, in order.
fn decode_all(split: &Split, preprocess: &ClipPreprocess, indices: &[usize]) -> Vec<Decoded> {
    let transform = |path: &Path| preprocess.load(path).map_err(|e| e.to_string());
    let image_len = 3 * preprocess.image_size * preprocess.image_size;
    indices.par_iter().map(|&i| decode_checked(&transform, &split.records[i].path, image_len)).collect()
}

/// The prefetched batch, running other pool work (such as the prefetch itself, on a pool of one
/// thread) while it is not ready; `None` if the prefetch was lost.
fn wait_for(receiver: &Receiver<Vec<Decoded>>) -> Option<Vec<Decoded>> {
    loop {
        match receiver.try_recv() {
            Ok(decoded) => return Some(decoded),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => match rayon::yield_now() {
                Some(rayon::Yield::Executed) => {}
                Some(rayon::Yield::Idle) => std::thread::yield_now(),
                None => return receiver.recv().ok(),
            },
        }
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
        let (mut pixels, mut kept) = (Vec::new(), Vec::new());
        for (&i, result) in indices.iter().zip(self.decoded(indices)) {
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

    fn prefetch(&self, indices: &[usize]) {
        let (sender, decoded) = channel();
        let (split, preprocess, batch) = (self.split.clone(), self.preprocess.clone(), indices.to_vec());
        rayon::spawn(move || {
            // The receiver may be gone (a run that stopped); nothing is lost then.
            let _ = sender.send(decode_all(&split, &preprocess, &batch));
        });
        *self.prefetched.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Prefetch { indices: indices.to_vec(), decoded });
    }

    fn image_size(&self) -> usize {
        self.preprocess.image_size
    }

    fn skipped(&self) -> Vec<(String, String)> {
        self.skipped.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
