//! Scene factors (the core one: shape; the non-core ones: colour, size, position, rotation,
//! background, rendition style, lighting, corruption) and how they are sampled.
//!
//! A [`Scene`] holds every factor explicitly, including the seeds of its random textures, so
//! rendering is a pure function of the scene. Sampling draws from [`SplitMix64`] only, with
//! integer or IEEE-exact arithmetic, so the same seed gives the same scene everywhere.

use serde::{Deserialize, Serialize};

use super::CLASSES;
use crate::rng::SplitMix64;

/// The class: shape geometry (the core feature). Variants are in label order ([`CLASSES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Cross,
    Ring,
    Hexagon,
    Crescent,
    Heart,
    Arrow,
}

impl Shape {
    /// Every shape in label order.
    pub const ALL: [Shape; 10] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Cross,
        Shape::Ring,
        Shape::Hexagon,
        Shape::Crescent,
        Shape::Heart,
        Shape::Arrow,
    ];

    /// The class index (position in [`CLASSES`]).
    pub fn label(self) -> usize {
        self as usize
    }

    /// The shape of class index `label`, if there is one.
    pub fn from_label(label: usize) -> Option<Shape> {
        Self::ALL.get(label).copied()
    }

    /// The class name.
    pub fn name(self) -> &'static str {
        CLASSES[self.label()]
    }
}

/// Named colours of objects and backgrounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Color {
    Red,
    Orange,
    Yellow,
    Green,
    Teal,
    Blue,
    Purple,
    Pink,
    Brown,
    Gray,
    White,
    Black,
}

/// An object colour must be at least this far (Euclidean sRGB distance) from the background
/// colour: red/orange, orange/yellow, teal/blue, blue/purple, red/brown, purple/gray,
/// brown/gray, green/teal, green/gray, teal/gray and green/brown never meet.
const MIN_CONTRAST: i32 = 120;
/// ... and at least this far from the background's second tone ([`Color::shade`]).
const MIN_SHADE_CONTRAST: i32 = 100;

fn squared_distance(a: [u8; 3], b: [u8; 3]) -> i32 {
    a.iter().zip(b).map(|(&x, y)| (x as i32 - y as i32).pow(2)).sum()
}

impl Color {
    pub const ALL: [Color; 12] = [
        Color::Red,
        Color::Orange,
        Color::Yellow,
        Color::Green,
        Color::Teal,
        Color::Blue,
        Color::Purple,
        Color::Pink,
        Color::Brown,
        Color::Gray,
        Color::White,
        Color::Black,
    ];

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Orange => "orange",
            Color::Yellow => "yellow",
            Color::Green => "green",
            Color::Teal => "teal",
            Color::Blue => "blue",
            Color::Purple => "purple",
            Color::Pink => "pink",
            Color::Brown => "brown",
            Color::Gray => "gray",
            Color::White => "white",
            Color::Black => "black",
        }
    }

    /// sRGB value.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [214, 39, 40],
            Color::Orange => [247, 129, 23],
            Color::Yellow => [240, 214, 46],
            Color::Green => [44, 160, 60],
            Color::Teal => [23, 166, 170],
            Color::Blue => [36, 82, 214],
            Color::Purple => [137, 60, 191],
            Color::Pink => [245, 128, 190],
            Color::Brown => [130, 80, 38],
            Color::Gray => [128, 128, 128],
            Color::White => [242, 242, 242],
            Color::Black => [24, 24, 24],
        }
    }

    /// The second tone of a background pattern: 40% darker for light colours (luma above
    /// 110), 45% lighter for dark ones.
    pub fn shade(self) -> [u8; 3] {
        let [r, g, b] = self.rgb().map(u32::from);
        let luma = (299 * r + 587 * g + 114 * b) / 1000;
        if luma > 110 {
            [r, g, b].map(|c| (c * 3 / 5) as u8)
        } else {
            [r, g, b].map(|c| (c + (255 - c) * 9 / 20) as u8)
        }
    }

    /// Whether an object of this colour stands out on a background of `background` (both its
    /// tones).
    pub fn contrasts_with(self, background: Color) -> bool {
        squared_distance(self.rgb(), background.rgb()) >= MIN_CONTRAST * MIN_CONTRAST
            && squared_distance(self.rgb(), background.shade()) >= MIN_SHADE_CONTRAST * MIN_SHADE_CONTRAST
    }
}

/// Background texture families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    Solid,
    Stripes,
    Checker,
    Dots,
    Gradient,
    Noise,
}

impl Pattern {
    pub const ALL: [Pattern; 6] = [
        Pattern::Solid,
        Pattern::Stripes,
        Pattern::Checker,
        Pattern::Dots,
        Pattern::Gradient,
        Pattern::Noise,
    ];

    /// The caption adjective ("a striped blue background").
    pub fn adjective(self) -> &'static str {
        match self {
            Pattern::Solid => "plain",
            Pattern::Stripes => "striped",
            Pattern::Checker => "checkered",
            Pattern::Dots => "dotted",
            Pattern::Gradient => "shaded",
            Pattern::Noise => "mottled",
        }
    }
}

/// Direction of stripes and gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Orientation {
    Horizontal,
    Vertical,
    Diagonal,
    AntiDiagonal,
}

impl Orientation {
    pub const ALL: [Orientation; 4] =
        [Orientation::Horizontal, Orientation::Vertical, Orientation::Diagonal, Orientation::AntiDiagonal];
}

/// The background: a pattern in a named colour and a darker or lighter shade of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Background {
    pub pattern: Pattern,
    pub color: Color,
    /// Pattern period in pixels (stripes, checker cells, dot grid, noise cells): 4–8.
    pub period: u8,
    pub orientation: Orientation,
    /// Pattern offset in pixels, below `period`.
    pub phase: u8,
    /// Seed of the value-noise texture (used by [`Pattern::Noise`] only).
    pub texture_seed: u64,
}

/// How the object is drawn (ImageNet-R-like renditions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    /// Solid, antialiased.
    Filled,
    /// A stroke about 1.75 px wide along the boundary.
    Outline,
    /// A dashed, thinner stroke with sparse diagonal hatching inside.
    Sketch,
    /// Drawn filled, then the whole image averaged in 3×3-pixel blocks.
    Pixelated,
}

impl Style {
    pub const ALL: [Style; 4] = [Style::Filled, Style::Outline, Style::Sketch, Style::Pixelated];

    /// The name used in split and group names.
    pub fn name(self) -> &'static str {
        match self {
            Style::Filled => "filled",
            Style::Outline => "outline",
            Style::Sketch => "sketch",
            Style::Pixelated => "pixelated",
        }
    }
}

/// Global illumination applied after compositing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lighting {
    Neutral,
    Bright,
    Dim,
    Warm,
    Cool,
}

impl Lighting {
    pub const ALL: [Lighting; 5] =
        [Lighting::Neutral, Lighting::Bright, Lighting::Dim, Lighting::Warm, Lighting::Cool];
}

/// ImageNet-C-like corruption families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorruptionKind {
    Noise,
    Blur,
    Contrast,
    Occlusion,
}

impl CorruptionKind {
    pub const ALL: [CorruptionKind; 4] =
        [CorruptionKind::Noise, CorruptionKind::Blur, CorruptionKind::Contrast, CorruptionKind::Occlusion];

    /// The name used in split names (`ood_<name>`).
    pub fn name(self) -> &'static str {
        match self {
            CorruptionKind::Noise => "noise",
            CorruptionKind::Blur => "blur",
            CorruptionKind::Contrast => "contrast",
            CorruptionKind::Occlusion => "occlusion",
        }
    }
}

/// Severities run from 1 to this (ImageNet-C's five levels).
pub const MAX_SEVERITY: u8 = 5;

/// A corruption applied last. Severities outside `1..=MAX_SEVERITY` are clamped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Corruption {
    pub kind: CorruptionKind,
    pub severity: u8,
    /// Seed of the noise values or of the occluder's placement.
    pub seed: u64,
}

/// One image's factors. `render` is a pure function of this value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    /// The class (label = `shape.label()`).
    pub shape: Shape,
    /// Object colour.
    pub color: Color,
    /// Object extent (diameter of the unit shape) as a fraction of the image side.
    pub size: f32,
    /// Object centre `[x, y]` as fractions of the image side.
    pub center: [f32; 2],
    /// Clockwise rotation in degrees.
    pub rotation: f32,
    pub background: Background,
    pub style: Style,
    pub lighting: Lighting,
    pub corruption: Option<Corruption>,
}

/// Object sizes (fraction of the image side) are drawn uniformly from this range: at 32 px the
/// smallest shape is about 13 px across.
pub const SIZE_RANGE: (f64, f64) = (0.42, 0.80);
/// Rotations in degrees are drawn uniformly from this range.
pub const ROTATION_RANGE: (f64, f64) = (-45.0, 45.0);
/// Smallest distance, in fractions of the side, between the object's extent and the edge.
const EDGE_MARGIN: f64 = 0.02;

/// Probabilities of the pretraining distribution (every factor independent of the others).
/// Filled, clean images dominate so that shape is learned early (the pilot's lesson); every
/// other rendition, lighting and corruption still appears often enough for the pretrained
/// model to be robust zero-shot.
pub mod pretraining {

    /// Of each style, in [`super::Style::ALL`] order.
    pub const STYLE_WEIGHTS: [f64; 4] = [0.55, 0.15, 0.15, 0.15];
    /// Of neutral lighting; the other four share the rest equally.
    pub const NEUTRAL_LIGHTING: f64 = 0.5;
    /// Of no corruption; otherwise kind and severity are uniform.
    pub const CLEAN: f64 = 0.7;
}

/// An index drawn uniformly from `0..len` (`len > 0`).
pub fn index(rng: &mut SplitMix64, len: usize) -> usize {
    (rng.next_u64() % len as u64) as usize
}

/// An element drawn uniformly from a non-empty slice.
pub fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[index(rng, items.len())]
}

/// Uniform in `[low, high)`.
pub fn uniform_in(rng: &mut SplitMix64, (low, high): (f64, f64)) -> f64 {
    low + (high - low) * rng.uniform()
}

/// An index drawn with probability proportional to `weights` (non-negative, positive sum).
pub fn weighted_index(rng: &mut SplitMix64, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut target = rng.uniform() * total;
    for (i, &w) in weights.iter().enumerate() {
        if target < w {
            return i;
        }
        target -= w;
    }
    weights.len() - 1
}

/// A background of `pattern` and `color` with random period, orientation, phase and texture.
pub fn sample_background(rng: &mut SplitMix64, pattern: Pattern, color: Color) -> Background {
    let period = 4 + index(rng, 5) as u8;
    Background {
        pattern,
        color,
        period,
        orientation: pick(rng, &Orientation::ALL),
        phase: index(rng, period as usize) as u8,
        texture_seed: rng.next_u64(),
    }
}

/// A background with uniformly drawn pattern and colour.
pub fn sample_any_background(rng: &mut SplitMix64) -> Background {
    let pattern = pick(rng, &Pattern::ALL);
    let color = pick(rng, &Color::ALL);
    sample_background(rng, pattern, color)
}

/// An object colour drawn uniformly among those that contrast with `background`.
pub fn sample_object_color(rng: &mut SplitMix64, background: Color) -> Color {
    let choices: Vec<Color> = Color::ALL.into_iter().filter(|c| c.contrasts_with(background)).collect();
    pick(rng, &choices)
}

/// A corruption of `kind` and `severity` with a fresh seed.
pub fn sample_corruption(rng: &mut SplitMix64, kind: CorruptionKind, severity: u8) -> Corruption {
    Corruption { kind, severity, seed: rng.next_u64() }
}

impl Scene {
    /// A filled, evenly lit, uncorrupted `shape` on `background`, with uniformly drawn size,
    /// position (inside the image), rotation and a colour contrasting with the background.
    pub fn sample_on(rng: &mut SplitMix64, shape: Shape, background: Background) -> Scene {
        let size = uniform_in(rng, SIZE_RANGE);
        let room = (size / 2.0 + EDGE_MARGIN, 1.0 - size / 2.0 - EDGE_MARGIN);
        let center = [uniform_in(rng, room) as f32, uniform_in(rng, room) as f32];
        let rotation = uniform_in(rng, ROTATION_RANGE) as f32;
        let color = sample_object_color(rng, background.color);
        Scene {
            shape,
            color,
            size: size as f32,
            center,
            rotation,
            background,
            style: Style::Filled,
            lighting: Lighting::Neutral,
            corruption: None,
        }
    }

    /// A scene of the pretraining distribution: every factor drawn independently (shape,
    /// pattern, background colour uniform; style, lighting and corruption as in
    /// [`pretraining`]; object colour uniform among those contrasting with the background).
    pub fn sample_pretraining(rng: &mut SplitMix64) -> Scene {
        let shape = pick(rng, &Shape::ALL);
        let background = sample_any_background(rng);
        let mut scene = Scene::sample_on(rng, shape, background);
        scene.style = Style::ALL[weighted_index(rng, &pretraining::STYLE_WEIGHTS)];
        if rng.uniform() >= pretraining::NEUTRAL_LIGHTING {
            scene.lighting = pick(rng, &Lighting::ALL[1..]);
        }
        if rng.uniform() >= pretraining::CLEAN {
            let kind = pick(rng, &CorruptionKind::ALL);
            let severity = 1 + index(rng, MAX_SEVERITY as usize) as u8;
            scene.corruption = Some(sample_corruption(rng, kind, severity));
        }
        scene
    }

    /// The class index.
    pub fn label(&self) -> usize {
        self.shape.label()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_in_class_order() {
        for (label, shape) in Shape::ALL.into_iter().enumerate() {
            assert_eq!(shape.label(), label);
            assert_eq!(shape.name(), CLASSES[label]);
            assert_eq!(Shape::from_label(label), Some(shape));
        }
        assert_eq!(Shape::from_label(10), None);
    }

    #[test]
    fn every_colour_has_several_contrasting_partners() {
        for color in Color::ALL {
            assert!(!color.contrasts_with(color));
            let partners = Color::ALL.iter().filter(|&&c| c.contrasts_with(color)).count();
            assert!(partners >= 6, "{color:?} has {partners}");
        }
        assert!(!Color::Red.contrasts_with(Color::Orange));
        assert!(!Color::Gray.contrasts_with(Color::Black), "black's second tone is gray");
    }

    #[test]
    fn sampled_objects_fit_and_contrast() {
        let mut rng = SplitMix64::new(3);
        for _ in 0..2000 {
            let scene = Scene::sample_pretraining(&mut rng);
            assert!(scene.color.contrasts_with(scene.background.color));
            let r = scene.size / 2.0;
            for c in scene.center {
                assert!(c - r >= 0.0 && c + r <= 1.0, "{scene:?}");
            }
            assert!((SIZE_RANGE.0..SIZE_RANGE.1).contains(&(scene.size as f64)));
            assert!(scene.background.phase < scene.background.period);
        }
    }

    #[test]
    fn weighted_index_follows_weights() {
        let mut rng = SplitMix64::new(9);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[weighted_index(&mut rng, &[1.0, 0.0, 3.0])] += 1;
        }
        assert_eq!(counts[1], 0);
        let ratio = counts[2] as f64 / counts[0] as f64;
        assert!((ratio - 3.0).abs() < 0.2, "{counts:?}");
    }
}
