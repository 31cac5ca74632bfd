//! A counting global allocator: allocation count, bytes allocated, and live/peak heap.
//!
//! Each benchmark binary installs it with
//! `#[global_allocator] static ALLOC: CountingAlloc = CountingAlloc;` and reads
//! [`snapshot`] around the code it measures. The counters are process-wide relaxed
//! atomics: read them where no other thread allocates, or accept the sum over threads.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
// Counting costs a few atomic read-modify-writes per allocation, which would inflate
// timings: it is off until [`set_counting`] turns it on.
static COUNTING: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting.
pub struct CountingAlloc;

fn on_alloc(size: usize) {
    if !COUNTING.load(Relaxed) {
        return;
    }
    ALLOCS.fetch_add(1, Relaxed);
    BYTES.fetch_add(size as u64, Relaxed);
    let live = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(live, Relaxed);
}

fn on_free(size: usize) {
    if COUNTING.load(Relaxed) {
        // Blocks allocated before counting started may be freed while it is on, so the
        // live figure saturates at zero rather than wrapping.
        let _ = LIVE.fetch_update(Relaxed, Relaxed, |l| Some(l.saturating_sub(size)));
    }
}

/// Turns counting on or off (off at start). Timed loops run with it off.
pub fn set_counting(on: bool) {
    COUNTING.store(on, Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        on_free(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A realloc counts as one allocation of the new size (the old block is freed).
        on_free(layout.size());
        on_alloc(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Counter values at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocSnapshot {
    /// Allocations (and reallocations) so far.
    pub allocs: u64,
    /// Bytes requested by them.
    pub bytes: u64,
    /// Bytes currently allocated.
    pub live: usize,
}

impl AllocSnapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> AllocDelta {
        AllocDelta {
            allocs: self.allocs - earlier.allocs,
            bytes: self.bytes - earlier.bytes,
            live: self.live as i64 - earlier.live as i64,
        }
    }
}

/// Allocations between two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocDelta {
    /// Allocations made.
    pub allocs: u64,
    /// Bytes requested.
    pub bytes: u64,
    /// Change of the live heap (bytes still held minus bytes freed).
    pub live: i64,
}

impl std::ops::AddAssign for AllocDelta {
    fn add_assign(&mut self, o: Self) {
        self.allocs += o.allocs;
        self.bytes += o.bytes;
        self.live += o.live;
    }
}

/// The counters now.
pub fn snapshot() -> AllocSnapshot {
    AllocSnapshot {
        allocs: ALLOCS.load(Relaxed),
        bytes: BYTES.load(Relaxed),
        live: LIVE.load(Relaxed),
    }
}

/// The highest live heap since the last [`reset_peak`] (or start).
pub fn peak() -> usize {
    PEAK.load(Relaxed)
}

/// Starts a new peak measurement from the current live heap.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}
