//! Allocator tuning for tensor workloads. Every candle op allocates a fresh output buffer
//! and frees its inputs soon after, many megabytes per op. glibc's `malloc` serves such
//! blocks with `mmap` and returns them to the kernel on `free` (its mmap threshold, 128 KiB
//! at start), so each op pays page faults and page zeroing for memory the step before had
//! just released: about a fifth of a ViT-B/32 training step in the profile (BENCHMARKS.md),
//! and half of the tiny model's. [`keep_freed_memory`] raises the mmap threshold to glibc's
//! maximum (32 MiB on 64-bit) and the trim threshold far above it, so freed blocks stay in the
//! heap and are reused (mallopt(3): `M_MMAP_THRESHOLD`, `M_TRIM_THRESHOLD`). Blocks above
//! that threshold are still mapped afresh by glibc; [`LargeBlockCache`] keeps a few of them
//! for reuse, as the process's cache behind [`CachedSystem`], the CLI's global allocator.

use std::alloc::{GlobalAlloc, Layout};

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

/// Most freed large blocks [`LargeBlockCache`] keeps.
const CACHED_BLOCKS: usize = 64;

/// Most bytes of freed large blocks [`LargeBlockCache`] keeps.
const CACHED_BYTES: usize = 2 << 30;

/// A global allocator over the system's that keeps freed blocks of at least
/// [`LARGEST_REUSED_BLOCK_BYTES`] (which glibc maps afresh and unmaps on free, whatever
/// [`keep_freed_memory`] sets) and hands them out again, so a model whose activations are
/// that large (ViT-B/16 training; ViT-B/32's MLP at batch 64) stops paying page faults and
/// page zeroing for them at every layer of every step.
///
/// A request of that size takes the smallest kept block that holds it and is at most
/// `1.5 ×` its size (so a reused block adds at most half the request to what is resident);
/// one that no kept block fits is mapped afresh. At most [`CACHED_BLOCKS`] blocks and
/// [`CACHED_BYTES`] bytes are kept, and kept blocks stay resident until reused, so the peak
/// resident memory can grow by what is kept at the peak: ViT-B/16 bf16 training at batch 32
/// peaked 0–6% higher, and ran 24–27% faster (BENCHMARKS.md). Blocks aligned to more than
/// 16 bytes and smaller ones go straight to the system allocator. [`CachedSystem`] is the
/// process's instance as a global allocator; an instance that is dropped returns its kept
/// blocks.
pub struct LargeBlockCache {
    kept: std::sync::Mutex<KeptBlocks>,
}

/// Freed large blocks: start addresses and usable sizes.
struct KeptBlocks {
    blocks: [(usize, usize); CACHED_BLOCKS],
    count: usize,
}

impl KeptBlocks {
    fn bytes(&self) -> usize {
        self.blocks[..self.count].iter().map(|&(_, size)| size).sum()
    }

    /// Takes the smallest kept block of `size` to `1.5 · size` bytes.
    fn take_fitting(&mut self, size: usize) -> Option<(usize, usize)> {
        let fits = |&(_, kept): &(usize, usize)| kept >= size && kept <= size + size / 2;
        let (index, _) = self.blocks[..self.count]
            .iter()
            .enumerate()
            .filter(|(_, block)| fits(block))
            .min_by_key(|(_, b)| b.1)?;
        let block = self.blocks[index];
        self.count -= 1;
        self.blocks[index] = self.blocks[self.count];
        Some(block)
    }

    /// Keeps a block if there is room in count and bytes.
    fn keep(&mut self, block: (usize, usize)) -> bool {
        if self.count == CACHED_BLOCKS || self.bytes() + block.1 > CACHED_BYTES {
            return false;
        }
        self.blocks[self.count] = block;
        self.count += 1;
        true
    }

    /// Empties the list, returning the blocks it held.
    fn drain(&mut self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let blocks = self.blocks;
        let count = std::mem::take(&mut self.count);
        blocks.into_iter().take(count)
    }
}

impl LargeBlockCache {
    pub const fn new() -> Self {
        Self { kept: std::sync::Mutex::new(KeptBlocks { blocks: [(0, 0); CACHED_BLOCKS], count: 0 }) }
    }

    /// Bytes of freed blocks kept for reuse.
    pub fn kept_bytes(&self) -> usize {
        self.kept().bytes()
    }

    /// Returns every kept block to the system.
    fn release(&self) {
        let blocks: Vec<(usize, usize)> = self.kept().drain().collect();
        for (address, size) in blocks {
            // SAFETY: a kept block was allocated by the system allocator with this size
            // (its usable size, which `free` ignores) and alignment 16, and is no longer in use.
            unsafe { std::alloc::System.dealloc(address as *mut u8, cached_layout(size)) };
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, KeptBlocks> {
        // Nothing panics while the lock is held; a poisoned list is still consistent.
        self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A kept block for `layout` when it is large and one fits, or `None`.
    fn reuse(&self, layout: Layout) -> Option<*mut u8> {
        if !is_cached(layout) {
            return None;
        }
        self.kept().take_fitting(layout.size()).map(|(address, _)| address as *mut u8)
    }
}

/// The process's large-block cache, which [`CachedSystem`] serves allocations through.
static LARGE_BLOCKS: LargeBlockCache = LargeBlockCache::new();

/// The system allocator with the process's [`LargeBlockCache`] in front: install it with
/// `#[global_allocator]` (the CLI does), so that [`release_kept_blocks`] reaches its blocks.
pub struct CachedSystem;

// SAFETY: every call goes to the process's `LargeBlockCache`, whose own implementation holds
// `GlobalAlloc`'s contract.
unsafe impl GlobalAlloc for CachedSystem {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { LARGE_BLOCKS.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { LARGE_BLOCKS.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on; every block came from `LARGE_BLOCKS`.
        unsafe { LARGE_BLOCKS.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on; every block came from `LARGE_BLOCKS`.
        unsafe { LARGE_BLOCKS.realloc(ptr, layout, new_size) }
    }
}

/// Returns the blocks the process's cache keeps to the system, after a phase whose freed
/// blocks later requests will not fit: a model's construction, which copies each parameter
/// into a variable and frees the first buffer (ViT-B/32's 96 MiB token embedding among them).
/// Does nothing unless [`CachedSystem`] is the global allocator.
pub fn release_kept_blocks() {
    LARGE_BLOCKS.release();
}

impl Default for LargeBlockCache {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for LargeBlockCache {
    fn drop(&mut self) {
        self.release();
    }
}

/// Whether a block of this layout goes through the cache.
fn is_cached(layout: Layout) -> bool {
    cfg!(all(target_os = "linux", target_env = "gnu"))
        && layout.size() >= LARGEST_REUSED_BLOCK_BYTES
        && layout.align() <= MALLOC_ALIGNMENT
}

/// The alignment of every block glibc's `malloc` returns on 64-bit targets.
const MALLOC_ALIGNMENT: usize = 16;

fn cached_layout(size: usize) -> Layout {
    Layout::from_size_align(size, MALLOC_ALIGNMENT).expect("a kept block's size is a valid layout")
}

// SAFETY: every block comes from the system allocator, which `GlobalAlloc`'s contract holds
// for; a kept block is handed out to one request at a time (under the lock) and is at least
// as large as the request, with the alignment of every `malloc` block.
unsafe impl GlobalAlloc for LargeBlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout has a non-zero size (`GlobalAlloc::alloc`'s contract).
        self.reuse(layout).unwrap_or_else(|| unsafe { std::alloc::System.alloc(layout) })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.reuse(layout) {
            Some(block) => {
                // SAFETY: the block holds at least `layout.size()` bytes and is ours alone.
                unsafe { block.write_bytes(0, layout.size()) };
                block
            }
            // SAFETY: as in `alloc`.
            None => unsafe { std::alloc::System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_cached(layout) {
            // SAFETY: `ptr` is a live block of the system's `malloc` (`is_cached` holds only on
            // glibc, for alignments `malloc` serves itself).
            let usable = unsafe { usable_size(ptr) };
            if self.kept().keep((ptr as usize, usable)) {
                return;
            }
        }
        // SAFETY: the caller's block came from `alloc`, that is from the system allocator.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: every block is a system allocator block of at least `layout.size()` bytes;
        // glibc's `realloc` knows its true size.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

/// The usable size of a block of glibc's `malloc`.
///
/// # Safety
/// `ptr` must be a live block of glibc's `malloc`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe fn usable_size(ptr: *mut u8) -> usize {
    // SAFETY: the caller's contract.
    unsafe { libc::malloc_usable_size(ptr.cast()) }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
unsafe fn usable_size(_ptr: *mut u8) -> usize {
    unreachable!("blocks are kept only on glibc")
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::{LargeBlockCache, CACHED_BYTES, LARGEST_REUSED_BLOCK_BYTES};

    const LARGE: usize = LARGEST_REUSED_BLOCK_BYTES;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    /// Allocates `size` bytes and fills them with `byte`.
    fn filled(cache: &LargeBlockCache, size: usize, byte: u8) -> *mut u8 {
        // SAFETY: a non-zero size.
        let block = unsafe { cache.alloc(layout(size)) };
        assert!(!block.is_null());
        // SAFETY: the block holds `size` bytes.
        unsafe { block.write_bytes(byte, size) };
        block
    }

    fn free(cache: &LargeBlockCache, block: *mut u8, size: usize) {
        // SAFETY: `block` came from `cache.alloc(layout(size))`.
        unsafe { cache.dealloc(block, layout(size)) };
    }

    #[test]
    fn a_freed_large_block_serves_the_next_request_it_fits() {
        let cache = LargeBlockCache::new();
        let first = filled(&cache, LARGE + 4096, 1);
        free(&cache, first, LARGE + 4096);
        assert!(cache.kept_bytes() >= LARGE + 4096);
        let second = filled(&cache, LARGE, 2);
        assert_eq!(second, first, "the kept block is reused");
        assert_eq!(cache.kept_bytes(), 0);
        free(&cache, second, LARGE);
    }

    #[test]
    fn blocks_too_small_or_far_too_large_are_not_handed_out() {
        let cache = LargeBlockCache::new();
        let block = filled(&cache, 3 * LARGE, 1);
        free(&cache, block, 3 * LARGE);
        let kept = cache.kept_bytes();
        assert!(kept >= 3 * LARGE);
        // Twice a request is more than 1.5 times it.
        let smaller = filled(&cache, 3 * LARGE / 2, 2);
        assert_ne!(smaller, block);
        assert_eq!(cache.kept_bytes(), kept, "the kept block stays kept");
        let larger = filled(&cache, 4 * LARGE, 3);
        assert_ne!(larger, block);
        assert_eq!(cache.kept_bytes(), kept);
        free(&cache, smaller, 3 * LARGE / 2);
        free(&cache, larger, 4 * LARGE);
    }

    #[test]
    fn a_zeroed_request_gets_zeros_from_a_reused_block() {
        let cache = LargeBlockCache::new();
        let block = filled(&cache, LARGE, 0xab);
        free(&cache, block, LARGE);
        // SAFETY: a non-zero size.
        let zeroed = unsafe { cache.alloc_zeroed(layout(LARGE)) };
        assert_eq!(zeroed, block, "the kept block is reused");
        // SAFETY: the block holds `LARGE` bytes, all written.
        let bytes = unsafe { std::slice::from_raw_parts(zeroed, LARGE) };
        assert!(bytes.iter().all(|&b| b == 0));
        free(&cache, zeroed, LARGE);
    }

    #[test]
    fn small_and_overaligned_blocks_are_not_kept_and_kept_bytes_are_bounded() {
        let cache = LargeBlockCache::new();
        let small = filled(&cache, LARGE - 1, 1);
        free(&cache, small, LARGE - 1);
        let aligned = Layout::from_size_align(LARGE, 4096).unwrap();
        // SAFETY: a non-zero size.
        let block = unsafe { cache.alloc(aligned) };
        // SAFETY: from `cache.alloc(aligned)`.
        unsafe { cache.dealloc(block, aligned) };
        assert_eq!(cache.kept_bytes(), 0);
        // Five blocks (left untouched, so never resident) of which four fit in the bound.
        let size = CACHED_BYTES / 4 - (1 << 20);
        // SAFETY: a non-zero size.
        let blocks: Vec<*mut u8> = (0..5).map(|_| unsafe { cache.alloc(layout(size)) }).collect();
        for block in blocks {
            free(&cache, block, size);
        }
        let kept = cache.kept_bytes();
        assert!(kept <= CACHED_BYTES && kept >= 4 * size && kept < 5 * size, "{kept} bytes kept");
    }

    /// Blocks freed through the process's allocator are kept until the caller releases them.
    #[test]
    fn released_blocks_leave_the_process_cache() {
        let cached = super::CachedSystem;
        // SAFETY: a non-zero size.
        let block = unsafe { cached.alloc(layout(LARGE)) };
        // SAFETY: from `cached.alloc(layout(LARGE))`.
        unsafe { cached.dealloc(block, layout(LARGE)) };
        assert!(super::LARGE_BLOCKS.kept_bytes() >= LARGE);
        super::release_kept_blocks();
        assert_eq!(super::LARGE_BLOCKS.kept_bytes(), 0);
    }

    #[test]
    fn reallocation_keeps_the_contents() {
        let cache = LargeBlockCache::new();
        let block = filled(&cache, LARGE, 7);
        // SAFETY: `block` came from `cache.alloc(layout(LARGE))`; a non-zero new size.
        let grown = unsafe { cache.realloc(block, layout(LARGE), 2 * LARGE) };
        // SAFETY: the first `LARGE` bytes were copied.
        assert!(unsafe { std::slice::from_raw_parts(grown, LARGE) }.iter().all(|&b| b == 7));
        free(&cache, grown, 2 * LARGE);
    }
}
