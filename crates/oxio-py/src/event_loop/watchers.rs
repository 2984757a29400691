//! fd watchers: `add_reader`/`add_writer` and their removal, kept in step with epoll.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use oxio_core::Interest;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::{closed_error, Core, EventLoop};
use crate::fd::fd_of;
use crate::handle::Handle;

impl Core {
    pub(super) fn interest(&self, fd: RawFd) -> Interest {
        Interest {
            readable: self.readers.contains_key(&fd),
            writable: self.writers.contains_key(&fd),
        }
    }

    pub(super) fn watchers(&mut self, write: bool) -> &mut HashMap<RawFd, Py<Handle>> {
        if write {
            &mut self.writers
        } else {
            &mut self.readers
        }
    }

    /// Tells the poller about a change of `fd`'s interest from `before` to the current one.
    pub(super) fn sync_interest(&self, fd: RawFd, before: Interest) -> io::Result<()> {
        let Some(poller) = &self.poller else {
            return Ok(());
        };
        let now = self.interest(fd);
        let token = fd as u64;
        match (before.is_empty(), now.is_empty()) {
            (true, true) => Ok(()),
            (true, false) => poller.add(fd, token, now),
            (false, true) => poller.delete(fd),
            (false, false) => match poller.modify(fd, token, now) {
                // The fd was closed and its number reused without a `remove_reader`: the kernel
                // already forgot the old registration.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => poller.add(fd, token, now),
                other => other,
            },
        }
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
        Self::add_fd_watcher(slf, write, fd, callback, args)
    }

    /// `add_watcher` for a raw fd, for callers (the `sock_*` coroutines) that already have it.
    pub(crate) fn add_fd_watcher(
        slf: &Bound<'_, Self>,
        write: bool,
        fd: RawFd,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        let this = slf.get();
        this.check_closed()?;
        let method = if write { "add_writer" } else { "add_reader" };
        let traceback = Self::debug_checks(slf, callback, method, true)?;
        let handle = Py::new(
            slf.py(),
            Self::new_handle(slf, callback, args, None, traceback)?,
        )?;
        let previous = {
            let mut core = this.core();
            if core.poller.is_none() {
                return Err(closed_error());
            }
            let before = core.interest(fd);
            let previous = core.watchers(write).insert(fd, handle.clone_ref(slf.py()));
            if let Err(err) = core.sync_interest(fd, before) {
                // Leave the registration as it was: the kernel refused the fd (a regular file
                // gives EPERM, as with `selectors.EpollSelector`).
                match previous {
                    Some(prev) => core.watchers(write).insert(fd, prev),
                    None => core.watchers(write).remove(&fd),
                };
                return Err(err.into());
            }
            previous
        };
        if let Some(previous) = previous {
            previous.borrow_mut(slf.py()).mark_cancelled(slf.py(), None);
        }
        Ok(handle)
    }

    pub(super) fn remove_watcher(
        slf: &Bound<'_, Self>,
        write: bool,
        fileobj: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let fd = fd_of(fileobj)?;
        Self::remove_fd_watcher(slf, write, fd)
    }

    /// `remove_watcher` for a raw fd.
    pub(crate) fn remove_fd_watcher(
        slf: &Bound<'_, Self>,
        write: bool,
        fd: RawFd,
    ) -> PyResult<bool> {
        let this = slf.get();
        if this.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let removed = {
            let mut core = this.core();
            let before = core.interest(fd);
            let removed = core.watchers(write).remove(&fd);
            if removed.is_some() {
                core.sync_interest(fd, before)?;
            }
            removed
        };
        match removed {
            Some(handle) => {
                handle.borrow_mut(slf.py()).mark_cancelled(slf.py(), None);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
