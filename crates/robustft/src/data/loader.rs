//! A parallel image loader with a bounded prefetch queue, for one epoch over a [`Split`].
//!
//! * **Order.** The epoch's record order is [`epoch_order`]: the identity, or a Fisher–Yates
//!   (Durstenfeld) shuffle driven by [`SplitMix64`] seeded with `shuffle_seed`. Batch `b` holds
//!   the records at positions `b * batch_size ..` of that order, so batches depend on the seed
//!   and the batch size only, never on the number of workers or on timing. With `drop_last`
//!   a final short batch is left out.
//! * **Decoding.** A producer thread builds the batches in order; the records of a batch are
//!   decoded in parallel on a pool of `workers` threads (rayon) by the caller's [`Transform`]
//!   (in practice `ClipPreprocess::load`, wrapped), which keeps this module free of any tensor
//!   library.
//! * **Bounded prefetch.** At most `prefetch_batches` batches are decoded ahead of the
//!   consumer, counting a batch being decoded: the producer hands batches over a
//!   `sync_channel` of capacity `prefetch_batches - 1` and blocks on a full queue.
//! * **Failures.** A record whose transform fails (an `Err`, a panic, or a result of the wrong
//!   length) is left out of its batch, which is then shorter (possibly empty), and reported by
//!   [`Loader::skipped`] with the reason; it never stops the epoch.
//! * **Resuming.** [`Loader::resume`] with the same split, seed and batch settings continues an
//!   interrupted epoch at a batch index: the remaining batches are exactly those the original
//!   loader would have produced. Save [`Loader::position`] in a checkpoint and pass it back.

use std::any::Any;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use rayon::prelude::*;

use super::Split;
use crate::rng::SplitMix64;

/// Turns an image file into `image_len` values (e.g. `[3, s, s]` row-major), or says why not.
pub type Transform = Arc<dyn Fn(&Path) -> Result<Vec<f32>, String> + Send + Sync>;

/// How a [`Loader`] batches and decodes. Zero values of `batch_size`, `workers` and
/// `prefetch_batches` are read as 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// `None`: the split's own order (evaluation); `Some(seed)`: a seeded shuffle (training;
    /// use a different seed per epoch).
    pub shuffle_seed: Option<u64>,
    /// Decoding threads.
    pub workers: usize,
    /// How many batches may be decoded ahead of the consumer.
    pub prefetch_batches: usize,
    /// Leave out a final batch shorter than `batch_size`.
    pub drop_last: bool,
}

impl Default for LoaderConfig {
    /// Batches of 32 in the split's order, one worker per available core, 2 batches ahead.
    fn default() -> Self {
        let workers = thread::available_parallelism().map_or(1, |n| n.get());
        Self { batch_size: 32, shuffle_seed: None, workers, prefetch_batches: 2, drop_last: false }
    }
}

/// A decoded batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[n, image_len]` row-major (for CLIP: `[n, 3, s, s]`).
    pub pixels: Vec<f32>,
    /// The records' labels.
    pub labels: Vec<u32>,
    /// The records' indices into `split.records`.
    pub indices: Vec<usize>,
}

impl Batch {
    /// The number of images in the batch.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// The record order of an epoch over `len` records: `0..len`, or its Fisher–Yates shuffle
/// with `SplitMix64::new(seed)` (for `i` from `len - 1` down to 1, swap `i` with
/// `next_u64() % (i + 1)`).
pub fn epoch_order(len: usize, seed: Option<u64>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if let Some(seed) = seed {
        let mut rng = SplitMix64::new(seed);
        for i in (1..len).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// One epoch of decoded batches over a split, in order: an `Iterator<Item = Batch>`.
/// Dropping it stops the producer (after the batch it is decoding).
pub struct Loader {
    order: Arc<Vec<usize>>,
    num_batches: usize,
    position: usize,
    batches: Option<Receiver<Batch>>,
    producer: Option<JoinHandle<()>>,
    skipped: Arc<Mutex<Vec<(PathBuf, String)>>>,
}

impl Loader {
    /// Starts decoding the epoch's first batches in the background.
    ///
    /// # Panics
    /// If the operating system refuses to start the producer thread.
    pub fn new(split: Arc<Split>, transform: Transform, image_len: usize, config: LoaderConfig) -> Self {
        Self::resume(split, transform, image_len, config, 0)
    }

    /// Like [`Loader::new`], but starting at batch `start_batch` of the epoch (the batches
    /// before it are neither decoded nor returned). Past the last batch, the loader is empty.
    ///
    /// # Panics
    /// If the operating system refuses to start the producer thread.
    pub fn resume(
        split: Arc<Split>,
        transform: Transform,
        image_len: usize,
        config: LoaderConfig,
        start_batch: usize,
    ) -> Self {
        let batch_size = config.batch_size.max(1);
        let order = Arc::new(epoch_order(split.records.len(), config.shuffle_seed));
        let num_batches = count_batches(order.len(), batch_size, config.drop_last);
        let position = start_batch.min(num_batches);
        let (sender, receiver) = mpsc::sync_channel(config.prefetch_batches.max(1) - 1);
        let skipped = Arc::new(Mutex::new(Vec::new()));
        let producer = Producer {
            split,
            transform,
            image_len,
            order: Arc::clone(&order),
            batch_size,
            workers: config.workers.max(1),
            skipped: Arc::clone(&skipped),
        };
        let handle = thread::Builder::new()
            .name("robustft-loader".to_owned())
            .spawn(move || producer.run(position..num_batches, sender))
            .expect("the operating system refused to start the loader thread");
        Self { order, num_batches, position, batches: Some(receiver), producer: Some(handle), skipped }
    }

    /// The epoch's record order (indices into `split.records`), including batches skipped by
    /// [`Loader::resume`].
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The number of batches in the whole epoch.
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }

    /// The epoch index of the batch the next call to `next` returns: the value to pass to
    /// [`Loader::resume`] to continue from here.
    pub fn position(&self) -> usize {
        self.position
    }

    /// The records that failed to decode so far (path and reason), in epoch order.
    pub fn skipped(&self) -> Vec<(PathBuf, String)> {
        self.skipped.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let batch = self.batches.as_ref()?.recv().ok()?;
        self.position += 1;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = self.num_batches - self.position;
        (remaining, Some(remaining))
    }
}

impl ExactSizeIterator for Loader {}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the queue makes the producer's next send fail, which ends it.
        drop(self.batches.take());
        if let Some(producer) = self.producer.take() {
            // A panic in the producer has already been reported on stderr.
            let _ = producer.join();
        }
    }
}

fn count_batches(len: usize, batch_size: usize, drop_last: bool) -> usize {
    if drop_last {
        len / batch_size
    } else {
        len.div_ceil(batch_size)
    }
}

/// The background side of a [`Loader`].
struct Producer {
    split: Arc<Split>,
    transform: Transform,
    image_len: usize,
    order: Arc<Vec<usize>>,
    batch_size: usize,
    workers: usize,
    skipped: Arc<Mutex<Vec<(PathBuf, String)>>>,
}

impl Producer {
    /// Decodes batches `batches` in order and sends them, until done or the loader is dropped.
    fn run(self, batches: Range<usize>, sender: SyncSender<Batch>) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.workers)
            .thread_name(|i| format!("robustft-decode-{i}"))
            .build();
        for batch in batches {
            let start = batch * self.batch_size;
            let positions = &self.order[start..(start + self.batch_size).min(self.order.len())];
            let decoded: Vec<Result<Vec<f32>, String>> = match &pool {
                Ok(pool) => pool.install(|| positions.par_iter().map(|&i| self.decode(i)).collect()),
                // Without a pool (threads refused), decode here rather than not at all.
                Err(_) => positions.iter().map(|&i| self.decode(i)).collect(),
            };
            if sender.send(self.assemble(positions, decoded)).is_err() {
                return;
            }
        }
    }

    /// Runs the transform on record `index` ([`decode_checked`]).
    fn decode(&self, index: usize) -> Result<Vec<f32>, String> {
        decode_checked(&*self.transform, &self.split.records[index].path, self.image_len)
    }

    /// Packs the decoded records into a batch and logs the failures.
    fn assemble(&self, positions: &[usize], decoded: Vec<Result<Vec<f32>, String>>) -> Batch {
        let mut batch = Batch {
            pixels: Vec::with_capacity(positions.len() * self.image_len),
            labels: Vec::with_capacity(positions.len()),
            indices: Vec::with_capacity(positions.len()),
        };
        let mut failures = Vec::new();
        for (&index, result) in positions.iter().zip(decoded) {
            let record = &self.split.records[index];
            match result {
                Ok(pixels) => {
                    batch.pixels.extend_from_slice(&pixels);
                    batch.labels.push(record.label as u32);
                    batch.indices.push(index);
                }
                Err(reason) => failures.push((record.path.clone(), reason)),
            }
        }
        if !failures.is_empty() {
            self.skipped.lock().unwrap_or_else(PoisonError::into_inner).extend(failures);
        }
        batch
    }
}

/// Runs `transform` on the image at `path`; a panic (a decoder bug on a hostile file) or a
/// result of the wrong length is a failure too, never a crash: the one decode step of training
/// and evaluation alike.
pub fn decode_checked(
    transform: &(dyn Fn(&Path) -> Result<Vec<f32>, String> + Send + Sync),
    path: &Path,
    image_len: usize,
) -> Result<Vec<f32>, String> {
    match panic::catch_unwind(AssertUnwindSafe(|| transform(path))) {
        Ok(Ok(pixels)) if pixels.len() == image_len => Ok(pixels),
        Ok(Ok(pixels)) => {
            Err(format!("the transform returned {} values, expected {}", pixels.len(), image_len))
        }
        Ok(Err(reason)) => Err(reason),
        Err(payload) => Err(format!("the transform panicked: {}", panic_message(payload.as_ref()))),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let order = epoch_order(50, Some(3));
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(order, sorted, "seed 3 should move something");
        assert_eq!(order, epoch_order(50, Some(3)));
        assert_ne!(order, epoch_order(50, Some(4)));
        assert_eq!(epoch_order(5, None), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn shuffle_matches_a_hand_computed_fisher_yates() {
        // SplitMix64(1234567) draws 6457827717110365317, 3203168211198807973 (rng.rs's
        // reference values). Three records: i = 2 swaps with 6457827717110365317 % 3 = 0,
        // giving [2, 1, 0]; i = 1 swaps with 3203168211198807973 % 2 = 1 (no change).
        assert_eq!((6457827717110365317u64 % 3, 3203168211198807973u64 % 2), (0, 1));
        assert_eq!(epoch_order(3, Some(1234567)), [2, 1, 0]);
        // Four records: i = 3 swaps with 6457827717110365317 % 4 = 1 -> [0, 3, 2, 1]; i = 2
        // with 3203168211198807973 % 3 = 1 -> [0, 2, 3, 1]; i = 1 with the third draw % 2.
        assert_eq!((6457827717110365317u64 % 4, 3203168211198807973u64 % 3), (1, 1));
        let mut rng = SplitMix64::new(1234567);
        let third = (0..3).map(|_| rng.next_u64()).last().unwrap();
        let mut expected = [0, 2, 3, 1];
        expected.swap(1, (third % 2) as usize);
        assert_eq!(epoch_order(4, Some(1234567)), expected);
    }

    #[test]
    fn batch_counts_follow_drop_last() {
        assert_eq!(count_batches(10, 3, false), 4);
        assert_eq!(count_batches(10, 3, true), 3);
        assert_eq!(count_batches(9, 3, true), 3);
        assert_eq!(count_batches(0, 3, false), 0);
    }
}
