//! Evaluation: the metrics reported for every ID and OOD split (docs/methods.md §4), clean and
//! under input perturbations, and the report of them.

pub mod benchmark;
pub mod dataset;
pub mod evaluate;
pub mod metrics;
pub mod predictor;
pub mod report;
pub mod robustness;
pub mod robustness_plot;
pub mod suite;
pub mod wiseft;
