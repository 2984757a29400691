//! The fast paths of `create_future` and `create_task`: one call into asyncio's own
//! `Future`/`Task` (the C-accelerated classes), with keywords the loop made once, or for a task
//! with a name or context, by vectorcall with keyword names built once.

use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::event_loop::EventLoop;

/// The namespaces (`__dict__`) of `asyncio.futures` and `asyncio.tasks`.
static ASYNCIO_FUTURES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
static ASYNCIO_TASKS: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
static KW_LOOP_NAME_CONTEXT: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();

/// `module.<name>`, read from the module's namespace, where assigning the attribute (a test's
/// patch) puts it; the lookup is made at each call, as asyncio's `futures.Future(...)` makes it.
// NOTE: `getattr` on the module went through the generic attribute lookup, about 250
// instructions; one dict lookup is 40. Two futures per queue ping-pong round trip.
fn module_attribute<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyDict>>,
    module: &str,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    let namespace =
        cell.get_or_try_init(py, || PyResult::Ok(py.import(module)?.dict().unbind()))?;
    match namespace.bind(py).get_item(name)? {
        Some(value) => Ok(value),
        // Deleted: let the module raise its own AttributeError.
        None => py.import(module)?.getattr(name),
    }
}

/// The tuple of interned keyword names `names`, built once into `cell`. Only strings go in, which
/// is what [`vectorcall`] relies on.
fn kwnames<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyTuple>>,
    names: &[&str],
) -> PyResult<&'py Bound<'py, PyTuple>> {
    cell.get_or_try_init(py, || {
        let names = names.iter().map(|n| PyString::intern(py, n));
        Ok(PyTuple::new(py, names)?.unbind())
    })
    .map(|t| t.bind(py))
}

/// `callable(*args[..n_positional], **dict(zip(kwnames, args[n_positional..])))` by vectorcall,
/// where `kwnames` comes from [`kwnames`].
///
/// The argument array lives on the stack: in a `Vec`, its allocation and free were 250 of the
/// 30k instructions of a queue ping-pong round trip (callgrind).
fn vectorcall<'py, const N: usize>(
    callable: &Bound<'py, PyAny>,
    args: [&Bound<'py, PyAny>; N],
    kwnames: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    let raw = args.map(|a| a.as_ptr());
    // More names than arguments would have the callee read past `raw`.
    assert!(kwnames.len() <= N, "more keyword names than arguments");
    let positional = N - kwnames.len();
    // SAFETY: `raw` holds `N` borrowed pointers kept alive by `args` for the call; `kwnames`
    // (from `kwnames()`, so strings only) names the last of them, no more than there are, as
    // the vectorcall protocol requires. The result is a new reference or NULL with an
    // exception set.
    unsafe {
        let result = pyo3::ffi::PyObject_Vectorcall(
            callable.as_ptr(),
            raw.as_ptr(),
            positional,
            kwnames.as_ptr(),
        );
        Bound::from_owned_ptr_or_err(py, result)
    }
}

/// The keywords `create_future` and `create_task` pass to `Future` and `Task` when the task has
/// no name or context: `{"loop": loop}` and `{"loop": loop, "name": None, "context": None}`,
/// what asyncio passes.
pub struct CallKeywords {
    pub future: Py<PyDict>,
    pub task: Py<PyDict>,
}

impl CallKeywords {
    pub fn new(loop_: &Bound<'_, EventLoop>) -> PyResult<Self> {
        let py = loop_.py();
        let future = PyDict::new(py);
        future.set_item(intern!(py, "loop"), loop_)?;
        let task = future.copy()?;
        task.set_item(intern!(py, "name"), py.None())?;
        task.set_item(intern!(py, "context"), py.None())?;
        Ok(Self {
            future: future.unbind(),
            task: task.unbind(),
        })
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.future)?;
        visit.call(&self.task)
    }
}

/// `asyncio.Future(loop=loop)`, looking the class up at each call as asyncio does, so patches of
/// `asyncio.futures.Future` are honoured.
pub fn new_future<'py>(loop_: &Bound<'py, EventLoop>) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_.py();
    let future_class = module_attribute(
        py,
        &ASYNCIO_FUTURES,
        "asyncio.futures",
        intern!(py, "Future"),
    )?;
    let keywords = EventLoop::call_keywords(loop_, |k| &k.future)?;
    future_class.call((), Some(&keywords))
}

/// `asyncio.Task(coro, loop=loop, name=name, context=context)`; in debug mode the task's
/// creation traceback loses its last frame (ours), as asyncio's `create_task` does.
pub fn new_task<'py>(
    loop_: &Bound<'py, EventLoop>,
    coro: &Bound<'py, PyAny>,
    name: &Bound<'py, PyAny>,
    context: &Bound<'py, PyAny>,
    debug: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_.py();
    let task_class = module_attribute(py, &ASYNCIO_TASKS, "asyncio.tasks", intern!(py, "Task"))?;
    let task = if name.is_none() && context.is_none() {
        let keywords = EventLoop::call_keywords(loop_, |k| &k.task)?;
        task_class.call((coro,), Some(&keywords))?
    } else {
        let names = kwnames(py, &KW_LOOP_NAME_CONTEXT, &["loop", "name", "context"])?;
        vectorcall(&task_class, [coro, loop_.as_any(), name, context], names)?
    };
    if debug {
        let traceback = task.getattr(intern!(py, "_source_traceback"))?;
        if traceback.is_truthy()? {
            traceback.del_item(-1)?;
        }
    }
    Ok(task)
}
