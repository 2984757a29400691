//! `call_soon` and `call_soon_threadsafe` as raw `METH_FASTCALL | METH_KEYWORDS` methods.
//!
//! Every task step and every future's done callback is a `call_soon(callback, arg,
//! context=ctx)`. pyo3's general argument parser for `(callback, *args, context=None)` cost
//! more than taking a handle and queueing it; these methods read the vectorcall array
//! directly, with the same signature and errors.
// NOTE: pyo3's entry (trampoline, argument parser, wrapper) took about 240 of the 1897
// instructions per callback of the call_soon row (callgrind).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use pyo3::PyTypeInfo;

use super::EventLoop;
use crate::handle::Handle;

/// The arguments of `call_soon(callback, *args, context=None)`.
///
/// The callback and context are borrowed from the caller's argument array: the handle takes
/// its own references to them.
pub(super) struct SoonArgs<'a, 'py> {
    pub callback: Borrowed<'a, 'py, PyAny>,
    pub args: Bound<'py, PyTuple>,
    pub context: Option<Borrowed<'a, 'py, PyAny>>,
}

impl<'a, 'py> SoonArgs<'a, 'py> {
    /// Reads the arguments of a vectorcall of the method `name`.
    ///
    /// # Safety
    /// `args` holds `nargs` positional arguments followed by one value per name in `kwnames`
    /// (NULL when there are none), all borrowed references alive for the call.
    unsafe fn parse(
        py: Python<'py>,
        name: &str,
        args: *const *mut ffi::PyObject,
        nargs: usize,
        kwnames: *mut ffi::PyObject,
    ) -> PyResult<Self> {
        // SAFETY: the caller guarantees `args` and `kwnames` as documented above.
        let arg = |i: usize| unsafe { Borrowed::from_ptr(py, *args.add(i)) };
        let mut callback = (nargs > 0).then(|| arg(0));
        let mut context = None;
        if !kwnames.is_null() {
            // SAFETY: a non-NULL `kwnames` is a tuple of strings (see above).
            let names = unsafe { Borrowed::from_ptr(py, kwnames).cast_unchecked::<PyTuple>() };
            for (i, keyword) in names.iter_borrowed().enumerate() {
                let value = arg(nargs + i);
                if keyword.is(intern!(py, "context")) || keyword_is(&keyword, "context")? {
                    context = Some(value);
                } else if keyword_is(&keyword, "callback")? {
                    if callback.replace(value).is_some() {
                        return Err(PyTypeError::new_err(format!(
                            "{name}() got multiple values for argument 'callback'"
                        )));
                    }
                } else {
                    return Err(PyTypeError::new_err(format!(
                        "{name}() got an unexpected keyword argument '{}'",
                        *keyword
                    )));
                }
            }
        }
        let Some(callback) = callback else {
            return Err(PyTypeError::new_err(format!(
                "{name}() missing 1 required positional argument: 'callback'"
            )));
        };
        Ok(Self {
            callback,
            // SAFETY: as for `arg`, the positional arguments after the callback.
            args: unsafe { positional_tuple(py, args.add(1), nargs.saturating_sub(1)) }?,
            context: context.filter(|ctx| !ctx.is_none()),
        })
    }
}

fn keyword_is(keyword: &Bound<'_, PyAny>, expected: &str) -> PyResult<bool> {
    Ok(keyword.cast::<PyString>()?.to_str()? == expected)
}

/// A tuple of the `len` objects at `items`.
///
/// # Safety
/// `items` points to `len` borrowed references.
unsafe fn positional_tuple<'py>(
    py: Python<'py>,
    items: *const *mut ffi::PyObject,
    len: usize,
) -> PyResult<Bound<'py, PyTuple>> {
    if len == 0 {
        return Ok(PyTuple::empty(py));
    }
    let size =
        ffi::Py_ssize_t::try_from(len).map_err(|_| PyValueError::new_err("too many arguments"))?;
    // SAFETY: the interpreter is attached; a NULL result sets the error fetched below.
    let tuple = unsafe { ffi::PyTuple_New(size) };
    if tuple.is_null() {
        return Err(PyErr::fetch(py));
    }
    for i in 0..len {
        // SAFETY: `items` holds `len` live objects (see above); the new tuple takes a strong
        // reference to each, in a slot it has not filled yet.
        unsafe {
            let item = *items.add(i);
            ffi::Py_INCREF(item);
            ffi::PyTuple_SET_ITEM(tuple, i as ffi::Py_ssize_t, item);
        }
    }
    // SAFETY: `tuple` is a new, fully initialised tuple we own.
    Ok(unsafe { Bound::from_owned_ptr(py, tuple).cast_into_unchecked() })
}

/// The body both methods share: parse, schedule, and turn the outcome into what CPython
/// expects of a method (a new reference, or NULL with the exception set). A panic becomes a
/// `PanicException` instead of unwinding into the interpreter.
///
/// # Safety
/// CPython calls the methods with the interpreter attached, `slf` an `EventLoop` (the method
/// descriptor checks it), and `args`, `nargs`, `kwnames` as [`SoonArgs::parse`] requires.
unsafe fn enter(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    threadsafe: bool,
) -> *mut ffi::PyObject {
    // SAFETY: see above.
    let py = unsafe { Python::assume_attached() };
    let name = if threadsafe {
        "call_soon_threadsafe"
    } else {
        "call_soon"
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| -> PyResult<Bound<'_, Handle>> {
        // SAFETY: see above; both are borrowed for the duration of the call.
        let slf = unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<EventLoop>() };
        let nargs = usize::try_from(nargs).unwrap_or(0);
        // SAFETY: see above.
        let soon = unsafe { SoonArgs::parse(py, name, args, nargs, kwnames) }?;
        EventLoop::schedule_soon(&slf, soon, threadsafe)
    }));
    match outcome {
        Ok(Ok(handle)) => handle.into_ptr(),
        Ok(Err(err)) => {
            err.restore(py);
            ptr::null_mut()
        }
        Err(_) => {
            PanicException::new_err(format!("panic in {name}()")).restore(py);
            ptr::null_mut()
        }
    }
}

unsafe extern "C" fn call_soon(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a METH_FASTCALL | METH_KEYWORDS method as `enter` requires.
    unsafe { enter(slf, args, nargs, kwnames, false) }
}

unsafe extern "C" fn call_soon_threadsafe(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: as for `call_soon`.
    unsafe { enter(slf, args, nargs, kwnames, true) }
}

/// A method definition CPython keeps a pointer to for the life of the process.
struct MethodDef(ffi::PyMethodDef);

// SAFETY: CPython only reads a method definition, and these hold pointers to static data.
unsafe impl Sync for MethodDef {}

const FLAGS: std::os::raw::c_int = ffi::METH_FASTCALL | ffi::METH_KEYWORDS;

static CALL_SOON: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"call_soon".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: call_soon,
    },
    ml_flags: FLAGS,
    ml_doc: c"call_soon($self, callback, *args, context=None)\n--\n\nArrange for a callback to be called as soon as possible.".as_ptr(),
});

static CALL_SOON_THREADSAFE: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"call_soon_threadsafe".as_ptr(),
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: call_soon_threadsafe,
    },
    ml_flags: FLAGS,
    ml_doc: c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\nLike call_soon(), but thread-safe.".as_ptr(),
});

/// Adds the two methods to `EventLoop`, once, at module initialisation.
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    let class = EventLoop::type_object(py);
    for def in [&CALL_SOON, &CALL_SOON_THREADSAFE] {
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
            .getattr(intern!(py, "__name__"))?
            .cast_into::<PyString>()?;
        class.setattr(name, descriptor)?;
    }
    Ok(())
}
