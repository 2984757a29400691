//! Reading from fds into `bytes`: the loop thread's shared read buffer, and the direct path that
//! large reads take instead.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use oxio_core::transport::stream::{readable_bytes, recv_uninit, recv_with_flags};
use oxio_core::FdMap;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// asyncio's `max_size` for one read on a socket or pipe transport.
pub(crate) const READ_SIZE: usize = 256 * 1024;

/// A read of at least this many bytes makes the reader's next one take the direct path of
/// [`recv_bytes`].
pub(crate) const DIRECT_READ_MIN: usize = 64 * 1024;

thread_local! {
    /// One read buffer per loop thread, shared by every transport: data is copied out into a
    /// `bytes` before the protocol runs, so no transport holds it across Python code.
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

thread_local! {
    /// The fds whose last read through [`recv_bytes`] was large. An fd closed in that state
    /// leaves its entry behind; whatever reuses the number pays one FIONREAD, which clears it.
    static LARGE_READERS: RefCell<FdMap<()>> = RefCell::new(FdMap::default());
}

/// Runs `read` on this thread's read buffer.
pub(crate) fn with_read_buffer<R>(read: impl FnOnce(&mut [u8]) -> R) -> R {
    READ_BUFFER.with(|cell| read(&mut cell.borrow_mut()))
}

/// `recv(fd, limit, flags)` as a new `bytes`, empty at the end of the stream.
///
/// A read goes through the thread's read buffer and is copied out, which spares allocating a
/// `bytes` of `limit` bytes and shrinking it, as `socket.recv` does. When the last read from
/// `fd` was large, this one asks the kernel how much is waiting first and, if that is large too,
/// receives straight into a `bytes` of exactly that size.
// NOTE: with 100 KiB messages, copying out of the read buffer was 12% of the sock_* echo
// server's time and 6% of the Protocol one's (perf). Small readers never pay the FIONREAD.
pub(crate) fn recv_bytes<'py>(
    py: Python<'py>,
    fd: RawFd,
    limit: usize,
    flags: i32,
) -> io::Result<Bound<'py, PyBytes>> {
    let expect_large = LARGE_READERS.with(|fds| fds.borrow().contains_key(&fd));
    let mut direct = None;
    if expect_large {
        // An error here (a socket reset meanwhile) is left for the recv to report.
        let waiting = readable_bytes(fd).unwrap_or(0).min(limit);
        if waiting >= DIRECT_READ_MIN {
            direct = recv_direct(py, fd, waiting, flags)?;
        }
    }
    let bytes = match direct {
        Some(bytes) => bytes,
        None => with_read_buffer(|buf| {
            let got = recv_with_flags(fd, &mut buf[..limit.min(READ_SIZE)], flags)?;
            Ok::<_, io::Error>(PyBytes::new(py, &buf[..got]))
        })?,
    };
    let large = bytes.as_bytes().len() >= DIRECT_READ_MIN;
    if large != expect_large {
        LARGE_READERS.with(|fds| {
            let mut fds = fds.borrow_mut();
            if large {
                fds.insert(fd, ());
            } else {
                fds.remove(&fd);
            }
        });
    }
    Ok(bytes)
}

/// Receives up to `len` bytes into a new `bytes` of that size. `None` when it cannot be
/// allocated: the caller then reads through its buffer, which allocates only what arrived.
fn recv_direct<'py>(
    py: Python<'py>,
    fd: RawFd,
    len: usize,
    flags: i32,
) -> io::Result<Option<Bound<'py, PyBytes>>> {
    let size = ffi::Py_ssize_t::try_from(len).unwrap_or(ffi::Py_ssize_t::MAX);
    // SAFETY: a NULL source asks for a `bytes` of `size` bytes left uninitialised; the result is
    // a new reference, or NULL with MemoryError set.
    let raw = unsafe { ffi::PyBytes_FromStringAndSize(std::ptr::null(), size) };
    if raw.is_null() {
        drop(PyErr::fetch(py));
        return Ok(None);
    }
    // SAFETY: `raw` is the new reference just checked to be non-NULL; owning it as a `Bound`
    // releases it on every path out of here.
    let bytes = unsafe { Bound::from_owned_ptr(py, raw) };
    // SAFETY: a fresh `bytes` of `len` bytes that no other code has seen: its storage is
    // writable and stays put while `bytes` lives; the slice ends before `bytes` is returned.
    let storage = unsafe {
        std::slice::from_raw_parts_mut(ffi::PyBytes_AsString(raw).cast::<MaybeUninit<u8>>(), len)
    };
    let got = recv_uninit(fd, storage, flags)?;
    if got == len {
        // SAFETY: `raw` came from PyBytes_FromStringAndSize, so it is a `bytes`, and the kernel
        // has now initialised all `len` of its bytes.
        return Ok(Some(unsafe { bytes.cast_into_unchecked() }));
    }
    // Less than the kernel said was waiting (another reader took some): keep what arrived, in a
    // `bytes` of its own size.
    // SAFETY: the kernel initialised the first `got` bytes.
    let arrived = unsafe { std::slice::from_raw_parts(storage.as_ptr().cast::<u8>(), got) };
    Ok(Some(PyBytes::new(py, arrived)))
}
