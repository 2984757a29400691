//! asyncio's callback handles: `Handle` (scheduled by `call_soon`) and `TimerHandle` (by
//! `call_at`/`call_later`), with the attributes and repr that asyncio code reads.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyDict, PyTuple};
use pyo3::PyClassInitializer;

use crate::attached_cell::{AttachedCell, AttachedRef};
use crate::context;
use crate::errors::is_exit;
use crate::stdlib;

mod lifecycle;
pub mod prefetch;

use lifecycle::{is_tracked, set_tracked};
pub use lifecycle::{recycle, refill, release, track, untrack, SpareView, SPARE_HANDLES};

/// A callback with its arguments and `contextvars.Context`, ready to run once.
///
/// Frozen to pyo3: its state sits in an [`AttachedCell`], locked only by Rust code that runs no
/// Python code meanwhile, so a handle costs no atomic operation on builds with a GIL.
// NOTE: pyo3's borrow flags took six atomic operations per callback. Without them, and with the
// fields moved one by one (see `HandleFields::take`), call_soon took 12% less CPU time and
// call_soon_threadsafe 13% (7 alternating runs).
// No PyO3 free list: it hands back objects set up with `PyObject_Init`, which the cyclic GC no
// longer tracks, so a cycle through a reused handle (`self.h = loop.call_soon(self.cb)`) leaked.
#[pyclass(subclass, frozen, module = "oxio._oxio")]
pub struct Handle {
    fields: AttachedCell<HandleFields>,
}

/// A handle's state.
///
/// Invariant: once `cancelled` is set, `callback` and `args` are `None` and the handle never
/// runs again (asyncio drops them so that cancelling breaks reference cycles).
#[derive(Default)]
pub struct HandleFields {
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

/// A handle's call, cloned out of it to be made or shown without the handle locked.
struct Call<'py> {
    callback: Bound<'py, PyAny>,
    args: Bound<'py, PyTuple>,
}

impl HandleFields {
    /// The state of a handle running `callback(*args)` in `context`, or in a copy of the
    /// current context when `context` is `None`, as asyncio's `Handle` does.
    #[inline(always)]
    pub fn new(
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

    /// Moves the state out, leaving an empty handle's, field by field.
    // NOTE: `mem::replace` of the whole struct read it back with wider loads than the stores
    // that had written it, and each such read stalled (store forwarding; perf annotate of the
    // call_soon row).
    fn take(&mut self) -> Self {
        Self {
            callback: self.callback.take(),
            args: self.args.take(),
            context: self.context.take(),
            private_context: std::mem::take(&mut self.private_context),
            loop_: self.loop_.take(),
            cancelled: std::mem::take(&mut self.cancelled),
            debug: self.debug.take(),
        }
    }

    /// Takes `fields` in place of an empty handle's (see [`recycle`]), field by field as
    /// [`Self::take`] does.
    fn refill(&mut self, fields: Self) {
        let Self {
            callback,
            args,
            context,
            private_context,
            loop_,
            cancelled,
            debug,
        } = fields;
        fill(&mut self.callback, callback);
        fill(&mut self.args, args);
        fill(&mut self.context, context);
        self.private_context = private_context;
        fill(&mut self.loop_, loop_);
        self.cancelled = cancelled;
        fill(&mut self.debug, debug);
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

    fn source_traceback(&self) -> Option<&Py<PyAny>> {
        self.debug.as_ref()?.source_traceback.as_ref()
    }

    fn frozen_repr(&self) -> Option<&String> {
        self.debug.as_ref()?.frozen_repr.as_ref()
    }

    fn loop_ref(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.loop_.as_ref().map(|l| l.clone_ref(py))
    }

    fn call<'py>(&self, py: Python<'py>) -> Option<Call<'py>> {
        match (&self.callback, &self.args) {
            (Some(callback), Some(args)) => Some(Call {
                callback: callback.bind(py).clone(),
                args: args.bind(py).clone(),
            }),
            _ => None,
        }
    }

    /// Drops the references as `Bound`s: dropping a `Py` checks a thread-local for the GIL
    /// first, once per field.
    // NOTE: this took dropping a handle's fields from 137 to 82 instructions, and the call_soon
    // row from 2162 to 2100 per callback (callgrind).
    fn release(self, py: Python<'_>) {
        let Self {
            callback,
            args,
            context,
            loop_,
            debug,
            ..
        } = self;
        let traceback = debug.and_then(|debug| debug.source_traceback);
        for field in [callback, context, loop_, traceback] {
            drop(field.map(|obj| obj.into_bound(py)));
        }
        drop(args.map(|args| args.into_bound(py)));
    }
}

/// Sets a field that is empty, without the code that would drop its old value: for the debug
/// record, that was a call per refill.
#[inline(always)]
fn fill<T>(slot: &mut Option<T>, value: Option<T>) {
    debug_assert!(slot.is_none());
    // SAFETY: `slot` is a valid place to write an `Option<T>`; not dropping what it held leaks
    // nothing, since it holds `None`.
    unsafe { std::ptr::write(slot, value) };
}

impl From<HandleFields> for Handle {
    fn from(fields: HandleFields) -> Self {
        Self {
            fields: AttachedCell::new(fields),
        }
    }
}

impl Handle {
    /// The handle's state, locked: no Python code may run, and no object may be dropped,
    /// until the guard is (see [`AttachedCell`]).
    #[inline(always)]
    fn lock<'py>(&self, py: Python<'py>) -> AttachedRef<'_, 'py, HandleFields> {
        self.fields.lock(py)
    }

    pub fn is_cancelled(&self, py: Python<'_>) -> bool {
        self.lock(py).cancelled
    }

    /// Marks the handle cancelled, keeping `repr` as its repr from now on (debug mode), and
    /// drops its callback and arguments.
    pub fn mark_cancelled(&self, py: Python<'_>, repr: Option<String>) {
        let dropped = {
            let mut this = self.lock(py);
            if this.cancelled {
                return;
            }
            this.cancelled = true;
            if let Some(repr) = repr {
                this.debug.get_or_insert_default().frozen_repr = Some(repr);
            }
            (this.callback.take(), this.args.take())
        };
        // Dropped unlocked: a `__del__` they trigger may look at this handle.
        drop(dropped);
    }

    /// The loop, unless the handle is cancelled already.
    fn loop_if_pending(&self, py: Python<'_>) -> Option<Option<Py<PyAny>>> {
        let this = self.lock(py);
        (!this.cancelled).then(|| this.loop_ref(py))
    }

    /// The pieces of `repr(handle)`, asyncio's `_repr_info()`.
    fn repr_parts(&self, py: Python<'_>, class_name: &str) -> PyResult<Vec<String>> {
        let (cancelled, call, traceback) = {
            let this = self.lock(py);
            let traceback = this.source_traceback().map(|tb| tb.clone_ref(py));
            (this.cancelled, this.call(py), traceback)
        };
        let mut info = vec![class_name.to_owned()];
        if cancelled {
            info.push("cancelled".to_owned());
        }
        if let Some(call) = call {
            let source = stdlib::format_callback_source(py, &call.callback, &call.args)?;
            info.push(source);
        }
        if let Some(tb) = traceback {
            if let Some(line) = stdlib::frame_location(py, tb.bind(py))? {
                info.push(format!("created at {line}"));
            }
        }
        Ok(info)
    }

    fn frozen_repr(&self, py: Python<'_>) -> Option<String> {
        self.lock(py).frozen_repr().cloned()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: handles are dropped only with the interpreter attached: by their
        // `tp_dealloc`, or by the loop's own code, which runs holding the GIL; no handle is ever
        // moved to a thread outside Python. The lifetime ends with this function.
        let py = unsafe { Python::assume_attached() };
        self.fields.get_mut().take().release(py);
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
    let (call, ctx) = {
        let this = handle.get().lock(py);
        match (this.call(py), &this.context) {
            (Some(call), Some(ctx)) if !this.cancelled => (call, ctx.bind(py).clone()),
            _ => return Ok(()),
        }
    };
    let result = context::run_in(py, &ctx, || call.callback.call1(&call.args));
    match result {
        Ok(_) => Ok(()),
        Err(err) if is_exit(py, &err) => Err(err),
        Err(err) => report_error(py, handle, &call.callback, &call.args, err),
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
        let this = handle.get().lock(py);
        let Some(loop_) = this.loop_ref(py) else {
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
        r#loop: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        Ok(HandleFields::new(py, callback, args, r#loop, context, None)?.into())
    }

    fn cancel(slf: &Bound<'_, Self>, py: Python<'_>) -> PyResult<()> {
        let Some(loop_) = slf.get().loop_if_pending(py) else {
            return Ok(());
        };
        let repr = if loop_is_debug(py, loop_.as_ref()) {
            Some(slf.repr()?.extract::<String>()?)
        } else {
            None
        };
        slf.get().mark_cancelled(py, repr);
        Ok(())
    }

    fn cancelled(&self, py: Python<'_>) -> bool {
        self.is_cancelled(py)
    }

    fn get_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.lock(py).shared_context(py)
    }

    fn _run(slf: &Bound<'_, Self>, py: Python<'_>) -> PyResult<()> {
        run(py, slf)
    }

    #[getter(_callback)]
    fn callback_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.lock(py).callback.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter(_args)]
    fn args_attr(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.lock(py).args.as_ref().map(|a| a.clone_ref(py))
    }

    #[getter(_loop)]
    fn loop_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.lock(py).loop_ref(py)
    }

    #[getter(_context)]
    fn context_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.lock(py).shared_context(py)
    }

    #[getter(_cancelled)]
    fn cancelled_attr(&self, py: Python<'_>) -> bool {
        self.is_cancelled(py)
    }

    /// `extract_stack()` of the scheduling call, captured in debug mode only.
    #[getter(_source_traceback)]
    fn source_traceback_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.lock(py).source_traceback().map(|tb| tb.clone_ref(py))
    }

    fn _repr_info(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.repr_parts(py, "Handle")
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        if let Some(repr) = self.frozen_repr(py) {
            return Ok(repr);
        }
        Ok(format!("<{}>", self.repr_parts(py, "Handle")?.join(" ")))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: the cyclic GC calls `tp_traverse` with the interpreter attached.
        let py = unsafe { Python::assume_attached() };
        // A collection that starts while the handle is locked skips it, as pyo3 skips an
        // object borrowed mutably: its references are being moved.
        let Some(this) = self.fields.try_lock(py) else {
            return Ok(());
        };
        visit.call(&this.callback)?;
        visit.call(&this.args)?;
        visit.call(&this.context)?;
        visit.call(&this.loop_)?;
        visit.call(this.source_traceback())?;
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let cleared = self.lock(py).take();
        cleared.release(py);
    }
}

/// A handle that fires at an absolute loop time.
#[pyclass(extends = Handle, subclass, frozen, module = "oxio._oxio")]
pub struct TimerHandle {
    when: f64,
    /// True while the handle sits in the loop's timer heap. Atomic only to make the frozen
    /// class `Sync`: relaxed loads and stores are plain moves.
    scheduled: AtomicBool,
}

impl TimerHandle {
    pub fn create(when: f64) -> Self {
        Self {
            when,
            scheduled: AtomicBool::new(true),
        }
    }

    pub fn is_scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    pub fn set_scheduled(&self, scheduled: bool) {
        self.scheduled.store(scheduled, Ordering::Relaxed);
    }

    /// Whether the timer `slf` is cancelled.
    pub fn is_cancelled(slf: &Bound<'_, Self>) -> bool {
        slf.as_super().get().is_cancelled(slf.py())
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
            scheduled: AtomicBool::new(false),
        }))
    }

    fn when(&self) -> f64 {
        self.when
    }

    #[getter(_when)]
    fn when_attr(&self) -> f64 {
        self.when
    }

    #[getter(_scheduled)]
    fn scheduled_attr(&self) -> bool {
        self.is_scheduled()
    }

    #[setter(_scheduled)]
    fn set_scheduled_attr(&self, scheduled: bool) {
        self.set_scheduled(scheduled);
    }

    /// Cancels the timer and tells the loop, which counts cancelled timers to know when to
    /// compact its heap (asyncio's `_timer_handle_cancelled`).
    fn cancel(slf: &Bound<'_, Self>, py: Python<'_>) -> PyResult<()> {
        let base = slf.as_super().get();
        let Some(loop_) = base.loop_if_pending(py) else {
            return Ok(());
        };
        let repr = if loop_is_debug(py, loop_.as_ref()) {
            Some(slf.repr()?.extract::<String>()?)
        } else {
            None
        };
        if let (Some(loop_), true) = (&loop_, slf.get().is_scheduled()) {
            loop_
                .bind(py)
                .call_method1(intern!(py, "_timer_handle_cancelled"), (slf,))?;
        }
        base.mark_cancelled(py, repr);
        Ok(())
    }

    /// asyncio's: the deadline follows "cancelled" when there is one.
    fn _repr_info(slf: &Bound<'_, Self>, py: Python<'_>) -> PyResult<Vec<String>> {
        let base = slf.as_super().get();
        let mut info = base.repr_parts(py, "TimerHandle")?;
        let at = if base.is_cancelled(py) { 2 } else { 1 };
        info.insert(
            at,
            format!("when={}", stdlib::float_repr(py, slf.get().when)?),
        );
        Ok(info)
    }

    fn __repr__(slf: &Bound<'_, Self>, py: Python<'_>) -> PyResult<String> {
        if let Some(repr) = slf.as_super().get().frozen_repr(py) {
            return Ok(repr);
        }
        Ok(format!("<{}>", Self::_repr_info(slf, py)?.join(" ")))
    }

    fn __hash__(&self) -> u64 {
        // asyncio hashes a TimerHandle by its deadline.
        let bits = self.when.to_bits();
        bits ^ (bits >> 32)
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
        py: Python<'_>,
    ) -> PyResult<Py<PyAny>> {
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, other.get().when);
        let result = match op {
            CompareOp::Lt => a < b,
            CompareOp::Le => a < b || timer_eq(slf, other),
            CompareOp::Gt => a > b,
            CompareOp::Ge => a > b || timer_eq(slf, other),
            CompareOp::Eq => timer_eq(slf, other),
            CompareOp::Ne => !timer_eq(slf, other),
        };
        Ok(pyo3::types::PyBool::new(py, result)
            .to_owned()
            .into_any()
            .unbind())
    }
}

/// asyncio's `TimerHandle.__eq__`: same deadline, callback, arguments and cancellation state.
fn timer_eq(a: &Bound<'_, TimerHandle>, b: &Bound<'_, TimerHandle>) -> bool {
    let py = a.py();
    // The calls are cloned out: comparing them runs Python code, with neither handle locked.
    let state = |timer: &Bound<'_, TimerHandle>| {
        let this = timer.as_super().get().lock(py);
        (this.cancelled, this.call(py))
    };
    let ((a_cancelled, a_call), (b_cancelled, b_call)) = (state(a), state(b));
    let same = |x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>| x.eq(y).unwrap_or(false);
    let same_call = match (&a_call, &b_call) {
        (Some(x), Some(y)) => same(&x.callback, &y.callback) && same(&x.args, &y.args),
        (None, None) => true,
        _ => false,
    };
    a.get().when == b.get().when && same_call && a_cancelled == b_cancelled
}
