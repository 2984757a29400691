//! OS errors as Python raises them, and the exceptions that leave the loop.

use std::io;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::prelude::*;

/// SystemExit and KeyboardInterrupt leave the loop; every other exception stays inside it.
pub(crate) fn is_exit(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

/// `err` as Python's `os` and `socket` modules raise it (they call `PyErr_SetFromErrno` too):
/// `OSError(errno, strerror)`, which Python turns into the matching subclass
/// (`ConnectionResetError`, `BrokenPipeError`, `PermissionError`...). PyO3's own conversion
/// keeps only the message and loses `errno`, which callers test.
///
/// Builds a Python object, so it must not be called under the loop's lock (see `Core`).
pub(crate) fn os_error(py: Python<'_>, err: io::Error) -> PyErr {
    let Some(code) = err.raw_os_error() else {
        return err.into();
    };
    // SAFETY: errno is thread-local; setting it and reading it back at once through
    // PyErr_SetFromErrno (interpreter attached) is how C code reports it. The call leaves an
    // exception set, which `PyErr::fetch` takes.
    unsafe {
        *libc::__errno_location() = code;
        ffi::PyErr_SetFromErrno(ffi::PyExc_OSError);
    }
    PyErr::fetch(py)
}
