//! Shape geometry and the coverage rasteriser.
//!
//! Each class is a short constructive program over two primitives (discs and simple polygons)
//! in *unit coordinates*: the shape spans about `[-1, 1]²`, `y` points down. The rasteriser
//! places it (size, centre, rotation), fills a binary mask at [`SUPERSAMPLE`]× the image
//! resolution row by row from exact span intersections (even-odd rule for polygons; discs
//! analytically), and box-downsamples the mask into per-pixel coverage (antialiasing).
//!
//! Only IEEE-exact operations (`+ − × ÷ √`, floor/ceil) touch pixels: rotation uses
//! [`sin_cos_degrees`], a Taylor series, because the platform `sin`/`cos` differ in their
//! last bits between machines and "same seed, same bytes" must hold everywhere.

use super::scene::Shape;

/// Mask samples per output pixel along each axis.
pub const SUPERSAMPLE: usize = 4;
/// Side of the supersampled mask.
pub const MASK_SIDE: usize = super::IMAGE_SIZE as usize * SUPERSAMPLE;
/// Largest per-pixel coverage value (all `SUPERSAMPLE²` samples inside).
pub const FULL_COVERAGE: u8 = (SUPERSAMPLE * SUPERSAMPLE) as u8;

/// A filled region in unit or mask coordinates.
#[derive(Clone, Debug)]
enum Primitive {
    Disc { center: [f64; 2], radius: f64 },
    Polygon(Vec<[f64; 2]>),
}

/// Whether a primitive is painted into the mask or cut out of what is painted so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Subtract,
}

/// A shape as an ordered list of painted and cut primitives.
type Program = Vec<(Op, Primitive)>;

/// `(sin, cos)` of an angle in degrees using only IEEE basic operations (reduction to
/// [-180°, 180°) and a 30-term Taylor series), identical on every platform.
pub fn sin_cos_degrees(degrees: f64) -> (f64, f64) {
    let mut reduced = degrees - 360.0 * (degrees / 360.0).floor();
    if reduced >= 180.0 {
        reduced -= 360.0;
    }
    let x = reduced * (std::f64::consts::PI / 180.0);
    let (mut sin, mut cos) = (0.0, 0.0);
    let (mut sin_term, mut cos_term) = (x, 1.0);
    for k in 0..30 {
        sin += sin_term;
        cos += cos_term;
        let n = 2.0 * k as f64;
        sin_term *= -x * x / ((n + 2.0) * (n + 3.0));
        cos_term *= -x * x / ((n + 1.0) * (n + 2.0));
    }
    (sin, cos)
}

/// Vertices of a regular polygon (or a star when `inner_radius` is given: the vertices then
/// alternate between the outer and inner radius), first vertex straight up.
fn regular_vertices(points: usize, outer_radius: f64, inner_radius: Option<f64>) -> Vec<[f64; 2]> {
    let step = if inner_radius.is_some() { 180.0 / points as f64 } else { 360.0 / points as f64 };
    let count = if inner_radius.is_some() { 2 * points } else { points };
    (0..count)
        .map(|i| {
            let radius = match inner_radius {
                Some(inner) if i % 2 == 1 => inner,
                _ => outer_radius,
            };
            let (sin, cos) = sin_cos_degrees(i as f64 * step - 90.0);
            [radius * cos, radius * sin]
        })
        .collect()
}

fn disc(x: f64, y: f64, radius: f64) -> Primitive {
    Primitive::Disc { center: [x, y], radius }
}

/// The drawing program of `shape` in unit coordinates. The proportions are chosen so that
/// every class stays distinguishable at the smallest size (about 13 px across): the ring's
/// hole is more than half its diameter, the crescent is open on one side, the heart has a
/// deep notch and a sharp tip, the star's notches reach below half its radius.
fn program(shape: Shape) -> Program {
    use Op::{Add, Subtract};
    match shape {
        Shape::Circle => vec![(Add, disc(0.0, 0.0, 1.0))],
        Shape::Square => {
            let h = 0.8;
            vec![(Add, Primitive::Polygon(vec![[-h, -h], [h, -h], [h, h], [-h, h]]))]
        }
        Shape::Triangle => {
            // Equilateral, circumradius 1.1, shifted down so its bounding box is centred.
            let shifted = regular_vertices(3, 1.1, None).into_iter().map(|[x, y]| [x, y + 0.275]).collect();
            vec![(Add, Primitive::Polygon(shifted))]
        }
        Shape::Star => vec![(Add, Primitive::Polygon(regular_vertices(5, 1.05, Some(0.42))))],
        Shape::Cross => {
            let (a, w) = (0.95, 0.3);
            vec![(
                Add,
                Primitive::Polygon(vec![
                    [-w, -a],
                    [w, -a],
                    [w, -w],
                    [a, -w],
                    [a, w],
                    [w, w],
                    [w, a],
                    [-w, a],
                    [-w, w],
                    [-a, w],
                    [-a, -w],
                    [-w, -w],
                ]),
            )]
        }
        Shape::Ring => vec![(Add, disc(0.0, 0.0, 1.0)), (Subtract, disc(0.0, 0.0, 0.56))],
        Shape::Hexagon => {
            // Flat top and bottom (first vertex at the side) so it differs from a disc in
            // silhouette at every rotation in ±45°.
            let rotated = regular_vertices(6, 1.0, None).into_iter().map(|[x, y]| [y, x]).collect();
            vec![(Add, Primitive::Polygon(rotated))]
        }
        Shape::Crescent => {
            // A disc with an offset disc cut out that reaches past its edge: a thick "C" open
            // to the right; shifted right so its bounding box is centred.
            let shift = 0.24;
            vec![(Add, disc(shift, 0.0, 1.0)), (Subtract, disc(0.5 + shift, 0.0, 0.85))]
        }
        Shape::Heart => {
            // Two lobes and the polygon spanned by the tip and the lobes' outer tangent points
            // (tangent points computed for lobes at (±0.47, −0.39), radius 0.5, tip (0, 0.89)).
            let (lobe_x, lobe_y, lobe_r, tip_y) = (0.47, -0.39, 0.5, 0.89);
            let (tangent_x, tangent_y) = (0.8435, -0.0576);
            vec![
                (Add, disc(-lobe_x, lobe_y, lobe_r)),
                (Add, disc(lobe_x, lobe_y, lobe_r)),
                (
                    Add,
                    Primitive::Polygon(vec![
                        [0.0, tip_y],
                        [-tangent_x, tangent_y],
                        [-lobe_x, lobe_y],
                        [lobe_x, lobe_y],
                        [tangent_x, tangent_y],
                    ]),
                ),
            ]
        }
        Shape::Arrow => {
            let (shaft_w, head_w, neck) = (0.2, 0.62, 0.12);
            vec![(
                Add,
                Primitive::Polygon(vec![
                    [-1.0, -shaft_w],
                    [neck, -shaft_w],
                    [neck, -head_w],
                    [1.0, 0.0],
                    [neck, head_w],
                    [neck, shaft_w],
                    [-1.0, shaft_w],
                ]),
            )]
        }
    }
}

/// Where a shape is drawn: centre in image fractions, extent (unit radius) in image
/// fractions of the side, rotation in degrees clockwise.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub center: [f64; 2],
    pub radius: f64,
    pub rotation_degrees: f64,
}

impl Placement {
    /// The placement's centre in mask coordinates.
    pub fn mask_center(&self) -> [f64; 2] {
        [self.center[0] * MASK_SIDE as f64, self.center[1] * MASK_SIDE as f64]
    }

    /// Maps the program from unit to mask coordinates.
    fn apply(&self, program: Program) -> Program {
        let (sin, cos) = sin_cos_degrees(self.rotation_degrees);
        let scale = self.radius * MASK_SIDE as f64;
        let [cx, cy] = self.mask_center();
        let map = |[u, v]: [f64; 2]| [cx + scale * (cos * u - sin * v), cy + scale * (sin * u + cos * v)];
        program
            .into_iter()
            .map(|(op, primitive)| {
                let placed = match primitive {
                    Primitive::Disc { center, radius } => {
                        Primitive::Disc { center: map(center), radius: radius * scale }
                    }
                    Primitive::Polygon(vertices) => {
                        Primitive::Polygon(vertices.into_iter().map(map).collect())
                    }
                };
                (op, placed)
            })
            .collect()
    }
}

/// The x-intervals `[start, end)` of `primitive` on the horizontal line at height `y`.
fn row_spans(primitive: &Primitive, y: f64, spans: &mut Vec<(f64, f64)>) {
    spans.clear();
    match primitive {
        Primitive::Disc { center, radius } => {
            let dy = y - center[1];
            if dy.abs() < *radius {
                let half = (radius * radius - dy * dy).sqrt();
                spans.push((center[0] - half, center[0] + half));
            }
        }
        Primitive::Polygon(vertices) => {
            let mut crossings: Vec<f64> = Vec::with_capacity(8);
            for (i, a) in vertices.iter().enumerate() {
                let b = vertices[(i + 1) % vertices.len()];
                let (low, high) = if a[1] < b[1] { (a, &b) } else { (&b, a) };
                if y >= low[1] && y < high[1] {
                    crossings.push(low[0] + (y - low[1]) * (high[0] - low[0]) / (high[1] - low[1]));
                }
            }
            crossings.sort_by(f64::total_cmp);
            spans.extend(crossings.chunks_exact(2).map(|pair| (pair[0], pair[1])));
        }
    }
}

/// Mask columns whose sample centre `x + 0.5` lies in `[start, end)`, clamped to the mask.
fn span_columns(start: f64, end: f64) -> std::ops::Range<usize> {
    let clamp = |v: f64| (v - 0.5).ceil().clamp(0.0, MASK_SIDE as f64) as usize;
    clamp(start)..clamp(end)
}

/// The supersampled binary mask (`MASK_SIDE²`, row-major, 0 or 1) of a placed shape.
pub fn shape_mask(shape: Shape, placement: &Placement) -> Vec<u8> {
    let program = placement.apply(program(shape));
    let mut mask = vec![0u8; MASK_SIDE * MASK_SIDE];
    let mut spans = Vec::new();
    for (row_index, row) in mask.chunks_exact_mut(MASK_SIDE).enumerate() {
        let y = row_index as f64 + 0.5;
        for (op, primitive) in &program {
            row_spans(primitive, y, &mut spans);
            let value = u8::from(*op == Op::Add);
            for &(start, end) in &spans {
                row[span_columns(start, end)].fill(value);
            }
        }
    }
    mask
}

/// Keeps the mask samples whose whole `(2·radius+1)²` neighbourhood is inside the mask
/// (erosion by a square; samples beyond the mask's edge count as outside).
pub fn erode(mask: &[u8], radius: usize) -> Vec<u8> {
    let horizontal = erode_rows(mask, radius, MASK_SIDE, 1);
    erode_rows(&horizontal, radius, 1, MASK_SIDE)
}

/// One-dimensional erosion along lines of the mask: `line_step` separates lines and
/// `sample_step` neighbouring samples on a line. Uses running window sums.
fn erode_rows(mask: &[u8], radius: usize, line_step: usize, sample_step: usize) -> Vec<u8> {
    let window = 2 * radius + 1;
    let mut out = vec![0u8; mask.len()];
    let mut prefix = vec![0usize; MASK_SIDE + 1];
    for line in 0..MASK_SIDE {
        let at = |i: usize| line * line_step + i * sample_step;
        for i in 0..MASK_SIDE {
            prefix[i + 1] = prefix[i] + mask[at(i)] as usize;
        }
        for i in radius..MASK_SIDE.saturating_sub(radius) {
            let inside = prefix[i + radius + 1] - prefix[i - radius];
            out[at(i)] = u8::from(inside == window);
        }
    }
    out
}

/// Sums each `SUPERSAMPLE²` block of the mask: per-pixel coverage in `0..=FULL_COVERAGE`.
pub fn downsample(mask: &[u8]) -> Vec<u8> {
    let side = super::IMAGE_SIZE as usize;
    let mut coverage = vec![0u8; side * side];
    for (row_index, row) in mask.chunks_exact(MASK_SIDE).enumerate() {
        let out_row = &mut coverage[(row_index / SUPERSAMPLE) * side..][..side];
        for (x, block) in row.chunks_exact(SUPERSAMPLE).enumerate() {
            out_row[x] += block.iter().sum::<u8>();
        }
    }
    coverage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn centred(radius: f64, rotation_degrees: f64) -> Placement {
        Placement { center: [0.5, 0.5], radius, rotation_degrees }
    }

    #[test]
    fn taylor_trig_matches_std_to_rounding() {
        for degrees in [-725.0, -180.0, -90.0, -45.0, -1.5, 0.0, 30.0, 45.0, 90.0, 179.9, 180.0, 400.0] {
            let (sin, cos) = sin_cos_degrees(degrees);
            let radians = f64::to_radians(degrees);
            assert!((sin - radians.sin()).abs() < 1e-12, "sin {degrees}: {sin}");
            assert!((cos - radians.cos()).abs() < 1e-12, "cos {degrees}: {cos}");
        }
    }

    #[test]
    fn disc_area_matches_pi_r_squared() {
        let mask = shape_mask(Shape::Circle, &centred(0.3, 0.0));
        let area = mask.iter().map(|&v| v as f64).sum::<f64>();
        let expected = std::f64::consts::PI * (0.3 * MASK_SIDE as f64).powi(2);
        assert!((area / expected - 1.0).abs() < 0.01, "area {area} vs {expected}");
    }

    #[test]
    fn ring_and_crescent_have_holes_where_expected() {
        let at = |mask: &[u8], x: f64, y: f64| {
            mask[(y * MASK_SIDE as f64) as usize * MASK_SIDE + (x * MASK_SIDE as f64) as usize]
        };
        let ring = shape_mask(Shape::Ring, &centred(0.35, 0.0));
        assert_eq!(at(&ring, 0.5, 0.5), 0, "ring centre is a hole");
        assert_eq!(at(&ring, 0.5 - 0.35 * 0.8, 0.5), 1, "ring band");
        let crescent = shape_mask(Shape::Crescent, &centred(0.35, 0.0));
        assert_eq!(at(&crescent, 0.5 + 0.35 * 0.9, 0.5), 0, "crescent is open on the right");
        assert_eq!(at(&crescent, 0.5 - 0.35 * 0.6, 0.5), 1, "crescent body on the left");
    }

    #[test]
    fn erosion_shrinks_a_square_by_the_radius_on_each_side() {
        let mask = shape_mask(Shape::Square, &centred(0.25, 0.0));
        let side = |m: &[u8]| (m.iter().map(|&v| v as f64).sum::<f64>()).sqrt();
        let eroded = erode(&mask, 3);
        assert!((side(&mask) - side(&eroded) - 6.0).abs() < 0.5, "{} -> {}", side(&mask), side(&eroded));
    }

    #[test]
    fn downsampled_coverage_preserves_the_mask_sum() {
        let mask = shape_mask(Shape::Star, &centred(0.3, 17.0));
        let coverage = downsample(&mask);
        let total = |v: &[u8]| v.iter().map(|&x| x as usize).sum::<usize>();
        assert_eq!(total(&mask), total(&coverage));
        assert!(coverage.iter().all(|&c| c <= FULL_COVERAGE));
    }
}
