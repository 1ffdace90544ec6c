//! Update protocols (`train.trainable`): which of the model's parameters a fine-tuning run
//! updates, beyond what per-tower freezing and the objective decide.
//!
//! * `all` — every parameter the objective trains and no frozen tower holds;
//! * `head` — only the objective's own tensors (its classification head); the model stays
//!   pre-trained, i.e. linear probing by gradient descent (Kumar et al. 2022, "Fine-Tuning can
//!   Distort Pretrained Features", the LP protocol of LP-FT);
//! * `last:K` — the image tower's last `K` transformer blocks, its final LayerNorm and its
//!   projection, plus the head: partial fine-tuning as in the "surgical" / top-K-blocks
//!   baselines (Lee et al. 2023, "Surgical Fine-Tuning Improves Adaptation to Distribution
//!   Shifts"). The text tower and the logit scale still follow `freeze` and the objective.
//!
//! The parameter names are the canonical (HF) ones: `vision_model.encoder.layers.{i}.*`,
//! `vision_model.post_layernorm.*`, `visual_projection.weight`.

use std::fmt;

use super::supervised::Tower;

/// Which model parameters a run may update (`train.trainable`, a string in recipes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Trainable {
    /// Every parameter (`all`).
    #[default]
    All,
    /// No model parameter, only the objective's head (`head`).
    Head,
    /// The image tower's last `K` blocks, post-LayerNorm and projection (`last:K`, K ≥ 1).
    Last(usize),
}

impl Trainable {
    /// Whether it is the default, `all`.
    pub fn is_all(&self) -> bool {
        *self == Trainable::All
    }

    /// Whether the protocol lets a run update the model parameter `name` of a model whose image
    /// tower has `image_layers` blocks.
    pub fn allows(&self, name: &str, image_layers: usize) -> bool {
        match *self {
            Trainable::All => true,
            Trainable::Head => false,
            Trainable::Last(k) => {
                Tower::of(name) != Tower::Image || in_top_of_image_tower(name, image_layers.saturating_sub(k))
            }
        }
    }

    /// Checks `last:K` against an image tower of `image_layers` blocks; the message names
    /// the key and the value.
    pub fn check_layers(&self, image_layers: usize) -> Result<(), String> {
        match *self {
            Trainable::Last(k) if k > image_layers => Err(format!(
                "train.trainable = \"{self}\" asks for more blocks than the image tower's {image_layers}"
            )),
            _ => Ok(()),
        }
    }
}

/// Whether `name` is an image-tower parameter from block `first` on, the final LayerNorm or
/// the projection.
fn in_top_of_image_tower(name: &str, first: usize) -> bool {
    if name == "visual_projection.weight" || name.starts_with("vision_model.post_layernorm.") {
        return true;
    }
    let block = name.strip_prefix("vision_model.encoder.layers.").and_then(|rest| rest.split('.').next());
    block.and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i >= first)
}

impl fmt::Display for Trainable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trainable::All => f.write_str("all"),
            Trainable::Head => f.write_str("head"),
            Trainable::Last(k) => write!(f, "last:{k}"),
        }
    }
}

impl std::str::FromStr for Trainable {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let refuse =
            || format!("train.trainable must be \"all\", \"head\" or \"last:K\" (K ≥ 1), not \"{text}\"");
        match text {
            "all" => Ok(Trainable::All),
            "head" => Ok(Trainable::Head),
            _ => match text.strip_prefix("last:").map(str::parse::<usize>) {
                Some(Ok(k)) if k >= 1 => Ok(Trainable::Last(k)),
                _ => Err(refuse()),
            },
        }
    }
}

impl TryFrom<String> for Trainable {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Trainable> for String {
    fn from(trainable: Trainable) -> String {
        trainable.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_protocol() {
        for (text, value) in
            [("all", Trainable::All), ("head", Trainable::Head), ("last:3", Trainable::Last(3))]
        {
            assert_eq!(text.parse::<Trainable>(), Ok(value));
            assert_eq!(value.to_string(), text);
        }
    }

    #[test]
    fn garbage_and_zero_blocks_are_refused_naming_the_value() {
        for text in ["last:0", "last:x", "last:", "last:-1", "Head", "last", ""] {
            let message = text.parse::<Trainable>().expect_err(text);
            assert!(
                message.contains("train.trainable") && message.contains(&format!("\"{text}\"")),
                "{message}"
            );
        }
    }

    #[test]
    fn last_k_selects_the_top_of_the_image_tower() {
        let last = Trainable::Last(2);
        let allowed = [
            "vision_model.encoder.layers.2.mlp.fc1.weight",
            "vision_model.encoder.layers.3.self_attn.q_proj.bias",
            "vision_model.post_layernorm.weight",
            "visual_projection.weight",
            "text_model.encoder.layers.0.mlp.fc1.weight",
            "text_projection.weight",
            "logit_scale",
        ];
        let refused = [
            "vision_model.encoder.layers.1.mlp.fc1.weight",
            "vision_model.embeddings.patch_embedding.weight",
            "vision_model.pre_layrnorm.bias",
        ];
        assert!(allowed.iter().all(|name| last.allows(name, 4)), "{allowed:?}");
        assert!(refused.iter().all(|name| !last.allows(name, 4)), "{refused:?}");
        assert!(!Trainable::Head.allows("text_projection.weight", 4));
    }

    #[test]
    fn more_blocks_than_the_tower_has_are_refused() {
        assert_eq!(Trainable::Last(4).check_layers(4), Ok(()));
        let message = Trainable::Last(5).check_layers(4).unwrap_err();
        assert!(message.contains("\"last:5\"") && message.contains('4'), "{message}");
    }
}
