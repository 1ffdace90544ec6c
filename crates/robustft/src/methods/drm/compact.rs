//! DRM's fixed core predictions `p_c` of every training example (methods.md §1b step 1), stored
//! compactly: per example, its `min(drm.pc_top_k, classes)` most probable classes with their
//! probabilities (a `u32` class and an `f32` probability each), and one probability shared by
//! all its other classes — their mean, so a row still sums to 1. With `classes ≤ pc_top_k`
//! every class is kept and `p_c` is stored exactly (the default [`DEFAULT_TOP_K`] = 32 keeps
//! ShiftWorld's 10 classes exact).
//!
//! Memory per example: `kept × 8 + 4` bytes, against `classes × 4` for a dense `f32` row. On
//! ImageNet (1.28M examples, 1000 classes) that is 260 B per example and 333 MB in all with the
//! default, where the dense matrix takes 4000 B and 5.1 GB. Top-k rather than dense `f16` (2000
//! B per example, 2.6 GB): `f16` rounds every probability, so no class count would be exact,
//! and it is still 8× larger; top-k keeps the probabilities the loss weighs most exactly, and of
//! the tail beyond the k-th class it keeps the mass, not the shape.
//!
//! The WRM loss and the diagnostics read a row through [`CorePredictions::row`], the dense
//! expansion of exactly what is stored.

/// `drm.pc_top_k` where a recipe is silent.
pub const DEFAULT_TOP_K: usize = 32;

/// `p_c` of every training example: its kept classes, their probabilities, and the
/// probability of each other class.
pub struct CorePredictions {
    classes: usize,
    /// Classes kept per example: `min(top_k, classes)`.
    kept: usize,
    /// `[examples, kept]`: each example's kept classes, ascending.
    kept_classes: Vec<u32>,
    /// `[examples, kept]`: their probabilities.
    kept_probabilities: Vec<f32>,
    /// `[examples]`: the probability of each class not kept (0 when every class is kept).
    rest: Vec<f32>,
}

impl CorePredictions {
    /// Every example uniform over `classes`, keeping `top_k` (at least 1) classes per example.
    pub fn uniform(examples: usize, classes: usize, top_k: usize) -> Self {
        let kept = top_k.clamp(1, classes);
        let uniform = 1.0 / classes as f32;
        Self {
            classes,
            kept,
            kept_classes: (0..examples).flat_map(|_| 0..kept as u32).collect(),
            kept_probabilities: vec![uniform; examples * kept],
            rest: vec![uniform; examples],
        }
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Bytes stored per example.
    pub fn bytes_per_example(&self) -> usize {
        self.kept * (size_of::<u32>() + size_of::<f32>()) + size_of::<f32>()
    }

    /// Stores `row` (`classes` probabilities) as example `example`'s: its `kept` largest
    /// (a tie goes to the lower class) and the mean of the others (summed in f64).
    pub fn set(&mut self, example: usize, row: &[f32]) {
        let top = top_classes(row, self.kept);
        let span = example * self.kept..(example + 1) * self.kept;
        for ((class, probability), &k) in
            self.kept_classes[span.clone()].iter_mut().zip(&mut self.kept_probabilities[span]).zip(&top)
        {
            *class = k;
            *probability = row[k as usize];
        }
        let others = self.classes - self.kept;
        self.rest[example] = match others {
            0 => 0.0,
            _ => (mass_outside(row, &top) / others as f64) as f32,
        };
    }

    /// Example `example`'s `p_c` row as stored, `classes` probabilities.
    pub fn row(&self, example: usize) -> Vec<f32> {
        let mut row = vec![self.rest[example]; self.classes];
        let span = example * self.kept..(example + 1) * self.kept;
        for (&k, &p) in self.kept_classes[span.clone()].iter().zip(&self.kept_probabilities[span]) {
            row[k as usize] = p;
        }
        row
    }
}

/// The summed probability (f64, in class order) of the classes of `row` not in `kept`
/// (ascending).
fn mass_outside(row: &[f32], kept: &[u32]) -> f64 {
    let mut kept = kept.iter().peekable();
    let mut mass = 0.0;
    for (k, &p) in row.iter().enumerate() {
        if kept.next_if_eq(&&(k as u32)).is_none() {
            mass += p as f64;
        }
    }
    mass
}

/// The `kept` most probable classes of `row`, ascending (ties go to the lower class).
fn top_classes(row: &[f32], kept: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..row.len() as u32).collect();
    if kept < row.len() {
        let before = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
        order.select_nth_unstable_by(kept - 1, before);
        order.truncate(kept);
        order.sort_unstable();
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROWS: [[f32; 5]; 3] = [[0.05, 0.5, 0.1, 0.3, 0.05], [0.2; 5], [0.1, 0.15, 0.35, 0.15, 0.25]];

    /// `ROWS` stored keeping `top_k` classes, read back.
    fn stored(top_k: usize) -> Vec<Vec<f32>> {
        let mut core = CorePredictions::uniform(ROWS.len(), 5, top_k);
        ROWS.iter().enumerate().for_each(|(example, row)| core.set(example, row));
        (0..ROWS.len()).map(|example| core.row(example)).collect()
    }

    #[test]
    fn top_k_keeps_the_largest_and_gives_the_rest_their_mean_as_numpy() {
        // fixtures/methods/drm_affinity.json's `top_k` cases, from scripts/fixtures/drm_affinity.py,
        // per float32 row:
        //   kept = np.lexsort((np.arange(5), -row.astype(np.float64)))[:k]
        //   out = np.float32(np.delete(row, kept).astype(np.float64).mean()); out[kept] = row[kept]
        // k = 3 breaks the tie at 0.15 of the last row for class 1.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/methods/drm_affinity.json");
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = fixture["top_k"].as_array().expect("top_k cases");
        assert_eq!(cases.len(), 2);
        for case in cases {
            let rows: Vec<Vec<f64>> = serde_json::from_value(case["rows"].clone()).unwrap();
            let as_f32: Vec<Vec<f32>> = rows.iter().map(|r| r.iter().map(|&v| v as f32).collect()).collect();
            assert_eq!(as_f32, ROWS.map(|row| row.to_vec()), "{}: the rows of this test", case["name"]);
            let expected: Vec<Vec<f64>> = serde_json::from_value(case["expected"].clone()).unwrap();
            let k = case["k"].as_u64().unwrap() as usize;
            let got: Vec<Vec<f64>> =
                stored(k).iter().map(|row| row.iter().map(|&v| v as f64).collect()).collect();
            assert_eq!(got, expected, "{}", case["name"]);
        }
    }

    #[test]
    fn rows_of_at_most_top_k_classes_are_stored_exactly() {
        let exact: Vec<Vec<f32>> = ROWS.iter().map(|row| row.to_vec()).collect();
        assert_eq!(stored(5), exact);
        assert_eq!(stored(DEFAULT_TOP_K), exact);
        assert_eq!(CorePredictions::uniform(1, 5, DEFAULT_TOP_K).bytes_per_example(), 5 * 8 + 4);
    }

    #[test]
    fn an_example_never_set_stays_uniform() {
        let core = CorePredictions::uniform(2, 4, 2);
        assert_eq!((core.row(1), core.bytes_per_example()), (vec![0.25; 4], 2 * 8 + 4));
    }
}
