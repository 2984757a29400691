//! One attempt of each `sock_*` operation: the system call when the socket is a plain
//! `socket.socket`, else the socket's own method, looked up at each attempt.
//!
//! An attempt either finishes the operation (its result or its error) or reports that the socket
//! would block, in which case the coroutine waits for readiness and attempts again.

use std::io;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyMemoryView, PySlice, PyString, PyTuple};

use crate::buffer;
use crate::errors::os_error;
use crate::stdlib;
use crate::transport::{recv_bytes, READ_SIZE};
use oxio_core::transport::stream::{recv_nowait, send_nowait};

/// What a `sock_*` coroutine does, with its arguments.
pub(crate) enum Op {
    Recv {
        n: Py<PyAny>,
    },
    RecvInto {
        buf: Py<PyAny>,
    },
    RecvFrom {
        bufsize: Py<PyAny>,
    },
    /// `nbytes` of `None` or 0 becomes `len(buf)` at the first attempt, as in asyncio.
    RecvFromInto {
        buf: Py<PyAny>,
        nbytes: Option<Py<PyAny>>,
    },
    /// `view` is `memoryview(data).cast("B")`, made once the first send fell short: it pins a
    /// mutable buffer's size while the rest waits, as asyncio's `memoryview(data)` does.
    SendAll {
        data: Py<PyAny>,
        view: Option<Py<PyAny>>,
        sent: usize,
    },
    SendTo {
        data: Py<PyAny>,
        address: Py<PyAny>,
    },
    Accept,
}

/// The outcome of an attempt that raised nothing.
pub(crate) enum Attempt {
    Done(Py<PyAny>),
    /// The kernel said the socket would block (EAGAIN from the loop's own system call on this
    /// fd, or a short count from its own `send`): its next change of state is worth waiting for.
    WouldBlock(RawFd),
    /// Not done, and nothing says when it will be: a method raised `BlockingIOError` or
    /// `InterruptedError`, or took part of the data. The fd's present state decides when to
    /// attempt again.
    Pending(Option<RawFd>),
}

static NATIVE_RECV: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static NATIVE_RECV_INTO: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static NATIVE_SEND: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl Op {
    /// The method's name, as asyncio's coroutine function is called.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Recv { .. } => "sock_recv",
            Op::RecvInto { .. } => "sock_recv_into",
            Op::RecvFrom { .. } => "sock_recvfrom",
            Op::RecvFromInto { .. } => "sock_recvfrom_into",
            Op::SendAll { .. } => "sock_sendall",
            Op::SendTo { .. } => "sock_sendto",
            Op::Accept => "sock_accept",
        }
    }

    /// Whether the operation waits for writability (else readability).
    pub(crate) fn writes(&self) -> bool {
        matches!(self, Op::SendAll { .. } | Op::SendTo { .. })
    }

    pub(crate) fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        match self {
            Op::Recv { n } => visit.call(n),
            Op::RecvInto { buf } => visit.call(buf),
            Op::RecvFrom { bufsize } => visit.call(bufsize),
            Op::RecvFromInto { buf, nbytes } => {
                visit.call(buf)?;
                visit.call(nbytes)
            }
            Op::SendAll { data, view, .. } => {
                visit.call(data)?;
                visit.call(view)
            }
            Op::SendTo { data, address } => {
                visit.call(data)?;
                visit.call(address)
            }
            Op::Accept => Ok(()),
        }
    }

    /// Attempts the operation once. `Err` is the operation's error (never "would block").
    pub(crate) fn attempt(&mut self, sock: &Bound<'_, PyAny>) -> PyResult<Attempt> {
        let py = sock.py();
        let attempted = match self {
            Op::Recv { n } => recv(sock, n.bind(py)),
            Op::RecvInto { buf } => recv_into(sock, buf.bind(py)),
            Op::RecvFrom { bufsize } => {
                call(sock, intern!(py, "recvfrom"), (bufsize.bind(py),)).map(Attempt::Done)
            }
            Op::RecvFromInto { buf, nbytes } => {
                // asyncio reads `len(buf)` when the coroutine starts, so a later resize of the
                // buffer does not change how much one datagram may fill.
                let given = nbytes
                    .as_ref()
                    .map(|n| n.bind(py).is_truthy())
                    .transpose()?;
                if given != Some(true) {
                    *nbytes = Some(buf.bind(py).len()?.into_pyobject(py)?.into_any().unbind());
                }
                let args = (buf.bind(py), nbytes.as_ref().map(|n| n.bind(py)));
                call(sock, intern!(py, "recvfrom_into"), args).map(Attempt::Done)
            }
            Op::SendAll { data, view, sent } => send_all(sock, data, view, sent),
            Op::SendTo { data, address } => {
                let args = (data.bind(py), address.bind(py));
                call(sock, intern!(py, "sendto"), args).map(Attempt::Done)
            }
            Op::Accept => accept(sock),
        };
        match attempted {
            Err(err) if would_block(py, &err) => Ok(Attempt::Pending(None)),
            other => other,
        }
    }
}

/// `BlockingIOError` or `InterruptedError`: asyncio's "try again when ready".
fn would_block(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyBlockingIOError>(py) || err.is_instance_of::<PyInterruptedError>(py)
}

fn call<'py>(
    sock: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> PyResult<Py<PyAny>> {
    Ok(sock.call_method1(name, args)?.unbind())
}

/// The fd of `sock` when it is exactly a `socket.socket` whose `name` method is still the C
/// one, so the system call does what the method would; `None` for anything else (subclasses,
/// mocks, patched classes), whose method is then called instead.
fn plain_socket_fd(
    sock: &Bound<'_, PyAny>,
    name: &Bound<'_, PyString>,
    native: &'static PyOnceLock<Py<PyAny>>,
) -> PyResult<Option<RawFd>> {
    let py = sock.py();
    let class = stdlib::socket_socket(py)?;
    if !sock.get_type().is(class) {
        return Ok(None);
    }
    let native = native.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("_socket")?
                .getattr("socket")?
                .getattr(name)?
                .unbind(),
        )
    })?;
    if !class.getattr(name)?.is(native.bind(py)) {
        return Ok(None);
    }
    Ok(Some(sock.call_method0(intern!(py, "fileno"))?.extract()?))
}

/// An OS result as an attempt: `EAGAIN` is "would block", other errors are the socket's error.
fn os_attempt(py: Python<'_>, fd: RawFd, result: io::Result<Py<PyAny>>) -> PyResult<Attempt> {
    match result {
        Ok(value) => Ok(Attempt::Done(value)),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(Attempt::WouldBlock(fd)),
        Err(err) => Err(os_error(py, err)),
    }
}

fn recv(sock: &Bound<'_, PyAny>, n: &Bound<'_, PyAny>) -> PyResult<Attempt> {
    let py = sock.py();
    let name = intern!(py, "recv");
    // A negative or non-integer size goes to the method, which raises what asyncio's would, and
    // so does a size beyond the read buffer (a `bytes` that large may not even be allocatable:
    // the method raises `MemoryError`). So does a size of 0: `socket.recv(0)` answers `b""`
    // without a system call, where recv(2) of 0 bytes would wait for (or, on a datagram
    // socket, consume) a message.
    let fd = plain_socket_fd(sock, name, &NATIVE_RECV)?;
    if let (Some(fd), Ok(n @ 1..=READ_SIZE)) = (fd, n.extract::<usize>()) {
        // NOTE: the system call instead of `sock.recv(n)` took the echo round trip from 52.7k to
        // 36.9k instructions and from 15.3 to 13.8 us of CPU (median of 8 alternating runs):
        // no `BlockingIOError` is built when it would block, and receiving into the loop
        // thread's read buffer, then copying out what arrived, allocates no full-size `bytes`
        // per attempt (CPython's `sock.recv` allocates `n` bytes, then shrinks them). Large
        // reads skip the copy (`recv_bytes`).
        let result = recv_bytes(py, fd, n, libc::MSG_DONTWAIT);
        return os_attempt(py, fd, result.map(|bytes| bytes.into_any().unbind()));
    }
    call(sock, name, (n,)).map(Attempt::Done)
}

fn recv_into(sock: &Bound<'_, PyAny>, buf: &Bound<'_, PyAny>) -> PyResult<Attempt> {
    let py = sock.py();
    let name = intern!(py, "recv_into");
    if let Some(fd) = plain_socket_fd(sock, name, &NATIVE_RECV_INTO)? {
        // Anything but a writable, contiguous, non-empty buffer goes to the method: it raises
        // what CPython raises, and an empty buffer returns 0 there, as a size of 0 does in
        // `recv`.
        let native = buffer::with_contiguous_mut(buf, |target| {
            (!target.is_empty()).then(|| recv_nowait(fd, target))
        });
        if let Ok(Ok(Some(result))) = native {
            let result = result.map(|got| got.into_pyobject(py).map(|n| n.into_any().unbind()));
            return match result {
                Ok(converted) => Ok(Attempt::Done(converted?)),
                Err(err) => os_attempt(py, fd, Err(err)),
            };
        }
    }
    call(sock, name, (buf,)).map(Attempt::Done)
}

/// Runs `f` on the bytes of `data` when they can be borrowed as one contiguous slice.
fn with_contiguous<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Some(f(bytes.as_bytes()));
    }
    buffer::with_contiguous(data, f).ok()?.ok()
}

/// One step of `sock_sendall`: send what is left; done once every byte is sent.
fn send_all(
    sock: &Bound<'_, PyAny>,
    data: &Py<PyAny>,
    view: &mut Option<Py<PyAny>>,
    sent: &mut usize,
) -> PyResult<Attempt> {
    let py = sock.py();
    let name = intern!(py, "send");
    let target = view.as_ref().unwrap_or(data).bind(py);
    if let Some(fd) = plain_socket_fd(sock, name, &NATIVE_SEND)? {
        let outcome = with_contiguous(target, |bytes| {
            let rest = bytes.get(*sent..).unwrap_or_default();
            (send_nowait(fd, rest), rest.len())
        });
        if let Some((result, left)) = outcome {
            // One send per attempt, as asyncio makes it, so that a peer that keeps draining
            // never keeps this callback running. A short count from the kernel means what
            // EAGAIN means: TCP and Unix stream sockets return one only when the send buffer
            // ran out, and then flag it, so that the space coming back wakes the socket's
            // waiters (or an error or hang-up ended the send, which wakes them too).
            let attempt = match result {
                Ok(n) if n == left => return Ok(Attempt::Done(py.None())),
                Ok(n) => {
                    *sent += n;
                    Attempt::WouldBlock(fd)
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => Attempt::WouldBlock(fd),
                Err(err) => return Err(os_error(py, err)),
            };
            pin_view(py, data, view)?;
            return Ok(attempt);
        }
    }
    // The socket's own `send`, as asyncio calls it: the data itself first, then slices of it.
    let rest = match view {
        Some(v) => v
            .bind(py)
            .get_item(PySlice::new(py, *sent as isize, isize::MAX, 1))?,
        None => target.clone(),
    };
    match sock.call_method1(name, (rest,)) {
        Ok(n) => *sent += n.extract::<usize>()?,
        Err(err) if would_block(py, &err) => {}
        Err(err) => return Err(err),
    }
    pin_view(py, data, view)?;
    let total = match view {
        Some(v) => v.bind(py).len()?,
        None => 0,
    };
    if *sent >= total {
        return Ok(Attempt::Done(py.None()));
    }
    Ok(Attempt::Pending(None))
}

/// Makes `view` the bytes of `data`, once.
fn pin_view(py: Python<'_>, data: &Py<PyAny>, view: &mut Option<Py<PyAny>>) -> PyResult<()> {
    if view.is_none() {
        let memoryview = PyMemoryView::from(data.bind(py))?;
        *view = Some(
            memoryview
                .call_method1(intern!(py, "cast"), ("B",))?
                .unbind(),
        );
    }
    Ok(())
}

fn accept(sock: &Bound<'_, PyAny>) -> PyResult<Attempt> {
    let py = sock.py();
    let pair = sock.call_method0(intern!(py, "accept"))?;
    // `conn, address = sock.accept()`, as asyncio unpacks it.
    let (conn, address): (Bound<'_, PyAny>, Bound<'_, PyAny>) = match pair.cast::<PyTuple>() {
        Ok(tuple) => tuple.extract()?,
        Err(_) => PyTuple::new(py, pair.try_iter()?.collect::<PyResult<Vec<_>>>()?)?.extract()?,
    };
    conn.call_method1(intern!(py, "setblocking"), (false,))?;
    Ok(Attempt::Done(
        (conn, address).into_pyobject(py)?.into_any().unbind(),
    ))
}
