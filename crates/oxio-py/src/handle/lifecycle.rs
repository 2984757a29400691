//! A handle's life outside its callback: when the cyclic GC sees it, and how a handle that has
//! run is emptied and kept for reuse instead of freed.

use pyo3::prelude::*;

use super::{Handle, HandleFields};

/// How many emptied handles a loop keeps for reuse (see [`recycle`]): enough for the callbacks
/// of a busy iteration, about 128 KiB at most.
pub const SPARE_HANDLES: usize = 1024;

/// Takes a timer that a *running* loop just scheduled out of the cyclic GC's view, with the
/// context copied for it.
///
/// While a running loop holds a timer, everything the timer references is reachable through
/// the loop, so a collection has nothing to find there; yet with many timers pending, scanning
/// them again and again was most of the cost of scheduling them. Handles leave the loop
/// through [`release`], which puts them back in view. A loop that stops running puts every
/// handle it still holds back in view ([`track`]), so a stopped loop dropped in a cycle with
/// its pending callbacks is still collected. A new `call_soon` handle is switched only when it
/// joins a long ready queue: in a short one it lives for one iteration, and switching every
/// handle cost more than the collections it saved. (A spare refilled while the loop runs is
/// out of view already, and stays so: see [`refill`].)
// NOTE: with 200k pending timers, collections took about 40% of the call_later bench row;
// untracking cut its instruction count by 31% (callgrind), and added 10% to call_soon when
// applied to every handle.
pub fn untrack(handle: &Bound<'_, Handle>) {
    if is_tracked(handle.as_any()) {
        set_tracked_with_context(handle, false);
    }
}

/// Puts a handle, and the context copied for it, back in the cyclic GC's view.
///
/// A private context is out of view only while its handle is too, so a handle in view has its
/// context in view already.
pub fn track(handle: &Bound<'_, Handle>) {
    if !is_tracked(handle.as_any()) {
        set_tracked_with_context(handle, true);
    }
}

/// Drops the loop's reference to a handle, first putting it back in the cyclic GC's view.
///
/// Always, even when the loop held the last reference: the context dies with the handle then,
/// and CPython's context deallocator unlinks it from the GC's list without checking that it
/// is in one.
pub fn release(handle: Bound<'_, Handle>) {
    track(&handle);
}

fn set_tracked_with_context(handle: &Bound<'_, Handle>, tracked: bool) {
    set_tracked(handle.as_any(), tracked);
    set_context_tracked(handle, tracked);
}

/// Switches the context copied for `handle` alone, if it has one, to `tracked`.
fn set_context_tracked(handle: &Bound<'_, Handle>, tracked: bool) {
    let py = handle.py();
    set_private_context_tracked(py, &handle.get().lock(py), tracked);
}

fn set_private_context_tracked(py: Python<'_>, handle: &HandleFields, tracked: bool) {
    if let (true, Some(context)) = (handle.private_context, &handle.context) {
        let context = context.bind(py);
        if is_tracked(context) != tracked {
            set_tracked(context, tracked);
        }
    }
}

fn is_only_reference(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: the interpreter is attached and `obj` is a live object.
    unsafe { pyo3::ffi::Py_REFCNT(obj.as_ptr()) == 1 }
}

pub(super) fn is_tracked(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: the interpreter is attached and `obj` is a live object.
    unsafe { pyo3::ffi::PyObject_GC_IsTracked(obj.as_ptr()) == 1 }
}

/// Switches an object the caller knows to be in the other state (tracking an object twice is
/// a fatal error).
pub(super) fn set_tracked(obj: &Bound<'_, PyAny>, tracked: bool) {
    let ptr = obj.as_ptr();
    // SAFETY: the interpreter is attached and `obj` is a live object of a GC type (handles are
    // #[pyclass]es, contexts are GC objects) whose state is the opposite of `tracked`.
    unsafe {
        if tracked {
            pyo3::ffi::PyObject_GC_Track(ptr.cast());
        } else {
            pyo3::ffi::PyObject_GC_UnTrack(ptr.cast());
        }
    }
}

/// Empties a handle that has run, for the loop to refill with a later `call_soon`, when the
/// caller holds the only reference to it; any other handle is released ([`release`]).
///
/// Most handles die the moment they have run, and freeing one Python object per callback to
/// allocate the next was a quarter of the cost of `call_soon`. A handle nothing else references
/// cannot be told apart from a new one. Only plain `Handle`s qualify: a `TimerHandle` or a
/// Python subclass has another layout. The emptied handle references nothing and is out of the
/// cyclic GC's view, so `gc.get_objects()` cannot hand it to anyone either.
// NOTE: allocating and freeing a handle cost about 500 of the 2100 instructions of the
// call_soon row (callgrind).
pub fn recycle(handle: Bound<'_, Handle>) -> Option<Bound<'_, Handle>> {
    if !is_only_reference(handle.as_any()) || !handle.is_exact_instance_of::<Handle>() {
        release(handle);
        return None;
    }
    let py = handle.py();
    let old = handle.get().lock(py).take();
    if is_tracked(handle.as_any()) {
        set_tracked(handle.as_any(), false);
    }
    // A private context dies with the old fields, so it must be in view (see `release`).
    set_private_context_tracked(py, &old, true);
    // Out of view first: the old fields' `__del__`s run here and may walk the GC's objects.
    old.release(py);
    Some(handle)
}

/// Which parts of a refilled spare the cyclic GC sees (see [`refill`]).
pub struct SpareView {
    /// The handle itself.
    pub handle: bool,
    /// The context copied for the handle, if it has one.
    pub context: bool,
}

/// Puts `fields` into a handle emptied by [`recycle`], with the GC's view of it as `view` says.
///
/// A spare is out of view, and a running loop leaves it so: while the loop holds it, everything
/// it references is reachable through the loop, and it goes back in view when it leaves the
/// loop with other references to it ([`release`]). Its context stays in view unless the ready
/// queue is long ([`untrack`]); switching it, short-lived as it is, cost more than it saved.
///
/// Runs no Python code, so the loop may call it under its lock: the spare's old fields are all
/// `None`, so replacing them drops nothing.
// NOTE: putting every refilled spare back in view (`PyObject_GC_Track`) was 5% of the call_soon
// row's time (perf).
pub fn refill<'py>(
    spare: Bound<'py, Handle>,
    fields: HandleFields,
    view: SpareView,
) -> Bound<'py, Handle> {
    spare.get().lock(spare.py()).refill(fields);
    if view.handle {
        set_tracked(spare.as_any(), true);
    }
    if !view.context {
        set_context_tracked(&spare, false);
    }
    spare
}
