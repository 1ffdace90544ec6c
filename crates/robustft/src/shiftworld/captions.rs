//! Captions: a small grammar over a scene's factors, and the concept descriptions.
//!
//! Every caption names the shape, by its class name or, with probability
//! [`PARAPHRASE_PROBABILITY`], by a *core description*: a short phrase about the geometry
//! that avoids every class name ("a shape with three straight sides"). The core descriptions
//! are also the classes' concept descriptions (DRM's CD prompts), so a model pretrained on
//! these captions has seen the CD sentences. Every other factor is mentioned only sometimes
//! (each with probability 0.15–0.5 before the length limit, see the constants), so the shape is the one thing every
//! caption and its image share: the pilot's remedy for a contrastive model that learned
//! colour and background long before shape.
//!
//! Grammar (optional parts in brackets):
//! `[frame] article [size] [tilted] [solid|filled] [colour] head [tail] [position]
//! [on a [pattern] [colour] background] [lighting] [, corruption] [.]`. Frames are rendition
//! frames of the scene's style ("an outline of", "a sketch of", "a pixelated photo of") or
//! plain ones ("a photo of"); `head tail` is the class name or a core description split at
//! its head noun, so adjectives land before the noun ("a red shape with three straight
//! sides"). A caption longer than [`MAX_CAPTION_CHARS`] characters loses optional parts
//! (lighting, position, corruption, tilt, size, fill, background, frame, colour, in that
//! order) until it fits: with the bundled model's 1000-merge BPE vocabulary that keeps
//! captions within about 22 tokens, and the shape phrase always inside the context.

use super::scene::{CorruptionKind, Lighting, Scene, Style};
use super::CLASSES;
use crate::rng::SplitMix64;

/// Probability that a caption names the shape by a core description instead of its name.
pub const PARAPHRASE_PROBABILITY: f64 = 0.25;
/// Longest caption, in characters (the trailing period not counted); longer ones lose
/// optional parts. A 1000-merge CLIP BPE vocabulary (the bundled model's) spends about 0.4
/// tokens per character of these captions, so captions fit a context of 24 tokens.
pub const MAX_CAPTION_CHARS: usize = 48;
const SIZE_PROBABILITY: f64 = 0.3;
const TILT_PROBABILITY: f64 = 0.15;
const COLOR_PROBABILITY: f64 = 0.4;
const POSITION_PROBABILITY: f64 = 0.2;
const BACKGROUND_PROBABILITY: f64 = 0.45;
const STYLE_PROBABILITY: f64 = 0.5;
const LIGHTING_PROBABILITY: f64 = 0.3;
const CORRUPTION_PROBABILITY: f64 = 0.4;
const PLAIN_FRAME_PROBABILITY: f64 = 0.15;
const PERIOD_PROBABILITY: f64 = 0.5;

/// Core descriptions per class in label order, each split into the head noun phrase (which
/// takes the adjectives) and the rest.
const CORE_DESCRIPTIONS: [[(&str, &str); 3]; 10] = [
    [
        ("round shape", "with no corners"),
        ("perfectly round disk", ""),
        ("smooth round blob", "without a hole"),
    ],
    [
        ("shape", "with four equal sides"),
        ("box shape", "with four right angles"),
        ("four-sided shape", "with equal sides"),
    ],
    [
        ("shape", "with three straight sides"),
        ("three-cornered shape", ""),
        ("shape", "with three sharp corners"),
    ],
    [("shape", "with five sharp points"), ("five-pointed shape", ""), ("spiky shape", "with five tips")],
    [
        ("plus sign", "made of two bars"),
        ("shape", "with four arms at right angles"),
        ("plus-shaped figure", ""),
    ],
    [
        ("round band", "with a hole in the middle"),
        ("donut shape", "with an empty centre"),
        ("thick loop", "around a hole"),
    ],
    [("shape", "with six straight sides"), ("six-sided shape", ""), ("honeycomb cell shape", "")],
    [
        ("curved shape", "with two pointed horns"),
        ("slice of the moon", ""),
        ("round shape", "with a bite taken out"),
    ],
    [
        ("shape", "with two round lobes and a point"),
        ("rounded shape", "with a dip on top"),
        ("shape", "with two bumps on top and a tip below"),
    ],
    [("shaft", "with a pointed head"), ("pointer shape", ""), ("bar", "ending in a pointed tip")],
];

/// The noun phrase `head tail` without an empty tail.
fn core_phrase(head: &str, tail: &str) -> String {
    if tail.is_empty() {
        head.to_owned()
    } else {
        format!("{head} {tail}")
    }
}

/// Concept descriptions per class (label order): three core-description sentences each
/// ("a shape with three straight sides"), none containing a class name.
pub fn concept_descriptions() -> Vec<Vec<String>> {
    CORE_DESCRIPTIONS
        .iter()
        .map(|class| class.iter().map(|&(h, t)| format!("{} {}", article(h), core_phrase(h, t))).collect())
        .collect()
}

/// The bundled concept-description sets, by name: `shiftworld` ([`concept_descriptions`]).
pub const DESCRIPTION_SET_NAMES: [&str; 1] = ["shiftworld"];

/// A bundled concept-description set ([`DESCRIPTION_SET_NAMES`]) per class, label order.
pub fn description_set(name: &str) -> Option<Vec<Vec<String>>> {
    match name {
        "shiftworld" => Some(concept_descriptions()),
        _ => None,
    }
}

/// The concept descriptions as a DRM concept-description file: a JSON object from class name
/// to its sentences, in label order, two-space indented, newline-terminated.
pub fn concept_descriptions_json() -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("strings always serialise");
    let entries: Vec<String> = CLASSES
        .iter()
        .zip(concept_descriptions())
        .map(|(name, sentences)| {
            let lines: Vec<String> = sentences.iter().map(|s| format!("    {}", quote(s))).collect();
            format!("  {}: [\n{}\n  ]", quote(name), lines.join(",\n"))
        })
        .collect();
    format!("{{\n{}\n}}\n", entries.join(",\n"))
}

/// "a" or "an" for the word that follows.
fn article(next_word: &str) -> &'static str {
    if next_word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn chance(rng: &mut SplitMix64, probability: f64) -> bool {
    rng.uniform() < probability
}

fn pick_str(rng: &mut SplitMix64, words: &[&'static str]) -> &'static str {
    words[(rng.next_u64() % words.len() as u64) as usize]
}

/// Rendition frames, ending in "of", for the non-filled styles; filled shapes get an
/// adjective instead.
fn style_frame(rng: &mut SplitMix64, style: Style) -> Option<&'static str> {
    match style {
        Style::Filled => None,
        Style::Outline => Some(pick_str(rng, &["an outline of", "a line drawing of"])),
        Style::Sketch => Some(pick_str(rng, &["a sketch of", "a dashed sketch of"])),
        Style::Pixelated => Some(pick_str(rng, &["a pixelated photo of", "a pixelated image of"])),
    }
}

fn corruption_word(rng: &mut SplitMix64, kind: CorruptionKind) -> &'static str {
    match kind {
        CorruptionKind::Noise => pick_str(rng, &["noisy", "grainy"]),
        CorruptionKind::Blur => pick_str(rng, &["blurry", "blurred"]),
        CorruptionKind::Contrast => pick_str(rng, &["faded", "low contrast"]),
        CorruptionKind::Occlusion => pick_str(rng, &["partly hidden", "occluded"]),
    }
}

fn lighting_phrase(lighting: Lighting) -> Option<&'static str> {
    match lighting {
        Lighting::Neutral => None,
        Lighting::Bright => Some("in bright light"),
        Lighting::Dim => Some("in dim light"),
        Lighting::Warm => Some("in warm light"),
        Lighting::Cool => Some("in cold light"),
    }
}

/// Size word for objects in the lower or upper part of the size range; none in between.
fn size_word(size: f32) -> Option<&'static str> {
    if size < 0.55 {
        Some("small")
    } else if size > 0.67 {
        Some("large")
    } else {
        None
    }
}

/// Position phrase from the larger offset of the centre.
fn position_phrase(center: [f32; 2]) -> &'static str {
    let (dx, dy) = (center[0] - 0.5, center[1] - 0.5);
    if dx.abs().max(dy.abs()) < 0.06 {
        "in the centre"
    } else if dx.abs() >= dy.abs() {
        if dx < 0.0 {
            "on the left"
        } else {
            "on the right"
        }
    } else if dy < 0.0 {
        "near the top"
    } else {
        "near the bottom"
    }
}

/// "on a striped blue background", "on a dotted background", "on a green background".
fn background_phrase(scene: &Scene, rng: &mut SplitMix64) -> String {
    let with_pattern = chance(rng, 0.7);
    let with_color = !with_pattern || chance(rng, 0.7);
    let mut words: Vec<&str> = Vec::new();
    if with_pattern {
        words.push(scene.background.pattern.adjective());
    }
    if with_color {
        words.push(scene.background.color.name());
    }
    format!("on {} {} background", article(words[0]), words.join(" "))
}

/// The parts of one caption; every part but `head`/`tail` is optional.
struct Parts {
    frame: Option<&'static str>,
    size: Option<&'static str>,
    tilt: Option<&'static str>,
    fill: Option<&'static str>,
    color: Option<&'static str>,
    head: &'static str,
    tail: &'static str,
    position: Option<&'static str>,
    background: Option<String>,
    lighting: Option<&'static str>,
    corruption: Option<&'static str>,
}

/// Removers of optional parts, in the order a too-long caption loses them; each reports
/// whether there was something to remove.
const DROP_ORDER: [fn(&mut Parts) -> bool; 9] = [
    |p| p.lighting.take().is_some(),
    |p| p.position.take().is_some(),
    |p| p.corruption.take().is_some(),
    |p| p.tilt.take().is_some(),
    |p| p.size.take().is_some(),
    |p| p.fill.take().is_some(),
    |p| p.background.take().is_some(),
    |p| p.frame.take().is_some(),
    |p| p.color.take().is_some(),
];

impl Parts {
    fn text(&self) -> String {
        let noun_phrase: Vec<&str> = [self.size, self.tilt, self.fill, self.color, Some(self.head)]
            .into_iter()
            .flatten()
            .chain((!self.tail.is_empty()).then_some(self.tail))
            .collect();
        let mut words: Vec<&str> = self.frame.into_iter().collect();
        words.push(article(noun_phrase[0]));
        words.extend(noun_phrase);
        words.extend(self.position);
        words.extend(self.background.as_deref());
        words.extend(self.lighting);
        let mut text = words.join(" ");
        if let Some(corruption) = self.corruption {
            text.push_str(", ");
            text.push_str(corruption);
        }
        text
    }

    /// Drops optional parts (in [`DROP_ORDER`]) until the caption has at most `max_chars`.
    fn shorten_to(&mut self, max_chars: usize) {
        let mut droppers = DROP_ORDER.iter();
        while self.text().len() > max_chars {
            let Some(drop) = droppers.next() else { break };
            drop(self);
        }
    }
}

/// A caption for the scene (see the module doc for the grammar).
pub fn caption(scene: &Scene, rng: &mut SplitMix64) -> String {
    let (head, tail) = if chance(rng, PARAPHRASE_PROBABILITY) {
        let choices = &CORE_DESCRIPTIONS[scene.label()];
        choices[(rng.next_u64() % choices.len() as u64) as usize]
    } else {
        (scene.shape.name(), "")
    };
    let size = chance(rng, SIZE_PROBABILITY).then(|| size_word(scene.size)).flatten();
    let tilt = (scene.rotation.abs() > 20.0 && chance(rng, TILT_PROBABILITY)).then_some("tilted");
    let (frame, fill) = if chance(rng, STYLE_PROBABILITY) {
        match style_frame(rng, scene.style) {
            Some(frame) => (Some(frame), None),
            None => (None, Some(pick_str(rng, &["solid", "filled"]))),
        }
    } else {
        (None, None)
    };
    let frame = frame.or_else(|| {
        chance(rng, PLAIN_FRAME_PROBABILITY).then(|| pick_str(rng, &["a photo of", "a picture of"]))
    });
    let color = chance(rng, COLOR_PROBABILITY).then(|| scene.color.name());
    let position = chance(rng, POSITION_PROBABILITY).then(|| position_phrase(scene.center));
    let background = chance(rng, BACKGROUND_PROBABILITY).then(|| background_phrase(scene, rng));
    let lighting = lighting_phrase(scene.lighting).filter(|_| chance(rng, LIGHTING_PROBABILITY));
    let corruption = match &scene.corruption {
        Some(c) if chance(rng, CORRUPTION_PROBABILITY) => Some(corruption_word(rng, c.kind)),
        _ => None,
    };
    let mut parts =
        Parts { frame, size, tilt, fill, color, head, tail, position, background, lighting, corruption };
    parts.shorten_to(MAX_CAPTION_CHARS);
    let mut text = parts.text();
    if chance(rng, PERIOD_PROBABILITY) {
        text.push('.');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shiftworld::scene::Scene;

    #[test]
    fn captions_fit_the_length_budget_and_keep_the_shape() {
        let mut rng = SplitMix64::new(12);
        for _ in 0..5000 {
            let scene = Scene::sample_pretraining(&mut rng);
            let text = caption(&scene, &mut rng);
            assert!(text.trim_end_matches('.').len() <= MAX_CAPTION_CHARS, "{text:?}");
        }
        let longest = Parts {
            frame: Some("a pixelated image of"),
            size: Some("small"),
            tilt: Some("tilted"),
            fill: None,
            color: Some("red"),
            head: "shape",
            tail: "with two bumps on top and a tip below",
            position: Some("on the left"),
            background: Some("on a striped blue background".into()),
            lighting: Some("in dim light"),
            corruption: Some("noisy"),
        };
        let mut parts = longest;
        parts.shorten_to(MAX_CAPTION_CHARS);
        assert_eq!(parts.text(), "a shape with two bumps on top and a tip below");
    }

    #[test]
    fn articles_agree_with_the_next_word() {
        assert_eq!(article("arrow"), "an");
        assert_eq!(article("outline"), "an");
        assert_eq!(article("heart"), "a");
    }

    #[test]
    fn json_parses_and_keeps_label_order() {
        let value: serde_json::Value = serde_json::from_str(&concept_descriptions_json()).unwrap();
        let text = concept_descriptions_json();
        let mut last = 0;
        for name in CLASSES {
            let at = text.find(&format!("\"{name}\"")).unwrap();
            assert!(at > last || last == 0, "{name} out of order");
            last = at;
            assert_eq!(value[name].as_array().unwrap().len(), 3);
        }
    }

    #[test]
    fn captions_vary_and_use_paraphrases_about_a_quarter_of_the_time() {
        let mut rng = SplitMix64::new(11);
        let mut paraphrased = 0;
        let mut distinct = std::collections::BTreeSet::new();
        let n = 4000;
        for _ in 0..n {
            let scene = Scene::sample_pretraining(&mut rng);
            let text = caption(&scene, &mut rng);
            if !text.contains(scene.shape.name()) {
                paraphrased += 1;
            }
            distinct.insert(text);
        }
        let share = paraphrased as f64 / n as f64;
        assert!((share - PARAPHRASE_PROBABILITY).abs() < 0.03, "paraphrase share {share}");
        assert!(distinct.len() > n / 2, "only {} distinct captions", distinct.len());
    }
}
