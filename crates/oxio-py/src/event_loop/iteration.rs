//! One loop iteration, phase by phase (docs/design.md numbers them; so do the comments here).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use oxio_core::{monotonic, Events, Poller, TimerHeap};
use pyo3::intern;
use pyo3::prelude::*;

use super::{closed_error, ready, watchers, Core, EventLoop, IterationBuffers, Ready, WAKER_TOKEN};
use crate::errors::os_error;
use crate::handle::{self, prefetch, Handle, TimerHandle, SPARE_HANDLES};

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: never sleep longer than a day in one poll.
const MAX_POLL_TIMEOUT: f64 = 24.0 * 3600.0;
/// Compact the timer heap once this many timers are pending and more than half are cancelled
/// (asyncio's `_MIN_SCHEDULED_TIMER_HANDLES` and `_MIN_CANCELLED_TIMER_HANDLES_FRACTION`).
const MIN_TIMERS_TO_COMPACT: usize = 100;

/// What phase 1 hands to the poll.
struct PollPlan {
    timeout: Option<Duration>,
    /// `None` when the poll is skipped: nothing but the waker is registered and the poll may
    /// not block, so it could only report that `call_soon_threadsafe` ran, whose callback is
    /// already in the ready queue. libuv skips the poll in the same case.
    // NOTE: this was one epoll_wait per `await asyncio.sleep(0)`, ~17% of that row's profile;
    // not cloning the `Arc` then saves two atomic operations per iteration.
    poller: Option<Arc<Poller>>,
}

impl EventLoop {
    /// Phase 1: drop cancelled timers at the head of the heap, compact it when most of it is
    /// cancelled, and compute how long the poll may block.
    fn plan_poll(
        &self,
        py: Python<'_>,
        core: &mut Core,
        garbage: &mut Vec<Py<TimerHandle>>,
    ) -> PyResult<PollPlan> {
        let Some(poller) = &core.poller else {
            return Err(closed_error());
        };
        if core.timers.len() > MIN_TIMERS_TO_COMPACT
            && core.cancelled_timers * 2 > core.timers.len()
        {
            Self::compact_timers(py, &mut core.timers, garbage);
            core.cancelled_timers = 0;
        } else {
            while let Some(timer) = core
                .timers
                .pop_if(|t| TimerHandle::is_cancelled(t.bind(py)))
            {
                core.cancelled_timers = core.cancelled_timers.saturating_sub(1);
                timer.get().set_scheduled(false);
                garbage.push(timer);
            }
        }
        let timeout = if !core.ready.is_empty() || self.stopping.load(Ordering::Relaxed) {
            Some(Duration::ZERO)
        } else {
            core.timers.next_deadline().map(|deadline| {
                // A NaN deadline (call_at(nan)) polls without blocking, as asyncio's
                // max(0, nan) does.
                let wait = (deadline - monotonic()).clamp(0.0, MAX_POLL_TIMEOUT);
                Duration::try_from_secs_f64(wait).unwrap_or(Duration::ZERO)
            })
        };
        let watching = !core.readers.is_empty() || !core.writers.is_empty();
        let skip = timeout == Some(Duration::ZERO) && !watching;
        Ok(PollPlan {
            timeout,
            poller: (!skip).then(|| Arc::clone(poller)),
        })
    }

    /// Rebuilds the heap without its cancelled timers, which join `garbage`.
    #[inline(never)]
    fn compact_timers(
        py: Python<'_>,
        timers: &mut TimerHeap<Py<TimerHandle>>,
        garbage: &mut Vec<Py<TimerHandle>>,
    ) {
        let first = garbage.len();
        garbage.extend(timers.retain(|t| !TimerHandle::is_cancelled(t.bind(py))));
        for timer in &garbage[first..] {
            timer.get().set_scheduled(false);
        }
    }

    /// Phase 2: wait for I/O, with the interpreter detached whenever the wait can block.
    fn poll(
        py: Python<'_>,
        poller: &Poller,
        timeout: Option<Duration>,
        events: &mut Events,
    ) -> PyResult<()> {
        // NOTE: a poll that cannot block keeps the GIL: releasing and re-taking it cost 1-2% of
        // queue ping-pong, where most iterations have callbacks ready and poll with timeout 0.
        let polled = if timeout == Some(Duration::ZERO) {
            poller.wait(events, timeout)
        } else {
            py.detach(|| poller.wait(events, timeout))
        };
        match polled {
            Ok(()) => Ok(()),
            // A signal arrived: let Python run its handlers (Ctrl-C raises KeyboardInterrupt
            // here), then carry on with an empty event list.
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                events.clear();
                py.check_signals()
            }
            Err(err) => Err(os_error(py, err)),
        }
    }

    /// Phase 3: turn readiness into ready callbacks; cancelled watchers are unregistered.
    #[inline(never)]
    fn dispatch_events(
        py: Python<'_>,
        core: &mut Core,
        events: &Events,
        garbage: &mut Vec<Py<Handle>>,
    ) {
        for event in events.iter() {
            if event.token == WAKER_TOKEN {
                if let Some(waker) = &core.waker {
                    waker.drain();
                }
                continue;
            }
            let (fd, generation) = watchers::parse_token(event.token);
            if core.fds.is_stale(fd, generation) {
                continue;
            }
            let mut watched = false;
            for (write, fired) in [(false, event.readable), (true, event.writable)] {
                if !fired {
                    continue;
                }
                let Some(handle) = core.watchers(write).get(&fd) else {
                    continue;
                };
                watched = true;
                if handle.get().is_cancelled(py) {
                    let before = core.interest(fd);
                    if let Some(old) = core.watchers(write).remove(&fd) {
                        garbage.push(old);
                    }
                    if core.sync_interest(fd, before).is_err() {
                        // The fd was closed under its watchers. Forget its registration rather
                        // than drop the rest of this poll's events.
                        if let Some(poller) = &core.poller {
                            let _ = poller.delete(fd);
                        }
                    }
                } else {
                    let handle = handle.clone_ref(py);
                    ready::push(&mut core.ready, || Ready::Handle(handle));
                }
            }
            if !watched && core.fds.is_edge(fd) {
                core.note_idle_edge(fd);
            }
        }
    }

    /// Phase 4: move due timers to the ready queue, earliest first.
    ///
    /// The heap is emptied of them first, and the timers are only touched afterwards, with the
    /// next ones prefetched: a long heap's timers have left the cache (see `handle::prefetch`).
    #[inline(never)]
    fn collect_due_timers(
        py: Python<'_>,
        core: &mut Core,
        due: &mut Vec<Py<TimerHandle>>,
        garbage: &mut Vec<Py<TimerHandle>>,
    ) {
        let now = monotonic();
        while let Some(timer) = core.timers.pop_due(now) {
            due.push(timer);
        }
        let mut due = due.drain(..);
        while let Some(timer) = due.next() {
            if let Some(next) = due.as_slice().get(prefetch::AHEAD - 1) {
                prefetch::handle(next);
            }
            timer.get().set_scheduled(false);
            let cancelled = TimerHandle::is_cancelled(timer.bind(py));
            if cancelled {
                core.cancelled_timers = core.cancelled_timers.saturating_sub(1);
                garbage.push(timer);
            } else {
                let handle: Py<Handle> = timer.into_bound(py).into_super().unbind();
                ready::push(&mut core.ready, || Ready::Handle(handle));
            }
        }
    }

    /// Phase 5: run exactly the callbacks that were ready when the batch was taken; new ones
    /// wait for the next iteration.
    ///
    /// A callback's outcome is looked at where it is returned, and only an error's is moved.
    // NOTE: kept in a variable of the loop, each outcome was copied whole, with wide loads of
    // what the callee had just written narrowly: the copy stalled (store forwarding), and was
    // half of this function's time in the call_soon row (perf annotate).
    fn run_ready(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        batch: &mut VecDeque<Ready>,
        recycled: &mut Vec<Py<Handle>>,
    ) -> PyResult<()> {
        let this = slf.get();
        let debug = this.is_debug();
        let mut failure = None;
        let cold = batch.len() >= prefetch::LONG_BATCH;
        while let Some(entry) = batch.pop_front() {
            if cold {
                prefetch::ahead(py, |i| match batch.get(i) {
                    Some(Ready::Handle(handle)) => Some(handle),
                    _ => None,
                });
            }
            let handle = match entry {
                Ready::Handle(handle) => handle.into_bound(py),
                Ready::Step(step) if !debug => {
                    if let Err(err) = step.run(py, slf.as_any()) {
                        failure = Some(err);
                        break;
                    }
                    continue;
                }
                // Debug mode came on after the step was scheduled: it is timed as a handle.
                Ready::Step(step) => match step.into_handle(py, slf.as_any()) {
                    Ok(handle) => handle,
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                },
            };
            let outcome = if debug {
                Self::run_timed(slf, py, &handle)
            } else {
                handle::run(py, &handle)
            };
            if let Err(err) = outcome {
                handle::release(handle);
                failure = Some(err);
                break;
            }
            // Beyond what the loop keeps, handles are freed at once, while their memory is
            // still in the cache for the next allocation.
            if recycled.len() >= SPARE_HANDLES {
                handle::release(handle);
            } else if let Some(spare) = handle::recycle(handle) {
                recycled.push(spare.unbind());
            }
        }
        let Some(err) = failure else {
            return Ok(());
        };
        // SystemExit/KeyboardInterrupt escaped a callback: the callbacks not yet run stay
        // first in line, as they do in asyncio's `_ready`.
        let mut core = this.core(py);
        while let Some(entry) = batch.pop_back() {
            core.ready.push_front(entry);
        }
        Err(err)
    }

    /// Phase 6 (debug mode): time the callback and warn past `slow_callback_duration`.
    #[inline(never)]
    fn run_timed(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        handle: &Bound<'_, Handle>,
    ) -> PyResult<()> {
        slf.setattr(intern!(py, "_current_handle"), handle)?;
        let start = monotonic();
        let result = handle::run(py, handle);
        let elapsed = monotonic() - start;
        slf.setattr(intern!(py, "_current_handle"), py.None())?;
        result?;
        let limit: f64 = slf
            .getattr(intern!(py, "slow_callback_duration"))?
            .extract()?;
        if elapsed >= limit {
            slf.call_method1(intern!(py, "_log_slow_callback"), (handle, elapsed))?;
        }
        Ok(())
    }

    /// Puts every handle the loop still holds back in the cyclic GC's view, once it stops
    /// running (see `handle::untrack`).
    pub(super) fn track_scheduled(&self, py: Python<'_>) {
        let core = self.core(py);
        for entry in &core.ready {
            if let Ready::Handle(handle) = entry {
                handle::track(handle.bind(py));
            }
        }
        for timer in core.timers.iter() {
            handle::track(timer.bind(py).as_super());
        }
    }

    /// Phases 1 to 5.
    ///
    /// What most iterations skip (I/O dispatch, due timers, compaction, releases, debug
    /// timing) stays out of line (`#[inline(never)]`), so that the path every iteration takes
    /// spans few cache lines: the interpreter's own code evicts it between two iterations.
    // NOTE: this cut the instruction-cache misses of the queue ping-pong row by 4% (callgrind
    // --cache-sim); its time moved within the noise.
    pub(super) fn run_once_impl(
        slf: &Bound<'_, Self>,
        buffers: &mut IterationBuffers,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let taken = this.take_ready(py, buffers);
        // Released here, outside the lock, as the `Core` invariant requires.
        if !buffers.dead_handles.is_empty() || !buffers.dead_timers.is_empty() {
            Self::release_all(py, &mut buffers.dead_handles, &mut buffers.dead_timers);
        }
        taken?;
        Self::run_ready(slf, py, &mut buffers.batch, &mut buffers.recycled)
    }

    /// Phases 1 to 4, ending with the batch of callbacks to run in `buffers.batch`. The loop's
    /// lock is held throughout, except while a poll runs: it may block, and other threads must
    /// be able to schedule meanwhile. So an iteration takes the lock once when the poll is
    /// skipped and twice otherwise (one lock per phase was nine round trips; the sleep(0) and
    /// queue rows moved within their noise).
    fn take_ready(&self, py: Python<'_>, buffers: &mut IterationBuffers) -> PyResult<()> {
        let mut core = self.core(py);
        Self::keep_spares(&mut core, &mut buffers.recycled, &mut buffers.dead_handles);
        let plan = self.plan_poll(py, &mut core, &mut buffers.dead_timers)?;
        match plan.poller {
            Some(poller) => {
                drop(core);
                Self::poll(py, &poller, plan.timeout, &mut buffers.events)?;
                core = self.core(py);
            }
            None => buffers.events.clear(),
        }
        if !buffers.events.is_empty() {
            Self::dispatch_events(py, &mut core, &buffers.events, &mut buffers.dead_handles);
        }
        if !core.timers.is_empty() {
            Self::collect_due_timers(
                py,
                &mut core,
                &mut buffers.due_timers,
                &mut buffers.dead_timers,
            );
        }
        // The batch is empty here (the last one ran to its end or was put back), so the
        // swap leaves the ready queue empty with the batch's capacity.
        debug_assert!(buffers.batch.is_empty());
        std::mem::swap(&mut buffers.batch, &mut core.ready);
        Ok(())
    }
}
