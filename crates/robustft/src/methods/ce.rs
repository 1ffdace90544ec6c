//! Cross-entropy fine-tuning through a linear head (methods.md §2.3 "FT"/ERM, §2.4 LP-FT,
//! §2.7 L2-SP): the image tower and a head `z = normalize(f)·Wᵀ + b` are trained with CE; the
//! head starts from the zero-shot head (§0.1: class embeddings × exp(s), no bias) for FT and
//! L2-SP, or from the linear probe (with its bias) for LP-FT. The text tower is not used.
//! Each takes function-space regularisation (`[fsr]`, [`super::fsr`]) as an objective term;
//! L2-SP is FT with the `l2sp` constraint (`crate::constraints::l2sp`).

use candle_core::{Tensor, Var};

use super::fsr::FsrSection;
use super::linear_probe::LpSection;
use super::registry::{Context, Method, MethodEntry, Prepared};
use crate::clip::ClipModel;
use crate::error::Result;
use crate::eval::predictor::Head;
use crate::losses::cross_entropy;
use crate::sections::Sections;
use crate::train::supervised::{Objective, Tower, TrainBatch};

/// A trainable copy of a [`Head`].
pub struct TrainableHead {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl TrainableHead {
    pub fn new(head: &Head) -> Result<Self> {
        let var = |t: &Tensor| -> Result<Var> { Ok(Var::from_tensor(&t.detach().copy()?)?) };
        Ok(Self { weight: var(&head.weight)?, bias: head.bias.as_ref().map(var).transpose()? })
    }

    /// The current values as a head (the variables themselves: logits keep their graph).
    pub fn head(&self) -> Head {
        Head {
            weight: self.weight.as_tensor().clone(),
            bias: self.bias.as_ref().map(|b| b.as_tensor().clone()),
        }
    }

    /// `features` `[n, embed_dim]` -> `[n, classes]`, with a graph back to the head.
    pub fn logits(&self, features: &Tensor) -> Result<Tensor> {
        self.head().logits(features)
    }
}

/// CE through a trainable head; trains the image tower and the head.
pub struct CrossEntropy {
    pub head: TrainableHead,
}

impl CrossEntropy {
    /// The mean CE of image `features` `[n, embed_dim]` against class indices `labels`.
    pub fn loss_from_features(&self, features: &Tensor, labels: &Tensor) -> Result<Tensor> {
        Ok(cross_entropy(&self.head.logits(features)?, labels)?)
    }
}

impl Objective for CrossEntropy {
    fn trains(&self, name: &str) -> bool {
        Tower::of(name) == Tower::Image
    }

    fn extra_params(&self) -> Vec<(String, Var, bool)> {
        let mut params = vec![("head.weight".to_string(), self.head.weight.clone(), true)];
        if let Some(bias) = &self.head.bias {
            params.push(("head.bias".to_string(), bias.clone(), false));
        }
        params
    }

    fn loss(&self, model: &ClipModel, batch: &TrainBatch) -> Result<Tensor> {
        self.loss_from_features(&model.encode_image(&batch.images)?, &batch.labels)
    }
}

/// The registry's entry: `[method] name = "ft"`, with `[fsr]`.
pub const FT: MethodEntry = MethodEntry { name: "ft", sections: &[], read: read_ft };

/// The registry's entry: `[method] name = "lp_ft"`, with `[lp]` and `[fsr]`.
pub const LP_FT: MethodEntry =
    MethodEntry { name: "lp_ft", sections: &[super::linear_probe::SECTION], read: read_lp_ft };

/// The registry's entry: `[method] name = "l2sp"` (FT with the `l2sp` constraint), with `[fsr]`.
pub const L2SP: MethodEntry = MethodEntry { name: "l2sp", sections: &[], read: read_l2sp };

/// Where a CE method's head starts.
enum HeadStart {
    /// The zero-shot head (FT, L2-SP).
    ZeroShot,
    /// The linear probe (LP-FT).
    LinearProbe(LpSection),
}

/// FT, LP-FT or L2-SP, with function-space regularisation when `[fsr]` turns it on.
struct FineTune {
    name: &'static str,
    start: HeadStart,
    fsr: Option<FsrSection>,
}

fn read_ft(sections: &mut Sections) -> std::result::Result<Box<dyn Method>, String> {
    Ok(Box::new(FineTune { name: FT.name, start: HeadStart::ZeroShot, fsr: FsrSection::read(sections)? }))
}

fn read_lp_ft(sections: &mut Sections) -> std::result::Result<Box<dyn Method>, String> {
    let start = HeadStart::LinearProbe(LpSection::read(sections)?);
    Ok(Box::new(FineTune { name: LP_FT.name, start, fsr: FsrSection::read(sections)? }))
}

fn read_l2sp(sections: &mut Sections) -> std::result::Result<Box<dyn Method>, String> {
    Ok(Box::new(FineTune { name: L2SP.name, start: HeadStart::ZeroShot, fsr: FsrSection::read(sections)? }))
}

impl Method for FineTune {
    fn name(&self) -> &'static str {
        self.name
    }

    fn terms(&self) -> Vec<&'static str> {
        self.fsr.iter().map(|_| super::fsr::TERM.section).collect()
    }

    fn validation_user(&self) -> Option<&'static str> {
        matches!(self.start, HeadStart::LinearProbe(_)).then_some("the linear probe")
    }

    fn fine_tunes_a_head(&self) -> bool {
        true
    }

    fn implied_constraint(&self) -> Option<&'static str> {
        (self.name == L2SP.name).then_some("l2sp")
    }

    fn prepare(&self, context: &mut Context<'_>) -> Result<Prepared> {
        let head = match &self.start {
            HeadStart::ZeroShot => context.zero_shot.clone(),
            HeadStart::LinearProbe(lp) => lp.fit_head(context)?,
        };
        let objective = CrossEntropy { head: TrainableHead::new(&head)? };
        let objective = match &self.fsr {
            Some(fsr) => fsr.wrap(objective, context)?,
            None => Box::new(objective),
        };
        Ok(Prepared::Train { objective, outcome: None, diagnostics: Vec::new() })
    }
}
