//! Training machinery shared by every method: the learning-rate schedule, gradient clipping
//! and the resumable trainer state.

pub mod contrastive;
pub mod finetune;
pub mod schedule;
pub mod state;
pub mod wiseft;

pub use schedule::CosineSchedule;
pub use state::TrainerState;
