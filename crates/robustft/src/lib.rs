//! robustft: robust fine-tuning of zero-shot vision-language models (CLIP and its kin).
//!
//! The library holds everything testable; the `robustft` binary is a thin layer over it.
//! See `docs/design.md` for the architecture.

pub mod allocator;
pub mod bench;
pub mod clip;
pub mod constraints;
pub mod data;
pub mod demo;
pub mod device;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod files;
pub mod kernels;
pub mod losses;
pub mod methods;
pub mod optim;
pub mod perturb;
pub mod pretrain;
pub mod prompts;
pub mod recipe;
pub mod rng;
pub mod sections;
pub mod shiftworld;
pub mod sweep;
pub mod threads;
pub mod train;
pub mod zeroshot;

pub use error::{Error, Result};
