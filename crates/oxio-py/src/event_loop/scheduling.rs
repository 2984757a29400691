//! `call_soon`, `call_soon_threadsafe`, `call_later` and `call_at` as raw
//! `METH_FASTCALL | METH_KEYWORDS` methods (installed by `raw_methods`).
//!
//! Every task step and every future's done callback is a `call_soon(callback, arg,
//! context=ctx)`, and timeouts are `call_later`s. pyo3's general argument parser for
//! `(callback, *args, context=None)` cost more than taking a handle and queueing it; these
//! methods read the vectorcall array directly, with asyncio's signatures and errors.

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use super::ready::Step;
use super::EventLoop;
use crate::raw_method::{
    fastcall_entry, guard, keyword_is, missing_arguments, multiple_values, unexpected_keyword,
};

/// The arguments of `name(p1, ..., pN, *args, context=None)`, as asyncio's scheduling
/// methods take them: the `N` leading parameters positionally or by keyword.
///
/// The leading arguments and the context are borrowed from the caller's argument array: the
/// handle takes its own references to them.
pub(super) struct CallArgs<'a, 'py, const N: usize> {
    pub leading: [Borrowed<'a, 'py, PyAny>; N],
    pub args: Bound<'py, PyTuple>,
    pub context: Option<Borrowed<'a, 'py, PyAny>>,
}

impl<'a, 'py, const N: usize> CallArgs<'a, 'py, N> {
    /// Reads the arguments of a vectorcall of the method `name`, whose leading parameters
    /// are `params`.
    ///
    /// # Safety
    /// `args` holds `nargs` positional arguments followed by one value per name in `kwnames`
    /// (NULL when there are none), all borrowed references alive for the call.
    unsafe fn parse(
        py: Python<'py>,
        name: &str,
        params: [&str; N],
        args: *const *mut ffi::PyObject,
        nargs: usize,
        kwnames: *mut ffi::PyObject,
    ) -> PyResult<Self> {
        // SAFETY: the caller guarantees `args` and `kwnames` as documented above.
        let arg = |i: usize| unsafe { Borrowed::from_ptr(py, *args.add(i)) };
        let mut leading: [Option<Borrowed<'a, 'py, PyAny>>; N] = [None; N];
        for (i, slot) in leading.iter_mut().enumerate().take(nargs) {
            *slot = Some(arg(i));
        }
        let mut context = None;
        if !kwnames.is_null() {
            // SAFETY: a non-NULL `kwnames` is a tuple of strings (see above).
            let names = unsafe { Borrowed::from_ptr(py, kwnames).cast_unchecked::<PyTuple>() };
            for (i, keyword) in names.iter_borrowed().enumerate() {
                let value = arg(nargs + i);
                if is_context_keyword(&keyword) {
                    // Only a caller from C can name an argument twice.
                    if context.replace(value).is_some() {
                        return Err(multiple_values(name, "context"));
                    }
                    continue;
                }
                let Some(param) = params.iter().position(|p| keyword_is(&keyword, p)) else {
                    return Err(unexpected_keyword(name, &keyword));
                };
                if leading[param].replace(value).is_some() {
                    return Err(multiple_values(name, params[param]));
                }
            }
        }
        if leading.iter().any(Option::is_none) {
            return Err(missing_arguments(name, &params, &leading));
        }
        Ok(Self {
            leading: leading.map(|slot| slot.expect("every parameter was checked above")),
            // SAFETY: as for `arg`, the positional arguments after the leading ones.
            args: unsafe { positional_tuple(py, args.add(N.min(nargs)), nargs.saturating_sub(N)) }?,
            context: context.filter(|ctx| !ctx.is_none()),
        })
    }
}

/// Whether a keyword argument's name is `context`.
///
/// asyncio's C `Future` and `Task` name it with a string of their own, made once and not
/// interned, in every `call_soon(callback, arg, context=ctx)`; once that string has matched by
/// value, it matches by identity.
// NOTE: comparing its text each time was 80 of the 1600 instructions of a call_soon.
fn is_context_keyword(keyword: &Bound<'_, PyAny>) -> bool {
    static SEEN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = keyword.py();
    if keyword.is(intern!(py, "context")) || SEEN.get(py).is_some_and(|seen| keyword.is(seen)) {
        return true;
    }
    let matches = keyword_is(keyword, "context");
    if matches {
        // The first string seen stays: a later, different one is still compared by value.
        SEEN.get_or_init(py, || keyword.clone().unbind());
    }
    matches
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

/// The four methods.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Soon,
    SoonThreadsafe,
    Later,
    At,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Self::Soon => "call_soon",
            Self::SoonThreadsafe => "call_soon_threadsafe",
            Self::Later => "call_later",
            Self::At => "call_at",
        }
    }

    /// Parses the arguments and schedules the handle the method returns.
    ///
    /// # Safety
    /// As [`CallArgs::parse`].
    unsafe fn call<'py>(
        self,
        slf: &Bound<'py, EventLoop>,
        args: *const *mut ffi::PyObject,
        nargs: usize,
        kwnames: *mut ffi::PyObject,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (py, name) = (slf.py(), self.name());
        if self == Self::Soon {
            // SAFETY: the caller's guarantee, passed on.
            if let Some(step) = unsafe { Step::from_c_asyncio(py, args, nargs, kwnames) } {
                if slf.get().schedule_step(py, step)? {
                    // The caller drops the result unseen (see `ready.rs`).
                    return Ok(py.None().into_bound(py));
                }
            }
        }
        Ok(match self {
            Self::Soon | Self::SoonThreadsafe => {
                // SAFETY: the caller's guarantee, passed on.
                let call =
                    unsafe { CallArgs::parse(py, name, ["callback"], args, nargs, kwnames) }?;
                EventLoop::schedule_soon(slf, call, self == Self::SoonThreadsafe)?.into_any()
            }
            Self::Later => {
                // SAFETY: as above.
                let call = unsafe {
                    CallArgs::parse(py, name, ["delay", "callback"], args, nargs, kwnames)
                }?;
                EventLoop::schedule_timer(slf, call, false)?.into_any()
            }
            Self::At => {
                // SAFETY: as above.
                let call = unsafe {
                    CallArgs::parse(py, name, ["when", "callback"], args, nargs, kwnames)
                }?;
                EventLoop::schedule_timer(slf, call, true)?.into_any()
            }
        })
    }
}

/// What the methods share: parse, schedule, and turn the outcome into what CPython expects
/// of a method (see `raw_method::guard`).
///
/// # Safety
/// CPython calls the methods with the interpreter attached, `slf` an `EventLoop` (the method
/// descriptor checks it), and `args`, `nargs`, `kwnames` as [`CallArgs::parse`] requires.
unsafe fn enter(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    method: Method,
) -> *mut ffi::PyObject {
    // SAFETY: see above, for `guard` and for `call` in the closure.
    unsafe {
        guard(slf, method.name(), |slf| {
            let nargs = usize::try_from(nargs).unwrap_or(0);
            method.call(slf, args, nargs, kwnames)
        })
    }
}

fastcall_entry!(pub(super) call_soon => enter(Method::Soon));
fastcall_entry!(pub(super) call_soon_threadsafe => enter(Method::SoonThreadsafe));
fastcall_entry!(pub(super) call_later => enter(Method::Later));
fastcall_entry!(pub(super) call_at => enter(Method::At));
