//! The loop's `sock_*` coroutines as one native object that implements the coroutine protocol.
//!
//! `loop.sock_recv(sock, n)` returns a `SockCoroutine`: nothing happens until it is awaited or
//! sent `None` (so argument errors surface at the `await`, as from an `async def`). The first
//! step attempts the operation; if the socket would block, it registers a watcher on the fd and
//! yields a future, which the watcher's callback completes with the next successful attempt,
//! removing the watcher at once. A cancelled, thrown-into or closed coroutine removes its
//! watcher too, so none is left behind. asyncio's `selector_events.py` is the reference for every
//! check and every error; `ops.rs` holds the attempts.

mod ops;

use std::os::fd::RawFd;

use pyo3::exceptions::{
    PyBaseException, PyRuntimeError, PyStopIteration, PyTypeError, PyValueError,
};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};
use pyo3::{ffi, intern, PyTypeInfo};

use ops::Attempt;
pub(crate) use ops::Op;

use crate::errors::is_exit;
use crate::event_loop::{EventLoop, SockWait};
use crate::handle::Handle;
use crate::{stdlib, tasks};

/// A pending `sock_*` call: the coroutine that `await loop.sock_recv(...)` drives.
// NOTE: the in-process `sock_* echo 1 KiB` workload went from 118k to 44k user-space
// instructions per round trip (callgrind, N=4000 minus N=1000) when the `async def` glue
// (nested coroutine, lambda, BlockingIOError per blocked attempt, a done callback and a
// Python `remove_reader` per wait) became this object; the leanest `async def` (inline first
// attempt, asyncio's own shape) measured 91k. uvloop measures 73k, rloop 62k.
#[pyclass(module = "oxio._oxio")]
pub struct SockCoroutine {
    loop_: Py<EventLoop>,
    sock: Py<PyAny>,
    op: Op,
    state: State,
}

enum State {
    /// Not started: the first `send(None)` checks the socket and attempts the operation.
    Created,
    /// Waiting for `fut`, which the watcher's callback completes. The watcher is `None` once
    /// removed (the operation finished, or the coroutine was cancelled).
    Waiting {
        fut: Py<PyAny>,
        watcher: Option<(RawFd, Py<Handle>)>,
    },
    Finished,
}

/// What one step of the coroutine produced.
enum Step {
    /// Suspend on this future (asyncio's `yield fut`).
    Yield(Py<PyAny>),
    /// The coroutine returned this value.
    Return(Py<PyAny>),
}

impl SockCoroutine {
    pub(crate) fn new(loop_: &Bound<'_, EventLoop>, sock: Bound<'_, PyAny>, op: Op) -> Self {
        Self {
            loop_: loop_.clone().unbind(),
            sock: sock.unbind(),
            op,
            state: State::Created,
        }
    }

    fn step(slf: &Bound<'_, Self>, value: Option<&Bound<'_, PyAny>>) -> PyResult<Step> {
        let py = slf.py();
        let mut this = slf
            .try_borrow_mut()
            .map_err(|_| PyValueError::new_err("coroutine already executing"))?;
        match std::mem::replace(&mut this.state, State::Finished) {
            State::Created => {
                if value.is_some_and(|v| !v.is_none()) {
                    return Err(PyTypeError::new_err(
                        "can't send non-None value to a just-started coroutine",
                    ));
                }
                Self::start(slf, &mut this)
            }
            State::Waiting { fut, watcher } => {
                this.unwatch(py, watcher)?;
                let fut = fut.into_bound(py);
                if !fut.call_method0(intern!(py, "done"))?.is_truthy()? {
                    // What asyncio's future iterator says when resumed before its future is done.
                    return Err(PyRuntimeError::new_err("await wasn't used with future"));
                }
                Ok(Step::Return(
                    fut.call_method0(intern!(py, "result"))?.unbind(),
                ))
            }
            State::Finished => Err(PyRuntimeError::new_err(
                "cannot reuse already awaited coroutine",
            )),
        }
    }

    /// The first step: asyncio's checks, one attempt, and the wait if it would block.
    fn start(slf: &Bound<'_, Self>, this: &mut PyRefMut<'_, Self>) -> PyResult<Step> {
        let py = slf.py();
        let loop_ = this.loop_.bind(py).clone();
        let sock = this.sock.bind(py).clone();
        check_sock(&loop_, &sock)?;
        let (fd, kernel_said_blocked) = match this.op.attempt(&sock)? {
            Attempt::Done(value) => return Ok(Step::Return(value)),
            Attempt::WouldBlock(fd) => (fd, true),
            Attempt::Pending(Some(fd)) => (fd, false),
            Attempt::Pending(None) => (sock.call_method0(intern!(py, "fileno"))?.extract()?, false),
        };
        ensure_fd_no_transport(&loop_, fd)?;
        let fut = tasks::new_future(&loop_)?;
        // The task that receives the future checks this flag, which `Future.__await__` sets.
        // Set before the watcher exists, so nothing after the registration can fail.
        fut.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
        let callback = slf.getattr(intern!(py, "_ready"))?;
        let handle = EventLoop::add_fd_watcher(
            &loop_,
            this.op.writes(),
            fd,
            &callback,
            &PyTuple::empty(py),
            Some(&SockWait::new(&sock, kernel_said_blocked)),
        )?;
        this.state = State::Waiting {
            fut: fut.clone().unbind(),
            watcher: Some((fd, handle)),
        };
        Ok(Step::Yield(fut.unbind()))
    }

    /// Puts the watcher back, for a wait that goes on. When the kernel itself said the socket
    /// would block, its registration needs nothing (an edge-triggered one reports the next
    /// change, a level-triggered one the fd's state); otherwise the kernel checks the fd's
    /// present state again. The watcher is back first, so a failed check never loses it.
    fn keep_waiting(
        &mut self,
        sock: &Bound<'_, PyAny>,
        watcher: Option<(RawFd, Py<Handle>)>,
        kernel_said_blocked: bool,
    ) -> PyResult<()> {
        let fd = watcher.as_ref().map(|(fd, _)| *fd);
        if let State::Waiting { watcher: slot, .. } = &mut self.state {
            *slot = watcher;
        }
        match fd {
            Some(fd) if !kernel_said_blocked => EventLoop::recheck_fd_watcher(
                self.loop_.bind(sock.py()),
                fd,
                &SockWait::new(sock, false),
            ),
            _ => Ok(()),
        }
    }

    /// Removes the watcher unless someone else replaced it (asyncio's `_sock_read_done`).
    fn unwatch(&self, py: Python<'_>, watcher: Option<(RawFd, Py<Handle>)>) -> PyResult<()> {
        if let Some((fd, handle)) = watcher {
            if !handle.get().is_cancelled(py) {
                EventLoop::remove_fd_watcher(self.loop_.bind(py), self.op.writes(), fd, true)?;
            }
        }
        Ok(())
    }

    /// Ends the coroutine early (`throw`, `close`), removing its watcher.
    fn finish(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut this = slf
            .try_borrow_mut()
            .map_err(|_| PyValueError::new_err("coroutine already executing"))?;
        if let State::Waiting { watcher, .. } = std::mem::replace(&mut this.state, State::Finished)
        {
            this.unwatch(slf.py(), watcher)?;
        }
        Ok(())
    }
}

/// asyncio's `_check_ssl_socket` and, in debug mode, its non-blocking check.
fn check_sock(loop_: &Bound<'_, EventLoop>, sock: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = sock.py();
    // A plain `socket.socket` is not an `SSLSocket`; anything else is asked.
    if !sock.get_type().is(stdlib::socket_socket(py)?) {
        if let Some(ssl_socket) = stdlib::ssl_socket(py) {
            if sock.is_instance(ssl_socket)? {
                return Err(PyTypeError::new_err("Socket cannot be of type SSLSocket"));
            }
        }
    }
    if loop_.get().is_debug() {
        let timeout = sock.call_method0(intern!(py, "gettimeout"))?;
        if timeout.ne(0)? {
            return Err(PyValueError::new_err("the socket must be non-blocking"));
        }
    }
    Ok(())
}

/// asyncio's `_ensure_fd_no_transport`, asked only when a transport may hold the fd: the loop
/// keeps its transports by fd in `_transports_by_fd`, a `WeakValueDictionary` whose `data` dict
/// has the fd as a key while such a transport lives.
fn ensure_fd_no_transport(loop_: &Bound<'_, EventLoop>, fd: RawFd) -> PyResult<()> {
    let py = loop_.py();
    let attrs = loop_.getattr(intern!(py, "__dict__"))?;
    let Some(transports) = attrs
        .cast::<PyDict>()?
        .get_item(intern!(py, "_transports_by_fd"))?
    else {
        return Ok(());
    };
    let data = transports.getattr(intern!(py, "data"))?;
    if data.contains(fd)? {
        loop_.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
    }
    Ok(())
}

/// `throw`'s arguments as the exception to raise, with the checks of `generator.throw`.
fn exception_from(
    typ: &Bound<'_, PyAny>,
    val: Option<&Bound<'_, PyAny>>,
    tb: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyErr> {
    let py = typ.py();
    let val = val.filter(|v| !v.is_none());
    let exc = if typ.is_instance_of::<PyBaseException>() {
        if val.is_some() {
            return Err(PyTypeError::new_err(
                "instance exception may not have a separate value",
            ));
        }
        typ.clone()
    } else if typ
        .cast::<PyType>()
        .is_ok_and(|t| t.is_subclass_of::<PyBaseException>().unwrap_or(false))
    {
        match val {
            Some(v) if v.is_instance(typ)? => v.clone(),
            Some(v) => match v.cast::<PyTuple>() {
                Ok(args) => typ.call1(args)?,
                Err(_) => typ.call1((v,))?,
            },
            None => typ.call0()?,
        }
    } else {
        return Err(PyTypeError::new_err(format!(
            "exceptions must be classes or instances deriving from BaseException, not {}",
            typ.get_type().name()?
        )));
    };
    if let Some(tb) = tb.filter(|t| !t.is_none()) {
        exc.call_method1(intern!(py, "with_traceback"), (tb,))?;
    }
    Ok(PyErr::from_value(exc))
}

/// Gives `SockCoroutine` the `am_send` slot, which pyo3 cannot declare: `PyIter_Send` (how a
/// task steps its coroutine, and on 3.11 how `await` resumes one) then receives the return value
/// directly instead of through a `StopIteration` built per call.
// NOTE: with this slot (and the debug flag read natively) the echo round trip went from 44.0k to
// 37.1k instructions (callgrind).
pub(crate) fn install_am_send(py: Python<'_>) {
    let class = SockCoroutine::type_object(py);
    // SAFETY: the class is a heap type that pyo3 created with async slots (`__await__`), so
    // `tp_as_async` points into its own `PyHeapTypeObject` and may be written; this runs once,
    // at module initialisation with the GIL held, before any instance exists.
    unsafe {
        let slots = (*class.as_type_ptr()).tp_as_async;
        if !slots.is_null() {
            (*slots).am_send = Some(am_send);
        }
    }
}

/// The `am_send` slot: one step, reported as `PYGEN_NEXT` (a future to wait for),
/// `PYGEN_RETURN` (the result) or `PYGEN_ERROR` (an exception is set).
unsafe extern "C" fn am_send(
    slf: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
    out: *mut *mut ffi::PyObject,
) -> ffi::PySendResult {
    // SAFETY: CPython calls the slot with the GIL held, `slf` an instance of the class the slot
    // belongs to, `arg` a borrowed reference, and `out` writable.
    let py = unsafe { Python::assume_attached() };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: both pointers are borrowed references that outlive this call (see above).
        let (slf, arg) = unsafe {
            (
                Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<SockCoroutine>(),
                Bound::from_borrowed_ptr(py, arg),
            )
        };
        SockCoroutine::step(&slf, Some(&arg))
    }));
    let (result, value) = match outcome {
        Ok(Ok(Step::Yield(fut))) => (ffi::PySendResult::PYGEN_NEXT, fut.into_ptr()),
        Ok(Ok(Step::Return(value))) => (ffi::PySendResult::PYGEN_RETURN, value.into_ptr()),
        Ok(Err(err)) => {
            err.restore(py);
            (ffi::PySendResult::PYGEN_ERROR, std::ptr::null_mut())
        }
        Err(_) => {
            PanicException::new_err("panic in a sock_* coroutine").restore(py);
            (ffi::PySendResult::PYGEN_ERROR, std::ptr::null_mut())
        }
    };
    // SAFETY: `out` is writable (see above); it receives a new reference or NULL on error.
    unsafe { *out = value };
    result
}

fn stop_iteration(value: Py<PyAny>) -> PyErr {
    PyStopIteration::new_err((value,))
}

#[pymethods]
impl SockCoroutine {
    fn send(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match Self::step(slf, Some(value))? {
            Step::Yield(fut) => Ok(fut),
            Step::Return(value) => Err(stop_iteration(value)),
        }
    }

    fn __next__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        match Self::step(slf, None)? {
            Step::Yield(fut) => Ok(fut),
            Step::Return(value) => Err(stop_iteration(value)),
        }
    }

    #[pyo3(signature = (typ, val=None, tb=None))]
    fn throw(
        slf: &Bound<'_, Self>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let err = exception_from(typ, val, tb)?;
        Self::finish(slf)?;
        Err(err)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::finish(slf)
    }

    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// The watcher's callback: attempt again; finish the future unless it would still block.
    fn _ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        // A step in progress (only if a socket method re-entered the loop) owns the state, and
        // this wake-up is dropped; an edge-triggered registration reports nothing more until
        // the socket's state changes again (a known gap of that re-entrant case).
        let Ok(mut this) = slf.try_borrow_mut() else {
            return Ok(());
        };
        let State::Waiting { fut, watcher } = &mut this.state else {
            return Ok(());
        };
        let fut = fut.bind(py).clone();
        // Cancelled in an earlier callback of this iteration: the task's `throw` unwatches.
        if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        let watcher = watcher.take();
        let sock = this.sock.bind(py).clone();
        let outcome = match this.op.attempt(&sock) {
            // A spurious wake-up, or a step of progress (part of the data sent): wait on.
            Ok(Attempt::WouldBlock(_)) => return this.keep_waiting(&sock, watcher, true),
            Ok(Attempt::Pending(_)) => return this.keep_waiting(&sock, watcher, false),
            // asyncio lets these leave the loop and keeps waiting. A failed check cannot replace
            // them; the watcher stays known, so `throw`/`close` still remove it.
            Err(err) if is_exit(py, &err) => {
                let _ = this.keep_waiting(&sock, watcher, false);
                return Err(err);
            }
            other => other,
        };
        this.unwatch(py, watcher)?;
        drop(this);
        match outcome {
            Ok(Attempt::Done(value)) => fut.call_method1(intern!(py, "set_result"), (value,))?,
            Ok(Attempt::WouldBlock(_) | Attempt::Pending(_)) => unreachable!("handled above"),
            Err(err) => fut.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?,
        };
        Ok(())
    }

    #[getter]
    fn __name__(&self) -> &'static str {
        self.op.name()
    }

    #[getter]
    fn __qualname__(&self, py: Python<'_>) -> PyResult<String> {
        let class = self.loop_.bind(py).get_type().qualname()?;
        Ok(format!("{class}.{}", self.op.name()))
    }

    /// The future the coroutine waits for, as a native coroutine's `cr_await`.
    #[getter]
    fn cr_await(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        match &self.state {
            State::Waiting { fut, .. } => Some(fut.clone_ref(py)),
            _ => None,
        }
    }

    #[getter]
    fn cr_running(&self) -> bool {
        false
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        visit.call(&self.sock)?;
        self.op.traverse(&visit)?;
        if let State::Waiting { fut, watcher } = &self.state {
            visit.call(fut)?;
            if let Some((_, handle)) = watcher {
                visit.call(handle)?;
            }
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.state = State::Finished;
    }
}
