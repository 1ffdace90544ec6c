//! The robust fine-tuning methods: the baselines and variants that adapt a zero-shot CLIP
//! model to a target distribution while keeping its robustness. So far the linear probe
//! (logistic regression on frozen image features, the LP of the WiSE-FT / LP-FT / FLYP
//! comparisons).

pub mod linear_probe;
