//! The methods CPython calls once per callback, future or task, defined as raw C methods and
//! added to `EventLoop` at module initialisation: the scheduling methods (`scheduling.rs`),
//! `create_future`, `create_task`, and `get_debug`, which asyncio's `Future.__init__` calls
//! for every future and task.
//!
//! pyo3's entry into a method (trampoline, argument parser, wrapper) costs more than these
//! methods' own work; a raw method reads its arguments from the vectorcall array directly.
// NOTE: pyo3's entry took about 240 of the 1897 instructions per callback of the call_soon
// row, 60 per call of `create_future` and `get_debug`, four of which a queue ping-pong round
// trip makes, and 230 per `create_task` (callgrind).

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyTuple};
use pyo3::PyTypeInfo;

use super::scheduling;
use super::EventLoop;
use crate::raw_method::{
    self, guard, keyword_is, missing_arguments, multiple_values, too_many_positional,
    unexpected_keyword, MethodDef,
};
use crate::tasks;

/// `create_future()`: `asyncio.Future(loop=self)`.
unsafe extern "C" fn create_future(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a METH_NOARGS method of `EventLoop` as `guard` requires.
    unsafe { guard(slf, "create_future", tasks::new_future) }
}

/// `create_task(coro, *, name=None, context=None, **kwargs)`.
unsafe extern "C" fn create_task(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a METH_FASTCALL | METH_KEYWORDS method as `guard` and
    // `TaskArgs::parse` require.
    unsafe {
        guard(slf, "create_task", |slf| {
            let nargs = usize::try_from(nargs).unwrap_or(0);
            let call = TaskArgs::parse(slf.py(), args, nargs, kwnames)?;
            let (name, context) = (call.name.as_deref(), call.context.as_deref());
            EventLoop::create_task(slf, &call.coro, name, context, call.kwargs.as_ref())
        })
    }
}

/// `create_task`'s arguments, borrowed from the caller's argument array; keywords other than
/// `name` and `context` are gathered for `_create_task_slow`.
struct TaskArgs<'a, 'py> {
    coro: Borrowed<'a, 'py, PyAny>,
    name: Option<Borrowed<'a, 'py, PyAny>>,
    context: Option<Borrowed<'a, 'py, PyAny>>,
    kwargs: Option<Bound<'py, PyDict>>,
}

impl<'a, 'py> TaskArgs<'a, 'py> {
    /// # Safety
    /// `args` holds `nargs` positional arguments followed by one value per name in `kwnames`
    /// (NULL when there are none), all borrowed references alive for the call.
    unsafe fn parse(
        py: Python<'py>,
        args: *const *mut ffi::PyObject,
        nargs: usize,
        kwnames: *mut ffi::PyObject,
    ) -> PyResult<Self> {
        // SAFETY: the caller guarantees `args` and `kwnames` as documented above.
        let arg = |i: usize| unsafe { Borrowed::from_ptr(py, *args.add(i)) };
        if nargs > 1 {
            return Err(too_many_positional("create_task", nargs));
        }
        let mut coro = (nargs == 1).then(|| arg(0));
        let (mut name, mut context, mut kwargs) = (None, None, None);
        if !kwnames.is_null() {
            // SAFETY: a non-NULL `kwnames` is a tuple of strings (see above).
            let names = unsafe { Borrowed::from_ptr(py, kwnames).cast_unchecked::<PyTuple>() };
            for (i, keyword) in names.iter_borrowed().enumerate() {
                let value = arg(nargs + i);
                let (param, slot) = if keyword_is(&keyword, "name") {
                    ("name", &mut name)
                } else if keyword_is(&keyword, "context") {
                    ("context", &mut context)
                } else if keyword_is(&keyword, "coro") {
                    ("coro", &mut coro)
                } else if forwards_extra_keywords(py) {
                    let extra = kwargs.get_or_insert_with(|| PyDict::new(py));
                    extra.set_item(keyword, value)?;
                    continue;
                } else {
                    return Err(unexpected_keyword("create_task", &keyword));
                };
                if slot.replace(value).is_some() {
                    return Err(multiple_values("create_task", param));
                }
            }
        }
        let Some(coro) = coro else {
            return Err(missing_arguments::<()>("create_task", &["coro"], &[None]));
        };
        Ok(Self {
            coro,
            name: name.filter(|n| !n.is_none()),
            context: context.filter(|c| !c.is_none()),
            kwargs,
        })
    }
}

/// Whether `create_task` passes keywords it does not know on to the task (3.14 and later);
/// before, they are a `TypeError`, raised before the loop is even looked at.
#[cold]
fn forwards_extra_keywords(py: Python<'_>) -> bool {
    py.version_info() >= (3, 14)
}

/// `get_debug()`.
unsafe extern "C" fn get_debug(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: as for `create_future`.
    unsafe {
        guard(slf, "get_debug", |slf: &Bound<'_, EventLoop>| {
            let debug = slf.get().is_debug();
            Ok(PyBool::new(slf.py(), debug).to_owned().into_any())
        })
    }
}

static METHODS: [MethodDef; 7] = [
    MethodDef::with_keywords(
        c"call_soon",
        scheduling::call_soon,
        c"call_soon($self, callback, *args, context=None)\n--\n\nArrange for a callback to be called as soon as possible.",
    ),
    MethodDef::with_keywords(
        c"call_soon_threadsafe",
        scheduling::call_soon_threadsafe,
        c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\nLike call_soon(), but thread-safe.",
    ),
    MethodDef::with_keywords(
        c"call_later",
        scheduling::call_later,
        c"call_later($self, delay, callback, *args, context=None)\n--\n\nArrange for a callback to be called at a given time.",
    ),
    MethodDef::with_keywords(
        c"call_at",
        scheduling::call_at,
        c"call_at($self, when, callback, *args, context=None)\n--\n\nLike call_later(), but uses an absolute time.",
    ),
    MethodDef::no_arguments(
        c"create_future",
        create_future,
        c"create_future($self, /)\n--\n\nCreate a Future object attached to the loop.",
    ),
    MethodDef::with_keywords(
        c"create_task",
        create_task,
        c"create_task($self, coro, *, name=None, context=None, **kwargs)\n--\n\nSchedule a coroutine object.\n\nReturn a task object.",
    ),
    MethodDef::no_arguments(
        c"get_debug",
        get_debug,
        c"get_debug($self, /)\n--\n\nWhether the loop runs in debug mode.",
    ),
];

/// Adds the methods to `EventLoop`, once, at module initialisation.
pub(crate) fn install(py: Python<'_>) -> PyResult<()> {
    raw_method::install(&EventLoop::type_object(py), &METHODS)
}
