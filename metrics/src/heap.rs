//! The process's live heap: bytes allocated and not yet freed, counted by the global allocator.
//!
//! The resident set says how much memory the process holds; the operators' state sizes say what
//! the windows need. The live heap sits between the two: RSS above it is the allocator's
//! (freed pages not yet returned, fragmentation), and heap above the state is held by something
//! other than the operators (buffers, checkpoints under way, serving). `pageflow bench --soak`
//! prints all three, and `/metrics` exports it as `pageflow_heap_bytes`.
//!
//! Counting costs one thread-local add per allocation: each thread keeps its own running total
//! and moves it to the shared counter once it has drifted by [`FLUSH_BYTES`], so threads do not
//! contend on one cache line. The figure is exact to within `FLUSH_BYTES` per thread.

#![allow(
    unsafe_code,
    reason = "implementing GlobalAlloc is unsafe; every call is forwarded unchanged"
)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, Ordering};

/// How far a thread's own count may drift before it is added to the shared one.
pub const FLUSH_BYTES: i64 = 256 * 1024;

/// Bytes allocated minus bytes freed, across threads (up to each thread's unflushed part).
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

thread_local! {
    // `const`: no lazy initialisation, so no allocation from inside the allocator.
    static UNFLUSHED: Cell<i64> = const { Cell::new(0) };
}

/// A global allocator that counts live bytes and leaves the work to `A`.
#[derive(Debug, Default)]
pub struct Counting<A>(pub A);

fn count(delta: i64) {
    // `try_with`: a thread being torn down has no thread-locals; its frees go straight in.
    let flushed = UNFLUSHED.try_with(|unflushed| {
        let total = unflushed.get() + delta;
        if total.abs() >= FLUSH_BYTES {
            LIVE_BYTES.fetch_add(total, Ordering::Relaxed);
            unflushed.set(0);
        } else {
            unflushed.set(total);
        }
    });
    if flushed.is_err() {
        LIVE_BYTES.fetch_add(delta, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `A` unchanged; counting only reads the layout.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `A`'s.
        let ptr = unsafe { self.0.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as i64);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `A`'s.
        let ptr = unsafe { self.0.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as i64);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is `A`'s.
        unsafe { self.0.dealloc(ptr, layout) };
        count(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is `A`'s.
        let moved = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        moved
    }
}

/// mimalloc's `mi_option_purge_delay` (v3's option enum; libmimalloc-sys 0.1.49 does not name
/// it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's `mi_option_arena_purge_mult`.
const MI_OPTION_ARENA_PURGE_MULT: libmimalloc_sys::mi_option_t = 24;

/// Has mimalloc give freed memory back to the system at once rather than after a delay.
///
/// The job frees in bursts (windows leaving, a checkpoint's copies encoded, a compaction's runs
/// merged); with the default delays mimalloc kept ~280 MiB more resident than the live heap in
/// the soak at 500 events/s (README, Memory), and ~125 MiB with these, for ~5 % of throughput.
/// Call it first in `main`, before the threads start. `MIMALLOC_PURGE_DELAY` and
/// `MIMALLOC_ARENA_PURGE_MULT` in the environment, if set, win.
pub fn release_freed_memory_promptly() {
    for (option, env, value) in [
        (MI_OPTION_PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 0),
        (MI_OPTION_ARENA_PURGE_MULT, "MIMALLOC_ARENA_PURGE_MULT", 1),
    ] {
        if std::env::var_os(env).is_none() {
            // SAFETY: `mi_option_set` only stores an option value; both options exist in the
            // vendored mimalloc v3 (see its `mimalloc.h`).
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

/// Live heap bytes of the process (0 unless [`Counting`] is the global allocator).
pub fn live_bytes() -> u64 {
    LIVE_BYTES.load(Ordering::Relaxed).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_allocated_and_freed() {
        let allocator = Counting(std::alloc::System);
        let layout = Layout::from_size_align(FLUSH_BYTES as usize * 4, 8).unwrap();
        // On a fresh thread: its own count starts at zero.
        std::thread::spawn(move || {
            let before = LIVE_BYTES.load(Ordering::Relaxed);
            // SAFETY: a non-zero layout; the block is freed with the same layout.
            let ptr = unsafe { allocator.alloc(layout) };
            assert!(!ptr.is_null());
            let held = LIVE_BYTES.load(Ordering::Relaxed) - before;
            assert!(
                (held - layout.size() as i64).abs() < FLUSH_BYTES,
                "after allocating {} bytes the count moved by {held}",
                layout.size()
            );
            // SAFETY: allocated above with `layout`.
            unsafe { allocator.dealloc(ptr, layout) };
            let held = LIVE_BYTES.load(Ordering::Relaxed) - before;
            assert!(held.abs() < FLUSH_BYTES, "after freeing it: {held}");
        })
        .join()
        .unwrap_or_else(|_| panic!("the counting thread panicked"));
    }
}
