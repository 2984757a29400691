//! Methods defined as raw C functions instead of through pyo3, for the few that CPython calls
//! per callback, per future or per read: pyo3's entry (trampoline, argument parser, wrapper)
//! costs more than such a method's own work, where a raw method reads its arguments from the
//! vectorcall array directly. `EventLoop`'s are in `event_loop/raw_methods.rs`, `StreamCore`'s
//! in `transport/stream_methods.rs`; this module holds what they share: the guard that keeps
//! panics out of the interpreter, the method definitions, and asyncio's argument errors.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};
use pyo3::PyClass;

/// Runs a method's `body` on `slf` and turns its outcome into what CPython expects of a
/// method: a new reference, or NULL with the exception set. A panic becomes a
/// `PanicException` naming `method` instead of unwinding into the interpreter.
///
/// # Safety
/// The interpreter is attached and `slf` is a `T` (a method descriptor checks it), borrowed for
/// the call.
#[inline(always)]
pub(crate) unsafe fn guard<'py, T: PyClass>(
    slf: *mut ffi::PyObject,
    method: &str,
    body: impl FnOnce(&Bound<'py, T>) -> PyResult<Bound<'py, PyAny>>,
) -> *mut ffi::PyObject {
    // SAFETY: see above.
    let py = unsafe { Python::assume_attached() };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: see above.
        let slf = unsafe { Borrowed::from_ptr(py, slf).cast_unchecked::<T>() };
        body(&slf)
    }));
    match outcome {
        Ok(Ok(result)) => result.into_ptr(),
        Ok(Err(err)) => {
            err.restore(py);
            ptr::null_mut()
        }
        Err(_) => {
            PanicException::new_err(format!("panic in {method}()")).restore(py);
            ptr::null_mut()
        }
    }
}

/// Defines `$entry`, the `extern "C"` function of a `METH_FASTCALL | METH_KEYWORDS` method, as
/// a call of `$enter(slf, args, nargs, kwnames, $method)`, where methods share their body.
macro_rules! fastcall_entry {
    ($vis:vis $entry:ident => $enter:ident($method:expr)) => {
        $vis unsafe extern "C" fn $entry(
            slf: *mut pyo3::ffi::PyObject,
            args: *const *mut pyo3::ffi::PyObject,
            nargs: pyo3::ffi::Py_ssize_t,
            kwnames: *mut pyo3::ffi::PyObject,
        ) -> *mut pyo3::ffi::PyObject {
            // SAFETY: CPython calls a METH_FASTCALL | METH_KEYWORDS method as `$enter` requires.
            unsafe { $enter(slf, args, nargs, kwnames, $method) }
        }
    };
}
pub(crate) use fastcall_entry;

/// A method definition CPython keeps a pointer to for the life of the process.
pub(crate) struct MethodDef(pub(crate) ffi::PyMethodDef);

// SAFETY: CPython only reads a method definition, and these hold pointers to static data.
unsafe impl Sync for MethodDef {}

impl MethodDef {
    pub(crate) const fn with_keywords(
        name: &'static CStr,
        entry: ffi::PyCFunctionFastWithKeywords,
        doc: &'static CStr,
    ) -> Self {
        Self(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: entry,
            },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: doc.as_ptr(),
        })
    }

    pub(crate) const fn no_arguments(
        name: &'static CStr,
        entry: ffi::PyCFunction,
        doc: &'static CStr,
    ) -> Self {
        Self(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer { PyCFunction: entry },
            ml_flags: ffi::METH_NOARGS,
            ml_doc: doc.as_ptr(),
        })
    }
}

/// Adds `methods` to `class`, replacing any of the same name, once, at module initialisation.
pub(crate) fn install(class: &Bound<'_, PyType>, methods: &'static [MethodDef]) -> PyResult<()> {
    let py = class.py();
    for def in methods {
        // SAFETY: the interpreter is attached; `def` is static, and CPython never writes
        // through the pointer it keeps.
        let descriptor = unsafe {
            ffi::PyDescr_NewMethod(class.as_type_ptr(), ptr::from_ref(&def.0).cast_mut())
        };
        if descriptor.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: a new reference we own.
        let descriptor = unsafe { Bound::from_owned_ptr(py, descriptor) };
        let name = descriptor
            .getattr(pyo3::intern!(py, "__name__"))?
            .cast_into::<PyString>()?;
        class.setattr(name, descriptor)?;
    }
    Ok(())
}

/// The one argument of `name(param)`, or of `name(param=None)` when it is not `required`,
/// given positionally or by keyword: `None` when an optional one is left out.
///
/// # Safety
/// `args` holds `nargs` positional arguments followed by one value per name in `kwnames`
/// (NULL when there are none), all borrowed references alive for the call.
#[inline(always)]
pub(crate) unsafe fn single_argument<'a, 'py>(
    py: Python<'py>,
    name: &str,
    param: &str,
    required: bool,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Option<Borrowed<'a, 'py, PyAny>>> {
    // SAFETY: the caller guarantees `args` and `kwnames` as documented above.
    let arg = |i: ffi::Py_ssize_t| unsafe { Borrowed::from_ptr(py, *args.offset(i)) };
    if nargs > 1 {
        return Err(too_many_positional(name, nargs.unsigned_abs()));
    }
    let mut value = (nargs == 1).then(|| arg(0));
    if !kwnames.is_null() {
        // SAFETY: a non-NULL `kwnames` is a tuple of strings (see above).
        let names = unsafe { Borrowed::from_ptr(py, kwnames).cast_unchecked::<PyTuple>() };
        for (i, keyword) in (nargs..).zip(names.iter_borrowed()) {
            if !keyword_is(&keyword, param) {
                return Err(unexpected_keyword(name, &keyword));
            }
            if value.replace(arg(i)).is_some() {
                return Err(multiple_values(name, param));
            }
        }
    }
    if required && value.is_none() {
        return Err(missing_arguments::<()>(name, &[param], &[None]));
    }
    Ok(value)
}

// The errors are out of line: the methods' common path then spans fewer cache lines.

#[cold]
pub(crate) fn unexpected_keyword(name: &str, keyword: &Bound<'_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!(
        "{name}() got an unexpected keyword argument '{keyword}'"
    ))
}

#[cold]
pub(crate) fn multiple_values(name: &str, param: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "{name}() got multiple values for argument '{param}'"
    ))
}

#[cold]
pub(crate) fn too_many_positional(name: &str, given: usize) -> PyErr {
    PyTypeError::new_err(format!(
        "{name}() takes 1 positional argument but {given} were given"
    ))
}

/// Python's `TypeError` for missing arguments: "missing 2 required positional arguments:
/// 'delay' and 'callback'".
#[cold]
pub(crate) fn missing_arguments<T>(name: &str, params: &[&str], given: &[Option<T>]) -> PyErr {
    let missing: Vec<String> = params
        .iter()
        .zip(given)
        .filter(|(_, value)| value.is_none())
        .map(|(param, _)| format!("'{param}'"))
        .collect();
    let (count, plural) = (missing.len(), if missing.len() == 1 { "" } else { "s" });
    let listed = match missing.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    };
    PyTypeError::new_err(format!(
        "{name}() missing {count} required positional argument{plural}: {listed}"
    ))
}

/// Whether a keyword argument's name is `expected` (CPython passes names as `str`s).
pub(crate) fn keyword_is(keyword: &Bound<'_, PyAny>, expected: &str) -> bool {
    keyword
        .cast::<PyString>()
        .is_ok_and(|name| name.to_str().is_ok_and(|name| name == expected))
}
