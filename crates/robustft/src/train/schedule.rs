//! Cosine learning-rate schedule with linear warm-up, as FLYP's `src/models/utils.py:
//! cosine_lr` (and WiSE-FT's): during warm-up `lr = base · (t + 1) / warmup`; afterwards
//! `lr = min + ½(1 + cos(π · e / E)) · (base − min)` with `e = t − warmup`, `E = total − warmup`.

/// A schedule over `total` optimiser steps, indexed from 0.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CosineSchedule {
    pub base_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl CosineSchedule {
    /// The learning rate of step `t`.
    pub fn lr(&self, t: u64) -> f64 {
        if t < self.warmup_steps {
            return self.base_lr * (t + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((t - self.warmup_steps) as f64 / decay_steps).min(1.0);
        self.min_lr + 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * (self.base_lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> CosineSchedule {
        CosineSchedule { base_lr: 1e-3, min_lr: 0.0, warmup_steps: 10, total_steps: 110 }
    }

    #[test]
    fn warmup_is_linear_from_the_first_step() {
        // FLYP: _warmup_lr(base_lr, warmup_length, step) = base_lr * (step + 1) / warmup_length
        assert!((schedule().lr(0) - 1e-4).abs() < 1e-15);
        assert!((schedule().lr(9) - 1e-3).abs() < 1e-15);
    }

    #[test]
    fn cosine_reaches_half_at_midpoint_and_min_at_the_end() {
        // e = 50 of es = 100: 0.5 * (1 + cos(pi/2)) * base = base / 2
        assert!((schedule().lr(60) - 5e-4).abs() < 1e-12);
        assert!(schedule().lr(110).abs() < 1e-15);
        assert!(schedule().lr(500).abs() < 1e-15, "clamped after the end");
    }
}
