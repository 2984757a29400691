//! What every native transport core shares: its links to the loop, the Python transport and the
//! protocol; registering its fd; reporting errors the way asyncio's transports do; flow control
//! of the protocol's writes; the read buffer; and the last step of closing.
//!
//! A core is the Rust half of a transport (`StreamCore`, `ReadPipeCore`, `WritePipeCore`,
//! `DatagramCore`, and `tls::TlsProtocol` for the app side of TLS); its
//! Python half is the `asyncio` transport subclass users see. See docs/design.md, "Transports".

/// Implements [`Core`] for a core whose links live in its `wiring` field, with the
/// `get_protocol` every transport has, in a `#[pymethods]` block of its own beside the core's
/// (pyo3's `multiple-pymethods`).
macro_rules! impl_core {
    ($core:ty) => {
        impl $crate::transport::Core for $core {
            fn wiring(&self) -> &$crate::transport::Wiring {
                &self.wiring
            }

            fn wiring_mut(&mut self) -> &mut $crate::transport::Wiring {
                &mut self.wiring
            }
        }

        #[pyo3::pymethods]
        impl $core {
            fn get_protocol(&self, py: pyo3::Python<'_>) -> Option<pyo3::Py<pyo3::PyAny>> {
                self.wiring.protocol(py)
            }
        }
    };
}

/// Implements [`ReadCore`] for a core with a `closing` flag and the given paused flag.
macro_rules! impl_read_core {
    ($core:ty, $paused:ident) => {
        impl $crate::transport::ReadCore for $core {
            fn closing(&self) -> bool {
                self.closing
            }

            fn reading_paused(&self) -> bool {
                self.$paused
            }

            fn set_reading_paused(&mut self, paused: bool) {
                self.$paused = paused;
            }
        }
    };
}

/// `ReadTransport`'s reading methods for a core that implements [`ReadCore`], in a
/// `#[pymethods]` block of their own beside the core's (pyo3's `multiple-pymethods`).
macro_rules! read_transport_methods {
    ($core:ty) => {
        #[pyo3::pymethods]
        impl $core {
            fn is_reading(&self) -> bool {
                $crate::transport::ReadCore::is_reading(self)
            }

            fn pause_reading(slf: &pyo3::Bound<'_, Self>) -> pyo3::PyResult<()> {
                $crate::transport::pause_reading(slf)
            }

            fn resume_reading(slf: &pyo3::Bound<'_, Self>) -> pyo3::PyResult<()> {
                $crate::transport::resume_reading(slf)
            }

            /// Starts reading once `connection_made()` has run, unless the protocol paused
            /// reading.
            #[pyo3(signature = (_transport=None))]
            fn _start_reading(
                slf: &pyo3::Bound<'_, Self>,
                _transport: Option<&pyo3::Bound<'_, pyo3::PyAny>>,
            ) -> pyo3::PyResult<()> {
                $crate::transport::start_reading(slf)
            }
        }
    };
}

/// `WriteTransport`'s write-buffer methods for a core that implements [`WriteCore`], in a
/// `#[pymethods]` block of their own like [`read_transport_methods`].
macro_rules! write_buffer_methods {
    ($core:ty) => {
        #[pyo3::pymethods]
        impl $core {
            #[pyo3(signature = (high=None, low=None))]
            fn set_write_buffer_limits(
                slf: &pyo3::Bound<'_, Self>,
                high: Option<i64>,
                low: Option<i64>,
            ) -> pyo3::PyResult<()> {
                $crate::transport::set_write_buffer_limits(slf, high, low)
            }

            fn get_write_buffer_limits(&self) -> (usize, usize) {
                $crate::transport::WriteCore::flow(self).limits()
            }

            fn get_write_buffer_size(&self) -> usize {
                $crate::transport::WriteCore::write_buffer_size(self)
            }
        }
    };
}

/// `_call_connection_lost` for a core that has nothing of its own to release at the end:
/// `protocol.connection_lost(exc)`, then the Python transport's `_connection_lost_done`
/// (see [`call_connection_lost`]).
macro_rules! connection_lost_method {
    ($core:ty) => {
        #[pyo3::pymethods]
        impl $core {
            #[pyo3(signature = (exc=None, _transport=None))]
            fn _call_connection_lost(
                slf: &pyo3::Bound<'_, Self>,
                exc: Option<pyo3::Bound<'_, pyo3::PyAny>>,
                _transport: Option<&pyo3::Bound<'_, pyo3::PyAny>>,
            ) -> pyo3::PyResult<()> {
                $crate::transport::call_connection_lost(slf, exc)
            }
        }
    };
}

pub(crate) use {
    connection_lost_method, impl_core, impl_read_core, read_transport_methods, write_buffer_methods,
};

pub(crate) mod datagram;
pub(crate) mod pipe;
mod reading;
mod sockaddr;
mod spare_bytes;
pub(crate) mod stream;
pub(crate) mod stream_methods;
pub(crate) mod stream_reader;

use std::os::fd::RawFd;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::False;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyString, PyWeakrefReference};
use pyo3::PyClass;

pub(crate) use oxio_core::FlowControl;
pub(crate) use reading::{recv_appending, recv_bytes, with_read_buffer, Appended, READ_SIZE};

/// asyncio warns once this many writes were attempted after the connection was lost.
pub(crate) const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// The bytes of a bytes-like object, as `socket.send()` would take them.
pub(crate) fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(f(bytes.as_bytes()));
    }
    if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
        // A view that is not contiguous: its bytes in order, as `bytes(view)` has them. `f`
        // may run Python code, which may change the bytes in place; whatever a transport
        // keeps of them, it copies.
        let f = match crate::buffer::with_contiguous(data, f)? {
            Ok(result) => return Ok(result),
            Err(f) => f,
        };
        let copy = data.py().get_type::<PyBytes>().call1((data,))?;
        return Ok(f(copy.cast::<PyBytes>()?.as_bytes()));
    }
    Err(PyTypeError::new_err(format!(
        "data argument must be a bytes-like object, not {:?}",
        data.get_type().name()?.to_string()
    )))
}

/// Whether the protocol is an `asyncio.BufferedProtocol`, which receives into its own buffer.
pub(crate) fn is_buffered_protocol(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    protocol.is_instance(crate::stdlib::aio_buffered_protocol(protocol.py())?)
}

/// How a stream transport hands what it receives to its protocol.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Receiver {
    /// `data_received(data)`.
    Protocol,
    /// An `asyncio.BufferedProtocol`: `get_buffer(-1)`, then `buffer_updated(n)`.
    Buffered,
    /// A stock `asyncio.StreamReaderProtocol`: straight into its reader's buffer
    /// ([`stream_reader`]).
    StreamReader,
}

impl Receiver {
    pub(crate) fn of(protocol: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(if is_buffered_protocol(protocol)? {
            Self::Buffered
        } else if stream_reader::is_stock_protocol(protocol) {
            Self::StreamReader
        } else {
            Self::Protocol
        })
    }
}

/// A core's links to the outside.
pub(crate) struct Wiring {
    pub(crate) fd: RawFd,
    loop_: Py<PyAny>,
    /// The Python transport, held weakly: the transport owns its core, and the loop keeps the
    /// transport alive through the arguments of the core's watchers and pending callbacks,
    /// exactly as long as asyncio's loop keeps its own transports alive. No reference cycle, so
    /// an abandoned transport is freed (and warns) at once, as in asyncio.
    transport: Option<Py<PyWeakrefReference>>,
    pub(crate) protocol: Option<Py<PyAny>>,
}

impl Wiring {
    pub(crate) fn new(
        loop_: Py<PyAny>,
        transport: &Bound<'_, PyAny>,
        fd: RawFd,
        protocol: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        Ok(Self {
            fd,
            loop_,
            transport: Some(PyWeakrefReference::new(transport)?.unbind()),
            protocol: Some(protocol.clone().unbind()),
        })
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        visit.call(&self.transport)?;
        visit.call(&self.protocol)
    }

    pub(crate) fn clear(&mut self) {
        self.transport = None;
        self.protocol = None;
    }

    /// `get_protocol()`.
    pub(crate) fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol.as_ref().map(|p| p.clone_ref(py))
    }
}

/// A `#[pyclass]` transport core, for the helpers below.
pub(crate) trait Core: PyClass<Frozen = False> {
    fn wiring(&self) -> &Wiring;
    fn wiring_mut(&mut self) -> &mut Wiring;
}

/// A core with a write buffer under asyncio's flow control.
pub(crate) trait WriteCore: Core {
    fn flow(&self) -> &FlowControl;
    fn flow_mut(&mut self) -> &mut FlowControl;
    /// Bytes accepted by `write()` and not yet handed to the kernel.
    fn write_buffer_size(&self) -> usize;
}

/// `set_protocol()`. The old protocol is released once the core is no longer borrowed: its
/// finalizer may call back into the transport.
pub(crate) fn replace_protocol<T: Core>(slf: &Bound<'_, T>, protocol: &Bound<'_, PyAny>) {
    let old = slf
        .borrow_mut()
        .wiring_mut()
        .protocol
        .replace(protocol.clone().unbind());
    drop(old);
}

/// A core that reads from its fd: whether the fd is watched follows asyncio's `is_reading()`.
pub(crate) trait ReadCore: Core {
    /// `close()` was called, or reading ended for good.
    fn closing(&self) -> bool;
    fn reading_paused(&self) -> bool;
    fn set_reading_paused(&mut self, paused: bool);

    fn is_reading(&self) -> bool {
        !self.closing() && !self.reading_paused()
    }
}

/// `pause_reading()`: stops watching the fd; a no-op when not reading.
pub(crate) fn pause_reading<T: ReadCore>(slf: &Bound<'_, T>) -> PyResult<()> {
    if !slf.borrow().is_reading() {
        return Ok(());
    }
    slf.borrow_mut().set_reading_paused(true);
    remove_reader(slf)
}

/// `resume_reading()`: watches the fd again, unless the core is closing or was not paused.
pub(crate) fn resume_reading<T: ReadCore>(slf: &Bound<'_, T>) -> PyResult<()> {
    {
        let mut this = slf.borrow_mut();
        if this.closing() || !this.reading_paused() {
            return Ok(());
        }
        this.set_reading_paused(false);
    }
    add_reader(slf, intern!(slf.py(), "_read_ready"))
}

/// Starts reading once `connection_made()` has run, unless the protocol paused reading there.
pub(crate) fn start_reading<T: ReadCore>(slf: &Bound<'_, T>) -> PyResult<()> {
    if slf.borrow().is_reading() {
        add_reader(slf, intern!(slf.py(), "_read_ready"))?;
    }
    Ok(())
}

pub(crate) fn transport_of<'py, T: Core>(slf: &Bound<'py, T>) -> Option<Bound<'py, PyAny>> {
    let this = slf.borrow();
    this.wiring().transport.as_ref()?.bind(slf.py()).upgrade()
}

pub(crate) fn loop_of<'py, T: Core>(slf: &Bound<'py, T>) -> Bound<'py, PyAny> {
    slf.borrow().wiring().loop_.bind(slf.py()).clone()
}

pub(crate) fn protocol_of<'py, T: Core>(slf: &Bound<'py, T>) -> Option<Bound<'py, PyAny>> {
    let this = slf.borrow();
    this.wiring()
        .protocol
        .as_ref()
        .map(|p| p.bind(slf.py()).clone())
}

fn fd_of<T: Core>(slf: &Bound<'_, T>) -> RawFd {
    slf.borrow().wiring().fd
}

/// Watches the core's fd for reading with its method `callback`; the watcher carries the
/// Python transport to keep it alive.
pub(crate) fn add_reader<T: Core>(
    slf: &Bound<'_, T>,
    callback: &Bound<'_, PyString>,
) -> PyResult<()> {
    add_watcher(slf, intern!(slf.py(), "_add_reader"), callback)
}

pub(crate) fn add_writer<T: Core>(
    slf: &Bound<'_, T>,
    callback: &Bound<'_, PyString>,
) -> PyResult<()> {
    add_watcher(slf, intern!(slf.py(), "_add_writer"), callback)
}

fn add_watcher<T: Core>(
    slf: &Bound<'_, T>,
    loop_method: &Bound<'_, PyString>,
    callback: &Bound<'_, PyString>,
) -> PyResult<()> {
    let callback = slf.as_any().getattr(callback)?;
    let transport = transport_of(slf);
    loop_of(slf).call_method1(loop_method, (fd_of(slf), callback, transport))?;
    Ok(())
}

pub(crate) fn remove_reader<T: Core>(slf: &Bound<'_, T>) -> PyResult<()> {
    loop_of(slf).call_method1(intern!(slf.py(), "_remove_reader"), (fd_of(slf),))?;
    Ok(())
}

pub(crate) fn remove_writer<T: Core>(slf: &Bound<'_, T>) -> PyResult<()> {
    loop_of(slf).call_method1(intern!(slf.py(), "_remove_writer"), (fd_of(slf),))?;
    Ok(())
}

/// `loop.call_soon(callback, arg, transport)`: the transport rides along as a keep-alive.
pub(crate) fn call_soon<T: Core>(
    slf: &Bound<'_, T>,
    callback: &Bound<'_, PyAny>,
    arg: Option<Bound<'_, PyAny>>,
) -> PyResult<()> {
    let py = slf.py();
    let arg = arg.unwrap_or_else(|| py.None().into_bound(py));
    let transport = transport_of(slf);
    loop_of(slf).call_method1(intern!(py, "call_soon"), (callback, arg, transport))?;
    Ok(())
}

/// Schedules the core's `_call_connection_lost(exc)`.
pub(crate) fn schedule_connection_lost<T: Core>(
    slf: &Bound<'_, T>,
    exc: Option<Bound<'_, PyAny>>,
) -> PyResult<()> {
    let callback = slf
        .as_any()
        .getattr(intern!(slf.py(), "_call_connection_lost"))?;
    call_soon(slf, &callback, exc)
}

/// Calls the loop's exception handler with asyncio's transport context.
pub(crate) fn report_error<T: Core>(
    slf: &Bound<'_, T>,
    message: &str,
    err: &PyErr,
) -> PyResult<()> {
    let py = slf.py();
    let context = PyDict::new(py);
    context.set_item("message", message)?;
    context.set_item("exception", err.value(py))?;
    context.set_item("transport", transport_of(slf))?;
    context.set_item("protocol", protocol_of(slf))?;
    loop_of(slf).call_method1(intern!(py, "call_exception_handler"), (context,))?;
    Ok(())
}

/// A warning on the `asyncio` logger (writes to a lost connection, ignored requests).
pub(crate) fn log_warning(py: Python<'_>, message: &str) -> PyResult<()> {
    let logger = py
        .import(intern!(py, "asyncio.log"))?
        .getattr(intern!(py, "logger"))?;
    logger.call_method1(intern!(py, "warning"), (message,))?;
    Ok(())
}

/// The end of every transport: `protocol.connection_lost(exc)`, then the Python transport
/// releases its file object (`_connection_lost_done`). Nothing reaches the protocol after this.
pub(crate) fn call_connection_lost<T: Core>(
    slf: &Bound<'_, T>,
    exc: Option<Bound<'_, PyAny>>,
) -> PyResult<()> {
    let py = slf.py();
    let transport = transport_of(slf);
    let protocol = {
        let mut this = slf.borrow_mut();
        let wiring = this.wiring_mut();
        wiring.transport = None;
        wiring.protocol.take()
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

/// `set_write_buffer_limits(high, low)` for any write core: asyncio's defaults and check.
pub(crate) fn set_write_buffer_limits<T: WriteCore>(
    slf: &Bound<'_, T>,
    high: Option<i64>,
    low: Option<i64>,
) -> PyResult<()> {
    slf.borrow_mut()
        .flow_mut()
        .set_limits(high, low)
        .map_err(PyValueError::new_err)?;
    maybe_pause_protocol(slf)
}

/// Calls `protocol.pause_writing()` when the buffer grew past the high-water mark.
pub(crate) fn maybe_pause_protocol<T: WriteCore>(slf: &Bound<'_, T>) -> PyResult<()> {
    let py = slf.py();
    {
        let mut this = slf.borrow_mut();
        let size = this.write_buffer_size();
        if !this.flow_mut().should_pause(size) {
            return Ok(());
        }
    }
    call_flow_hook(
        slf,
        intern!(py, "pause_writing"),
        "protocol.pause_writing() failed",
    )
}

/// Calls `protocol.resume_writing()` when a paused buffer drained to the low-water mark.
pub(crate) fn maybe_resume_protocol<T: WriteCore>(slf: &Bound<'_, T>) -> PyResult<()> {
    let py = slf.py();
    {
        let mut this = slf.borrow_mut();
        let size = this.write_buffer_size();
        if !this.flow_mut().should_resume(size) {
            return Ok(());
        }
    }
    call_flow_hook(
        slf,
        intern!(py, "resume_writing"),
        "protocol.resume_writing() failed",
    )
}

/// A failing flow-control hook is reported and otherwise ignored, as in asyncio.
pub(crate) fn call_flow_hook<T: Core>(
    slf: &Bound<'_, T>,
    hook: &Bound<'_, PyString>,
    message: &str,
) -> PyResult<()> {
    let Some(protocol) = protocol_of(slf) else {
        return Ok(());
    };
    match protocol.call_method0(hook) {
        Ok(_) => Ok(()),
        Err(err) if crate::errors::is_exit(slf.py(), &err) => Err(err),
        Err(err) => report_error(slf, message, &err),
    }
}
