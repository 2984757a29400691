//! Running a callback inside a `contextvars.Context` without going through `Context.run`.

use pyo3::prelude::*;

/// `contextvars.copy_context()`.
pub fn copy_current(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: called with the interpreter attached; the result is a new reference or NULL with
    // an exception set, which `from_owned_ptr_or_err` turns into a `PyErr`.
    unsafe {
        let ctx = pyo3::ffi::PyContext_CopyCurrent();
        Ok(Bound::from_owned_ptr_or_err(py, ctx)?.unbind())
    }
}

/// `ctx.run(call)`, minus the bound-method lookup and the argument tuple `Context.run` builds.
///
/// Entering a context that is already entered fails exactly as `Context.run` does, with the
/// same `RuntimeError`, which the caller reports like any other callback error.
#[inline(always)]
pub fn run_in<'py>(
    py: Python<'py>,
    ctx: &Bound<'py, PyAny>,
    call: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `ctx` is a live object; PyContext_Enter checks its type and reports errors.
    if unsafe { pyo3::ffi::PyContext_Enter(ctx.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    let result = call();
    // SAFETY: the context was entered just above on this thread, so exiting it cannot fail.
    unsafe { pyo3::ffi::PyContext_Exit(ctx.as_ptr()) };
    result
}
