//! Reading from fds into `bytes`: the loop thread's shared read buffer, and the direct path that
//! large reads take instead.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use oxio_core::transport::stream::{readable_bytes, recv, recv_uninit, recv_with_flags};
use oxio_core::FdMap;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

use crate::transport::spare_bytes;

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
    let expect_large = expects_large_read(fd);
    let direct = match direct_read_len(fd, expect_large, limit) {
        Some(len) => recv_direct(py, fd, len, flags)?,
        None => None,
    };
    let bytes = match direct {
        Some(bytes) => bytes,
        None => with_read_buffer(|buf| {
            let got = recv_with_flags(fd, &mut buf[..limit.min(READ_SIZE)], flags)?;
            Ok::<_, io::Error>(spare_bytes::bytes_from(py, &buf[..got]))
        })?,
    };
    note_read_size(fd, expect_large, bytes.as_bytes().len());
    Ok(bytes)
}

/// What [`recv_appending`] did.
pub(crate) enum Appended {
    /// The peer closed its side: nothing arrived.
    Eof,
    /// Bytes arrived and are now at the end of the bytearray.
    Data,
    /// Bytes arrived and could not be appended: what `bytearray.extend` raises (the bytearray
    /// is exported, or memory is short).
    Failed(PyErr),
}

/// `recv(fd, limit)` appended to `target`, as `target.extend(data)` would append it.
///
/// Small reads go through the thread's read buffer; a large one (see [`recv_bytes`]) grows
/// `target` by what the kernel says is waiting and receives straight into it.
pub(crate) fn recv_appending(
    fd: RawFd,
    limit: usize,
    target: &Bound<'_, PyByteArray>,
) -> io::Result<Appended> {
    // Without the GIL, another thread could resize `target` under the raw writes below.
    pyo3::sync::critical_section::with_critical_section(target.as_any(), || {
        let expect_large = expects_large_read(fd);
        let direct = direct_read_len(fd, expect_large, limit)
            .and_then(|len| recv_direct_appending(fd, len, target));
        let (got, appended) = match direct {
            Some(received) => received?,
            None => with_read_buffer(|buf| {
                let got = recv(fd, &mut buf[..limit.min(READ_SIZE)])?;
                Ok::<_, io::Error>((got, append(target, &buf[..got])))
            })?,
        };
        note_read_size(fd, expect_large, got);
        Ok(match appended {
            Err(err) => Appended::Failed(err),
            Ok(()) if got == 0 => Appended::Eof,
            Ok(()) => Appended::Data,
        })
    })
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

/// Whether the last read from `fd` was large.
fn expects_large_read(fd: RawFd) -> bool {
    LARGE_READERS.with(|fds| fds.borrow().contains_key(&fd))
}

/// How much a read should receive straight into its destination: what the kernel has waiting,
/// when the last read was large and this one will be too.
fn direct_read_len(fd: RawFd, expect_large: bool, limit: usize) -> Option<usize> {
    if !expect_large {
        return None;
    }
    // An error here (a socket reset meanwhile) is left for the recv to report.
    let waiting = readable_bytes(fd).unwrap_or(0).min(limit);
    (waiting >= DIRECT_READ_MIN).then_some(waiting)
}

/// Remembers whether a read of `got` bytes from `fd` was large.
fn note_read_size(fd: RawFd, expect_large: bool, got: usize) {
    let large = got >= DIRECT_READ_MIN;
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
}

/// `target.extend(data)`.
fn append(target: &Bound<'_, PyByteArray>, data: &[u8]) -> PyResult<()> {
    let old = target.len();
    target.resize(old + data.len())?;
    // SAFETY: the resize just made room for `data` after the first `old` bytes, and no Python
    // code runs between it and the copy (the caller holds `target`'s critical section); `data`
    // is the read buffer, never the bytearray's storage.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), target.data().add(old), data.len());
    }
    Ok(())
}

/// Grows `target` by `len` bytes and receives into them, keeping only what arrived: how many
/// did, and whether the bytearray could be shrunk to them. `None` when `target` cannot grow
/// (it is exported, or memory is short): the caller then reads through its buffer, and
/// appending fails there as `extend` would.
fn recv_direct_appending(
    fd: RawFd,
    len: usize,
    target: &Bound<'_, PyByteArray>,
) -> Option<io::Result<(usize, PyResult<()>)>> {
    let old = target.len();
    target.resize(old + len).ok()?;
    // SAFETY: the resize made `len` writable bytes after the first `old`; no Python code runs
    // and moves the storage before the slice's last use (the caller holds `target`'s critical
    // section).
    let tail = unsafe {
        std::slice::from_raw_parts_mut(target.data().add(old).cast::<MaybeUninit<u8>>(), len)
    };
    let received = recv_uninit(fd, tail, 0);
    let got = *received.as_ref().unwrap_or(&0);
    // The bytes the kernel did not write are zeroed, so that the bytearray never shows
    // uninitialised memory even if it cannot be shrunk (the allocator failed to move it). That
    // failure is reported whatever the recv did: the zeros are then in the reader's buffer, and
    // the transport must close.
    tail[got..].fill(MaybeUninit::new(0));
    match (received, target.resize(old + got)) {
        (_, Err(err)) => Some(Ok((got, Err(err)))),
        (received, Ok(())) => Some(received.map(|got| (got, Ok(())))),
    }
}
