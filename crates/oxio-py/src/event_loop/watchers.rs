//! fd watchers: `add_reader`/`add_writer` and their removal, kept in step with epoll.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use oxio_core::{FdMap, Interest};
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyWeakrefReference};

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
    /// Any such change makes the registration level-triggered again, including one that
    /// `sock_*` coroutines left edge-triggered (see `FdStates`).
    pub(super) fn sync_interest(&mut self, fd: RawFd, before: Interest) -> io::Result<()> {
        let edge = self.fds.take(fd);
        let Some(poller) = &self.poller else {
            return Ok(());
        };
        let now = self.interest(fd);
        let token = level_token(fd);
        match (before.is_empty() && !edge, now.is_empty()) {
            (true, true) => Ok(()),
            (true, false) => match poller.add(fd, token, now) {
                // Registered after all (an edge-triggered registration we lost track of).
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

    /// Registers `fd` edge-triggered for the wait of a `sock_*` coroutine (the fd's only
    /// watcher). A registration that an earlier wait through the same socket object left is used
    /// as it is: no system call at all when it already watches the same direction and the
    /// kernel itself said the socket would block, so that its next change of state is what the
    /// wait needs. Otherwise a MOD (or an ADD) makes the kernel check the fd's present state.
    fn arm_edge(&mut self, fd: RawFd, wait: &SockWait<'_>) -> io::Result<()> {
        let Some(poller) = &self.poller else {
            return Ok(());
        };
        let now = self.interest(fd);
        let kept = match self.fds.edge_mut(fd) {
            Some(edge) if edge.is_owned_by(&wait.owner) && edge.interest == now => {
                if wait.kernel_said_blocked {
                    edge.idle_reported = false;
                    return Ok(());
                }
                true
            }
            Some(_) => true,
            None => false,
        };
        // A fresh token for each change, so that reports from a registration this one replaces
        // are told apart from its own (`FdStates::is_stale`).
        let generation = self.fds.next_generation();
        let token = edge_token(fd, generation);
        if kept {
            match poller.modify_edge(fd, token, now) {
                // The fd was closed (and its number maybe reused) since the last wait: the
                // kernel dropped that registration with the file, or it belongs to a file that a
                // duplicate keeps open, which this fd no longer is.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                    poller.add_edge(fd, token, now)
                }
                other => other,
            }
        } else {
            match poller.add_edge(fd, token, now) {
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                    poller.modify_edge(fd, token, now)
                }
                other => other,
            }
        }?;
        let owner = wait.owner.as_ref().map(|owner| owner.clone().unbind());
        self.fds.set_edge(
            fd,
            EdgeRegistration {
                interest: now,
                generation,
                owner,
                idle_reported: false,
            },
        );
        Ok(())
    }

    /// Notes that `fd`'s kept edge-triggered registration reported while no coroutine waited.
    /// Once is ordinary: data arrived between two waits, or send space came back after one.
    /// Twice with no wait in between, the socket is read or written elsewhere (another thread,
    /// loop or process) and each arrival would wake this loop for nothing: the registration is
    /// deleted, and the socket's next wait adds it again.
    pub(super) fn note_idle_edge(&mut self, fd: RawFd) {
        let twice = self
            .fds
            .edge_mut(fd)
            .is_some_and(|edge| std::mem::replace(&mut edge.idle_reported, true));
        if twice && self.fds.take(fd) {
            if let Some(poller) = &self.poller {
                // A closed fd cannot be unregistered: see `FdStates`.
                let _ = poller.delete(fd);
            }
        }
    }
}

/// A `sock_*` coroutine's wait on a socket.
pub(crate) struct SockWait<'py> {
    /// A weak reference to the socket object, made before the loop's state is locked (making
    /// it may collect garbage, which runs Python code), or `None` if it refuses them.
    owner: Option<Bound<'py, PyWeakrefReference>>,
    /// Whether the socket would block by the kernel's own word (EAGAIN, or a short count, from
    /// the loop's own system call), rather than by a method's (`BlockingIOError`,
    /// `InterruptedError`, or part of the data sent).
    kernel_said_blocked: bool,
}

impl<'py> SockWait<'py> {
    pub(crate) fn new(sock: &Bound<'py, PyAny>, kernel_said_blocked: bool) -> Self {
        Self {
            owner: PyWeakrefReference::new(sock).ok(),
            kernel_said_blocked,
        }
    }
}

/// The token of a level-triggered registration: the fd's own number (generation 0).
fn level_token(fd: RawFd) -> u64 {
    u64::from(fd as u32)
}

/// The token of an edge-triggered registration: the fd's number and the registration's
/// generation (never 0).
fn edge_token(fd: RawFd, generation: u32) -> u64 {
    u64::from(generation) << 32 | u64::from(fd as u32)
}

/// The fd and generation a token carries.
pub(super) fn parse_token(token: u64) -> (RawFd, u32) {
    (token as u32 as RawFd, (token >> 32) as u32)
}

/// An edge-triggered registration that `sock_*` coroutines keep between their waits.
// NOTE: a blocked `sock_*` wait cost an ADD and a DEL, then one EPOLL_CTL_MOD re-arming a
// parked one-shot registration (16.2 -> 13.2 us of CPU per in-process echo round trip). Kept
// registered edge-triggered, the same socket's next wait makes no system call: the in-process
// echo went from 12.3 to 10.3 syscalls per round trip and from 77.8k to 85.9k round trips per
// CPU-second (8 alternating runs), the TCP sock_* echo server at 1 KiB from 109.6k to 121.1k
// (6 alternating runs).
pub(super) struct EdgeRegistration {
    /// The directions registered: those of the last wait.
    interest: Interest,
    /// The generation in the registration's token.
    generation: u32,
    /// The socket object whose wait registered it, weakly. The same living object with the
    /// same fd number holds the same open file (a socket object closes its fd only with
    /// itself), so its next wait may trust the registration. Any other object may hold a
    /// new file under a reused number: its wait asks the kernel. Released under the loop's
    /// lock, it runs no Python code: it has no callback.
    owner: Option<Py<PyWeakrefReference>>,
    /// Whether it reported with no coroutine waiting since the last wait (`note_idle_edge`).
    idle_reported: bool,
}

impl EdgeRegistration {
    /// Whether `owner`, a weak reference just made to a wait's socket, is the one kept: CPython
    /// hands out one plain weak reference per living object, and the one kept, alive as long
    /// as it is kept, can be no other object's.
    fn is_owned_by(&self, owner: &Option<Bound<'_, PyWeakrefReference>>) -> bool {
        matches!((&self.owner, owner), (Some(kept), Some(owner)) if kept.is(owner))
    }
}

/// How the kernel holds each fd, beyond what its watchers say, indexed by fd number (fds are
/// small integers).
///
/// An fd not listed here is *level-triggered*: registered while it has watchers, with the
/// directions they watch, and unregistered when it has none (the `add_reader`/`add_writer`
/// contract). An fd whose only watcher is a `sock_*` coroutine's is registered edge-triggered
/// instead, and stays registered when the wait ends: the next wait on the same socket needs
/// no system call when the kernel said the socket would block (`arm_edge`). An
/// edge-triggered registration reports changes (an arrival, send space crossing the socket's
/// wake-up threshold), never a state that lasts, so one left without a waiter never makes the
/// poll spin; the second report in a row that finds no waiter unregisters it
/// (`Core::note_idle_edge`). Any `add_reader`/`add_writer`, removal or second watcher on the
/// fd makes it level-triggered again.
///
/// When a registered fd is closed, the kernel drops the registration with the file, unless a
/// duplicate keeps the file open (a `dup`, a child process): then it lives on under the old fd
/// number, unreachable by `epoll_ctl` on that number, and wakes the poll at each arrival until
/// the last duplicate closes. Once the fd's entry here has changed (forgotten, or replaced by
/// a registration of the number's new file), its reports carry a generation that is no longer
/// the fd's and are ignored.
#[derive(Default)]
pub(super) struct FdStates {
    edges: Vec<Option<EdgeRegistration>>,
    last_generation: u32,
}

impl FdStates {
    fn edge(&self, fd: RawFd) -> Option<&EdgeRegistration> {
        let i = usize::try_from(fd).ok()?;
        self.edges.get(i)?.as_ref()
    }

    fn edge_mut(&mut self, fd: RawFd) -> Option<&mut EdgeRegistration> {
        let i = usize::try_from(fd).ok()?;
        self.edges.get_mut(i)?.as_mut()
    }

    pub(super) fn is_edge(&self, fd: RawFd) -> bool {
        self.edge(fd).is_some()
    }

    fn set_edge(&mut self, fd: RawFd, edge: EdgeRegistration) {
        let Ok(i) = usize::try_from(fd) else {
            return;
        };
        if i >= self.edges.len() {
            self.edges.resize_with(i + 1, || None);
        }
        self.edges[i] = Some(edge);
    }

    /// Makes `fd` level-triggered again; says whether it was edge-triggered (and so is still
    /// registered, or was until its file closed).
    fn take(&mut self, fd: RawFd) -> bool {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.edges.get_mut(i))
            .and_then(Option::take)
            .is_some()
    }

    fn next_generation(&mut self) -> u32 {
        self.last_generation = self.last_generation.checked_add(1).unwrap_or(1);
        self.last_generation
    }

    /// Whether a report with this fd and generation comes from a registration that was since
    /// replaced: one kept alive by a duplicate of a closed fd, or changed to level-triggered.
    /// Level-triggered registrations carry generation 0 and are never stale.
    pub(super) fn is_stale(&self, fd: RawFd, generation: u32) -> bool {
        generation != 0
            && self
                .edge(fd)
                .is_none_or(|edge| edge.generation != generation)
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
        Self::add_fd_watcher(slf, write, fd, callback, args, None)
    }

    /// `add_watcher` for a raw fd, for callers (the `sock_*` coroutines) that already have it.
    ///
    /// With `wait`, a `sock_*` coroutine's, a watcher that is the fd's only one is registered
    /// edge-triggered (the caller removes it with `remove_fd_watcher(.., true)`, which keeps the
    /// registration; see `FdStates`); otherwise, and whenever the fd has other watchers,
    /// level-triggered.
    pub(crate) fn add_fd_watcher(
        slf: &Bound<'_, Self>,
        write: bool,
        fd: RawFd,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        wait: Option<&SockWait<'_>>,
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
            let synced = match wait {
                Some(wait) if before.is_empty() => core.arm_edge(fd, wait),
                _ => core.sync_interest(fd, before),
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

    /// `remove_watcher` for a raw fd. With `keep_edge` (a `sock_*` coroutine's wait ending), an
    /// edge-triggered registration left without watchers is kept for the fd's next wait.
    pub(crate) fn remove_fd_watcher(
        slf: &Bound<'_, Self>,
        write: bool,
        fd: RawFd,
        keep_edge: bool,
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
                let kept = keep_edge && core.fds.is_edge(fd) && core.interest(fd).is_empty();
                if !kept {
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

    /// Makes the kernel check `fd`'s present state for a `sock_*` coroutine's watcher whose wait
    /// goes on after a method said the socket would block: an edge-triggered registration
    /// might otherwise wait for a change that never comes. A level-triggered one needs nothing.
    pub(crate) fn recheck_fd_watcher(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        wait: &SockWait<'_>,
    ) -> PyResult<()> {
        let this = slf.get();
        let armed = {
            let mut core = this.core(slf.py());
            if core.fds.is_edge(fd) {
                core.arm_edge(fd, wait)
            } else {
                Ok(())
            }
        };
        armed.map_err(|err| os_error(slf.py(), err))
    }
}
