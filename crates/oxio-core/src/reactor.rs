//! Bindings to epoll (Linux), keyed by caller-chosen `u64` tokens.
//!
//! Registrations are level-triggered: asyncio's `add_reader` callback may read only part of what
//! is pending and expects to be called again, exactly as with `selectors.EpollSelector`. The
//! edge-triggered variants serve waiters (the `sock_*` coroutines) that attempt their operation
//! before every wait, so a report of each change of state is all they need.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// What a registration waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    pub readable: bool,
    pub writable: bool,
}

impl Interest {
    pub fn is_empty(self) -> bool {
        !self.readable && !self.writable
    }

    fn epoll_bits(self) -> u32 {
        let mut bits = 0;
        if self.readable {
            bits |= libc::EPOLLIN as u32;
        }
        if self.writable {
            bits |= libc::EPOLLOUT as u32;
        }
        bits
    }
}

/// One readiness report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub token: u64,
    /// Readable, or an error/hang-up that a read will report.
    pub readable: bool,
    /// Writable, or an error/hang-up that a write will report.
    pub writable: bool,
}

/// A reusable buffer of poll results.
pub struct Events {
    raw: Vec<libc::epoll_event>,
    len: usize,
}

impl Events {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            raw: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
            len: 0,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.raw[..self.len].iter().map(|raw| {
            let bits = raw.events;
            // Errors and hang-ups wake both directions, as `selectors.EpollSelector` reports them;
            // the owner masks the result with what it registered.
            let broken = bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
            Event {
                token: raw.u64,
                readable: broken || bits & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0,
                writable: broken || bits & libc::EPOLLOUT as u32 != 0,
            }
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Forgets the last poll's results, for an iteration that skips the poll.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// An epoll instance. Every method takes `&self`: epoll is safe to use from several threads, and
/// the loop thread must be able to wait while other threads register nothing but wake it.
pub struct Poller {
    epfd: OwnedFd,
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { epfd })
    }

    /// Starts watching `fd` for `interest`, reporting it as `token`.
    pub fn add(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    /// Changes what an already-added `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    /// Starts watching `fd` edge-triggered (`EPOLLET`): reported at each change of its state
    /// (an arrival of data, send space crossing the socket's wake-up threshold), not while it
    /// stays ready, so a registration kept without a waiter never makes the poll spin.
    pub fn add_edge(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let bits = interest.epoll_bits() | libc::EPOLLET as u32;
        self.ctl_bits(libc::EPOLL_CTL_ADD, fd, token, bits)
    }

    /// Changes an added `fd` to an edge-triggered registration for `interest`. The kernel
    /// checks the fd's state as it does on ADD, so an fd already ready is reported once.
    pub fn modify_edge(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let bits = interest.epoll_bits() | libc::EPOLLET as u32;
        self.ctl_bits(libc::EPOLL_CTL_MOD, fd, token, bits)
    }

    /// Stops watching `fd`. A descriptor that was already closed is not an error: the kernel
    /// dropped it from the set when its last reference went away.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        match self.ctl(libc::EPOLL_CTL_DEL, fd, 0, Interest::default()) {
            Err(err) if matches!(err.raw_os_error(), Some(libc::EBADF | libc::ENOENT)) => Ok(()),
            other => other,
        }
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl_bits(op, fd, token, interest.epoll_bits())
    }

    fn ctl_bits(&self, op: libc::c_int, fd: RawFd, token: u64, bits: u32) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: bits,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event that outlives the call; the kernel validates
        // both descriptors and reports bad ones through the return value.
        let rc = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for readiness. `None` blocks until an event arrives.
    ///
    /// The timeout is rounded *up* to whole milliseconds so a timer waited for this way is never
    /// woken before its deadline. `EINTR` is returned to the caller, which must give the
    /// interpreter a chance to run signal handlers.
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        let timeout_ms = match timeout {
            None => -1,
            Some(t) => {
                let ms = t.as_nanos().div_ceil(1_000_000);
                ms.min(i32::MAX as u128) as libc::c_int
            }
        };
        events.len = 0;
        // SAFETY: the buffer holds `raw.len()` initialised epoll_events and the kernel writes at
        // most that many.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                events.raw.as_mut_ptr(),
                events.raw.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        events.len = n as usize;
        Ok(())
    }
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.epfd.as_raw_fd()
    }
}
