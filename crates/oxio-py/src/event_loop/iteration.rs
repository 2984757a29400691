//! One loop iteration, phase by phase (docs/design.md numbers them; so do the comments here).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use oxio_core::{monotonic, Events};
use pyo3::prelude::*;

use super::{closed_error, lock, EventLoop, WAKER_TOKEN};
use crate::handle::{self, Handle, TimerHandle};

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: never sleep longer than a day in one poll.
const MAX_POLL_TIMEOUT: f64 = 24.0 * 3600.0;
/// Compact the timer heap once this many timers are pending and more than half are cancelled
/// (asyncio's `_MIN_SCHEDULED_TIMER_HANDLES` and `_MIN_CANCELLED_TIMER_HANDLES_FRACTION`).
const MIN_TIMERS_TO_COMPACT: usize = 100;

impl EventLoop {
    /// Phase 1: drop cancelled timers at the head of the heap, compact it when most of it is
    /// cancelled, and compute how long the poll may block.
    fn poll_timeout(&self, py: Python<'_>, garbage: &mut Vec<Py<TimerHandle>>) -> Option<Duration> {
        let mut core = self.core();
        let core = &mut *core;
        if core.timers.len() > MIN_TIMERS_TO_COMPACT
            && core.cancelled_timers * 2 > core.timers.len()
        {
            garbage.extend(
                core.timers
                    .retain(|t| !t.borrow(py).as_super().is_cancelled()),
            );
            for timer in garbage.iter() {
                timer.borrow_mut(py).scheduled = false;
            }
            core.cancelled_timers = 0;
        } else {
            while let Some(timer) = core
                .timers
                .pop_if(|t| t.borrow(py).as_super().is_cancelled())
            {
                core.cancelled_timers = core.cancelled_timers.saturating_sub(1);
                timer.borrow_mut(py).scheduled = false;
                garbage.push(timer);
            }
        }
        if !core.ready.is_empty() || self.stopping.load(Ordering::Relaxed) {
            return Some(Duration::ZERO);
        }
        let deadline = core.timers.next_deadline()?;
        // A NaN deadline (call_at(nan)) polls without blocking, as asyncio's max(0, nan) does.
        let wait = (deadline - monotonic()).clamp(0.0, MAX_POLL_TIMEOUT);
        Some(Duration::try_from_secs_f64(wait).unwrap_or(Duration::ZERO))
    }

    /// Phase 2: wait for I/O, with the interpreter detached whenever the wait can block.
    fn poll(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<()> {
        let (poller, watching) = {
            let core = self.core();
            let watching = !core.readers.is_empty() || !core.writers.is_empty();
            (core.poller.clone(), watching)
        };
        let Some(poller) = poller else {
            return Err(closed_error());
        };
        let mut events = lock(&self.events);
        let events: &mut Events = &mut events;
        if timeout == Some(Duration::ZERO) && !watching {
            // Nothing but the waker is registered, so a poll could only report that
            // `call_soon_threadsafe` ran, whose callback is already in the ready queue. libuv
            // skips the poll in the same case.
            // NOTE: this was one epoll_wait per `await asyncio.sleep(0)`, ~17% of that row's
            // profile.
            events.clear();
            return Ok(());
        }
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
            Err(err) if err.kind() == io::ErrorKind::Interrupted => py.check_signals(),
            Err(err) => Err(err.into()),
        }
    }

    /// Phase 3: turn readiness into ready callbacks; cancelled watchers are unregistered.
    fn dispatch_events(&self, py: Python<'_>, garbage: &mut Vec<Py<Handle>>) -> PyResult<()> {
        let events = lock(&self.events);
        let mut core = self.core();
        for event in events.iter() {
            if event.token == WAKER_TOKEN {
                if let Some(waker) = &core.waker {
                    waker.drain();
                }
                continue;
            }
            let fd = event.token as RawFd;
            for (write, fired) in [(false, event.readable), (true, event.writable)] {
                if !fired {
                    continue;
                }
                let Some(handle) = core.watchers(write).get(&fd) else {
                    continue;
                };
                if handle.borrow(py).is_cancelled() {
                    let before = core.interest(fd);
                    if let Some(old) = core.watchers(write).remove(&fd) {
                        garbage.push(old);
                    }
                    core.sync_interest(fd, before)?;
                } else {
                    let handle = handle.clone_ref(py);
                    core.ready.push_back(handle);
                }
            }
        }
        Ok(())
    }

    /// Phase 4: move due timers to the ready queue, earliest first.
    fn collect_due_timers(&self, py: Python<'_>, garbage: &mut Vec<Py<TimerHandle>>) {
        let mut core = self.core();
        if core.timers.is_empty() {
            return;
        }
        let now = monotonic();
        while let Some(timer) = core.timers.pop_due(now) {
            let cancelled = {
                let mut t = timer.borrow_mut(py);
                t.scheduled = false;
                t.as_super().is_cancelled()
            };
            if cancelled {
                core.cancelled_timers = core.cancelled_timers.saturating_sub(1);
                garbage.push(timer);
            } else {
                let handle: Py<Handle> = timer.into_bound(py).into_super().unbind();
                core.ready.push_back(handle);
            }
        }
    }

    /// Phase 5: run exactly the callbacks that are ready now; new ones wait for the next
    /// iteration.
    ///
    /// The ready queue is swapped out whole rather than popped under the lock once per callback.
    // NOTE: one lock round-trip per iteration instead of per callback gave call_soon about 3%.
    fn run_ready(slf: &Bound<'_, Self>, py: Python<'_>) -> PyResult<()> {
        let this = slf.get();
        // The spare deque keeps its capacity across iterations. A re-entrant `_run_once` (only
        // reachable from tests) finds it taken and simply starts from an empty one.
        let mut batch = std::mem::take(&mut *lock(&this.spare_ready));
        std::mem::swap(&mut batch, &mut this.core().ready);
        let debug = this.is_debug();
        let mut result = Ok(());
        while let Some(handle) = batch.pop_front() {
            let handle = handle.into_bound(py);
            result = if debug {
                Self::run_timed(slf, py, &handle)
            } else {
                handle::run(py, &handle)
            };
            handle::release(handle);
            if result.is_err() {
                break;
            }
        }
        if result.is_err() {
            // SystemExit/KeyboardInterrupt escaped a callback: the callbacks not yet run stay
            // first in line, as they do in asyncio's `_ready`.
            let mut core = this.core();
            while let Some(handle) = batch.pop_back() {
                core.ready.push_front(handle);
            }
        }
        *lock(&this.spare_ready) = batch;
        result
    }

    /// Phase 6 (debug mode): time the callback and warn past `slow_callback_duration`.
    fn run_timed(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        handle: &Bound<'_, Handle>,
    ) -> PyResult<()> {
        slf.setattr("_current_handle", handle)?;
        let start = monotonic();
        let result = handle::run(py, handle);
        let elapsed = monotonic() - start;
        slf.setattr("_current_handle", py.None())?;
        result?;
        let limit: f64 = slf.getattr("slow_callback_duration")?.extract()?;
        if elapsed >= limit {
            slf.call_method1("_log_slow_callback", (handle, elapsed))?;
        }
        Ok(())
    }

    /// Puts every handle the loop still holds back in the cyclic GC's view, once it stops
    /// running (see `handle::untrack`).
    pub(super) fn track_scheduled(&self, py: Python<'_>) {
        let core = self.core();
        for ready in &core.ready {
            handle::track(ready.bind(py));
        }
        for timer in core.timers.iter() {
            handle::track(timer.bind(py).as_super());
        }
    }

    pub(super) fn run_once_impl(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut dead_timers = Vec::new();
        let mut dead_handles = Vec::new();
        let timeout = this.poll_timeout(py, &mut dead_timers);
        this.poll(py, timeout)?;
        this.dispatch_events(py, &mut dead_handles)?;
        this.collect_due_timers(py, &mut dead_timers);
        // Released here, outside the lock, as the `Core` invariant requires.
        for timer in dead_timers {
            handle::release(timer.into_bound(py).into_super());
        }
        for dead in dead_handles {
            handle::release(dead.into_bound(py));
        }
        Self::run_ready(slf, py)
    }
}
