//! The byte paths of stream fds (sockets and pipes): send/recv that never raise SIGPIPE,
//! read/write for pipes, and a write queue flushed with one vectored call.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

/// At most this many buffers go to one `writev` (Linux's `IOV_MAX` is 1024; beyond a few dozen
/// the kernel copies the same bytes either way).
const MAX_IOVECS: usize = 64;

/// `send(2)` with `MSG_NOSIGNAL`, so a peer that went away yields `EPIPE`, not a signal.
pub fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    retry_interrupted(|| {
        // SAFETY: `data` is a live slice; the kernel reads at most `data.len()` bytes from it.
        unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) }
    })
}

/// `recv(2)` into `buf`; 0 means end of stream.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    recv_with_flags(fd, buf, 0)
}

/// `recv(2)` with `MSG_DONTWAIT`: never blocks, whatever the fd's own blocking mode.
pub fn recv_nowait(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    recv_with_flags(fd, buf, libc::MSG_DONTWAIT)
}

/// `recv(2)` into `buf` with `flags`; the count is capped at `buf.len()` (see [`recv_uninit`]).
pub fn recv_with_flags(fd: RawFd, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    let got = retry_interrupted(|| {
        // SAFETY: `buf` is a live, writable slice; the kernel writes at most `buf.len()` bytes.
        unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) }
    })?;
    Ok(got.min(buf.len()))
}

/// `recv(2)` into memory not yet initialised, with `flags`; returns how many bytes the kernel
/// wrote at the start of `buf`.
///
/// With `MSG_TRUNC` the kernel reports a datagram's whole length, which can exceed `buf`; the
/// count is capped at `buf.len()`, so that callers may always trust it as the initialised span.
pub fn recv_uninit(fd: RawFd, buf: &mut [MaybeUninit<u8>], flags: i32) -> io::Result<usize> {
    let got = retry_interrupted(|| {
        // SAFETY: `buf` is a live, writable slice; the kernel writes at most `buf.len()` bytes
        // and never reads them, so their being uninitialised is fine.
        unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) }
    })?;
    Ok(got.min(buf.len()))
}

/// How many bytes are waiting to be read on a socket or pipe (`FIONREAD`).
pub fn readable_bytes(fd: RawFd) -> io::Result<usize> {
    let mut count: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at a live local.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut count) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(count).unwrap_or(0))
}

/// `send(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL`: never blocks and never raises SIGPIPE.
pub fn send_nowait(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    retry_interrupted(|| {
        // SAFETY: `data` is a live slice; the kernel reads at most `data.len()` bytes from it.
        unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        }
    })
}

/// `read(2)` into `buf`, for pipes, FIFOs and ttys; 0 means end of stream.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    retry_interrupted(|| {
        // SAFETY: `buf` is a live, writable slice; the kernel writes at most `buf.len()` bytes.
        unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
    })
}

/// `write(2)`, for pipes, FIFOs and ttys (Python ignores SIGPIPE, so a closed reader is EPIPE).
pub fn write(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    retry_interrupted(|| {
        // SAFETY: `data` is a live slice; the kernel reads at most `data.len()` bytes from it.
        unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }
    })
}

/// Repeats a system call interrupted by a signal; a negative result is the OS error.
fn retry_interrupted(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `shutdown(fd, SHUT_WR)`: sends FIN after everything already written.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown takes no pointers; errors are reported through the return value.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes accepted by `write()` that the socket has not taken yet, oldest first.
#[derive(Default)]
pub struct WriteQueue {
    chunks: VecDeque<Vec<u8>>,
    /// How much of the front chunk was already sent.
    head_sent: usize,
    len: usize,
}

impl WriteQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes still to send (what `get_write_buffer_size()` reports).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        self.chunks.push_back(data.to_vec());
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.head_sent = 0;
        self.len = 0;
    }

    /// Sends as much as the socket takes in one `sendmsg` (with `MSG_NOSIGNAL`); returns the
    /// byte count. A full socket is `Err(WouldBlock)`, which leaves the queue as it was.
    pub fn flush_to_socket(&mut self, fd: RawFd) -> io::Result<usize> {
        self.flush_with(|iovecs| {
            let msg = libc::msghdr {
                msg_name: std::ptr::null_mut(),
                msg_namelen: 0,
                msg_iov: iovecs.as_ptr() as *mut libc::iovec,
                msg_iovlen: iovecs.len(),
                msg_control: std::ptr::null_mut(),
                msg_controllen: 0,
                msg_flags: 0,
            };
            // SAFETY: `msg` describes exactly the iovecs, which point into chunks the queue
            // owns and does not touch until the call returns.
            unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) }
        })
    }

    /// The same with `writev`, for pipes, FIFOs and ttys, which do not take `sendmsg`.
    pub fn flush_to_pipe(&mut self, fd: RawFd) -> io::Result<usize> {
        self.flush_with(|iovecs| {
            // SAFETY: the iovecs point into chunks the queue owns and does not touch until the
            // call returns; the count is at most MAX_IOVECS, far below IOV_MAX.
            unsafe { libc::writev(fd, iovecs.as_ptr(), iovecs.len() as libc::c_int) }
        })
    }

    /// Hands the first `MAX_IOVECS` queued chunks to `write_vectored` and drops what it sent.
    fn flush_with(
        &mut self,
        mut write_vectored: impl FnMut(&[libc::iovec]) -> isize,
    ) -> io::Result<usize> {
        let iovecs: Vec<libc::iovec> = self
            .chunks
            .iter()
            .take(MAX_IOVECS)
            .enumerate()
            .map(|(i, chunk)| {
                let start = if i == 0 { self.head_sent } else { 0 };
                libc::iovec {
                    iov_base: chunk[start..].as_ptr() as *mut libc::c_void,
                    iov_len: chunk.len() - start,
                }
            })
            .collect();
        if iovecs.is_empty() {
            return Ok(0);
        }
        let sent = retry_interrupted(|| write_vectored(&iovecs))?;
        self.consume(sent);
        Ok(sent)
    }

    fn consume(&mut self, mut sent: usize) {
        self.len -= sent;
        while sent > 0 {
            let front_left = self.chunks[0].len() - self.head_sent;
            if sent < front_left {
                self.head_sent += sent;
                return;
            }
            sent -= front_left;
            self.chunks.pop_front();
            self.head_sent = 0;
        }
    }
}
