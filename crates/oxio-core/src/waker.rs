//! Cross-thread wake-up of a blocked poll, through an eventfd registered with the poller.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Wakes the loop thread out of [`crate::Poller::wait`] from any thread (or a signal handler).
///
/// A burst of wake-ups before the loop drains costs one `write` (as libuv's `uv_async_send`):
/// the first one sets `pending`, the others see it set.
pub struct Waker {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl Waker {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no pointer arguments; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            pending: AtomicBool::new(false),
        })
    }

    /// Makes the eventfd readable, unless an earlier wake-up is still pending. Never blocks: a
    /// full counter already means "wake up".
    // NOTE: a write per call held call_soon_threadsafe to 0.45x uvloop's rate (bench row).
    pub fn wake(&self) {
        if self.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an fd this struct owns.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter so the next poll blocks again.
    ///
    /// `pending` is cleared only after the read: a wake-up that finds it still set skipped its
    /// write, and its caller queued work before calling, which the loop, now past this drain,
    /// runs before it polls again.
    pub fn drain(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from an fd this struct owns.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        self.pending.store(false, Ordering::SeqCst);
    }
}

impl AsRawFd for Waker {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
