//! The native half of oxio's datagram transports (UDP and Unix datagram sockets): receiving into
//! `datagram_received`, `sendto` with its queue and flow control, and closing, with the
//! semantics of asyncio's `_SelectorDatagramTransport`.
//!
//! The Python half (`oxio._datagram_transport.DatagramTransport`) is the
//! `asyncio.DatagramTransport` users see; it owns the socket object and delegates here. See
//! docs/design.md, "Datagram transports".

use std::io;

use oxio_core::transport::datagram::{recv_from, send_to};
use oxio_core::{DatagramQueue, SockAddr};
use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyOSError, PyValueError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::sockaddr;
use crate::errors::{is_exit, os_error};
use crate::transport::{
    self, add_writer, maybe_pause_protocol, maybe_resume_protocol, protocol_of, remove_reader,
    remove_writer, schedule_connection_lost, with_bytes, with_read_buffer, FlowControl, Wiring,
    WriteCore, LOG_THRESHOLD_FOR_CONNLOST_WRITES, READ_SIZE,
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
    wiring: Wiring,
    family: i32,
    /// The socket object, for the addresses only it can convert (see `Destination::Python`).
    sock: Option<Py<PyAny>>,
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
    /// `pause_reading()` was called and `resume_reading()` not yet.
    reading_paused: bool,
    /// Nonzero once `connection_lost` is scheduled; counts sends attempted after that.
    conn_lost: u32,
    /// `connection_lost` ran and the Python transport closed the socket: `fd` may already
    /// number another file and must not be used again.
    released: bool,
}

transport::impl_core!(DatagramCore);

transport::impl_read_core!(DatagramCore, reading_paused);
transport::read_transport_methods!(DatagramCore);
transport::write_buffer_methods!(DatagramCore);

impl WriteCore for DatagramCore {
    fn flow(&self) -> &FlowControl {
        &self.flow
    }

    fn flow_mut(&mut self) -> &mut FlowControl {
        &mut self.flow
    }

    fn write_buffer_size(&self) -> usize {
        self.queue.size()
    }
}

impl DatagramCore {
    /// Calls `protocol.error_received(exc)`; its own exceptions propagate, as in asyncio.
    fn error_received(slf: &Bound<'_, Self>, err: PyErr) -> PyResult<()> {
        if let Some(protocol) = protocol_of(slf) {
            let py = slf.py();
            protocol.call_method1(intern!(py, "error_received"), (err.value(py),))?;
        }
        Ok(())
    }

    /// asyncio's `_fatal_error`: anything but an `OSError` also reaches the exception handler.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if !err.is_instance_of::<PyOSError>(py) {
            transport::report_error(slf, message, &err)?;
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
            remove_writer(slf)?;
        }
        if !was_closing {
            remove_reader(slf)?;
        }
        schedule_connection_lost(slf, exc)
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
        let fd = slf.borrow().wiring.fd;
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
            Err(err) => Sent::Failed(os_error(py, err)),
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
                Sent::WouldBlock => add_writer(slf, intern!(py, "_sendto_ready"))?,
                Sent::Failed(err) => return Self::failed(slf, err, FATAL_WRITE),
            }
        }
        slf.borrow_mut().queue.push(data.to_vec(), destination);
        maybe_pause_protocol(slf)
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
        let warn = this.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
        this.conn_lost += 1;
        drop(this);
        if warn {
            transport::log_warning(slf.py(), "socket.send() raised exception.")?;
        }
        Ok(true)
    }

    fn receive_native(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let fd = slf.borrow().wiring.fd;
        let received = with_read_buffer(|buf| {
            recv_from(fd, buf).map(|(n, from)| (PyBytes::new(py, &buf[..n]), from))
        });
        let (data, from) = match received {
            Ok(received) => received,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) => return Self::error_received(slf, os_error(py, err)),
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
        if let Some(protocol) = protocol_of(slf) {
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
        protocol: &Bound<'_, PyAny>,
        remote: Option<Py<PyAny>>,
        connected: bool,
        header_size: usize,
        sends_empty: bool,
    ) -> PyResult<Self> {
        let fd = sock.call_method0("fileno")?.extract()?;
        Ok(Self {
            wiring: Wiring::new(r#loop, transport, fd, protocol)?,
            family: sock.getattr("family")?.extract()?,
            sock: Some(sock.clone().unbind()),
            remote,
            connected,
            queue: DatagramQueue::new(header_size),
            flow: FlowControl::default(),
            sends_empty,
            closing: false,
            reading_paused: false,
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
        remove_reader(slf)?;
        if drained {
            slf.borrow_mut().conn_lost += 1;
            remove_writer(slf)?;
            schedule_connection_lost(slf, None)?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    fn is_closing(&self) -> bool {
        self.closing
    }

    fn set_protocol(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) {
        transport::replace_protocol(slf, protocol);
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
        maybe_resume_protocol(slf)?;
        let (drained, closing) = {
            let this = slf.borrow();
            (this.queue.is_empty(), this.closing)
        };
        if drained {
            remove_writer(slf)?;
            if closing {
                Self::_call_connection_lost(slf, None, None)?;
            }
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.wiring.traverse(&visit)?;
        visit.call(&self.sock)?;
        visit.call(&self.remote)?;
        for (_, destination) in self.queue.iter() {
            if let Destination::Python(addr) = destination {
                visit.call(addr)?;
            }
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.wiring.clear();
        self.sock = None;
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
        let had_queue = {
            let mut this = slf.borrow_mut();
            // An unconnected transport may have queued sends after close(); the socket is
            // about to go, and its writer with it.
            let had_queue = !this.queue.is_empty();
            this.queue.clear();
            had_queue
        };
        if had_queue {
            remove_writer(slf)?;
        }
        slf.borrow_mut().released = true;
        transport::call_connection_lost(slf, exc)
    }
}
