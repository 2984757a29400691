//! The Rust base class of `oxio.Loop`: ready queue, timers, fd watchers and `run_once`.
//!
//! `run_once` follows the numbered phases of `docs/design.md`. Everything that runs once per
//! loop or per connection (task factories, executors, signals, exception handlers) lives in the
//! Python subclass; everything that runs once per callback lives here.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use oxio_core::{monotonic, Events, FdMap, Interest, Poller, TimerHeap, Waker};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{intern, PyClassInitializer};

use crate::attached_cell::{AttachedCell, AttachedRef};
use crate::errors::os_error;
use crate::handle::{self, prefetch, Handle, HandleFields, TimerHandle, SPARE_HANDLES};
use crate::sock::{Op, SockCoroutine};
use crate::tasks::{self, CallKeywords};
use ready::{Ready, Step};
use scheduling::CallArgs;

pub(crate) use raw_methods::install as install_raw_methods;
pub(crate) use ready::learn_c_asyncio_keywords;
pub(crate) use watchers::SockWait;

mod iteration;
mod raw_methods;
mod ready;
mod scheduling;
mod watchers;

/// Token of the waker in the poller; fds use their own number and a generation
/// (`watchers::parse_token`), which never make this one.
const WAKER_TOKEN: u64 = u64::MAX;
const EVENTS_CAPACITY: usize = 1024;
/// The ready-queue length from which a running loop takes newly made handles out of the
/// cyclic GC's view (see `handle::untrack`). A handle in a short queue is gone before a
/// collection comes around; in a long one (`gather` of thousands of tasks) each handle was
/// traversed again by every collection until its turn came.
// NOTE: gather 100k ran PyO3's `tp_traverse` on queued handles for 170M instructions, 20M
// with this; the row's total fell 4% (callgrind) and went from 0.86x to 1.05x rloop.
const UNTRACKED_READY_LENGTH: usize = 256;

/// State touched by the loop thread and, for `call_soon_threadsafe`, by other threads, behind
/// an `AttachedCell`: the GIL orders them on builds that have one.
///
/// Invariant: no Python code runs while the lock is held, and no Python object is dropped under
/// it (a `__del__` could call back into the loop, and find it locked). Objects leave the lock
/// first. The one exception is the weak references of `fds`, which have no callback: releasing
/// one runs no Python code.
struct Core {
    ready: VecDeque<Ready>,
    timers: TimerHeap<Py<TimerHandle>>,
    /// Cancelled timers still in the heap (counted by `_timer_handle_cancelled`).
    cancelled_timers: usize,
    readers: FdMap<Py<Handle>>,
    writers: FdMap<Py<Handle>>,
    /// Registrations the `sock_*` coroutines keep edge-triggered (`watchers::FdStates`).
    fds: watchers::FdStates,
    /// Handles that have run, emptied for `call_soon` to refill (`handle::recycle`).
    spare_handles: Vec<Py<Handle>>,
    /// `None` once the loop is closed: closing releases the epoll fd and the eventfd at once.
    poller: Option<Arc<Poller>>,
    waker: Option<Arc<Waker>>,
}

/// What one iteration reuses from the last: the poll's results, the batch of callbacks being
/// run (the other half of the ready queue's double buffer, swapped out whole rather than
/// popped under the lock once per callback), and the lists a batch fills for later. All are
/// empty between iterations and keep their capacity, so an iteration allocates and frees
/// nothing. `_run_forever` owns them for its whole run, so no lock guards them.
// NOTE: one lock round-trip per iteration instead of per callback gave call_soon about 3%.
// Holding these in a mutex of the loop cost two more lock round trips per iteration. Made
// afresh each iteration, the empty lists were dropped through out-of-line calls: 68
// instructions and 8 instruction-cache misses per iteration of the queue ping-pong row
// (callgrind --cache-sim).
struct IterationBuffers {
    events: Events,
    batch: VecDeque<Ready>,
    /// The handles the last batch emptied for reuse, handed to `Core::spare_handles` when the
    /// next iteration takes the lock.
    recycled: Vec<Py<Handle>>,
    /// The timers phase 4 takes out of the heap, before it looks at them.
    due_timers: Vec<Py<TimerHandle>>,
    /// What the loop dropped under its lock, released once it is out (see `Core`).
    dead_handles: Vec<Py<Handle>>,
    dead_timers: Vec<Py<TimerHandle>>,
}

impl IterationBuffers {
    fn new() -> Self {
        Self {
            events: Events::with_capacity(EVENTS_CAPACITY),
            batch: VecDeque::new(),
            recycled: Vec::new(),
            due_timers: Vec::new(),
            dead_handles: Vec::new(),
            dead_timers: Vec::new(),
        }
    }
}

#[pyclass(subclass, frozen, module = "oxio._oxio")]
pub struct EventLoop {
    core: AttachedCell<Core>,
    stopping: AtomicBool,
    closed: AtomicBool,
    debug: AtomicBool,
    /// `threading.get_ident()` of the thread running the loop, 0 when not running.
    thread_id: AtomicU64,
    task_factory: AttachedCell<Option<Py<PyAny>>>,
    /// Made on first use by [`EventLoop::call_keywords`].
    call_keywords: AttachedCell<Option<CallKeywords>>,
}

fn current_thread_id() -> u64 {
    // SAFETY: pthread_self has no preconditions. Python's `threading.get_ident()` returns the
    // same value on Linux.
    unsafe { libc::pthread_self() as u64 }
}

/// Ends a run of the loop however `_run_forever` ends, a panic included: the loop is no longer
/// running, and every handle it holds is back in the cyclic GC's view (a private context that
/// died out of view would corrupt the GC's list).
struct Running<'a, 'py>(&'a Bound<'py, EventLoop>);

impl Drop for Running<'_, '_> {
    fn drop(&mut self) {
        let this = self.0.get();
        this.stopping.store(false, Ordering::Relaxed);
        this.thread_id.store(0, Ordering::Relaxed);
        this.track_scheduled(self.0.py());
    }
}

/// Releases every handle of `list`, seen as the `Handle` that `as_handle` makes of it,
/// prefetching the next ones: the handles of a long list have left the caches.
fn release_each<'py, T: pyo3::PyClass>(
    py: Python<'py>,
    list: &mut Vec<Py<T>>,
    as_handle: impl Fn(Bound<'py, T>) -> Bound<'py, Handle>,
) {
    let mut list = list.drain(..);
    while let Some(item) = list.next() {
        prefetch::ahead(py, |i| list.as_slice().get(i));
        handle::release(as_handle(item.into_bound(py)));
    }
}

fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

impl EventLoop {
    /// The loop's state, locked: no Python code may run, and no object may be dropped, until
    /// the guard is (see `Core`).
    #[inline(always)]
    fn core<'py>(&self, py: Python<'py>) -> AttachedRef<'_, 'py, Core> {
        self.core.lock(py)
    }

    /// The keywords of the calls to `Future` and `Task` that `create_future` and `create_task`
    /// make, made once and passed to every call, which only reads them. A closed loop makes new
    /// ones per call (see `_close`).
    // NOTE: calling `Future` or `Task` by vectorcall with keyword names made CPython build and
    // free a dict per call, about 490 of the 1,840 instructions of `create_future` (callgrind).
    pub(crate) fn call_keywords<'py>(
        slf: &Bound<'py, Self>,
        which: fn(&CallKeywords) -> &Py<PyDict>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        if let Some(keywords) = slf.get().call_keywords.lock(py).as_ref() {
            return Ok(which(keywords).bind(py).clone());
        }
        let keywords = CallKeywords::new(slf)?;
        let picked = which(&keywords).bind(py).clone();
        if !slf.get().closed.load(Ordering::Relaxed) {
            *slf.get().call_keywords.lock(py) = Some(keywords);
        }
        Ok(picked)
    }

    fn task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let slot = self.task_factory.lock(py);
        slot.as_ref().map(|f| f.clone_ref(py))
    }

    /// The epoll instance and the eventfd that wakes it, registered in it (out of fds: EMFILE).
    fn open_poller() -> io::Result<(Arc<Poller>, Arc<Waker>)> {
        let poller = Arc::new(Poller::new()?);
        let waker = Arc::new(Waker::new()?);
        let readable = Interest {
            readable: true,
            writable: false,
        };
        poller.add(
            std::os::fd::AsRawFd::as_raw_fd(&*waker),
            WAKER_TOKEN,
            readable,
        )?;
        Ok((poller, waker))
    }

    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(closed_error());
        }
        Ok(())
    }

    pub(crate) fn is_debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    /// asyncio's `_check_thread`, done in debug mode only.
    fn check_thread(&self) -> PyResult<()> {
        let owner = self.thread_id.load(Ordering::Relaxed);
        if owner != 0 && owner != current_thread_id() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// Debug-mode checks and the source traceback asyncio records for every handle.
    // NOTE: inlined, the common case (debug off) is one load; the call and the move of its
    // result cost call_soon 1712 instead of 1673 instructions per callback (callgrind).
    #[inline]
    fn debug_checks(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<Option<Py<PyAny>>> {
        if !slf.get().is_debug() {
            return Ok(None);
        }
        Self::debug_checks_on(slf, callback, method, check_thread).map(Some)
    }

    #[cold]
    fn debug_checks_on(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<Py<PyAny>> {
        if check_thread {
            slf.get().check_thread()?;
        }
        slf.call_method1(intern!(slf.py(), "_check_callback"), (callback, method))?;
        Ok(slf
            .call_method0(intern!(slf.py(), "_extract_stack"))?
            .unbind())
    }

    /// Inlined, as `HandleFields::new` is into it: a handle's fields returned through memory were
    /// read back at once, and the wide reads of narrow writes stalled (store forwarding).
    // NOTE: call_soon went from 1675 to 1628 instructions per callback (callgrind) and its time
    // down by about 2%; sleep(0), queue ping-pong and call_later by 1-1.5% in instructions.
    #[inline(always)]
    fn new_handle(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        source_traceback: Option<Py<PyAny>>,
    ) -> PyResult<HandleFields> {
        HandleFields::new(
            slf.py(),
            callback.clone().unbind(),
            args.clone().unbind(),
            slf.clone().into_any().unbind(),
            context.filter(|ctx| !ctx.is_none()).map(Bound::unbind),
            source_traceback,
        )
    }

    fn schedule_ready(&self, handle: &Bound<'_, Handle>) -> PyResult<()> {
        let mut core = self.core(handle.py());
        if core.poller.is_none() {
            return Err(closed_error());
        }
        if Self::keeps_out_of_view(&core, self.running()) {
            handle::untrack(handle);
        }
        let entry = handle.clone().unbind();
        ready::push(&mut core.ready, || Ready::Handle(entry));
        Ok(())
    }

    /// Schedules a call of asyncio's C `Future` or `Task` without a handle (see `ready.rs`);
    /// false in debug mode, where it takes `call_soon`'s full path, checks and all.
    fn schedule_step(&self, py: Python<'_>, step: Step) -> PyResult<bool> {
        self.check_closed()?;
        if self.is_debug() {
            return Ok(false);
        }
        let mut core = self.core(py);
        if core.poller.is_none() {
            drop(core);
            return Err(closed_error());
        }
        ready::push(&mut core.ready, || Ready::Step(step));
        Ok(true)
    }

    /// `call_soon` and `call_soon_threadsafe` (see `scheduling.rs` for how they are called).
    fn schedule_soon<'py>(
        slf: &Bound<'py, Self>,
        call: CallArgs<'_, 'py, 1>,
        threadsafe: bool,
    ) -> PyResult<Bound<'py, Handle>> {
        let [callback] = call.leading;
        let this = slf.get();
        this.check_closed()?;
        let method = if threadsafe {
            "call_soon_threadsafe"
        } else {
            "call_soon"
        };
        let traceback = Self::debug_checks(slf, &callback, method, !threadsafe)?;
        let context = call.context.map(|ctx| ctx.to_owned());
        let fields = Self::new_handle(slf, &callback, &call.args, context, traceback)?;
        let handle = this.schedule_new(slf.py(), fields)?;
        // The loop's own thread is not blocked in a poll, so it needs no wake-up.
        if threadsafe && this.thread_id.load(Ordering::Relaxed) != current_thread_id() {
            this.wake(slf.py());
        }
        Ok(handle)
    }

    /// asyncio's `create_task`. Without a task factory or extra keywords this is one call into
    /// `asyncio.Task`; otherwise the Python subclass's `_create_task_slow` applies CPython's
    /// calling conventions for factories. Python calls it through the raw method of
    /// `raw_methods.rs`, which parses its arguments.
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        this.check_closed()?;
        let py = slf.py();
        let none = py.None().into_bound(py);
        let name = name.unwrap_or(&none);
        let context = context.unwrap_or(&none);
        let has_factory = this.task_factory(py).is_some();
        if has_factory || kwargs.is_some_and(|k| !k.is_empty()) {
            let slow = intern!(py, "_create_task_slow");
            return slf.call_method(slow, (coro, name, context), kwargs);
        }
        tasks::new_task(slf, coro, name, context, this.is_debug())
    }

    /// Schedules a new handle holding `fields`: a spare one when the loop has one, else a new
    /// object.
    fn schedule_new<'py>(
        &self,
        py: Python<'py>,
        fields: HandleFields,
    ) -> PyResult<Bound<'py, Handle>> {
        {
            let mut core = self.core(py);
            if core.poller.is_none() {
                drop(core);
                return Err(closed_error());
            }
            if let Some(spare) = core.spare_handles.pop() {
                // `running()` read once: the context may stay out of view only if the handle
                // does (see `handle::track`).
                let running = self.running();
                let view = handle::SpareView {
                    handle: !running,
                    context: !Self::keeps_out_of_view(&core, running),
                };
                let handle = handle::refill(spare.into_bound(py), fields, view);
                let entry = handle.clone().unbind();
                ready::push(&mut core.ready, || Ready::Handle(entry));
                return Ok(handle);
            }
        }
        let handle = Bound::new(py, Handle::from(fields))?;
        self.schedule_ready(&handle)?;
        Ok(handle)
    }

    /// Keeps the handles the last batch emptied for reuse, up to `SPARE_HANDLES`; the rest
    /// join `garbage`, to be freed outside the lock.
    fn keep_spares(core: &mut Core, recycled: &mut Vec<Py<Handle>>, garbage: &mut Vec<Py<Handle>>) {
        let room = SPARE_HANDLES.saturating_sub(core.spare_handles.len());
        if recycled.len() > room {
            garbage.extend(recycled.drain(room..));
        }
        core.spare_handles.append(recycled);
    }

    /// Whether a handle joining the ready queue now stays out of the cyclic GC's view.
    fn keeps_out_of_view(core: &Core, running: bool) -> bool {
        running && core.ready.len() >= UNTRACKED_READY_LENGTH
    }

    /// Empties the ready queue, the timer heap, the watchers and the spare handles, handing
    /// their handles back to be released outside the lock; the ready queue's steps go with
    /// them, to be dropped there too.
    fn take_scheduled(&self, py: Python<'_>) -> (Vec<Py<Handle>>, Vec<Py<TimerHandle>>, Vec<Step>) {
        let mut core = self.core(py);
        let (mut handles, mut steps) = (Vec::new(), Vec::new());
        for entry in core.ready.drain(..) {
            match entry {
                Ready::Handle(handle) => handles.push(handle),
                Ready::Step(step) => steps.push(step),
            }
        }
        handles.append(&mut core.spare_handles);
        handles.extend(core.readers.drain().map(|(_, h)| h));
        handles.extend(core.writers.drain().map(|(_, h)| h));
        (handles, core.timers.drain(), steps)
    }

    /// Releases `handles` and `timers` (see `handle::release`), leaving both lists empty.
    #[inline(never)]
    fn release_all(
        py: Python<'_>,
        handles: &mut Vec<Py<Handle>>,
        timers: &mut Vec<Py<TimerHandle>>,
    ) {
        release_each(py, handles, |handle| handle);
        release_each(py, timers, Bound::into_super);
    }

    fn running(&self) -> bool {
        self.thread_id.load(Ordering::Relaxed) != 0
    }

    /// The eventfd write happens outside the loop's lock, so a waking thread's system call
    /// never stalls the loop thread's critical sections.
    fn wake(&self, py: Python<'_>) {
        let waker = self.core(py).waker.clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// `call_later` (`absolute` false) and `call_at` (see `scheduling.rs`).
    fn schedule_timer<'py>(
        slf: &Bound<'py, Self>,
        call: CallArgs<'_, 'py, 2>,
        absolute: bool,
    ) -> PyResult<Bound<'py, TimerHandle>> {
        let [time, callback] = call.leading;
        let when = if absolute {
            seconds(&time, "when cannot be None")?
        } else {
            monotonic() + seconds(&time, "delay must not be None")?
        };
        let this = slf.get();
        this.check_closed()?;
        let traceback = Self::debug_checks(slf, &callback, "call_at", true)?;
        let context = call.context.map(|ctx| ctx.to_owned());
        let base = Self::new_handle(slf, &callback, &call.args, context, traceback)?;
        let init =
            PyClassInitializer::from(Handle::from(base)).add_subclass(TimerHandle::create(when));
        let timer = Bound::new(slf.py(), init)?;
        let mut core = this.core(slf.py());
        if core.poller.is_none() {
            return Err(closed_error());
        }
        if this.running() {
            handle::untrack(timer.as_super());
        }
        core.timers.push(when, timer.clone().unbind());
        Ok(timer)
    }
}

/// A deadline or delay argument, with asyncio's error for `None`.
fn seconds(value: &Bound<'_, PyAny>, none_message: &str) -> PyResult<f64> {
    if value.is_none() {
        return Err(PyTypeError::new_err(none_message.to_owned()));
    }
    value.extract::<f64>()
}

#[pymethods]
impl EventLoop {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let (poller, waker) = Self::open_poller().map_err(|err| os_error(py, err))?;
        Ok(Self {
            core: AttachedCell::new(Core {
                ready: VecDeque::new(),
                timers: TimerHeap::new(),
                cancelled_timers: 0,
                readers: FdMap::default(),
                writers: FdMap::default(),
                fds: Default::default(),
                spare_handles: Vec::new(),
                poller: Some(poller),
                waker: Some(waker),
            }),
            stopping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            thread_id: AtomicU64::new(0),
            task_factory: AttachedCell::new(None),
            call_keywords: AttachedCell::new(None),
        })
    }

    /// `time.monotonic()`, the loop's clock.
    fn time(&self) -> f64 {
        monotonic()
    }

    fn set_task_factory(&self, py: Python<'_>, factory: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        if let Some(f) = &factory {
            if f.is_none() {
                return self.set_task_factory(py, None);
            }
            if !f.is_callable() {
                return Err(PyTypeError::new_err(
                    "task factory must be a callable or None",
                ));
            }
        }
        let previous = {
            let mut slot = self.task_factory.lock(py);
            std::mem::replace(&mut *slot, factory.map(Bound::unbind))
        };
        // Dropped outside the lock, as everything Python is.
        drop(previous);
        Ok(())
    }

    fn get_task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.task_factory(py)
    }

    #[getter(_task_factory)]
    fn task_factory_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.task_factory(py)
    }

    /// Counts a cancelled timer that is still in the heap (asyncio's hook of the same name).
    fn _timer_handle_cancelled(&self, py: Python<'_>, handle: &Bound<'_, TimerHandle>) {
        if handle.get().is_scheduled() {
            self.core(py).cancelled_timers += 1;
        }
    }

    /// Queues an existing handle (a signal handler's) for the next iteration.
    fn _schedule_handle(&self, handle: &Bound<'_, Handle>) -> PyResult<()> {
        self.schedule_ready(handle)?;
        self.wake(handle.py());
        Ok(())
    }

    /// Wakes a blocked poll (asyncio's `_write_to_self`).
    fn _write_to_self(&self, py: Python<'_>) {
        self.wake(py);
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::add_watcher(slf, false, fd, callback, args)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::add_watcher(slf, true, fd, callback, args)
    }

    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watcher(slf, false, fd)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_watcher(slf, true, fd)
    }

    /// Whether `fd` has a reader (asyncio's selector keeps this in its key map).
    fn _has_reader(&self, py: Python<'_>, fd: RawFd) -> bool {
        self.core(py).readers.contains_key(&fd)
    }

    fn _has_writer(&self, py: Python<'_>, fd: RawFd) -> bool {
        self.core(py).writers.contains_key(&fd)
    }

    // asyncio's `sock_*` coroutines, each a native coroutine object (`crate::sock`).

    fn sock_recv(slf: &Bound<'_, Self>, sock: Bound<'_, PyAny>, n: Py<PyAny>) -> SockCoroutine {
        SockCoroutine::new(slf, sock, Op::Recv { n })
    }

    fn sock_recv_into(
        slf: &Bound<'_, Self>,
        sock: Bound<'_, PyAny>,
        buf: Py<PyAny>,
    ) -> SockCoroutine {
        SockCoroutine::new(slf, sock, Op::RecvInto { buf })
    }

    fn sock_recvfrom(
        slf: &Bound<'_, Self>,
        sock: Bound<'_, PyAny>,
        bufsize: Py<PyAny>,
    ) -> SockCoroutine {
        SockCoroutine::new(slf, sock, Op::RecvFrom { bufsize })
    }

    #[pyo3(signature = (sock, buf, nbytes=None))]
    fn sock_recvfrom_into(
        slf: &Bound<'_, Self>,
        sock: Bound<'_, PyAny>,
        buf: Py<PyAny>,
        nbytes: Option<Py<PyAny>>,
    ) -> SockCoroutine {
        SockCoroutine::new(slf, sock, Op::RecvFromInto { buf, nbytes })
    }

    fn sock_sendall(
        slf: &Bound<'_, Self>,
        sock: Bound<'_, PyAny>,
        data: Py<PyAny>,
    ) -> SockCoroutine {
        let op = Op::SendAll {
            data,
            view: None,
            sent: 0,
        };
        SockCoroutine::new(slf, sock, op)
    }

    fn sock_sendto(
        slf: &Bound<'_, Self>,
        sock: Bound<'_, PyAny>,
        data: Py<PyAny>,
        address: Py<PyAny>,
    ) -> SockCoroutine {
        SockCoroutine::new(slf, sock, Op::SendTo { data, address })
    }

    fn sock_accept(slf: &Bound<'_, Self>, sock: Bound<'_, PyAny>) -> SockCoroutine {
        SockCoroutine::new(slf, sock, Op::Accept)
    }

    /// One iteration; `run_forever` is a loop over this.
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::run_once_impl(slf, &mut IterationBuffers::new())
    }

    /// Runs iterations until `stop()`. The Python subclass wraps this with the set-up asyncio
    /// does around it (running-loop registration, async generator hooks).
    fn _run_forever(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        this.thread_id.store(current_thread_id(), Ordering::Relaxed);
        let _running = Running(slf);
        let mut buffers = IterationBuffers::new();
        loop {
            Self::run_once_impl(slf, &mut buffers)?;
            if this.stopping.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn is_running(&self) -> bool {
        self.running()
    }

    #[getter]
    fn _thread_id(&self) -> Option<u64> {
        match self.thread_id.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    #[getter]
    fn _stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn _set_debug_flag(&self, enabled: bool) {
        self.debug.store(enabled, Ordering::Relaxed);
    }

    /// Pending ready callbacks and timers, for tests and introspection.
    fn _pending_counts(&self, py: Python<'_>) -> (usize, usize) {
        let core = self.core(py);
        (core.ready.len(), core.timers.len())
    }

    /// Lets the cyclic GC see what the loop holds, so an unclosed loop in a cycle with its own
    /// pending callbacks is still freed. A lock held elsewhere (a collection triggered while
    /// the loop is mid-update) hides the contents, which only delays collection.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: the cyclic GC calls `tp_traverse` with the interpreter attached.
        let py = unsafe { Python::assume_attached() };
        if let Some(core) = self.core.try_lock(py) {
            for entry in &core.ready {
                match entry {
                    Ready::Handle(handle) => visit.call(handle)?,
                    Ready::Step(step) => step.traverse(&visit)?,
                }
            }
            for handle in core.readers.values().chain(core.writers.values()) {
                visit.call(handle)?;
            }
            for timer in core.timers.iter() {
                visit.call(timer)?;
            }
        }
        if let Some(factory) = self.task_factory.try_lock(py) {
            visit.call(&*factory)?;
        }
        if let Some(keywords) = self.call_keywords.try_lock(py) {
            if let Some(keywords) = keywords.as_ref() {
                keywords.traverse(&visit)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let factory = self.task_factory.lock(py).take();
        let keywords = self.call_keywords.lock(py).take();
        let (mut handles, mut timers, steps) = self.take_scheduled(py);
        drop((factory, keywords, steps));
        Self::release_all(py, &mut handles, &mut timers);
    }

    /// Marks the loop closed and releases its callbacks, watchers, epoll fd and eventfd.
    fn _close(&self, py: Python<'_>) {
        if self.closed.swap(true, Ordering::Relaxed) {
            return;
        }
        // The keywords refer back to the loop: dropped here, a closed loop is freed by reference
        // counting, not left to the cyclic GC.
        drop(self.call_keywords.lock(py).take());
        let (mut handles, mut timers, steps) = self.take_scheduled(py);
        let released = {
            let mut core = self.core(py);
            (core.poller.take(), core.waker.take())
        };
        drop((released, steps));
        Self::release_all(py, &mut handles, &mut timers);
    }
}
