//! Training machinery shared by every method: the learning-rate schedule, run directories
//! with atomic checkpoints, the resumable trainer state, contrastive pretraining, the
//! supervised fine-tuning loop and its image sources, and WiSE-FT.

pub mod contrastive;
pub mod images;
pub mod run_dir;
pub mod schedule;
pub mod state;
pub mod supervised;
pub mod wiseft;

pub use schedule::CosineSchedule;
pub use state::TrainerState;
