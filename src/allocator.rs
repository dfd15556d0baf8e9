//! Settings of mimalloc, the global allocator of the `feedback` binary and the benchmarks.

/// mimalloc's option number of `purge_delay` (`mi_option_purge_delay` in `mimalloc.h`, the
/// same in its versions 2 and 3; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps memory the process freed instead of returning it to the OS.
///
/// mimalloc returns memory that stayed free for a while to the OS ("purges" it) and faults it
/// back in when it is needed again, zeroing a 2 MiB huge page per fault. The processor frees
/// and grows its per-transaction buffers (state records, outputs waiting for a commit) over
/// and over: zeroing pages took a tenth of its loop thread, and keeping the memory made
/// `feedback run` 14% faster (docs/PERFORMANCE.md). The process then holds on to its peak
/// memory, which a processor that keeps every owned tenant in memory is close to anyway.
/// `MIMALLOC_PURGE_DELAY`, when set, still decides.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of the allocator's options; mimalloc reads them atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
