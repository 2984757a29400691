//! One `bytes` object per loop thread, recycled from a read whose protocol kept no reference to
//! its data into the next read of the same length.
//!
//! A read of 1 KiB makes a `bytes` too large for Python's small-object allocator, so each one is
//! a `malloc` that glibc's per-thread cache does not serve, and a `free`: about 500 instructions
//! of the 2,800 a Protocol echo server runs per round trip. Reusing an object that no other code
//! holds looks, from Python, the same as freeing it and getting a new one at the same address,
//! which the allocator does often anyway: its contents, length and hash are all set anew.
//!
//! Reads happen one after the other on a loop thread, and `data_received` returns before the
//! next one starts, so one spare serves every transport of a thread: 32 connections echoing 1 KiB
//! messages reuse the same object. An idle thread holds at most one spare of less than
//! [`SPARE_MAX`] bytes.

use std::cell::Cell;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Larger reads go straight into a `bytes` of their size (see `reading.rs`); keeping one of
/// those would hold a large block for a reader that may never read that much again.
const SPARE_MAX: usize = super::reading::DIRECT_READ_MIN;

thread_local! {
    static SPARE: Cell<Option<Py<PyBytes>>> = const { Cell::new(None) };
}

/// `data` in a `bytes`: the spare when it has that length, a new object otherwise.
pub(crate) fn bytes_from<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    if let Some(spare) = SPARE.take().map(|spare| spare.into_bound(py)) {
        if spare.as_bytes().len() == data.len() {
            overwrite(&spare, data);
            return spare;
        }
    }
    PyBytes::new(py, data)
}

/// Keeps `data` as the spare when the caller holds the only reference to it, once the protocol
/// it was passed to has returned.
// NOTE: a Protocol echo server's instructions per round trip went from 2,816 to 2,171 at 1 KiB
// and from 12,885 to 12,345 at 10 KiB (callgrind, server side); round trips per server
// CPU-second +1.9% at 1 KiB (6 alternating runs).
pub(crate) fn recycle(data: Bound<'_, PyBytes>) {
    // Empty and one-byte `bytes` are the interpreter's shared singletons.
    let sized = (2..SPARE_MAX).contains(&data.as_bytes().len());
    if sized && is_unshared(&data) {
        SPARE.set(Some(data.unbind()));
    }
}

/// Whether `data` is referenced only by the caller.
#[cfg(not(Py_GIL_DISABLED))]
fn is_unshared(data: &Bound<'_, PyBytes>) -> bool {
    // SAFETY: `data` is a live object, and the attached thread reads its reference count.
    unsafe { ffi::Py_REFCNT(data.as_ptr()) == 1 }
}

/// A free-threaded interpreter splits reference counts between the owning thread and the rest,
/// and another thread may hold one without the count showing it here: never recycle there.
#[cfg(Py_GIL_DISABLED)]
fn is_unshared(_data: &Bound<'_, PyBytes>) -> bool {
    false
}

/// Writes `data` over the spare's contents, of the same length, and forgets its cached hash.
#[allow(deprecated)] // `ob_shash` is deprecated for readers outside CPython, not gone.
fn overwrite(spare: &Bound<'_, PyBytes>, data: &[u8]) {
    let object = spare.as_ptr().cast::<ffi::PyBytesObject>();
    // SAFETY: `spare` is a `bytes` of `data.len()` bytes that only this module references (it
    // was unshared when recycled, and nothing has seen it since), so no code observes it
    // changing; `data` is the read buffer, never the object's own storage. Setting `ob_shash`
    // to -1 is how CPython marks a `bytes` whose hash is not computed yet.
    unsafe {
        let storage = std::ptr::addr_of_mut!((*object).ob_sval).cast::<u8>();
        std::ptr::copy_nonoverlapping(data.as_ptr(), storage, data.len());
        (*object).ob_shash = -1;
    }
}
