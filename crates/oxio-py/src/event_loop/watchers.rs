//! fd watchers: `add_reader`/`add_writer` and their removal, kept in step with epoll.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use oxio_core::{FdMap, Interest};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::{closed_error, Core, EventLoop};
use crate::errors::os_error;
use crate::fd::fd_of;
use crate::handle::Handle;

impl Core {
    pub(super) fn interest(&self, fd: RawFd) -> Interest {
        Interest {
            readable: self.readers.contains_key(&fd),
            writable: self.writers.contains_key(&fd),
        }
    }

    pub(super) fn watchers(&mut self, write: bool) -> &mut FdMap<Py<Handle>> {
        if write {
            &mut self.writers
        } else {
            &mut self.readers
        }
    }

    /// Tells the poller about a change of `fd`'s interest from `before` to the current one.
    ///
    /// Any such change makes the registration level-triggered again, including one that a
    /// `sock_*` coroutine left one-shot or parked (see `FdMode`).
    pub(super) fn sync_interest(&mut self, fd: RawFd, before: Interest) -> io::Result<()> {
        let parked = self.modes.take(fd) == FdMode::Parked;
        let Some(poller) = &self.poller else {
            return Ok(());
        };
        let now = self.interest(fd);
        let token = fd as u64;
        match (before.is_empty() && !parked, now.is_empty()) {
            (true, true) => Ok(()),
            (true, false) => match poller.add(fd, token, now) {
                // Registered after all (a parked registration we lost track of): change it.
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                    poller.modify(fd, token, now)
                }
                other => other,
            },
            (false, true) => poller.delete(fd),
            (false, false) => match poller.modify(fd, token, now) {
                // The fd was closed and its number reused without a `remove_reader`: the kernel
                // already forgot the old registration.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => poller.add(fd, token, now),
                other => other,
            },
        }
    }

    /// Arms `fd`'s registration for one event (a `sock_*` coroutine's only watcher on it),
    /// re-using a parked or disarmed registration when there is one.
    fn arm_oneshot(&mut self, fd: RawFd) -> io::Result<()> {
        let registered = self.modes.get(fd) != FdMode::Level;
        let Some(poller) = &self.poller else {
            return Ok(());
        };
        let now = self.interest(fd);
        let token = fd as u64;
        let armed = if registered {
            match poller.modify_oneshot(fd, token, now) {
                // The fd was closed (and its number maybe reused) since it was parked: the
                // kernel dropped that registration with the file.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                    poller.add_oneshot(fd, token, now)
                }
                other => other,
            }
        } else {
            match poller.add_oneshot(fd, token, now) {
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                    poller.modify_oneshot(fd, token, now)
                }
                other => other,
            }
        };
        if armed.is_ok() {
            self.modes.set(fd, FdMode::Oneshot);
        }
        armed
    }
}

/// How the kernel holds an fd, beyond what its watchers say.
// NOTE: parking instead of deleting makes each blocked `sock_*` wait cost one EPOLL_CTL_MOD
// instead of an ADD then a DEL (ADD+DEL measured 1.75 us, MOD 0.45 us): the in-process echo
// went from 4 to 2 epoll_ctl per round trip and from 16.2 to 13.2 us of CPU per round trip
// (median of 10 alternating runs each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum FdMode {
    /// Registered level-triggered while it has watchers, unregistered when it has none: the
    /// `add_reader`/`add_writer` contract, and every fd's state unless said otherwise here.
    #[default]
    Level,
    /// Registered `EPOLLONESHOT` for the one watcher of a waiting `sock_*` coroutine: the event
    /// that wakes the coroutine also disarms the registration.
    Oneshot,
    /// No watchers, but still registered one-shot: disarmed, or armed for at most one event
    /// that no watcher claims (a coroutine cancelled before its event). The next `sock_*` wait
    /// on the fd re-arms it with one `EPOLL_CTL_MOD` instead of an ADD now and a DEL later. A
    /// disarmed registration reports nothing, so a parked fd can never make the poll spin.
    Parked,
}

/// `FdMode` per fd number, indexed directly (fds are small integers).
#[derive(Default)]
pub(super) struct FdModes(Vec<FdMode>);

impl FdModes {
    fn get(&self, fd: RawFd) -> FdMode {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.0.get(i).copied())
            .unwrap_or_default()
    }

    fn set(&mut self, fd: RawFd, mode: FdMode) {
        let Ok(i) = usize::try_from(fd) else {
            return;
        };
        if i >= self.0.len() {
            if mode == FdMode::Level {
                return;
            }
            self.0.resize(i + 1, FdMode::Level);
        }
        self.0[i] = mode;
    }

    fn take(&mut self, fd: RawFd) -> FdMode {
        let mode = self.get(fd);
        if mode != FdMode::Level {
            self.set(fd, FdMode::Level);
        }
        mode
    }
}

impl EventLoop {
    pub(super) fn add_watcher(
        slf: &Bound<'_, Self>,
        write: bool,
        fileobj: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        slf.get().check_closed()?;
        let fd = fd_of(fileobj)?;
        Self::add_fd_watcher(slf, write, fd, callback, args, false)
    }

    /// `add_watcher` for a raw fd, for callers (the `sock_*` coroutines) that already have it.
    ///
    /// With `oneshot`, a watcher that is the fd's only one is registered for one event (the
    /// caller removes it with `remove_fd_watcher(.., oneshot: true)` or re-arms it with
    /// `rearm_fd_watcher`); otherwise, and whenever the fd has other watchers, level-triggered.
    pub(crate) fn add_fd_watcher(
        slf: &Bound<'_, Self>,
        write: bool,
        fd: RawFd,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        oneshot: bool,
    ) -> PyResult<Py<Handle>> {
        let this = slf.get();
        this.check_closed()?;
        let method = if write { "add_writer" } else { "add_reader" };
        let traceback = Self::debug_checks(slf, callback, method, true)?;
        let handle = Py::new(
            slf.py(),
            Handle::from(Self::new_handle(slf, callback, args, None, traceback)?),
        )?;
        let registered = {
            let mut core = this.core(slf.py());
            if core.poller.is_none() {
                return Err(closed_error());
            }
            let before = core.interest(fd);
            let previous = core.watchers(write).insert(fd, handle.clone_ref(slf.py()));
            let synced = if oneshot && before.is_empty() {
                core.arm_oneshot(fd)
            } else {
                core.sync_interest(fd, before)
            };
            match synced {
                Ok(()) => Ok(previous),
                Err(err) => {
                    // Leave the registration as it was: the kernel refused the fd (a regular
                    // file gives EPERM, as with `selectors.EpollSelector`). What is put back or
                    // removed is dropped once the lock is released.
                    let added = match previous {
                        Some(prev) => core.watchers(write).insert(fd, prev),
                        None => core.watchers(write).remove(&fd),
                    };
                    Err((err, added))
                }
            }
        };
        let previous = registered.map_err(|(err, _added)| os_error(slf.py(), err))?;
        if let Some(previous) = previous {
            previous.get().mark_cancelled(slf.py(), None);
        }
        Ok(handle)
    }

    pub(super) fn remove_watcher(
        slf: &Bound<'_, Self>,
        write: bool,
        fileobj: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let fd = fd_of(fileobj)?;
        Self::remove_fd_watcher(slf, write, fd, false)
    }

    /// `remove_watcher` for a raw fd. With `oneshot`, a one-shot registration left without
    /// watchers is parked (kept, disarmed) instead of deleted, for the fd's next wait.
    pub(crate) fn remove_fd_watcher(
        slf: &Bound<'_, Self>,
        write: bool,
        fd: RawFd,
        oneshot: bool,
    ) -> PyResult<bool> {
        let this = slf.get();
        if this.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let (removed, synced) = {
            let mut core = this.core(slf.py());
            let before = core.interest(fd);
            let removed = core.watchers(write).remove(&fd);
            let mut synced = Ok(());
            if removed.is_some() {
                if oneshot && core.modes.get(fd) == FdMode::Oneshot && core.interest(fd).is_empty()
                {
                    core.modes.set(fd, FdMode::Parked);
                } else {
                    synced = core.sync_interest(fd, before);
                }
            }
            (removed, synced)
        };
        // The handle leaves the lock before it is cancelled or dropped, even when epoll refused
        // the change (a closed fd): its callback's `__del__` may call back into the loop.
        let Some(handle) = removed else {
            return Ok(false);
        };
        handle.get().mark_cancelled(slf.py(), None);
        drop(handle);
        synced.map_err(|err| os_error(slf.py(), err))?;
        Ok(true)
    }

    /// Re-arms a one-shot registration whose event woke a watcher that must keep waiting (the
    /// socket would still block). A level-triggered registration needs nothing.
    pub(crate) fn rearm_fd_watcher(slf: &Bound<'_, Self>, fd: RawFd) -> PyResult<()> {
        let this = slf.get();
        let armed = {
            let mut core = this.core(slf.py());
            match core.modes.get(fd) {
                FdMode::Oneshot => core.arm_oneshot(fd),
                _ => Ok(()),
            }
        };
        armed.map_err(|err| os_error(slf.py(), err))
    }
}
