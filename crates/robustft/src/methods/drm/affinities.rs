//! DRM's affinity normalisation (methods.md §1b step 1; the formulas of [`AffinityNorm`]) over
//! affinity rows read a chunk at a time, so that no dense `[examples, classes]` matrix is held
//! in memory. The training set's image–CD affinities go to an unnamed temporary file
//! ([`AffinitySpill`], in `TMPDIR`; `examples × classes × 4` bytes on disk, 5.1 GB for
//! ImageNet's 1.28M × 1000, removed when dropped); [`Normaliser::fit`] reads it once for the
//! class means (`center`, `standardize`) and once more for `standardize`'s standard deviations
//! or `minmax_class`'s per-class bounds; a last pass turns each row into its `p_c` row. Every
//! pass sums in example order, exactly as a computation over the dense matrix would, so the
//! result does not depend on the chunking.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};

use super::AffinityNorm;
use crate::error::{Error, Result};

/// Bytes of affinities read back per chunk (about).
const READ_BYTES: usize = 1 << 22;

/// Affinity rows `[examples, classes]`, visited in example order, as often as asked.
pub trait AffinityRows {
    fn classes(&self) -> usize;

    /// Calls `visit` on consecutive chunks of whole rows (row-major).
    fn for_each_chunk(&self, visit: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()>;
}

/// Rows held in memory: one chunk.
pub struct InMemory<'a> {
    pub values: &'a [f32],
    pub classes: usize,
}

impl AffinityRows for InMemory<'_> {
    fn classes(&self) -> usize {
        self.classes
    }

    fn for_each_chunk(&self, visit: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        visit(self.values)
    }
}

/// Affinity rows being written to an unnamed temporary file.
pub struct AffinitySpill {
    writer: BufWriter<File>,
    classes: usize,
    rows: usize,
    rows_per_read: usize,
}

impl AffinitySpill {
    /// An empty spill of rows of `classes` values, read back about [`READ_BYTES`] at a time.
    pub fn new(classes: usize) -> Result<Self> {
        Self::with_rows_per_read(classes, (READ_BYTES / (classes * size_of::<f32>())).max(1))
    }

    /// An empty spill read back `rows_per_read` rows at a time.
    fn with_rows_per_read(classes: usize, rows_per_read: usize) -> Result<Self> {
        let file = tempfile::tempfile().map_err(spill_error)?;
        Ok(Self { writer: BufWriter::new(file), classes, rows: 0, rows_per_read })
    }

    /// Appends whole rows (row-major).
    pub fn append(&mut self, rows: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.writer.write_all(&bytes).map_err(spill_error)?;
        self.rows += rows.len() / self.classes;
        Ok(())
    }

    /// The rows written, ready to be read.
    pub fn finish(self) -> Result<SpilledAffinities> {
        let file = self.writer.into_inner().map_err(|e| spill_error(e.into_error()))?;
        Ok(SpilledAffinities {
            file,
            classes: self.classes,
            rows: self.rows,
            rows_per_read: self.rows_per_read,
        })
    }
}

/// Affinity rows in an unnamed temporary file (deleted when dropped).
pub struct SpilledAffinities {
    file: File,
    classes: usize,
    rows: usize,
    rows_per_read: usize,
}

impl AffinityRows for SpilledAffinities {
    fn classes(&self) -> usize {
        self.classes
    }

    fn for_each_chunk(&self, visit: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0)).map_err(spill_error)?;
        let mut bytes = vec![0u8; self.rows_per_read * self.classes * size_of::<f32>()];
        let mut remaining = self.rows;
        while remaining > 0 {
            let rows = remaining.min(self.rows_per_read);
            let chunk = &mut bytes[..rows * self.classes * size_of::<f32>()];
            file.read_exact(chunk).map_err(spill_error)?;
            let values: Vec<f32> =
                chunk.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            visit(&values)?;
            remaining -= rows;
        }
        Ok(())
    }
}

/// A failure of the temporary affinity file, naming where it lives.
fn spill_error(source: std::io::Error) -> Error {
    Error::Invalid {
        what: format!("DRM's temporary affinity file in {}", std::env::temp_dir().display()),
        reason: source.to_string(),
    }
}

/// What a normalisation needs from the whole training set, and the `p_c` row it makes of one
/// example's affinities.
pub struct Normaliser {
    norm: AffinityNorm,
    /// The softmax temperature `exp(s₀)`.
    scale: f64,
    /// μ_k (`center`, `standardize`).
    means: Vec<f64>,
    /// σ_k (`standardize`).
    stds: Vec<f64>,
    /// `mean_k σ_k` (`standardize`).
    mean_std: f64,
    /// Each class's (min, max) probability over the training images (`minmax_class`).
    bounds: Vec<(f64, f64)>,
}

impl Normaliser {
    /// Fits `norm` on `rows`, whose examples `weights` weigh in the class statistics (see
    /// [`super::statistics_weights`]); `scale` is `exp(s₀)`.
    pub fn fit(rows: &dyn AffinityRows, scale: f32, norm: AffinityNorm, weights: &[f64]) -> Result<Self> {
        let mut fitted = Self {
            norm,
            scale: scale as f64,
            means: Vec::new(),
            stds: Vec::new(),
            mean_std: 0.0,
            bounds: Vec::new(),
        };
        if norm.uses_statistics() {
            fitted.means = class_means(rows, weights)?;
        }
        if norm == AffinityNorm::Standardize {
            fitted.stds = class_stds(rows, weights, &fitted.means)?;
            fitted.mean_std = fitted.stds.iter().sum::<f64>() / rows.classes() as f64;
        }
        if norm == AffinityNorm::MinmaxClass {
            fitted.bounds = fitted.class_bounds(rows)?;
        }
        Ok(fitted)
    }

    /// The `p_c` row of one example's affinities.
    pub fn row(&self, affinities: &[f32]) -> Vec<f32> {
        match self.norm {
            AffinityNorm::MinmaxImage => minmax_image(&self.raw_probabilities(affinities)),
            AffinityNorm::MinmaxClass => self.minmax_class(&self.raw_probabilities(affinities)),
            _ => {
                let logits: Vec<f64> = affinities
                    .iter()
                    .enumerate()
                    .map(|(k, &a)| self.scale * self.normalised(k, a as f64))
                    .collect();
                softmax(&logits).into_iter().map(|p| p as f32).collect()
            }
        }
    }

    /// Affinity `a` of class `k` after `center` or `standardize` (unchanged otherwise).
    fn normalised(&self, k: usize, a: f64) -> f64 {
        match self.norm {
            AffinityNorm::Center => a - self.means[k],
            AffinityNorm::Standardize => (a - self.means[k]) / self.stds[k].max(1e-12) * self.mean_std,
            _ => a,
        }
    }

    /// `softmax(scale · a)` of the raw affinities (what the max-min normalisations act on).
    fn raw_probabilities(&self, affinities: &[f32]) -> Vec<f64> {
        let logits: Vec<f64> = affinities.iter().map(|&a| self.scale * a as f64).collect();
        softmax(&logits)
    }

    /// Each class's (min, max) of the raw probabilities over every row.
    fn class_bounds(&self, rows: &dyn AffinityRows) -> Result<Vec<(f64, f64)>> {
        let classes = rows.classes();
        let mut bounds = vec![(f64::INFINITY, f64::NEG_INFINITY); classes];
        rows.for_each_chunk(&mut |chunk| {
            for row in chunk.chunks(classes) {
                for ((lo, hi), p) in bounds.iter_mut().zip(self.raw_probabilities(row)) {
                    (*lo, *hi) = (lo.min(p), hi.max(p));
                }
            }
            Ok(())
        })?;
        Ok(bounds)
    }

    /// `(p − min) / (max − min)` of each class over the training images (a constant class
    /// becomes 0), the row renormalised (an all-zero row becomes uniform).
    fn minmax_class(&self, p: &[f64]) -> Vec<f32> {
        let scaled: Vec<f64> = p
            .iter()
            .zip(&self.bounds)
            .map(|(v, &(min, max))| if max > min { (v - min) / (max - min) } else { 0.0 })
            .collect();
        renormalised(&scaled)
    }
}

/// Each class's weighted mean affinity μ_k = Σ_i w_i a_ik / Σ_i w_i (f64, in example order).
pub fn class_means(rows: &dyn AffinityRows, weights: &[f64]) -> Result<Vec<f64>> {
    weighted_class_means(rows, weights, &|_, a| a)
}

/// Each class's weighted population standard deviation σ_k = sqrt(Σ_i w_i (a_ik − μ_k)² /
/// Σ_i w_i) around `means` (f64, in example order).
pub fn class_stds(rows: &dyn AffinityRows, weights: &[f64], means: &[f64]) -> Result<Vec<f64>> {
    let variances = weighted_class_means(rows, weights, &|k, a| (a - means[k]).powi(2))?;
    Ok(variances.into_iter().map(f64::sqrt).collect())
}

/// `Σ_i w_i f(k, a_ik) / Σ_i w_i` for every class `k`, summed in example order.
fn weighted_class_means(
    rows: &dyn AffinityRows,
    weights: &[f64],
    f: &dyn Fn(usize, f64) -> f64,
) -> Result<Vec<f64>> {
    let classes = rows.classes();
    let (mut sums, mut example) = (vec![0.0; classes], 0);
    rows.for_each_chunk(&mut |chunk| {
        for row in chunk.chunks(classes) {
            for (k, (sum, &a)) in sums.iter_mut().zip(row).enumerate() {
                *sum += weights[example] * f(k, a as f64);
            }
            example += 1;
        }
        Ok(())
    })?;
    let total: f64 = weights.iter().sum();
    Ok(sums.into_iter().map(|sum| sum / total).collect())
}

/// `softmax(logits)` in f64: `exp(z − max) / Σ exp(z − max)`.
fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = logits.iter().map(|z| (z - max).exp()).sum();
    logits.iter().map(|z| (z - max).exp() / total).collect()
}

/// `(p − min) / (max − min)` of one row over the classes, renormalised to sum 1 (a constant
/// row becomes uniform).
fn minmax_image(row: &[f64]) -> Vec<f32> {
    let (min, max) =
        row.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let scaled: Vec<f64> =
        row.iter().map(|v| if max > min { (v - min) / (max - min) } else { 1.0 }).collect();
    renormalised(&scaled)
}

/// A non-negative row divided by its sum (uniform when the sum is 0).
fn renormalised(row: &[f64]) -> Vec<f32> {
    let total: f64 = row.iter().sum();
    match total > 0.0 {
        true => row.iter().map(|v| (v / total) as f32).collect(),
        false => vec![1.0 / row.len() as f32; row.len()],
    }
}

#[cfg(test)]
mod tests {
    use super::super::{core_distribution, statistics_weights, Statistics};
    use super::*;

    /// `class_means` and `class_stds` of affinities `[n, 2]` under `weights`.
    fn statistics(affinities: &[f32], weights: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let rows = InMemory { values: affinities, classes: 2 };
        let means = class_means(&rows, weights).unwrap();
        let stds = class_stds(&rows, weights, &means).unwrap();
        (means, stds)
    }

    #[test]
    fn balanced_class_statistics_count_each_class_once() {
        // Three images of class 0 with affinities (0.3, 0.1), one of class 1 with (0.1, 0.3).
        // All images: mu = (0.25, 0.15), sigma_0 = sqrt((3 * 0.05^2 + 0.15^2) / 4).
        // Balanced: mu = mean of the class means = (0.2, 0.2); sigma = (0.1, 0.1).
        let affinities = [0.3, 0.1, 0.3, 0.1, 0.3, 0.1, 0.1, 0.3];
        let labels = [0, 0, 0, 1];
        let close = |got: &[f64], want: &[f64]| got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-7);
        let (means, stds) = statistics(&affinities, &statistics_weights(&labels, Statistics::All));
        assert!(close(&means, &[0.25, 0.15]) && close(&stds, &[0.0075f64.sqrt(); 2]), "{means:?} {stds:?}");
        let (means, stds) = statistics(&affinities, &statistics_weights(&labels, Statistics::Balanced));
        assert!(close(&means, &[0.2, 0.2]) && close(&stds, &[0.1, 0.1]), "{means:?} {stds:?}");
    }

    #[test]
    fn spilled_rows_read_in_chunks_give_the_in_memory_p_c_bit_for_bit() {
        // 10 examples × 4 classes on long-tailed labels, written 2 rows at a time and read back 3
        // at a time (chunks of 3, 3, 3 and 1 rows).
        let affinities: Vec<f32> = (0..40).map(|i| 0.2 + 0.05 * ((i * 7 % 13) as f32 / 13.0 - 0.5)).collect();
        let weights = statistics_weights(&[0, 0, 0, 0, 0, 0, 1, 1, 2, 3], Statistics::Balanced);
        let mut spill = AffinitySpill::with_rows_per_read(4, 3).unwrap();
        affinities.chunks(8).for_each(|rows| spill.append(rows).unwrap());
        let spilled = spill.finish().unwrap();
        let norms = [
            AffinityNorm::None,
            AffinityNorm::Center,
            AffinityNorm::Standardize,
            AffinityNorm::MinmaxImage,
            AffinityNorm::MinmaxClass,
        ];
        for norm in norms {
            let normaliser = Normaliser::fit(&spilled, 30.0, norm, &weights).unwrap();
            let (mut got, mut chunks) = (Vec::new(), Vec::new());
            spilled
                .for_each_chunk(&mut |chunk| {
                    chunks.push(chunk.len() / 4);
                    got.extend(chunk.chunks(4).flat_map(|row| normaliser.row(row)));
                    Ok(())
                })
                .unwrap();
            assert_eq!(chunks, [3, 3, 3, 1]);
            assert_eq!(got, core_distribution(&affinities, 4, 30.0, norm, &weights), "{norm:?}");
        }
    }
}
