//! Training machinery shared by every method: the learning-rate schedule, run directories
//! with atomic checkpoints, the resumable trainer state, contrastive pretraining, the
//! supervised fine-tuning loop and its update protocols ([`trainable`]), its image sources
//! and their frozen features ([`encode`]), and WiSE-FT.

pub mod contrastive;
pub mod encode;
pub mod images;
pub mod run_dir;
pub mod schedule;
pub mod state;
pub mod supervised;
pub mod trainable;
pub mod wiseft;

pub use schedule::CosineSchedule;
pub use state::TrainerState;
