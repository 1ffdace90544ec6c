//! Allocator tuning for tensor workloads. Every candle op allocates a fresh output buffer
//! and frees its inputs soon after, many megabytes per op. glibc's `malloc` serves such
//! blocks with `mmap` and returns them to the kernel on `free` (its mmap threshold, 128 KiB
//! at start), so each op pays page faults and page zeroing for memory the step before had
//! just released: about a fifth of a ViT-B/32 training step in the profile (BENCHMARKS.md),
//! and half of the tiny model's. [`keep_freed_memory`] raises the mmap threshold to glibc's
//! maximum (32 MiB on 64-bit) and the trim threshold far above it, so freed blocks stay in the
//! heap and are reused (mallopt(3): `M_MMAP_THRESHOLD`, `M_TRIM_THRESHOLD`).

/// The largest block [`keep_freed_memory`] makes glibc serve from freed memory: glibc's
/// largest accepted `M_MMAP_THRESHOLD` on 64-bit targets (`HEAP_MAX_SIZE / 2`). Larger blocks
/// are fresh mappings, page-faulted and zeroed on first touch.
pub const LARGEST_REUSED_BLOCK_BYTES: usize = 32 << 20;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = LARGEST_REUSED_BLOCK_BYTES as libc::c_int;
/// Free memory at the top of the heap kept instead of being returned to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD_BYTES: libc::c_int = 1 << 30;

/// Makes glibc keep freed tensor buffers for reuse instead of unmapping them. Call it once,
/// early in `main`, before the first tensor is allocated. Returns whether both settings
/// took; elsewhere than on glibc it does nothing and returns `false`.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's tuning parameters; it is thread-safe and
        // takes no pointers.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
