//! Cache prefetches for the loops that walk many cold handles in a row.
//!
//! A handle that sat in a long timer heap has left the CPU's caches by the time it fires or
//! is released, and so has the context copied for it; touching the two one after the other
//! makes every handle wait for memory twice. Asking for the handles a few places ahead lets
//! those waits overlap.
// NOTE: in the call_later row (200k timers, half cancelled), the first touches of cold timers
// and contexts were a third of the profile: 13% in `release_all`, 15% in `handle::run` (perf,
// cpu-clock). Prefetching took the row's CPU time from 0.86x rloop's to 1.34x (5 alternating
// runs each, pinned to one CPU), for about 90 more instructions per timer.

use pyo3::prelude::*;

use super::Handle;

/// How far ahead of the handle being processed the next ones are asked for; their contexts
/// are asked for half as far ahead, once the handles that point to them have arrived.
pub const AHEAD: usize = 8;

/// Below this many callbacks, a batch's handles were touched recently enough to be in the
/// cache, and prefetching would only add instructions (about 20 per callback).
pub const LONG_BATCH: usize = 64;

/// CPython's GC link sits just before the object.
const GC_HEAD: usize = 16;
const LINE: usize = 64;
/// A `TimerHandle` from its GC link to its last field, rounded up to whole lines.
const HANDLE_LINES: usize = 3;
/// A `contextvars.Context` from its GC link to its last field, rounded up.
const CONTEXT_LINES: usize = 2;

/// Starts loading `lines` cache lines from `obj`'s GC link on.
#[inline(always)]
fn object(obj: *mut pyo3::ffi::PyObject, lines: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = obj.cast::<i8>().wrapping_sub(GC_HEAD);
        for line in 0..lines {
            // SAFETY: a prefetch is a hint: it never faults and reads nothing the program
            // sees, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line * LINE)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (obj, lines);
}

/// Starts loading a handle (or timer handle), whose fields a later step will read.
#[inline(always)]
pub fn handle<T>(handle: &Py<T>) {
    object(handle.as_ptr(), HANDLE_LINES);
}

/// Starts loading the context of `handle` (a handle or timer handle); `handle` itself should
/// be in the cache already (see [`handle`]), since its field is read to find the context.
#[inline(always)]
pub fn context<T>(py: Python<'_>, handle: &Py<T>) {
    let Ok(handle) = handle.bind(py).cast::<Handle>() else {
        return;
    };
    // A hint never waits: a handle locked meanwhile is skipped.
    if let Some(this) = handle.get().fields.try_lock(py) {
        if let Some(context) = &this.context {
            object(context.as_ptr(), CONTEXT_LINES);
        }
    }
}

/// Prefetches for the next handles of a walk, given those after the current one: the handle
/// `AHEAD` places on, and the context of the one half as far, which its own prefetch has
/// brought in by now.
#[inline(always)]
pub fn ahead<'a, T: 'a>(py: Python<'_>, next: impl Fn(usize) -> Option<&'a Py<T>>) {
    if let Some(far) = next(AHEAD - 1) {
        handle(far);
    }
    if let Some(near) = next(AHEAD / 2 - 1) {
        context(py, near);
    }
}
