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
    from_errno(py, err, None)
}

/// `OSError(errno, strerror, filename)`, as `os.open` or `subprocess.Popen` raise it for a path.
pub(crate) fn os_error_naming(filename: &Bound<'_, PyAny>, err: io::Error) -> PyErr {
    from_errno(filename.py(), err, Some(filename))
}

fn from_errno(py: Python<'_>, err: io::Error, filename: Option<&Bound<'_, PyAny>>) -> PyErr {
    let Some(code) = err.raw_os_error() else {
        return err.into();
    };
    let filename = filename.map_or(std::ptr::null_mut(), Bound::as_ptr);
    // SAFETY: errno is thread-local; setting it and reading it back at once through
    // PyErr_SetFromErrnoWithFilenameObject (interpreter attached; `filename` null or a live
    // object) is how C code reports it. The call leaves an exception set, which `PyErr::fetch`
    // takes.
    unsafe {
        *libc::__errno_location() = code;
        ffi::PyErr_SetFromErrnoWithFilenameObject(ffi::PyExc_OSError, filename);
    }
    PyErr::fetch(py)
}
