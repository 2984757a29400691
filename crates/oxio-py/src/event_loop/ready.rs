//! The ready queue's entries: handles, and the calls asyncio's C `Future` and `Task` schedule,
//! which need none.
//!
//! The C `Future` schedules its done callbacks, and the C `Task` its steps, through
//! `loop.call_soon(callback[, arg], context=ctx)`, and drops the handle it gets back without
//! looking at it. Such a call is recognised by its keyword names: the C module passes the one
//! tuple it made at start-up, which [`learn_c_asyncio_keywords`] finds out at module
//! initialisation by letting a C `Future` call a stand-in loop. For those calls the loop keeps
//! a [`Step`] instead of a handle object and returns `None`.
// NOTE: a task step made, ran and recycled a handle: a GC-tracked object allocation (or a
// spare's refill), its borrow flags and the argument tuple of a done callback. Without them
// (callgrind, instructions per operation): sleep(0) 5570 to 5280, create_task+await 17.2k to
// 16.3k, queue ping-pong 28.9k to 28.1k, gather 100k 33.1k to 30.7k; call_soon from Python
// 1602 to 1624 (the wider queue entry). CPU time, 7 alternating runs pinned to one CPU:
// gather -11% (from 5% behind rloop to 7% ahead), sleep(0) -6%, create_task -5%, queue -2.5%.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ptr;

use pyo3::ffi;
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{IntoPyDict, PyBool, PyDict, PyTuple};

use crate::context;
use crate::errors::is_exit;
use crate::handle::{self, Handle, HandleFields};
use crate::raw_method::MethodDef;

/// An entry of the ready queue.
pub(super) enum Ready {
    /// A handle, as `call_soon` returned it or as a watcher or a timer holds it.
    Handle(Py<Handle>),
    /// A callback scheduled by asyncio's C `Future` or `Task`.
    Step(Step),
}

/// Queues `entry` at the end of `queue`.
///
/// The room is made first, so that nothing can unwind once the entry exists: an entry that a
/// panic might have to drop is built on the stack and copied, and the copy, a wide load of
/// narrow stores just made, stalled (store forwarding). Here it is written in place.
// NOTE: the copy of a handle's entry was a third of `call_soon`'s own time (perf annotate).
#[inline(always)]
pub(super) fn push(queue: &mut VecDeque<Ready>, entry: impl FnOnce() -> Ready) {
    if queue.len() == queue.capacity() {
        grow(queue);
    }
    // SAFETY: there is room for one more entry: there was, or `grow` made it.
    unsafe { std::hint::assert_unchecked(queue.len() < queue.capacity()) };
    queue.push_back(entry());
}

#[cold]
#[inline(never)]
fn grow(queue: &mut VecDeque<Ready>) {
    queue.reserve(1);
}

/// `callback(arg)`, or `callback()`, in `context`: a call asyncio's C `Future` or `Task`
/// scheduled, with no handle object (see the module's documentation).
pub(super) struct Step {
    callback: Py<PyAny>,
    arg: Option<Py<PyAny>>,
    context: Py<PyAny>,
}

impl Step {
    /// The step a `call_soon` vectorcall describes, if it comes from asyncio's C `Future` or
    /// `Task`: `callback[, arg]` positionally and a non-`None` context by keyword.
    ///
    /// # Safety
    /// `args` holds `nargs` positional arguments followed by one value per name in `kwnames`
    /// (NULL when there are none), all borrowed references alive for the call.
    #[inline(always)]
    pub(super) unsafe fn from_c_asyncio(
        py: Python<'_>,
        args: *const *mut ffi::PyObject,
        nargs: usize,
        kwnames: *mut ffi::PyObject,
    ) -> Option<Self> {
        // A call without keywords, the common case from Python code, leaves at the first test.
        if kwnames.is_null() || !(1..=2).contains(&nargs) {
            return None;
        }
        if kwnames != C_ASYNCIO_KEYWORDS.get(py)?.as_ptr() {
            return None;
        }
        // SAFETY: the caller's guarantee: `nargs` positional arguments and the value of the
        // one keyword, `context`, right after them.
        let raw = |i: usize| unsafe { *args.add(i) };
        // SAFETY: as above; `Py_None` is only compared with.
        if raw(nargs) == unsafe { ffi::Py_None() } {
            return None;
        }
        // SAFETY: as above, each a live object the step takes a reference of its own to.
        let arg = |i: usize| unsafe { Bound::from_borrowed_ptr(py, raw(i)).unbind() };
        Some(Self {
            callback: arg(0),
            arg: (nargs == 2).then(|| arg(1)),
            context: arg(nargs),
        })
    }

    /// Runs the call in its context; exceptions go where [`handle::run`] sends a handle's.
    pub(super) fn run(self, py: Python<'_>, loop_: &Bound<'_, PyAny>) -> PyResult<()> {
        let callback = self.callback.bind(py);
        let result = context::run_in(py, self.context.bind(py), || match &self.arg {
            Some(arg) => callback.call1((arg,)),
            None => callback.call0(),
        });
        match result {
            Ok(_) => {
                self.release(py);
                Ok(())
            }
            Err(err) if is_exit(py, &err) => {
                self.release(py);
                Err(err)
            }
            Err(err) => self.report(py, loop_, err),
        }
    }

    /// Drops the references as `Bound`s: dropping a `Py` checks a thread-local for the GIL
    /// first, and the drop of a whole step was a call of its own.
    // NOTE: 61 instructions per step out of line; inline, create_task+await ran 184 fewer per
    // task and queue ping-pong 203 fewer per round trip (callgrind).
    fn release(self, py: Python<'_>) {
        let Self {
            callback,
            arg,
            context,
        } = self;
        drop(callback.into_bound(py));
        drop(arg.map(|arg| arg.into_bound(py)));
        drop(context.into_bound(py));
    }

    /// Hands a failed step to the loop's exception handler, with a handle made for the report,
    /// as asyncio's report names the handle.
    #[cold]
    fn report(self, py: Python<'_>, loop_: &Bound<'_, PyAny>, err: PyErr) -> PyResult<()> {
        let callback = self.callback.clone_ref(py).into_bound(py);
        let (handle, args) = self.into_handle_with_args(py, loop_)?;
        handle::report_error(py, &handle, &callback, &args, err)
    }

    /// The handle `call_soon` would have made for this call.
    pub(super) fn into_handle<'py>(
        self,
        py: Python<'py>,
        loop_: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, Handle>> {
        Ok(self.into_handle_with_args(py, loop_)?.0)
    }

    fn into_handle_with_args<'py>(
        self,
        py: Python<'py>,
        loop_: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, Handle>, Bound<'py, PyTuple>)> {
        let args = match self.arg {
            Some(arg) => PyTuple::new(py, [arg])?,
            None => PyTuple::empty(py),
        };
        let fields = HandleFields::new(
            py,
            self.callback,
            args.clone().unbind(),
            loop_.clone().unbind(),
            Some(self.context),
            None,
        )?;
        Ok((Bound::new(py, Handle::from(fields))?, args))
    }

    pub(super) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.callback)?;
        visit.call(&self.arg)?;
        visit.call(&self.context)
    }
}

/// The keyword names asyncio's C `Future` and `Task` pass to `call_soon`, once learnt.
static C_ASYNCIO_KEYWORDS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

thread_local! {
    /// What the stand-in loop's `call_soon` was last called with, while learning.
    static SEEN_KEYWORDS: Cell<*mut ffi::PyObject> = const { Cell::new(ptr::null_mut()) };
}

/// The stand-in loop's `call_soon`: records its keyword names and returns `None`.
unsafe extern "C" fn record_keywords(
    _slf: *mut ffi::PyObject,
    _args: *const *mut ffi::PyObject,
    _nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // `try_with`: a panic must not unwind into CPython (this thread's storage is alive while it
    // runs Python code, so the write always happens).
    let _ = SEEN_KEYWORDS.try_with(|seen| seen.set(kwnames));
    // SAFETY: the interpreter is attached (CPython is calling us); `None` is immortal or
    // reference counted, and the caller takes the new reference returned.
    unsafe { ffi::Py_NewRef(ffi::Py_None()) }
}

static RECORDER: MethodDef = MethodDef::with_keywords(
    c"call_soon",
    record_keywords,
    c"The stand-in loop's call_soon: records its keyword names.",
);

/// Learns the keyword names of asyncio's C `Future` and `Task` (see the module's
/// documentation). Without the C module, or if anything differs from what is expected, the
/// names stay unknown and every `call_soon` makes a handle.
pub(crate) fn learn_c_asyncio_keywords(py: Python<'_>) {
    if let Ok(Some(keywords)) = ask_c_future(py) {
        let _ = C_ASYNCIO_KEYWORDS.set(py, keywords);
    }
}

/// Completes a C `Future` whose loop is a stand-in, and returns the keyword names its done
/// callback was scheduled with, if they are `("context",)`.
fn ask_c_future(py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
    let future_class = py.import("_asyncio")?.getattr("Future")?;
    // SAFETY: `RECORDER` is static and never written; a NULL result sets the error fetched.
    let call_soon = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyCFunction_NewEx(
                ptr::from_ref(&RECORDER.0).cast_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
            ),
        )
    }?;
    let bool_type = py.get_type::<PyBool>();
    let stand_in = PyDict::new(py);
    stand_in.set_item("call_soon", call_soon)?;
    // `bool()` is False: the future asks its loop whether it runs in debug mode.
    stand_in.set_item("get_debug", &bool_type)?;
    let namespace = py.import("types")?.getattr("SimpleNamespace")?;
    let stand_in = namespace.call((), Some(&stand_in))?;
    let future = future_class.call((), Some(&[("loop", stand_in)].into_py_dict(py)?))?;
    let context = context::copy_current(py)?;
    let keywords = [("context", context)].into_py_dict(py)?;
    future.call_method("add_done_callback", (bool_type,), Some(&keywords))?;
    SEEN_KEYWORDS.set(ptr::null_mut());
    future.call_method1("set_result", (py.None(),))?;
    let seen = SEEN_KEYWORDS.replace(ptr::null_mut());
    if seen.is_null() {
        return Ok(None);
    }
    // SAFETY: the C module passed this tuple to the call just made and keeps it for its own
    // life; taking a reference of our own keeps it for ours.
    let seen = unsafe { Bound::from_borrowed_ptr(py, seen) };
    let expected = seen.cast::<PyTuple>().is_ok_and(|names| {
        names.len() == 1
            && names
                .get_item(0)
                .is_ok_and(|n| n.eq("context").unwrap_or(false))
    });
    Ok(expected.then(|| seen.unbind()))
}
