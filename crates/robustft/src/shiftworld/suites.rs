//! The four fine-tuning benchmark suites: named splits of scenes with labels, groups and
//! domains (see the module doc of [`super`] for what each suite shifts and why).
//!
//! Every example's scene comes from its own generator, seeded by a hash of (seed, suite,
//! split, index), so examples are independent of generation order and of parallelism.

use rayon::prelude::*;

use super::scene::{
    index, pick, sample_any_background, sample_background, sample_corruption, weighted_index, Color,
    CorruptionKind, Lighting, Pattern, Scene, Shape, Style, MAX_SEVERITY,
};
use super::{ShiftWorldError, CLASSES};
use crate::rng::{fnv1a, SplitMix64};

/// Suite names accepted by [`build_suite`].
pub const SUITE_NAMES: [&str; 4] = ["spurious", "rendition", "corruption", "domains"];

/// Split sizes of one suite. Every OOD split of a suite has `ood` examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitSizes {
    pub suite: &'static str,
    pub train: usize,
    pub id_val: usize,
    pub id_test: usize,
    pub ood: usize,
}

/// The split sizes of every suite (all multiples of the class count, so class-stratified
/// splits are exactly balanced). Small enough to fine-tune one suite in about a minute on 2
/// cores.
pub const SPLIT_SIZES: [SplitSizes; 4] = [
    SplitSizes { suite: "spurious", train: 3000, id_val: 500, id_test: 1000, ood: 1000 },
    SplitSizes { suite: "rendition", train: 2000, id_val: 500, id_test: 1000, ood: 1000 },
    SplitSizes { suite: "corruption", train: 2000, id_val: 500, id_test: 1000, ood: 1000 },
    SplitSizes { suite: "domains", train: 3000, id_val: 500, id_test: 1000, ood: 1000 },
];

/// One labelled image of a suite.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub scene: Scene,
    /// Class index (equals `scene.label()`).
    pub label: usize,
    /// The evaluation group (worst-group accuracy, per-group reports).
    pub group: String,
    /// The domain (the `domains` suite's camera), if the suite has domains.
    pub domain: Option<String>,
}

/// A named split: `train`, `id_val`, `id_test` or `ood_<name>`.
#[derive(Clone, Debug, PartialEq)]
pub struct SuiteSplit {
    pub name: String,
    pub examples: Vec<Example>,
}

impl SuiteSplit {
    /// Whether this is an out-of-distribution test split.
    pub fn is_ood(&self) -> bool {
        self.name.starts_with("ood_")
    }
}

/// A benchmark suite: its splits and the metric to report on its OOD splits.
#[derive(Clone, Debug, PartialEq)]
pub struct Suite {
    pub name: String,
    pub seed: u64,
    pub splits: Vec<SuiteSplit>,
    /// `"worst_group_acc"`, `"top1"` or `"f1_macro"`.
    pub headline_metric: &'static str,
}

impl Suite {
    /// The split called `name`, if any.
    pub fn split(&self, name: &str) -> Option<&SuiteSplit> {
        self.splits.iter().find(|s| s.name == name)
    }
}

/// Builds suite `name` (one of [`SUITE_NAMES`]) from `seed`.
pub fn build_suite(name: &str, seed: u64) -> Result<Suite, ShiftWorldError> {
    let sizes = SPLIT_SIZES.iter().find(|s| s.suite == name).ok_or_else(|| {
        ShiftWorldError::UnknownSuite { name: name.to_owned(), known: SUITE_NAMES.join(", ") }
    })?;
    let builder = SuiteBuilder { suite: name, seed, sizes };
    let (splits, headline_metric) = match name {
        "spurious" => (spurious_splits(&builder), "worst_group_acc"),
        "rendition" => (rendition_splits(&builder), "top1"),
        "corruption" => (corruption_splits(&builder), "top1"),
        // "domains", the only other name in SPLIT_SIZES.
        _ => (domain_splits(&builder), "f1_macro"),
    };
    Ok(Suite { name: name.to_owned(), seed, splits, headline_metric })
}

/// Seeds and sizes of the suite being built.
struct SuiteBuilder<'a> {
    suite: &'a str,
    seed: u64,
    sizes: &'a SplitSizes,
}

/// The in-distribution split names with their sizes.
fn id_splits(sizes: &SplitSizes) -> [(&'static str, usize); 3] {
    [("train", sizes.train), ("id_val", sizes.id_val), ("id_test", sizes.id_test)]
}

impl SuiteBuilder<'_> {
    /// Generates split `name` of `size` examples: example `i` is `make(rng_i, i)`.
    fn split(
        &self,
        name: &str,
        size: usize,
        make: impl Fn(&mut SplitMix64, usize) -> Example + Sync,
    ) -> SuiteSplit {
        let base = SplitMix64::new(
            self.seed ^ fnv1a(self.suite.as_bytes()).rotate_left(17) ^ fnv1a(name.as_bytes()),
        )
        .next_u64();
        let examples = (0..size)
            .into_par_iter()
            .map(|i| {
                let mut rng = SplitMix64::new(base ^ SplitMix64::new(i as u64).next_u64());
                make(&mut rng, i)
            })
            .collect();
        SuiteSplit { name: name.to_owned(), examples }
    }
}

/// Class-stratified labels: example `i` has class `i % 10`; `i / 10` counts examples within
/// the class.
fn stratified(i: usize) -> (Shape, usize) {
    (Shape::ALL[i % CLASSES.len()], i / CLASSES.len())
}

fn example(scene: Scene, group: String) -> Example {
    Example { label: scene.label(), scene, group, domain: None }
}

// ---------------------------------------------------------------------------------------------
// spurious (Waterbirds pattern)

/// Each class's background (pattern, colour) in the `spurious` suite: ten distinct colours.
pub const SPURIOUS_BACKGROUNDS: [(Pattern, Color); 10] = [
    (Pattern::Stripes, Color::Blue),
    (Pattern::Dots, Color::Green),
    (Pattern::Checker, Color::Orange),
    (Pattern::Gradient, Color::Purple),
    (Pattern::Solid, Color::Teal),
    (Pattern::Stripes, Color::Brown),
    (Pattern::Checker, Color::Pink),
    (Pattern::Dots, Color::Gray),
    (Pattern::Solid, Color::Yellow),
    (Pattern::Gradient, Color::Red),
];

/// In every in-distribution split of `spurious`, one example per class in this many has a
/// conflicting background (exactly 10% conflict, 90% aligned).
const CONFLICT_EVERY: usize = 10;

/// `<class>|aligned` or `<class>|conflict`.
fn spurious_group(shape: Shape, background_class: usize) -> String {
    let kind = if background_class == shape.label() { "aligned" } else { "conflict" };
    format!("{}|{kind}", shape.name())
}

fn spurious_scene(rng: &mut SplitMix64, shape: Shape, background_class: usize) -> Example {
    let (pattern, color) = SPURIOUS_BACKGROUNDS[background_class];
    let background = sample_background(rng, pattern, color);
    let scene = Scene::sample_on(rng, shape, background);
    example(scene, spurious_group(shape, background_class))
}

fn spurious_splits(b: &SuiteBuilder) -> Vec<SuiteSplit> {
    let classes = CLASSES.len();
    let mut splits: Vec<SuiteSplit> = id_splits(b.sizes)
        .into_iter()
        .map(|(name, size)| {
            b.split(name, size, |rng, i| {
                let (shape, k) = stratified(i);
                let background = if k % CONFLICT_EVERY == CONFLICT_EVERY - 1 {
                    (shape.label() + 1 + index(rng, classes - 1)) % classes
                } else {
                    shape.label()
                };
                spurious_scene(rng, shape, background)
            })
        })
        .collect();
    // Every (class, background) pair equally often: alignment at chance (10%).
    splits.push(b.split("ood_random_background", b.sizes.ood, |rng, i| {
        let (shape, k) = stratified(i);
        spurious_scene(rng, shape, (shape.label() + k) % classes)
    }));
    splits
}

// ---------------------------------------------------------------------------------------------
// rendition (ImageNet-R pattern)

fn rendition_splits(b: &SuiteBuilder) -> Vec<SuiteSplit> {
    let mut plan: Vec<(String, usize, Style)> =
        id_splits(b.sizes).into_iter().map(|(name, size)| (name.to_owned(), size, Style::Filled)).collect();
    plan.extend(
        [Style::Outline, Style::Sketch, Style::Pixelated]
            .map(|s| (format!("ood_{}", s.name()), b.sizes.ood, s)),
    );
    plan.into_iter()
        .map(|(name, size, style)| {
            b.split(&name, size, |rng, i| {
                let (shape, _) = stratified(i);
                let background = sample_any_background(rng);
                let scene = Scene { style, ..Scene::sample_on(rng, shape, background) };
                example(scene, style.name().to_owned())
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// corruption (ImageNet-C pattern)

/// Group of a corrupted example: `severity_<1..5>`; uncorrupted examples are `clean`.
fn severity_group(severity: u8) -> String {
    format!("severity_{severity}")
}

fn corruption_splits(b: &SuiteBuilder) -> Vec<SuiteSplit> {
    let clean = |rng: &mut SplitMix64, i: usize| {
        let (shape, k) = stratified(i);
        let background = sample_any_background(rng);
        (Scene::sample_on(rng, shape, background), k)
    };
    let mut splits: Vec<SuiteSplit> = id_splits(b.sizes)
        .into_iter()
        .map(|(name, size)| b.split(name, size, |rng, i| example(clean(rng, i).0, "clean".to_owned())))
        .collect();
    splits.extend(CorruptionKind::ALL.map(|kind| {
        b.split(&format!("ood_{}", kind.name()), b.sizes.ood, |rng, i| {
            let (mut scene, k) = clean(rng, i);
            // Severities cycle within each class: every (class, severity) pair equally often.
            let severity = 1 + (k % MAX_SEVERITY as usize) as u8;
            scene.corruption = Some(sample_corruption(rng, kind, severity));
            example(scene, severity_group(severity))
        })
    }));
    splits
}

// ---------------------------------------------------------------------------------------------
// domains (iWildCam pattern)

/// A camera trap: the background palette and pattern family of its site and its lighting.
#[derive(Clone, Copy, Debug)]
pub struct Camera {
    pub name: &'static str,
    pub palette: [Color; 2],
    pub pattern: Pattern,
    pub lighting: Lighting,
}

const fn camera(name: &'static str, palette: [Color; 2], pattern: Pattern, lighting: Lighting) -> Camera {
    Camera { name, palette, pattern, lighting }
}

/// The cameras of the `domains` suite. The first [`TRAIN_CAMERAS`] are seen in training and in
/// the ID splits; the rest appear only in the OOD split, with palette, pattern and lighting
/// combinations no training camera has.
pub const CAMERAS: [Camera; 16] = [
    camera("camera_00", [Color::Green, Color::Brown], Pattern::Noise, Lighting::Neutral),
    camera("camera_01", [Color::Green, Color::Yellow], Pattern::Stripes, Lighting::Bright),
    camera("camera_02", [Color::Brown, Color::Orange], Pattern::Dots, Lighting::Warm),
    camera("camera_03", [Color::Gray, Color::White], Pattern::Gradient, Lighting::Dim),
    camera("camera_04", [Color::Blue, Color::Teal], Pattern::Checker, Lighting::Cool),
    camera("camera_05", [Color::Yellow, Color::Orange], Pattern::Solid, Lighting::Bright),
    camera("camera_06", [Color::Green, Color::Teal], Pattern::Gradient, Lighting::Dim),
    camera("camera_07", [Color::Brown, Color::Gray], Pattern::Stripes, Lighting::Neutral),
    camera("camera_08", [Color::White, Color::Blue], Pattern::Dots, Lighting::Cool),
    camera("camera_09", [Color::Purple, Color::Pink], Pattern::Noise, Lighting::Warm),
    camera("camera_10", [Color::Teal, Color::Yellow], Pattern::Checker, Lighting::Warm),
    camera("camera_11", [Color::Gray, Color::Brown], Pattern::Noise, Lighting::Cool),
    camera("camera_12", [Color::Orange, Color::Red], Pattern::Gradient, Lighting::Neutral),
    camera("camera_13", [Color::Black, Color::Purple], Pattern::Dots, Lighting::Dim),
    camera("camera_14", [Color::White, Color::Gray], Pattern::Stripes, Lighting::Bright),
    camera("camera_15", [Color::Pink, Color::Green], Pattern::Solid, Lighting::Cool),
];

/// Number of training cameras (the first ones of [`CAMERAS`]).
pub const TRAIN_CAMERAS: usize = 10;

/// Classes from most to least frequent overall (a fixed long tail, as iWildCam's species).
const FREQUENCY_RANK: [Shape; 10] = [
    Shape::Star,
    Shape::Crescent,
    Shape::Circle,
    Shape::Arrow,
    Shape::Ring,
    Shape::Square,
    Shape::Heart,
    Shape::Triangle,
    Shape::Hexagon,
    Shape::Cross,
];
/// Class weight by frequency rank: Zipf, (rank + 1)^−1.2, to four digits (a table rather
/// than `powf`, whose last bits are platform-dependent).
const ZIPF_WEIGHTS: [f64; 10] = [1.0, 0.4353, 0.2676, 0.1895, 0.1450, 0.1165, 0.0968, 0.0825, 0.0716, 0.0631];
/// Per-camera multipliers of the class weights (each camera sees its own mix of classes).
const CAMERA_JITTER: [f64; 5] = [0.25, 0.5, 1.0, 2.0, 4.0];
/// Seed of the per-camera class mixes: fixed, so cameras mean the same under every seed.
const CAMERA_MIX_SEED: u64 = 0x5EED_CA3E;

/// The unnormalised class frequencies (label order) at camera `camera_index`.
pub fn camera_class_weights(camera_index: usize) -> [f64; 10] {
    let mut rng = SplitMix64::new(CAMERA_MIX_SEED ^ camera_index as u64);
    let mut weights = [0.0; 10];
    for (shape, zipf) in FREQUENCY_RANK.into_iter().zip(ZIPF_WEIGHTS) {
        weights[shape.label()] = zipf * pick(&mut rng, &CAMERA_JITTER);
    }
    weights
}

fn domain_example(rng: &mut SplitMix64, camera_index: usize) -> Example {
    let camera = &CAMERAS[camera_index];
    let shape = Shape::ALL[weighted_index(rng, &camera_class_weights(camera_index))];
    let color = pick(rng, &camera.palette);
    let background = sample_background(rng, camera.pattern, color);
    let scene = Scene { lighting: camera.lighting, ..Scene::sample_on(rng, shape, background) };
    Example {
        label: scene.label(),
        scene,
        group: camera.name.to_owned(),
        domain: Some(camera.name.to_owned()),
    }
}

fn domain_splits(b: &SuiteBuilder) -> Vec<SuiteSplit> {
    let train_cameras = TRAIN_CAMERAS;
    let ood_cameras = CAMERAS.len() - TRAIN_CAMERAS;
    let mut splits: Vec<SuiteSplit> = id_splits(b.sizes)
        .into_iter()
        .map(|(name, size)| b.split(name, size, |rng, i| domain_example(rng, i % train_cameras)))
        .collect();
    splits.push(b.split("ood_unseen_cameras", b.sizes.ood, |rng, i| {
        domain_example(rng, TRAIN_CAMERAS + i % ood_cameras)
    }));
    splits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spurious_backgrounds_have_distinct_colours() {
        for (i, a) in SPURIOUS_BACKGROUNDS.iter().enumerate() {
            assert!(SPURIOUS_BACKGROUNDS[i + 1..].iter().all(|b| b.1 != a.1), "{a:?} repeated");
        }
    }

    #[test]
    fn ood_cameras_differ_from_training_cameras() {
        let key = |c: &Camera| (c.palette, c.pattern, c.lighting);
        for ood in &CAMERAS[TRAIN_CAMERAS..] {
            assert!(CAMERAS[..TRAIN_CAMERAS].iter().all(|t| key(t) != key(ood)), "{}", ood.name);
        }
    }

    #[test]
    fn example_seeds_depend_on_the_suite_split_and_index() {
        let b = SuiteBuilder { suite: "rendition", seed: 0, sizes: &SPLIT_SIZES[1] };
        let first =
            |name: &str| b.split(name, 2, |rng, _| example(Scene::sample_pretraining(rng), String::new()));
        let (train, val) = (first("train"), first("id_val"));
        assert_ne!(train.examples[0], train.examples[1]);
        assert_ne!(train.examples[0], val.examples[0]);
    }
}
