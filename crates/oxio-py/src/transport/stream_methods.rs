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
use crate::raw_method::{self, fastcall_entry, guard, single_argument, MethodDef};

/// The two methods.
#[derive(Clone, Copy)]
enum Method {
    /// `write(data)`.
    Write,
    /// `_read_ready(_transport=None)`: the reader callback. `_transport` is the Python
    /// transport, passed by the watcher only to keep it alive while the watcher is registered.
    ReadReady,
}

/// What the methods share: read the one argument, run the method, return `None`.
///
/// # Safety
/// CPython calls the methods with the interpreter attached, `slf` a `StreamCore` (the method
/// descriptor checks it), and `args`, `nargs`, `kwnames` as `single_argument` requires.
unsafe fn enter(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    method: Method,
) -> *mut ffi::PyObject {
    let (name, param, required) = match method {
        Method::Write => ("write", "data", true),
        Method::ReadReady => ("_read_ready", "_transport", false),
    };
    // SAFETY: see above, for `guard` and for `single_argument` in the closure.
    unsafe {
        guard(slf, name, |slf: &Bound<'_, StreamCore>| {
            let py = slf.py();
            let arg = single_argument(py, name, param, required, args, nargs, kwnames)?;
            match (method, arg) {
                (Method::Write, Some(data)) => StreamCore::write(slf, &data)?,
                (Method::Write, None) => unreachable!("`data` is a required argument"),
                (Method::ReadReady, _) => StreamCore::read_ready(slf)?,
            }
            Ok(py.None().into_bound(py))
        })
    }
}

fastcall_entry!(write => enter(Method::Write));
fastcall_entry!(read_ready => enter(Method::ReadReady));

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
