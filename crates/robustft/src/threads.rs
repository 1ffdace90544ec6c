//! Thread layout for tensor workloads on few cores. candle runs large elementwise ops on a
//! barrier pool of its own (`CANDLE_NUM_THREADS` − 1 workers that spin before parking), gemm
//! and this crate's kernels on rayon's pool, and the caller's thread waits on both: three or
//! more busy threads on two cores, each stealing time from the ones doing the work.
//! [`run_on_one_pool`] keeps every busy thread in one rayon pool: the work itself runs on a
//! pool thread (so parallel gemm and kernel loops split it with the other pool threads instead
//! of waking a spinning caller), and candle's elementwise barrier pool is turned off
//! (`CANDLE_NUM_THREADS=1`, unless the variable is already set), leaving candle's elementwise
//! ops on the calling thread. On the bundled model's training step this is about 13% faster
//! (BENCHMARKS.md); results are unchanged, since no op splits a reduction by thread count.

use std::num::NonZeroUsize;

/// Runs `f` on a rayon pool of `threads` threads (`None`: rayon's default, `RAYON_NUM_THREADS`
/// or else every logical CPU), with candle's elementwise barrier pool off. Call it from `main`
/// before the first tensor op; if the pool cannot be built, `f` runs on the calling thread.
pub fn run_on_one_pool<R: Send>(threads: Option<NonZeroUsize>, f: impl FnOnce() -> R + Send) -> R {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let builder = rayon::ThreadPoolBuilder::new();
    let builder = match threads {
        Some(threads) => builder.num_threads(threads.get()),
        None => builder,
    };
    match builder.build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::run_on_one_pool;

    #[test]
    fn the_work_runs_on_a_pool_thread_with_candles_elementwise_pool_off() {
        assert_eq!(rayon::current_thread_index(), None);
        assert!(run_on_one_pool(None, || rayon::current_thread_index().is_some()));
        assert!(std::env::var_os("CANDLE_NUM_THREADS").is_some());
    }

    #[test]
    fn the_pool_has_the_threads_asked_for() {
        for threads in [1, 3] {
            let asked = std::num::NonZeroUsize::new(threads);
            assert_eq!(run_on_one_pool(asked, rayon::current_num_threads), threads);
        }
    }
}
