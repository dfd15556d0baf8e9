//! mimalloc as the global allocator of the `feedback` binary and the benchmarks, and its settings.

use std::alloc::{GlobalAlloc, Layout};

use libmimalloc_sys as mi;

/// mimalloc's option number of `purge_delay` (`mi_option_purge_delay` in `mimalloc.h`, the
/// same in its versions 2 and 3; libmimalloc-sys names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The memory settings of the `feedback` binary and the benchmarks, made first thing in `main`:
/// freed memory kept, transparent huge pages off (each can be overridden from the environment,
/// see below). An error is the kernel's refusal to turn huge pages off, for the caller to log
/// once logging is set up; the process runs on with them.
pub fn configure() -> std::io::Result<()> {
    keep_freed_memory();
    without_transparent_huge_pages(std::env::var_os("MIMALLOC_ALLOW_THP").is_some())
}

/// Keeps memory the process freed instead of returning it to the OS.
///
/// mimalloc returns memory that stayed free for a while to the OS ("purges" it) and faults it
/// back in when it is needed again, zeroing a 2 MiB huge page per fault. The processor frees
/// and grows its per-transaction buffers (state records, outputs waiting for a commit) over
/// and over: zeroing pages took a tenth of its loop thread, and keeping the memory made
/// `feedback run` 14% faster (docs/PERFORMANCE.md). The process then holds on to its peak
/// memory, which a processor that keeps every owned tenant in memory is close to anyway.
/// `MIMALLOC_PURGE_DELAY`, when set, still decides.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of the allocator's options; mimalloc reads them atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Turns transparent huge pages (THP) off for this process, unless `MIMALLOC_ALLOW_THP` is set
/// (`asked_by_env`).
///
/// mimalloc asks the kernel for huge pages on the memory it maps (`madvise(MADV_HUGEPAGE)`),
/// which Linux's default THP mode, `madvise`, grants: every first touch of the growing state
/// then faults in and zeroes a whole 2 MiB page. On the project's machine (a virtual machine)
/// that cost about twice the system time of 4 KiB pages for the same memory: `feedback fold`
/// of the 5.1-million-record history spent 11.0 s in the kernel with huge pages and 6.2 s
/// without, and took 18.3 s instead of 16.8 (means of seven alternations, docs/PERFORMANCE.md).
/// Databases that keep their state in memory (Redis, MongoDB) advise THP off for the same
/// reason. The setting is the kernel's per-process switch (`PR_SET_THP_DISABLE`), which
/// mimalloc itself turns for `MIMALLOC_ALLOW_THP=0` before `main` (its `madvise` calls then go
/// too; here they stay, and the kernel ignores them); `MIMALLOC_ALLOW_THP=1` keeps huge pages.
/// Children inherit the switch.
#[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
fn without_transparent_huge_pages(asked_by_env: bool) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if !asked_by_env {
        // SAFETY: prctl with integer arguments only; it sets a flag of this process.
        let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if done != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The alignment every block of `mi_malloc` has from this size on (`MI_MAX_ALIGN_SIZE`): it is
/// a `malloc`, aligned for any type of that size (smaller blocks, for their size).
const MALLOC_ALIGN: usize = 16;

/// mimalloc as the global allocator, asking for a plain block where a plain block is aligned
/// enough, as the standard library's `System` asks `malloc`.
///
/// The `mimalloc` crate's `MiMalloc` asks for every block with `mi_malloc_aligned`, even at an
/// alignment of 8. mimalloc 3 answers that from the free list of the block's size class when
/// that list has a block, and otherwise, for a size that is not a power of two, goes its slow
/// way and over-allocates from a larger class. So a size that is exactly a class but not a
/// power of two (48, 80, 96, 112, 160, 192, ... bytes) is padded (48 takes 64), and through the
/// slow path, for as long as nothing else makes a page of its class on the thread. Asking for
/// plain blocks took 5% off the instructions of taking the state records, and 1 to 2% off
/// `feedback fold`'s peak memory (docs/PERFORMANCE.md). Larger alignments, and blocks smaller
/// than their alignment, still go through the aligned calls.
pub struct MiMalloc;

fn plain(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc, aligned as its layout asks: `mi_malloc`,
// `mi_zalloc` and `mi_realloc` only where `plain` holds, that is where a block of at least
// `size` bytes is aligned to `align` (at least 16 from 16 bytes on, and a power of two of at
// most 16 no larger than the size otherwise); the aligned calls for the rest. `mi_free` frees
// either kind, and `mi_realloc` moves either kind.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's THP switch, read back: off after the call, left alone when the
    /// environment decides. It is set on first, as a parent that turned it off would have left
    /// it to this process.
    #[cfg(target_os = "linux")]
    #[test]
    fn transparent_huge_pages_are_turned_off_unless_the_environment_decides() {
        let thp_disabled = || {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) }
        };
        let allow = || {
            // SAFETY: as above; clears the flag.
            assert_eq!(
                unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0) },
                0
            );
            assert_eq!(thp_disabled(), 0);
        };
        allow();
        without_transparent_huge_pages(true).unwrap();
        assert_eq!(thp_disabled(), 0);
        without_transparent_huge_pages(false).unwrap();
        assert_eq!(thp_disabled(), 1);
        allow();
        without_transparent_huge_pages(false).unwrap();
        assert_eq!(thp_disabled(), 1);
    }

    #[test]
    fn blocks_are_aligned_as_asked_and_not_padded() {
        let a = MiMalloc;
        let sizes = [
            1usize,
            3,
            8,
            12,
            16,
            24,
            40,
            48,
            96,
            100,
            568,
            4000,
            70_000,
            3 << 20,
        ];
        for size in sizes {
            for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; each block is freed with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null() && p as usize % align == 0, "{size} {align}");
                    p.write_bytes(0xab, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert!(!q.is_null() && q as usize % align == 0, "{size} {align}");
                    assert_eq!(*q.add(size - 1), 0xab);
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert!(
                        z as usize % align == 0 && *z.add(size - 1) == 0,
                        "{size} {align}"
                    );
                    a.dealloc(z, layout);
                }
            }
        }
        // A block whose size is one of mimalloc's size classes but not a power of two is that
        // size: asked aligned, on a thread where no page of the class exists yet, mimalloc 3
        // over-allocates it from a larger class (48 bytes took 64, 80 took 96), and keeps
        // doing so while nothing else makes a page of the class.
        std::thread::spawn(|| {
            for size in [48usize, 80, 112, 160, 192, 224, 320] {
                let layout = Layout::from_size_align(size, 8).unwrap();
                // SAFETY: as above.
                unsafe {
                    let blocks: Vec<*mut u8> = (0..100).map(|_| MiMalloc.alloc(layout)).collect();
                    for &p in &blocks {
                        assert_eq!(mi::mi_usable_size(p.cast()), size);
                    }
                    for p in blocks {
                        MiMalloc.dealloc(p, layout);
                    }
                }
            }
        })
        .join()
        .unwrap();
    }
}
