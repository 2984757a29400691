//! The native half of oxio's datagram transports (UDP and Unix datagram sockets): receiving into
//! `datagram_received`, `sendto` with its queue and flow control, and closing, with the
//! semantics of asyncio's `_SelectorDatagramTransport`.
//!
//! The Python half (`oxio._datagram_transport.DatagramTransport`) is the
//! `asyncio.DatagramTransport` users see; it owns the socket object and delegates here. See
//! docs/design.md, "Datagram transports".

use std::io;
use std::os::fd::RawFd;

use oxio_core::datagram::{recv_from, send_to};
use oxio_core::{DatagramQueue, FlowControl, SockAddr};
use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyOSError, PyValueError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyWeakrefReference};

use crate::sockaddr;
use crate::stream::{
    is_exit, with_bytes, LOG_THRESHOLD_FOR_CONNLOST_WRITES, READ_BUFFER, READ_SIZE,
};

const FATAL_READ: &str = "Fatal read error on datagram transport";
const FATAL_WRITE: &str = "Fatal write error on datagram transport";

/// Where a queued datagram goes.
enum Destination {
    /// The connected peer: plain `send`.
    Peer,
    /// An address the binding converted: `sendto` from Rust.
    Native(SockAddr),
    /// Any other address (a host name, another family, a malformed one): handed to the socket
    /// object's own `sendto`, which resolves it or raises exactly as under asyncio.
    Python(Py<PyAny>),
}

/// What one send attempt did.
enum Sent {
    Done,
    WouldBlock,
    Failed(PyErr),
}

#[pyclass(module = "oxio._oxio")]
pub struct DatagramCore {
    fd: RawFd,
    family: i32,
    loop_: Py<PyAny>,
    /// The Python transport, held weakly, as `StreamCore` holds its own: the loop's watchers
    /// and pending callbacks keep it alive, and no reference cycle does.
    transport: Option<Py<PyWeakrefReference>>,
    /// The socket object, for the addresses only it can convert (see `Destination::Python`).
    sock: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// The `remote_addr` the endpoint was created with (asyncio's `_address`): `sendto` accepts
    /// no other destination.
    remote: Option<Py<PyAny>>,
    /// The socket is connected (`peername` is set), so datagrams leave with `send`.
    connected: bool,
    queue: DatagramQueue<Destination>,
    flow: FlowControl,
    /// `sendto(b"")` sends an empty datagram (Python 3.13+) instead of doing nothing.
    sends_empty: bool,
    /// `close()` was called (or the transport is being force-closed).
    closing: bool,
    /// Nonzero once `connection_lost` is scheduled; counts sends attempted after that.
    conn_lost: u32,
    /// `connection_lost` ran and the Python transport closed the socket: `fd` may already
    /// number another file and must not be used again.
    released: bool,
}

impl DatagramCore {
    fn transport_of<'py>(slf: &Bound<'py, Self>) -> Option<Bound<'py, PyAny>> {
        let this = slf.borrow();
        this.transport.as_ref()?.bind(slf.py()).upgrade()
    }

    fn loop_of<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyAny> {
        slf.borrow().loop_.bind(slf.py()).clone()
    }

    fn protocol_of<'py>(slf: &Bound<'py, Self>) -> Option<Bound<'py, PyAny>> {
        let this = slf.borrow();
        this.protocol.as_ref().map(|p| p.bind(slf.py()).clone())
    }

    fn watch(slf: &Bound<'_, Self>, write: bool) -> PyResult<()> {
        let py = slf.py();
        let (method, callback) = if write {
            (intern!(py, "_add_writer"), intern!(py, "_sendto_ready"))
        } else {
            (intern!(py, "_add_reader"), intern!(py, "_read_ready"))
        };
        let callback = slf.getattr(callback)?;
        let args = (slf.borrow().fd, callback, Self::transport_of(slf));
        Self::loop_of(slf).call_method1(method, args)?;
        Ok(())
    }

    fn unwatch(slf: &Bound<'_, Self>, write: bool) -> PyResult<()> {
        let py = slf.py();
        let method = if write {
            intern!(py, "_remove_writer")
        } else {
            intern!(py, "_remove_reader")
        };
        let fd = slf.borrow().fd;
        Self::loop_of(slf).call_method1(method, (fd,))?;
        Ok(())
    }

    /// Calls `protocol.error_received(exc)`; its own exceptions propagate, as in asyncio.
    fn error_received(slf: &Bound<'_, Self>, err: PyErr) -> PyResult<()> {
        if let Some(protocol) = Self::protocol_of(slf) {
            let py = slf.py();
            protocol.call_method1(intern!(py, "error_received"), (err.value(py),))?;
        }
        Ok(())
    }

    /// asyncio's `_fatal_error`: anything but an `OSError` also reaches the exception handler.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if !err.is_instance_of::<PyOSError>(py) {
            let context = PyDict::new(py);
            context.set_item("message", message)?;
            context.set_item("exception", err.value(py))?;
            context.set_item("transport", Self::transport_of(slf))?;
            context.set_item("protocol", Self::protocol_of(slf))?;
            Self::loop_of(slf).call_method1(intern!(py, "call_exception_handler"), (context,))?;
        }
        Self::force_close(slf, Some(err.value(py).clone().into_any()))
    }

    /// Routes a failed send or receive as asyncio does: OS errors to `error_received`,
    /// SystemExit/KeyboardInterrupt out of the callback, anything else to `fatal_error`.
    fn failed(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if err.is_instance_of::<PyOSError>(py) {
            Self::error_received(slf, err)
        } else if is_exit(py, &err) {
            Err(err)
        } else {
            Self::fatal_error(slf, err, message)
        }
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let (had_queue, was_closing) = {
            let mut this = slf.borrow_mut();
            if this.conn_lost > 0 {
                return Ok(());
            }
            let had_queue = !this.queue.is_empty();
            this.queue.clear();
            let was_closing = this.closing;
            this.closing = true;
            this.conn_lost += 1;
            (had_queue, was_closing)
        };
        if had_queue {
            Self::unwatch(slf, true)?;
        }
        if !was_closing {
            Self::unwatch(slf, false)?;
        }
        Self::call_soon_connection_lost(slf, exc)
    }

    fn call_soon_connection_lost(
        slf: &Bound<'_, Self>,
        exc: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let callback = slf.getattr(intern!(py, "_call_connection_lost"))?;
        let exc = exc.unwrap_or_else(|| py.None().into_bound(py));
        let transport = Self::transport_of(slf);
        Self::loop_of(slf).call_method1(intern!(py, "call_soon"), (callback, exc, transport))?;
        Ok(())
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let pause = {
            let mut this = slf.borrow_mut();
            let size = this.queue.size();
            this.flow.should_pause(size)
        };
        if pause {
            Self::flow_control_call(slf, intern!(slf.py(), "pause_writing"))?;
        }
        Ok(())
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let resume = {
            let mut this = slf.borrow_mut();
            let size = this.queue.size();
            this.flow.should_resume(size)
        };
        if resume {
            Self::flow_control_call(slf, intern!(slf.py(), "resume_writing"))?;
        }
        Ok(())
    }

    /// Calls `pause_writing`/`resume_writing`; a failure goes to the exception handler only.
    fn flow_control_call(
        slf: &Bound<'_, Self>,
        hook: &Bound<'_, pyo3::types::PyString>,
    ) -> PyResult<()> {
        let py = slf.py();
        let Some(protocol) = Self::protocol_of(slf) else {
            return Ok(());
        };
        let err = match protocol.call_method0(hook) {
            Ok(_) => return Ok(()),
            Err(err) if is_exit(py, &err) => return Err(err),
            Err(err) => err,
        };
        let context = PyDict::new(py);
        context.set_item("message", format!("protocol.{hook}() failed"))?;
        context.set_item("exception", err.value(py))?;
        context.set_item("transport", Self::transport_of(slf))?;
        context.set_item("protocol", protocol)?;
        Self::loop_of(slf).call_method1(intern!(py, "call_exception_handler"), (context,))?;
        Ok(())
    }

    /// Where `addr` sends to, converted once when the datagram is accepted.
    fn destination(slf: &Bound<'_, Self>, addr: &Bound<'_, PyAny>) -> Destination {
        let this = slf.borrow();
        if this.connected {
            return Destination::Peer;
        }
        match sockaddr::from_python(this.family, addr) {
            Some(native) => Destination::Native(native),
            None => Destination::Python(addr.clone().unbind()),
        }
    }

    /// One send attempt, with no borrow of `self` held while Python code may run.
    fn send_one(slf: &Bound<'_, Self>, data: &[u8], destination: &Destination) -> Sent {
        let py = slf.py();
        let fd = slf.borrow().fd;
        let sent = match destination {
            Destination::Peer => send_to(fd, data, None),
            Destination::Native(addr) => send_to(fd, data, Some(addr)),
            Destination::Python(addr) => {
                let sock = slf.borrow().sock.as_ref().map(|s| s.clone_ref(py));
                let Some(sock) = sock else {
                    // Only once the garbage collector cleared the core: nothing to send with.
                    return Sent::Done;
                };
                return match sock.call_method1(
                    py,
                    intern!(py, "sendto"),
                    (PyBytes::new(py, data), addr),
                ) {
                    Ok(_) => Sent::Done,
                    Err(err)
                        if err.is_instance_of::<PyBlockingIOError>(py)
                            || err.is_instance_of::<PyInterruptedError>(py) =>
                    {
                        Sent::WouldBlock
                    }
                    Err(err) => Sent::Failed(err),
                };
            }
        };
        match sent {
            Ok(_) => Sent::Done,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Sent::WouldBlock,
            Err(err) => Sent::Failed(err.into()),
        }
    }

    fn sendto_bytes(slf: &Bound<'_, Self>, data: &[u8], addr: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let (sends_empty, remote) = {
            let this = slf.borrow();
            (
                this.sends_empty,
                this.remote.as_ref().map(|r| r.clone_ref(py)),
            )
        };
        if data.is_empty() && !sends_empty {
            return Ok(());
        }
        let mut addr = addr.clone();
        if let Some(remote) = remote {
            let remote = remote.into_bound(py);
            if !addr.is_none() && !addr.is(&remote) && !addr.eq(&remote)? {
                return Err(PyValueError::new_err(format!(
                    "Invalid address: must be None or {}",
                    remote.str()?
                )));
            }
            addr = remote;
        }
        if Self::count_send_after_loss(slf)? {
            return Ok(());
        }
        let destination = Self::destination(slf, &addr);
        if slf.borrow().queue.is_empty() {
            match Self::send_one(slf, data, &destination) {
                Sent::Done => return Ok(()),
                Sent::WouldBlock => Self::watch(slf, true)?,
                Sent::Failed(err) => return Self::failed(slf, err, FATAL_WRITE),
            }
        }
        slf.borrow_mut().queue.push(data.to_vec(), destination);
        Self::maybe_pause_protocol(slf)
    }

    /// After the connection was lost, a connected transport drops sends and warns after a
    /// few, as asyncio does. An unconnected one keeps sending until its socket is closed, and
    /// then drops them too (asyncio reaches for the closed socket and reports an
    /// `AttributeError` instead).
    fn count_send_after_loss(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let mut this = slf.borrow_mut();
        if this.conn_lost == 0 || (this.remote.is_none() && !this.released) {
            return Ok(false);
        }
        if this.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
            drop(this);
            let logger = slf.py().import("asyncio.log")?.getattr("logger")?;
            logger.call_method1("warning", ("socket.send() raised exception.",))?;
            this = slf.borrow_mut();
        }
        this.conn_lost += 1;
        Ok(true)
    }

    fn receive_native(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let fd = slf.borrow().fd;
        let received = READ_BUFFER.with(|cell| {
            let mut buf = cell.borrow_mut();
            recv_from(fd, &mut buf).map(|(n, from)| (PyBytes::new(py, &buf[..n]), from))
        });
        let (data, from) = match received {
            Ok(received) => received,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) => return Self::error_received(slf, err.into()),
        };
        let from = sockaddr::to_python(py, &from)?;
        Self::deliver(slf, data.into_any(), from.into_bound(py))
    }

    /// `sock.recvfrom()` in Python, for families whose addresses only the socket module knows.
    fn receive_via_socket(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let Some(sock) = slf.borrow().sock.as_ref().map(|s| s.clone_ref(py)) else {
            return Ok(());
        };
        match sock.call_method1(py, intern!(py, "recvfrom"), (READ_SIZE,)) {
            Ok(pair) => {
                let (data, from) = pair.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>(py)?;
                Self::deliver(slf, data, from)
            }
            Err(err)
                if err.is_instance_of::<PyBlockingIOError>(py)
                    || err.is_instance_of::<PyInterruptedError>(py) =>
            {
                Ok(())
            }
            Err(err) => Self::failed(slf, err, FATAL_READ),
        }
    }

    fn deliver(
        slf: &Bound<'_, Self>,
        data: Bound<'_, PyAny>,
        from: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if let Some(protocol) = Self::protocol_of(slf) {
            protocol.call_method1(intern!(slf.py(), "datagram_received"), (data, from))?;
        }
        Ok(())
    }
}

#[pymethods]
impl DatagramCore {
    #[new]
    #[pyo3(signature = (r#loop, transport, sock, protocol, *, remote, connected, header_size, sends_empty))]
    #[allow(clippy::too_many_arguments)] // one per piece of asyncio state, all by keyword
    fn new(
        r#loop: Py<PyAny>,
        transport: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: Py<PyAny>,
        remote: Option<Py<PyAny>>,
        connected: bool,
        header_size: usize,
        sends_empty: bool,
    ) -> PyResult<Self> {
        Ok(Self {
            fd: sock.call_method0("fileno")?.extract()?,
            family: sock.getattr("family")?.extract()?,
            loop_: r#loop,
            transport: Some(PyWeakrefReference::new(transport)?.unbind()),
            sock: Some(sock.clone().unbind()),
            protocol: Some(protocol),
            remote,
            connected,
            queue: DatagramQueue::new(header_size),
            flow: FlowControl::default(),
            sends_empty,
            closing: false,
            conn_lost: 0,
            released: false,
        })
    }

    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let none = py.None().into_bound(py);
        let addr = addr.unwrap_or(&none);
        with_bytes(data, |bytes| Self::sendto_bytes(slf, bytes, addr))?
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let drained = {
            let mut this = slf.borrow_mut();
            if this.closing {
                return Ok(());
            }
            this.closing = true;
            this.queue.is_empty()
        };
        Self::unwatch(slf, false)?;
        if drained {
            slf.borrow_mut().conn_lost += 1;
            Self::unwatch(slf, true)?;
            Self::call_soon_connection_lost(slf, None)?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    fn is_closing(&self) -> bool {
        self.closing
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        slf.borrow_mut()
            .flow
            .set_limits(high, low)
            .map_err(PyValueError::new_err)?;
        Self::maybe_pause_protocol(slf)
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.flow.limits()
    }

    fn get_write_buffer_size(&self) -> usize {
        self.queue.size()
    }

    fn set_protocol(&mut self, protocol: Py<PyAny>) {
        self.protocol = Some(protocol);
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol.as_ref().map(|p| p.clone_ref(py))
    }

    /// Starts reading once `connection_made` has run, unless the transport closed meanwhile.
    #[pyo3(signature = (_transport=None))]
    fn _start_reading(
        slf: &Bound<'_, Self>,
        _transport: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if slf.borrow().closing {
            return Ok(());
        }
        Self::watch(slf, false)
    }

    /// Reader callback. `_transport` is the Python transport, passed by the watcher only to keep
    /// it alive while the watcher is registered.
    #[pyo3(signature = (_transport=None))]
    fn _read_ready(slf: &Bound<'_, Self>, _transport: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let (lost, family) = {
            let this = slf.borrow();
            (this.conn_lost > 0, this.family)
        };
        if lost {
            Ok(())
        } else if sockaddr::is_native_family(family) {
            Self::receive_native(slf)
        } else {
            Self::receive_via_socket(slf)
        }
    }

    /// Writer callback: sends queued datagrams until the socket is full or the queue empty.
    #[pyo3(signature = (_transport=None))]
    fn _sendto_ready(slf: &Bound<'_, Self>, _transport: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        if slf.borrow().released {
            return Ok(());
        }
        loop {
            // Taken out of the queue while it is sent: the Python fallback may run code that
            // calls sendto() again.
            let Some((data, destination)) = slf.borrow_mut().queue.pop_front() else {
                break;
            };
            match Self::send_one(slf, &data, &destination) {
                Sent::Done => {}
                Sent::WouldBlock => {
                    slf.borrow_mut().queue.push_front(data, destination);
                    break;
                }
                Sent::Failed(err) => return Self::failed(slf, err, FATAL_WRITE),
            }
        }
        Self::maybe_resume_protocol(slf)?;
        let (drained, closing) = {
            let this = slf.borrow();
            (this.queue.is_empty(), this.closing)
        };
        if drained {
            Self::unwatch(slf, true)?;
            if closing {
                Self::_call_connection_lost(slf, None, None)?;
            }
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        visit.call(&self.transport)?;
        visit.call(&self.sock)?;
        visit.call(&self.protocol)?;
        visit.call(&self.remote)?;
        for (_, destination) in self.queue.iter() {
            if let Destination::Python(addr) = destination {
                visit.call(addr)?;
            }
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.transport = None;
        self.sock = None;
        self.protocol = None;
        self.remote = None;
        self.queue.clear();
    }

    /// Runs `protocol.connection_lost(exc)`, then lets the Python transport close the socket.
    #[pyo3(signature = (exc=None, _transport=None))]
    fn _call_connection_lost(
        slf: &Bound<'_, Self>,
        exc: Option<Bound<'_, PyAny>>,
        _transport: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let transport = Self::transport_of(slf);
        let protocol = {
            let mut this = slf.borrow_mut();
            this.transport = None;
            this.released = true;
            this.protocol.take()
        };
        let exc = exc.unwrap_or_else(|| py.None().into_bound(py));
        let result = match &protocol {
            Some(p) => p
                .bind(py)
                .call_method1(intern!(py, "connection_lost"), (exc,))
                .map(drop),
            None => Ok(()),
        };
        if let Some(transport) = transport {
            transport.call_method0(intern!(py, "_connection_lost_done"))?;
        }
        result
    }
}
