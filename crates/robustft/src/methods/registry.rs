//! The method registry (docs/design.md, "Adding a method"): plain tables mapping the names a
//! recipe uses to the modules that own them — [`METHODS`] (`[method] name`: an objective and how
//! the trained model predicts), [`TERMS`] (objective terms a method may take: `[fsr]`,
//! `[m2mix]`), [`PREDICTORS`] (`eval.predictor`) and `crate::constraints::CONSTRAINTS`
//! (`[constraint] name`). Each owner reads its own recipe section (`crate::sections`), checks
//! it and builds what a run needs from it; [`MethodPlan`] is a recipe's choice of all four, and
//! [`crate::experiment`] runs any plan without naming a method.

use candle_core::Tensor;

use super::adversarial::{AdversarialPlan, AdversarialSection};
use crate::clip::ClipModel;
use crate::constraints::{self, ConstraintSpec, RecipeContext};
use crate::error::Result;
use crate::eval::predictor::{Head, ImagePredictor, Predictor};
use crate::sections::{find_entry, Sections};
use crate::train::supervised::{Objective, TrainSource};

/// What a method starts from, handed to [`Method::prepare`].
pub struct Context<'a> {
    /// The model being fine-tuned (pre-trained weights at this point).
    pub model: &'a ClipModel,
    /// Default prompts of each class.
    pub prompts: &'a [Vec<String>],
    /// Concept descriptions of each class, when the recipe names them.
    pub descriptions: Option<&'a [Vec<String>]>,
    /// The zero-shot head of the default prompts.
    pub zero_shot: &'a Head,
    /// The pre-trained values of the model's parameters.
    pub pretrained: &'a [(String, Tensor)],
    pub train: &'a dyn TrainSource,
    pub seed: u64,
    /// Frozen, L2-normalised image features (`[n, d]`, flat) and labels of a split, cached.
    pub features: &'a dyn Fn(SplitRole) -> Result<(Vec<f32>, Vec<u32>)>,
    /// Reports a stage of the work.
    pub stage: &'a mut dyn FnMut(String),
}

/// Which of the run's splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitRole {
    Train,
    Validation,
}

/// How a method's model predicts.
#[derive(Clone)]
pub enum Outcome {
    /// A head over image features (zero-shot, a linear probe, or a head trained with CE).
    Head(Head),
    /// The default-prompt head rebuilt from the current text tower.
    Rebuilt,
    /// `β · softmax(z_default) + (1 − β) · softmax(z_descriptions)`, both heads rebuilt from
    /// the current text tower.
    Mixture { beta: f64 },
}

impl Outcome {
    /// The outcome of the WiSE-FT point `alpha` between the zero-shot head and this one (rebuilt
    /// heads follow the interpolated towers).
    pub fn interpolated(&self, zero_shot: &Head, alpha: f64) -> Result<Outcome> {
        Ok(match self {
            Outcome::Head(head) => Outcome::Head(zero_shot.lerp(head, alpha)?),
            rebuilt => rebuilt.clone(),
        })
    }
}

/// What [`Method::prepare`] gives back.
pub enum Prepared {
    /// Nothing to train: how the pre-trained model predicts.
    Fitted(Outcome),
    /// Train `objective`; the trained model then predicts by `outcome`, or (`None`) through the
    /// head the objective trained (its `head.weight` and optional `head.bias`). `diagnostics`
    /// are numbers the method reports about its preparation (kept in every result row).
    Train { objective: Box<dyn Objective>, outcome: Option<Outcome>, diagnostics: Vec<(String, f64)> },
}

impl Prepared {
    /// How the model predicts once `objective` (this preparation's) is trained.
    pub fn trained_outcome(objective: &dyn Objective, outcome: &Option<Outcome>) -> Outcome {
        match outcome {
            Some(outcome) => outcome.clone(),
            None => Outcome::Head(trained_head(objective)),
        }
    }
}

/// The head a head-training objective trained (its `head.weight` and optional `head.bias`).
fn trained_head(objective: &dyn Objective) -> Head {
    let params = objective.extra_params();
    let find = |name: &str| params.iter().find(|(n, _, _)| n == name).map(|(_, v, _)| v.as_tensor().clone());
    Head { weight: find("head.weight").expect("the objective trains a head"), bias: find("head.bias") }
}

/// A method as its recipe sections configure it.
pub trait Method {
    /// The name a recipe gives in `[method] name` (and result rows start with).
    fn name(&self) -> &'static str;

    /// Objective terms that change the method, in the order result rows name them (`fsr`,
    /// `m2mix`).
    fn terms(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// Whether it trains the model (zero-shot and the linear probe do not).
    fn trains(&self) -> bool {
        true
    }

    /// Whether WiSE-FT points of it are evaluated (not for zero-shot: nothing to interpolate).
    fn interpolates(&self) -> bool {
        true
    }

    /// Whether it needs concept descriptions (`data.descriptions`).
    fn uses_descriptions(&self) -> bool {
        false
    }

    /// What it needs the validation split for, when it does.
    fn validation_user(&self) -> Option<&'static str> {
        None
    }

    /// Whether it fine-tunes a head over image features (what VRF builds on).
    fn fine_tunes_a_head(&self) -> bool {
        false
    }

    /// The constraint it consists of (result rows do not repeat it).
    fn implied_constraint(&self) -> Option<&'static str> {
        None
    }

    /// Recipe keys that change only how the trained model predicts (`drm.beta`): a sweep
    /// evaluates their values on one trained model instead of training it again.
    fn inference_keys(&self) -> &'static [&'static str] {
        &[]
    }

    /// How a trained model of this method predicts under this recipe, given how its run
    /// saved it: the recipe's inference settings replace the saved ones.
    fn outcome_at_inference(&self, saved: Outcome) -> Outcome {
        saved
    }

    /// Builds the objective, or fits the method outright.
    fn prepare(&self, context: &mut Context<'_>) -> Result<Prepared>;
}

/// Reads and checks a method's sections.
pub type ReadMethod = fn(&mut Sections) -> std::result::Result<Box<dyn Method>, String>;

/// One registered method.
pub struct MethodEntry {
    /// `[method] name`.
    pub name: &'static str,
    /// The sections it owns (besides the terms it may take).
    pub sections: &'static [&'static str],
    pub read: ReadMethod,
}

/// Every method a recipe can name.
pub const METHODS: &[MethodEntry] = &[
    super::zeroshot::ENTRY,
    super::linear_probe::ENTRY,
    super::ce::FT,
    super::ce::LP_FT,
    super::flyp::ENTRY,
    super::ce::L2SP,
    super::drm::ENTRY,
];

/// An objective term: a section a method may take. A method reads the terms it supports; a
/// term set on another method is refused by `refuse`, given that method's name (a term left at
/// its neutral defaults is no error).
pub struct TermEntry {
    pub section: &'static str,
    pub refuse: fn(&Sections, &str) -> std::result::Result<(), String>,
}

/// Every objective term.
pub const TERMS: &[TermEntry] = &[super::fsr::TERM, super::m2mix::TERM];

/// How evaluation predicts, as `eval.predictor` chooses it.
pub trait PredictorSpec {
    /// The suffix result rows name it by (`vrf`), if any.
    fn label(&self) -> Option<&'static str> {
        None
    }

    /// What it needs the validation split for, when it does.
    fn validation_user(&self) -> Option<&'static str> {
        None
    }

    /// Recipe keys that change only how it predicts (`vrf.a`): a sweep evaluates their values
    /// on one trained model instead of training it again.
    fn inference_keys(&self) -> &'static [&'static str] {
        &[]
    }

    /// Work done once per run, after training and before evaluation.
    fn prepare<'a>(
        &'a self,
        context: &PredictorContext<'a>,
        stage: &mut dyn FnMut(String),
    ) -> Result<Box<dyn ModelPredictors + 'a>>;
}

/// What a predictor starts from.
pub struct PredictorContext<'a> {
    pub model: &'a ClipModel,
    pub pretrained: &'a [(String, Tensor)],
    pub zero_shot: &'a Head,
    pub train: &'a dyn TrainSource,
    pub val: Option<&'a dyn TrainSource>,
}

/// The predictor of each evaluated model (the trained one and every WiSE-FT point).
pub trait ModelPredictors {
    /// How `model` predicts; `own` is its method's own predictor.
    fn predictor<'b>(
        &'b self,
        model: &ClipModel,
        outcome: &Outcome,
        own: Predictor,
        stage: &mut dyn FnMut(String),
    ) -> Result<Box<dyn ImagePredictor + 'b>>;
}

/// Reads and checks a predictor's section, for the run's method.
pub type ReadPredictor =
    fn(&mut Sections, &dyn Method) -> std::result::Result<Box<dyn PredictorSpec>, String>;

/// One registered predictor.
pub struct PredictorEntry {
    /// `eval.predictor`.
    pub name: &'static str,
    pub sections: &'static [&'static str],
    pub read: ReadPredictor,
}

/// Every predictor a recipe can name.
pub const PREDICTORS: &[PredictorEntry] =
    &[PredictorEntry { name: "method", sections: &[], read: read_own }, super::vrf::PREDICTOR];

/// The method's own predictor.
struct Own;

fn read_own(_: &mut Sections, _: &dyn Method) -> std::result::Result<Box<dyn PredictorSpec>, String> {
    Ok(Box::new(Own))
}

impl PredictorSpec for Own {
    fn prepare<'a>(
        &'a self,
        _: &PredictorContext<'a>,
        _: &mut dyn FnMut(String),
    ) -> Result<Box<dyn ModelPredictors + 'a>> {
        Ok(Box::new(Own))
    }
}

impl ModelPredictors for Own {
    fn predictor<'b>(
        &'b self,
        _: &ClipModel,
        _: &Outcome,
        own: Predictor,
        _: &mut dyn FnMut(String),
    ) -> Result<Box<dyn ImagePredictor + 'b>> {
        Ok(Box::new(own))
    }
}

/// What the method sections' checks may need from the rest of the recipe.
pub struct Shared<'a> {
    /// `[method] name`.
    pub method: &'a str,
    /// `eval.predictor`.
    pub predictor: &'a str,
    /// `train.weight_decay`.
    pub weight_decay: f64,
    /// `train.epochs`.
    pub epochs: usize,
}

/// A recipe's method, constraint and predictor, read from its sections.
pub struct MethodPlan {
    pub method: Box<dyn Method>,
    /// `[constraint] name`.
    pub constraint_name: &'static str,
    pub constraint: Box<dyn ConstraintSpec>,
    pub predictor: Box<dyn PredictorSpec>,
    /// `[adversarial]`, when it chooses a loss.
    pub adversarial: Option<AdversarialPlan>,
    /// The sections as read, defaults filled in.
    pub sections: toml::Table,
}

impl MethodPlan {
    /// Reads the recipe's sections `raw` for its `shared` choices; errors name the key.
    pub fn read(raw: &toml::Table, shared: &Shared) -> std::result::Result<Self, String> {
        let mut sections = Sections::new(raw.clone());
        let context = RecipeContext { weight_decay: shared.weight_decay };
        let (constraint_name, constraint) = constraints::read(&mut sections, &context)?;
        let entry = find_entry(METHODS, |e| e.name, shared.method, "method.name")?;
        let method = (entry.read)(&mut sections)?;
        let predictor_entry = find_entry(PREDICTORS, |e| e.name, shared.predictor, "eval.predictor")?;
        let predictor = (predictor_entry.read)(&mut sections, method.as_ref())?;
        let adversarial = AdversarialSection::read(&mut sections, method.name(), method.trains())?;
        check_unread(&sections, method.name())?;
        if shared.epochs == 0 && method.trains() {
            return Err("train.epochs must be at least 1".into());
        }
        if let Some(implied) = method.implied_constraint().filter(|c| *c != constraint_name) {
            return Err(format!(
                "method {} needs constraint.name = \"{implied}\" (and its settings, e.g. constraint.lambda > 0)",
                method.name()
            ));
        }
        let sections = sections.resolved().clone();
        Ok(Self { method, constraint_name, constraint, predictor, adversarial, sections })
    }

    /// Every recipe key of the plan that changes only how the trained model predicts.
    pub fn inference_keys(&self) -> Vec<&'static str> {
        [self.method.inference_keys(), self.predictor.inference_keys()].concat()
    }

    /// The method as result rows name it: the method, its objective terms and predictor
    /// (`ft+fsr`, `flyp+m2mix`, `ft+vrf`), and its constraint when it has one beyond what the
    /// method implies (`flyp+ftp`, `drm+spd`; a method that trains nothing has nothing to
    /// constrain).
    pub fn label(&self) -> String {
        let mut parts = vec![self.method.name()];
        parts.extend(self.method.terms());
        parts.extend(self.adversarial.as_ref().map(AdversarialPlan::label));
        parts.extend(self.predictor.label());
        let constraint = self.constraint_name;
        let implied = self.method.implied_constraint() == Some(constraint);
        if constraint != "none" && self.method.trains() && !implied {
            parts.push(constraint);
        }
        parts.join("+")
    }
}

/// Refuses an objective term set on a method that did not take it, and any section no
/// component owns.
fn check_unread(sections: &Sections, method: &str) -> std::result::Result<(), String> {
    let owned = |name: &str| {
        name == constraints::SECTION
            || METHODS.iter().any(|e| e.sections.contains(&name))
            || PREDICTORS.iter().any(|e| e.sections.contains(&name))
    };
    for name in sections.names().filter(|name| !sections.was_read(name)) {
        match TERMS.iter().find(|term| term.section == name) {
            Some(term) => (term.refuse)(sections, method)?,
            None if owned(name) => {}
            None => return Err(format!("`{name}` is not a recipe key or section")),
        }
    }
    Ok(())
}
