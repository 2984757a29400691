//! Borrowing the bytes of any object that exports a buffer, as CPython's `y*` and `w*`
//! arguments do (`socket.send`, `socket.recv_into`).
//!
//! The export lives in the caller's frame for exactly the span of the closure: no allocation,
//! and the exporter cannot resize its memory meanwhile (a `bytearray` refuses while exported).
// NOTE: pyo3's `PyBuffer` boxes each export and checks its item format with a `strlen`; two
// exports per message (`get_buffer()` and the `bytearray` written back) were 1.4% of the
// BufferedProtocol echo server's CPU, a tenth of what it spends outside the kernel (perf).

use std::mem::MaybeUninit;

use pyo3::ffi;
use pyo3::prelude::*;

/// Runs `f` on the bytes `obj` exports if they are C-contiguous, else hands `f` back. Fails
/// as `bytes(obj)` would when `obj` exports no buffer.
///
/// `f` may run Python code: the bytes may change under it, but not move.
pub(crate) fn with_contiguous<R, F: FnOnce(&[u8]) -> R>(
    obj: &Bound<'_, PyAny>,
    f: F,
) -> PyResult<Result<R, F>> {
    with_export(obj, |view| {
        if !contiguous(view) {
            return Err(f);
        }
        let (ptr, len) = parts(view);
        // SAFETY: a C-contiguous export's `len` bytes from `ptr` are valid while it lives,
        // which is until after `f`.
        Ok(f(unsafe { std::slice::from_raw_parts(ptr, len) }))
    })
}

/// Runs `f` on the bytes `obj` exports if they are writable and C-contiguous, as
/// `socket.recv_into` takes them, else hands `f` back. Fails when `obj` exports no buffer.
///
/// `f` must run no Python code: another export of the same memory could read or write it.
pub(crate) fn with_contiguous_mut<R, F: FnOnce(&mut [u8]) -> R>(
    obj: &Bound<'_, PyAny>,
    f: F,
) -> PyResult<Result<R, F>> {
    with_export(obj, |view| {
        if view.readonly != 0 || !contiguous(view) {
            return Err(f);
        }
        let (ptr, len) = parts(view);
        // SAFETY: as in `with_contiguous`, and the export is writable; nothing else touches
        // its memory while `f`, which runs no Python code, holds the slice.
        Ok(f(unsafe { std::slice::from_raw_parts_mut(ptr, len) }))
    })
}

/// Exports `obj`'s buffer, with its shape and strides, for the span of `f`.
fn with_export<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&ffi::Py_buffer) -> R) -> PyResult<R> {
    let mut view = MaybeUninit::<ffi::Py_buffer>::uninit();
    // SAFETY: `obj` is a live object and `view` storage for one `Py_buffer`, which the call
    // fills on success; on failure it sets an exception and leaves nothing to release.
    if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_STRIDES) } != 0
    {
        return Err(PyErr::fetch(obj.py()));
    }
    // SAFETY: filled by the successful export above. It stays in this frame, never moved:
    // exporters may point its `shape` and `strides` into the struct itself.
    let view = unsafe { view.assume_init_mut() };
    let result = f(view);
    // SAFETY: releases the export made above, once, with the interpreter attached.
    unsafe { ffi::PyBuffer_Release(view) };
    Ok(result)
}

fn contiguous(view: &ffi::Py_buffer) -> bool {
    // SAFETY: `view` is a live export.
    unsafe { ffi::PyBuffer_IsContiguous(view, b'C' as std::ffi::c_char) != 0 }
}

/// The export's memory as a pointer and length; an empty export gets a dangling pointer, which
/// is what an empty slice needs.
fn parts(view: &ffi::Py_buffer) -> (*mut u8, usize) {
    let len = usize::try_from(view.len).unwrap_or(0);
    if len == 0 || view.buf.is_null() {
        return (std::ptr::NonNull::dangling().as_ptr(), 0);
    }
    (view.buf.cast::<u8>(), len)
}
