//! Zero-shot classification (methods.md §0.1, §2.1): the pre-trained model with the head of
//! its default prompts (class embeddings averaged over the templates, × exp(s)); nothing is
//! trained, so there is no WiSE-FT curve.

use super::registry::{Context, Method, MethodEntry, Outcome, Prepared};
use crate::error::Result;
use crate::sections::Sections;

/// The registry's entry: `[method] name = "zeroshot"`.
pub const ENTRY: MethodEntry = MethodEntry { name: "zeroshot", sections: &[], read };

struct ZeroShot;

fn read(_: &mut Sections) -> std::result::Result<Box<dyn Method>, String> {
    Ok(Box::new(ZeroShot))
}

impl Method for ZeroShot {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn trains(&self) -> bool {
        false
    }

    fn interpolates(&self) -> bool {
        false
    }

    fn prepare(&self, context: &mut Context<'_>) -> Result<Prepared> {
        Ok(Prepared::Fitted(Outcome::Head(context.zero_shot.clone())))
    }
}
