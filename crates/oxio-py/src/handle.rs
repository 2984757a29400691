//! asyncio's callback handles: `Handle` (scheduled by `call_soon`) and `TimerHandle` (by
//! `call_at`/`call_later`), with the attributes and repr that asyncio code reads.

use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyDict, PyTuple};
use pyo3::PyClassInitializer;

use crate::context;
use crate::errors::is_exit;
use crate::stdlib;

mod lifecycle;
pub mod prefetch;

use lifecycle::{is_tracked, set_tracked};
pub use lifecycle::{recycle, refill, release, track, untrack, SPARE_HANDLES};

/// A callback with its arguments and `contextvars.Context`, ready to run once.
///
/// Invariant: once `cancelled` is set, `callback` and `args` are `None` and the handle never
/// runs again (asyncio drops them so that cancelling breaks reference cycles).
// No PyO3 free list: it hands back objects set up with `PyObject_Init`, which the cyclic GC no
// longer tracks, so a cycle through a reused handle (`self.h = loop.call_soon(self.cb)`) leaked.
#[pyclass(subclass, module = "oxio._oxio")]
pub struct Handle {
    callback: Option<Py<PyAny>>,
    args: Option<Py<PyTuple>>,
    context: Option<Py<PyAny>>,
    /// The context is a copy made for this handle alone, so nothing else can close a cycle
    /// through it until `get_context()` hands it out (see [`untrack`]).
    private_context: bool,
    loop_: Option<Py<PyAny>>,
    cancelled: bool,
    /// What only debug mode records, boxed: a handle's fields are moved at every scheduling,
    /// and these would have been a third of them.
    // NOTE: unboxed, they made a handle 72 bytes instead of 48; boxing them took the CPU time
    // of the call_soon row down by 6% and call_later's by 5% (7 and 5 alternating runs).
    debug: Option<Box<DebugRecord>>,
}

/// A handle's debug-mode record.
#[derive(Default)]
struct DebugRecord {
    /// `extract_stack()` of the scheduling call.
    source_traceback: Option<Py<PyAny>>,
    /// The repr frozen at cancellation, as asyncio does, so a cancelled handle still says what
    /// it was.
    frozen_repr: Option<String>,
}

impl Handle {
    /// A handle running `callback(*args)` in `context`, or in a copy of the current context
    /// when `context` is `None`, as asyncio's `Handle` does.
    #[inline(always)]
    pub fn create(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        loop_: Py<PyAny>,
        context: Option<Py<PyAny>>,
        source_traceback: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let (context, private_context) = match context {
            Some(ctx) => (ctx, false),
            None => (context::copy_current(py)?, true),
        };
        Ok(Self {
            callback: Some(callback),
            args: Some(args),
            context: Some(context),
            private_context,
            loop_: Some(loop_),
            cancelled: false,
            debug: source_traceback.map(|tb| {
                Box::new(DebugRecord {
                    source_traceback: Some(tb),
                    frozen_repr: None,
                })
            }),
        })
    }

    /// A handle with nothing in it, as [`recycle`] leaves one.
    fn empty() -> Self {
        Self {
            callback: None,
            args: None,
            context: None,
            private_context: false,
            loop_: None,
            cancelled: false,
            debug: None,
        }
    }

    /// Takes `fields` in place of an empty handle's (see [`recycle`]).
    fn refill(&mut self, fields: Self) {
        debug_assert!(self.callback.is_none() && self.context.is_none() && self.loop_.is_none());
        // Dropping the empty value would only run `Drop` over its `None`s.
        std::mem::forget(std::mem::replace(self, fields));
    }

    /// The context, now visible to others: from here on the GC must always see it.
    fn shared_context(&mut self, py: Python<'_>) -> Option<Py<PyAny>> {
        let context = self.context.as_ref()?.bind(py);
        if self.private_context {
            self.private_context = false;
            if !is_tracked(context) {
                set_tracked(context, true);
            }
        }
        Some(context.clone().unbind())
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    pub fn mark_cancelled(&mut self, py: Python<'_>, repr: Option<String>) {
        if self.cancelled {
            return;
        }
        self.cancelled = true;
        if let Some(repr) = repr {
            self.debug.get_or_insert_default().frozen_repr = Some(repr);
        }
        // Dropping these inside a pyclass borrow is safe: any `__del__` they trigger may touch
        // other objects but not this handle's borrow, which only guards plain fields.
        let _ = py;
        self.callback = None;
        self.args = None;
    }

    fn source_traceback(&self) -> Option<&Py<PyAny>> {
        self.debug.as_ref()?.source_traceback.as_ref()
    }

    fn frozen_repr(&self) -> Option<&String> {
        self.debug.as_ref()?.frozen_repr.as_ref()
    }

    fn loop_ref(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.loop_.as_ref().map(|l| l.clone_ref(py))
    }

    /// The pieces of `repr(handle)`, asyncio's `_repr_info()`.
    fn repr_parts(&self, py: Python<'_>, class_name: &str) -> PyResult<Vec<String>> {
        let mut info = vec![class_name.to_owned()];
        if self.cancelled {
            info.push("cancelled".to_owned());
        }
        if let (Some(cb), Some(args)) = (&self.callback, &self.args) {
            let source = stdlib::format_callback_source(py, cb.bind(py), args.bind(py))?;
            info.push(source);
        }
        if let Some(tb) = self.source_traceback() {
            if let Some(line) = stdlib::frame_location(py, tb.bind(py))? {
                info.push(format!("created at {line}"));
            }
        }
        Ok(info)
    }
}

impl Drop for Handle {
    /// Drops the references as `Bound`s: dropping a `Py` checks a thread-local for the GIL
    /// first, once per field.
    // NOTE: this took `drop_in_place::<Handle>` from 137 to 82 instructions per handle, and
    // the call_soon row from 2162 to 2100 per callback (callgrind).
    fn drop(&mut self) {
        // SAFETY: handles are dropped only with the interpreter attached: by their
        // `tp_dealloc`, or by the loop's own code, which runs holding the GIL; no handle is ever
        // moved to a thread outside Python. The lifetime ends with this function.
        let py = unsafe { Python::assume_attached() };
        let traceback = self.debug.take().and_then(|debug| debug.source_traceback);
        for field in [
            self.callback.take(),
            self.context.take(),
            self.loop_.take(),
            traceback,
        ] {
            drop(field.map(|obj| obj.into_bound(py)));
        }
        drop(self.args.take().map(|args| args.into_bound(py)));
    }
}

/// Whether the handle's loop is in debug mode; asyncio freezes a cancelled handle's repr then.
fn loop_is_debug(py: Python<'_>, loop_: Option<&Py<PyAny>>) -> bool {
    loop_
        .and_then(|l| l.bind(py).call_method0(intern!(py, "get_debug")).ok())
        .and_then(|d| d.is_truthy().ok())
        .unwrap_or(false)
}

/// Runs `handle` in its context. Exceptions other than `SystemExit`/`KeyboardInterrupt` go to
/// the loop's exception handler, as asyncio's `Handle._run` sends them.
pub fn run(py: Python<'_>, handle: &Bound<'_, Handle>) -> PyResult<()> {
    // Bound clones, not `Py` ones: dropping a `Py` checks a thread-local for the GIL.
    let (callback, args, ctx) = {
        let this = handle.borrow();
        match (&this.callback, &this.args, &this.context) {
            (Some(cb), Some(args), Some(ctx)) if !this.cancelled => (
                cb.bind(py).clone(),
                args.bind(py).clone(),
                ctx.bind(py).clone(),
            ),
            _ => return Ok(()),
        }
    };
    let result = context::run_in(py, &ctx, || callback.call1(&args));
    match result {
        Ok(_) => Ok(()),
        Err(err) if is_exit(py, &err) => Err(err),
        Err(err) => report_error(py, handle, &callback, &args, err),
    }
}

/// Hands `err`, raised by `callback(*args)`, `handle`'s call, to the loop's exception handler
/// with asyncio's context: message, exception, handle and, in debug mode, where the handle was
/// made. The call is passed in, since running it may have cancelled the handle and emptied it.
#[cold]
pub(crate) fn report_error(
    py: Python<'_>,
    handle: &Bound<'_, Handle>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    err: PyErr,
) -> PyResult<()> {
    let (loop_, traceback) = {
        let this = handle.borrow();
        let Some(loop_) = this.loop_.as_ref().map(|l| l.clone_ref(py)) else {
            return Err(err);
        };
        (loop_, this.source_traceback().map(|t| t.clone_ref(py)))
    };
    let source = stdlib::format_callback_source(py, callback, args)?;
    let context = PyDict::new(py);
    context.set_item("message", format!("Exception in callback {source}"))?;
    context.set_item("exception", err.value(py))?;
    context.set_item("handle", handle)?;
    if let Some(tb) = traceback {
        context.set_item("source_traceback", tb)?;
    }
    loop_
        .bind(py)
        .call_method1("call_exception_handler", (context,))?;
    Ok(())
}

#[pymethods]
impl Handle {
    #[new]
    #[pyo3(signature = (callback, args, r#loop, context=None))]
    fn py_new(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        #[allow(unused_variables)] r#loop: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        Self::create(py, callback, args, r#loop, context, None)
    }

    fn cancel(slf: &Bound<'_, Self>, py: Python<'_>) -> PyResult<()> {
        let loop_ = {
            let this = slf.borrow();
            if this.cancelled {
                return Ok(());
            }
            this.loop_ref(py)
        };
        let repr = if loop_is_debug(py, loop_.as_ref()) {
            Some(slf.repr()?.extract::<String>()?)
        } else {
            None
        };
        slf.borrow_mut().mark_cancelled(py, repr);
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.cancelled
    }

    fn get_context(&mut self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.shared_context(py)
    }

    fn _run(slf: &Bound<'_, Self>, py: Python<'_>) -> PyResult<()> {
        run(py, slf)
    }

    #[getter(_callback)]
    fn callback_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter(_args)]
    fn args_attr(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.args.as_ref().map(|a| a.clone_ref(py))
    }

    #[getter(_loop)]
    fn loop_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.loop_.as_ref().map(|l| l.clone_ref(py))
    }

    #[getter(_context)]
    fn context_attr(&mut self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.shared_context(py)
    }

    #[getter(_cancelled)]
    fn cancelled_attr(&self) -> bool {
        self.cancelled
    }

    /// `extract_stack()` of the scheduling call, captured in debug mode only.
    #[getter(_source_traceback)]
    fn source_traceback_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback().map(|tb| tb.clone_ref(py))
    }

    fn _repr_info(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.repr_parts(py, "Handle")
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        if let Some(repr) = self.frozen_repr() {
            return Ok(repr.clone());
        }
        Ok(format!("<{}>", self.repr_parts(py, "Handle")?.join(" ")))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.callback)?;
        visit.call(&self.args)?;
        visit.call(&self.context)?;
        visit.call(&self.loop_)?;
        visit.call(self.source_traceback())?;
        Ok(())
    }

    fn __clear__(&mut self) {
        self.callback = None;
        self.args = None;
        self.context = None;
        self.loop_ = None;
        self.debug = None;
    }
}

/// A handle that fires at an absolute loop time.
#[pyclass(extends = Handle, subclass, module = "oxio._oxio")]
pub struct TimerHandle {
    when: f64,
    /// True while the handle sits in the loop's timer heap.
    #[pyo3(get, set, name = "_scheduled")]
    pub scheduled: bool,
}

impl TimerHandle {
    pub fn create(when: f64) -> Self {
        Self {
            when,
            scheduled: true,
        }
    }
}

#[pymethods]
impl TimerHandle {
    #[new]
    #[pyo3(signature = (when, callback, args, r#loop, context=None))]
    fn py_new(
        py: Python<'_>,
        when: f64,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        r#loop: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let base = Handle::py_new(py, callback, args, r#loop, context)?;
        Ok(PyClassInitializer::from(base).add_subclass(Self {
            when,
            scheduled: false,
        }))
    }

    fn when(&self) -> f64 {
        self.when
    }

    #[getter(_when)]
    fn when_attr(&self) -> f64 {
        self.when
    }

    /// Cancels the timer and tells the loop, which counts cancelled timers to know when to
    /// compact its heap (asyncio's `_timer_handle_cancelled`).
    fn cancel(slf: &Bound<'_, Self>, py: Python<'_>) -> PyResult<()> {
        let (loop_, scheduled) = {
            let this = slf.borrow();
            let base = this.as_super();
            if base.cancelled {
                return Ok(());
            }
            (base.loop_ref(py), this.scheduled)
        };
        let repr = if loop_is_debug(py, loop_.as_ref()) {
            Some(slf.repr()?.extract::<String>()?)
        } else {
            None
        };
        if let (Some(loop_), true) = (&loop_, scheduled) {
            loop_
                .bind(py)
                .call_method1(intern!(py, "_timer_handle_cancelled"), (slf,))?;
        }
        slf.borrow_mut().as_super().mark_cancelled(py, repr);
        Ok(())
    }

    fn _repr_info(slf: PyRef<'_, Self>, py: Python<'_>) -> PyResult<Vec<String>> {
        let mut info = slf.as_super().repr_parts(py, "TimerHandle")?;
        info.insert(1, format!("when={}", stdlib::float_repr(py, slf.when)?));
        Ok(info)
    }

    fn __repr__(slf: PyRef<'_, Self>, py: Python<'_>) -> PyResult<String> {
        if let Some(repr) = slf.as_super().frozen_repr() {
            return Ok(repr.clone());
        }
        Ok(format!("<{}>", Self::_repr_info(slf, py)?.join(" ")))
    }

    fn __hash__(&self) -> u64 {
        // asyncio hashes a TimerHandle by its deadline.
        let bits = self.when.to_bits();
        bits ^ (bits >> 32)
    }

    fn __richcmp__(
        slf: PyRef<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
        py: Python<'_>,
    ) -> PyResult<Py<PyAny>> {
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let other = other.borrow();
        let result = match op {
            CompareOp::Lt => slf.when < other.when,
            CompareOp::Le => slf.when < other.when || timer_eq(&slf, &other, py),
            CompareOp::Gt => slf.when > other.when,
            CompareOp::Ge => slf.when > other.when || timer_eq(&slf, &other, py),
            CompareOp::Eq => timer_eq(&slf, &other, py),
            CompareOp::Ne => !timer_eq(&slf, &other, py),
        };
        Ok(pyo3::types::PyBool::new(py, result)
            .to_owned()
            .into_any()
            .unbind())
    }
}

/// asyncio's `TimerHandle.__eq__`: same deadline, callback, arguments and cancellation state.
fn timer_eq(a: &PyRef<'_, TimerHandle>, b: &PyRef<'_, TimerHandle>, py: Python<'_>) -> bool {
    let (ha, hb) = (a.as_super(), b.as_super());
    let same = |x: &Option<Py<PyAny>>, y: &Option<Py<PyAny>>| match (x, y) {
        (Some(x), Some(y)) => x.bind(py).eq(y.bind(py)).unwrap_or(false),
        (None, None) => true,
        _ => false,
    };
    let same_args = match (&ha.args, &hb.args) {
        (Some(x), Some(y)) => x.bind(py).eq(y.bind(py)).unwrap_or(false),
        (None, None) => true,
        _ => false,
    };
    a.when == b.when
        && same(&ha.callback, &hb.callback)
        && same_args
        && ha.cancelled == hb.cancelled
}
