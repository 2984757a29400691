//! `StreamCore.write` and `StreamCore._read_ready` as raw C methods (see `raw_method.rs`),
//! added to the class at module initialisation: a protocol writes once per message, and the
//! loop runs the read callback once per read.
// NOTE: pyo3's entry into the two was about 250 instructions per round trip of the echo servers
// (callgrind): Protocol at 1 KiB 3573 to 3332, BufferedProtocol 6143 to 5870, the HTTP server
// 16245 to 15982 per keep-alive request. User time per Protocol round trip, 4 alternating runs:
// 0.86 to 0.78 us.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::PyTypeInfo;

use super::stream::StreamCore;
use crate::raw_method::{self, guard, single_argument, MethodDef};

/// `write(data)`.
unsafe extern "C" fn write(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a METH_FASTCALL | METH_KEYWORDS method of `StreamCore` as `guard`
    // and `single_argument` require.
    unsafe {
        guard(slf, "write", |slf: &Bound<'_, StreamCore>| {
            let py = slf.py();
            let data = single_argument(py, "write", "data", true, args, nargs, kwnames)?;
            StreamCore::write(slf, &data.expect("a required argument is present"))?;
            Ok(py.None().into_bound(py))
        })
    }
}

/// `_read_ready(_transport=None)`: the reader callback. `_transport` is the Python transport,
/// passed by the watcher only to keep it alive while the watcher is registered.
unsafe extern "C" fn read_ready(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: as for `write`.
    unsafe {
        guard(slf, "_read_ready", |slf: &Bound<'_, StreamCore>| {
            let py = slf.py();
            single_argument(py, "_read_ready", "_transport", false, args, nargs, kwnames)?;
            StreamCore::read_ready(slf)?;
            Ok(py.None().into_bound(py))
        })
    }
}

static METHODS: [MethodDef; 2] = [
    MethodDef::with_keywords(
        c"write",
        write,
        c"write($self, data)\n--\n\nWrite some data bytes to the transport.",
    ),
    MethodDef::with_keywords(
        c"_read_ready",
        read_ready,
        c"_read_ready($self, _transport=None)\n--\n\nThe reader callback.",
    ),
];

/// Adds the methods to `StreamCore`, once, at module initialisation.
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    raw_method::install(&StreamCore::type_object(py), &METHODS)
}
