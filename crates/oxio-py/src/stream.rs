//! The native half of oxio's stream transports (TCP and Unix sockets): reading into the
//! protocol, the write queue with flow control, and closing, with asyncio's semantics.
//!
//! The Python half (`oxio._transports.SocketTransport`) is the `asyncio.Transport` users see; it
//! owns the socket object and delegates here. See docs/design.md, "Transports".

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;

use oxio_core::stream::{recv, send, shutdown_write};
use oxio_core::WriteQueue;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{
    PyKeyboardInterrupt, PyOSError, PyRuntimeError, PySystemExit, PyTypeError, PyValueError,
};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyWeakrefReference};

/// asyncio's `max_size` for one `recv()` on a socket transport.
pub(crate) const READ_SIZE: usize = 256 * 1024;
/// asyncio's default flow-control limits (`transports._FlowControlMixin`).
const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// asyncio warns once this many writes were attempted after the connection was lost.
pub(crate) const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

thread_local! {
    /// One read buffer per loop thread, shared by every transport: data is copied out into a
    /// `bytes` before the protocol runs, so no transport holds it across Python code.
    pub(crate) static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

#[pyclass(module = "oxio._oxio")]
pub struct StreamCore {
    fd: RawFd,
    loop_: Py<PyAny>,
    /// The Python transport, held weakly: the transport owns this core, and the loop keeps the
    /// transport alive through the arguments of its watchers and pending callbacks, exactly as
    /// long as asyncio's loop keeps its own transports alive. No reference cycle, so an
    /// abandoned transport is freed (and warns) at once, as in asyncio.
    transport: Option<Py<PyWeakrefReference>>,
    protocol: Option<Py<PyAny>>,
    /// The protocol is an `asyncio.BufferedProtocol`: receive straight into its buffer.
    buffered: bool,
    queue: WriteQueue,
    high_water: usize,
    low_water: usize,
    protocol_paused: bool,
    /// `close()` was called (or the transport is being force-closed).
    closing: bool,
    /// `write_eof()` was called.
    eof: bool,
    /// Nonzero once `connection_lost` is scheduled; counts writes attempted after that.
    conn_lost: u32,
    reading_paused: bool,
}

pub(crate) fn is_exit(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

fn is_buffered_protocol(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = protocol.py();
    let class = py
        .import(intern!(py, "asyncio"))?
        .getattr(intern!(py, "BufferedProtocol"))?;
    protocol.is_instance(&class)
}

impl StreamCore {
    fn transport_of<'py>(slf: &Bound<'py, Self>) -> Option<Bound<'py, PyAny>> {
        let this = slf.borrow();
        let weak = this.transport.as_ref()?.bind(slf.py());
        weak.upgrade()
    }

    fn loop_of<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyAny> {
        slf.borrow().loop_.bind(slf.py()).clone()
    }

    fn protocol_of<'py>(slf: &Bound<'py, Self>) -> Option<Bound<'py, PyAny>> {
        slf.borrow()
            .protocol
            .as_ref()
            .map(|p| p.bind(slf.py()).clone())
    }

    fn remove_reader(slf: &Bound<'_, Self>) -> PyResult<()> {
        let fd = slf.borrow().fd;
        Self::loop_of(slf).call_method1(intern!(slf.py(), "_remove_reader"), (fd,))?;
        Ok(())
    }

    fn remove_writer(slf: &Bound<'_, Self>) -> PyResult<()> {
        let fd = slf.borrow().fd;
        Self::loop_of(slf).call_method1(intern!(slf.py(), "_remove_writer"), (fd,))?;
        Ok(())
    }

    fn add_watcher(slf: &Bound<'_, Self>, write: bool) -> PyResult<()> {
        let py = slf.py();
        let fd = slf.borrow().fd;
        let (method, callback) = if write {
            (
                intern!(py, "_add_writer"),
                slf.getattr(intern!(py, "_write_ready"))?,
            )
        } else {
            (
                intern!(py, "_add_reader"),
                slf.getattr(intern!(py, "_read_ready"))?,
            )
        };
        let transport = Self::transport_of(slf);
        Self::loop_of(slf).call_method1(method, (fd, callback, transport))?;
        Ok(())
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

    /// asyncio's `_fatal_error`: OS errors are expected (peer reset, broken pipe) and only close
    /// the transport; anything else also reaches the loop's exception handler.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if !err.is_instance_of::<PyOSError>(py) {
            let context = PyDict::new(py);
            context.set_item("message", message)?;
            context.set_item("exception", err.value(py))?;
            Self::add_context(slf, &context)?;
            Self::loop_of(slf).call_method1(intern!(py, "call_exception_handler"), (context,))?;
        }
        Self::force_close(slf, Some(err.value(py).clone().into_any()))
    }

    /// The `transport` and `protocol` entries of an exception-handler context.
    fn add_context(slf: &Bound<'_, Self>, context: &Bound<'_, PyDict>) -> PyResult<()> {
        context.set_item("transport", Self::transport_of(slf))?;
        context.set_item("protocol", Self::protocol_of(slf))?;
        Ok(())
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
            Self::remove_writer(slf)?;
        }
        if !was_closing {
            Self::remove_reader(slf)?;
        }
        Self::call_soon_connection_lost(slf, exc)
    }

    /// Calls a protocol hook; an exception other than SystemExit/KeyboardInterrupt is fatal to
    /// the transport and reported with `message`.
    fn protocol_call<'py>(
        slf: &Bound<'py, Self>,
        result: PyResult<Bound<'py, PyAny>>,
        message: &str,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(err) if is_exit(slf.py(), &err) => Err(err),
            Err(err) => Self::fatal_error(slf, err, message).map(|()| None),
        }
    }

    fn read_into_protocol(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let fd = slf.borrow().fd;
        let received = READ_BUFFER.with(|cell| {
            let mut buf = cell.borrow_mut();
            recv(fd, &mut buf).map(|n| PyBytes::new(py, &buf[..n]))
        });
        match received {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(err) => Self::fatal_error(slf, err.into(), "Fatal read error on socket transport"),
            Ok(data) if data.as_bytes().is_empty() => Self::on_eof(slf, protocol),
            Ok(data) => {
                let result = protocol.call_method1(intern!(py, "data_received"), (data,));
                let message = "Fatal error: protocol.data_received() call failed.";
                Self::protocol_call(slf, result, message).map(drop)
            }
        }
    }

    fn read_into_buffer(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let buffer = protocol
            .call_method1(intern!(py, "get_buffer"), (-1,))
            .and_then(|obj| {
                let buffer = PyBuffer::<u8>::get(&obj)?;
                if buffer.item_count() == 0 {
                    return Err(PyRuntimeError::new_err(
                        "get_buffer() returned an empty buffer",
                    ));
                }
                if buffer.readonly() || !buffer.is_c_contiguous() {
                    return Err(PyTypeError::new_err(
                        "get_buffer() must return a writable, contiguous buffer",
                    ));
                }
                Ok(buffer)
            });
        let message = "Fatal error: protocol.get_buffer() call failed.";
        let buffer = match buffer {
            Ok(buffer) => buffer,
            Err(err) if is_exit(py, &err) => return Err(err),
            Err(err) => return Self::fatal_error(slf, err, message),
        };
        let fd = slf.borrow().fd;
        // SAFETY: the buffer is writable, C-contiguous and `item_count()` bytes long, and
        // `buffer` keeps the exporting object alive and its memory pinned until it is dropped
        // after this call; no Python code runs while the slice exists.
        let target = unsafe {
            std::slice::from_raw_parts_mut(buffer.buf_ptr().cast::<u8>(), buffer.item_count())
        };
        let received = recv(fd, target);
        drop(buffer);
        match received {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(err) => Self::fatal_error(slf, err.into(), "Fatal read error on socket transport"),
            Ok(0) => Self::on_eof(slf, protocol),
            Ok(n) => {
                let result = protocol.call_method1(intern!(py, "buffer_updated"), (n,));
                let message = "Fatal error: protocol.buffer_updated() call failed.";
                Self::protocol_call(slf, result, message).map(drop)
            }
        }
    }

    fn on_eof(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let result = protocol.call_method0(intern!(slf.py(), "eof_received"));
        let message = "Fatal error: protocol.eof_received() call failed.";
        let Some(keep_open) = Self::protocol_call(slf, result, message)? else {
            return Ok(());
        };
        if keep_open.is_truthy()? {
            // The protocol may still write; it can no longer receive.
            Self::remove_reader(slf)
        } else {
            Self::close(slf)
        }
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let protocol = {
            let mut this = slf.borrow_mut();
            if this.queue.len() <= this.high_water || this.protocol_paused {
                return Ok(());
            }
            this.protocol_paused = true;
            this.protocol.as_ref().map(|p| p.clone_ref(slf.py()))
        };
        if let Some(protocol) = protocol {
            let result = protocol
                .bind(slf.py())
                .call_method0(intern!(slf.py(), "pause_writing"));
            Self::report_flow_control_error(slf, result, "protocol.pause_writing() failed")?;
        }
        Ok(())
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let protocol = {
            let mut this = slf.borrow_mut();
            if !this.protocol_paused || this.queue.len() > this.low_water {
                return Ok(());
            }
            this.protocol_paused = false;
            this.protocol.as_ref().map(|p| p.clone_ref(slf.py()))
        };
        if let Some(protocol) = protocol {
            let result = protocol
                .bind(slf.py())
                .call_method0(intern!(slf.py(), "resume_writing"));
            Self::report_flow_control_error(slf, result, "protocol.resume_writing() failed")?;
        }
        Ok(())
    }

    fn report_flow_control_error(
        slf: &Bound<'_, Self>,
        result: PyResult<Bound<'_, PyAny>>,
        message: &str,
    ) -> PyResult<()> {
        let py = slf.py();
        match result {
            Ok(_) => Ok(()),
            Err(err) if is_exit(py, &err) => Err(err),
            Err(err) => {
                let context = PyDict::new(py);
                context.set_item("message", message)?;
                context.set_item("exception", err.value(py))?;
                Self::add_context(slf, &context)?;
                Self::loop_of(slf)
                    .call_method1(intern!(py, "call_exception_handler"), (context,))?;
                Ok(())
            }
        }
    }

    /// Sends `data` now if nothing is queued, queues what the socket did not take, and starts
    /// watching for writability when something is left.
    fn write_bytes(slf: &Bound<'_, Self>, data: &[u8]) -> PyResult<()> {
        let py = slf.py();
        {
            let this = slf.borrow();
            if this.eof {
                return Err(PyRuntimeError::new_err(
                    "Cannot call write() after write_eof()",
                ));
            }
        }
        if data.is_empty() {
            return Ok(());
        }
        {
            let mut this = slf.borrow_mut();
            if this.conn_lost > 0 {
                if this.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                    drop(this);
                    let logger = py.import("asyncio.log")?.getattr("logger")?;
                    logger.call_method1("warning", ("socket.send() raised exception.",))?;
                    this = slf.borrow_mut();
                }
                this.conn_lost += 1;
                return Ok(());
            }
        }
        let (queued_before, fd) = {
            let this = slf.borrow();
            (!this.queue.is_empty(), this.fd)
        };
        let mut rest = data;
        if !queued_before {
            match send(fd, data) {
                Ok(n) => rest = &data[n..],
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => {
                    return Self::fatal_error(
                        slf,
                        err.into(),
                        "Fatal write error on socket transport",
                    )
                }
            }
            if rest.is_empty() {
                return Ok(());
            }
            Self::add_watcher(slf, true)?;
        }
        slf.borrow_mut().queue.push(rest);
        Self::maybe_pause_protocol(slf)
    }
}

/// The bytes of a bytes-like object, as `socket.send()` would take them.
pub(crate) fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(f(bytes.as_bytes()));
    }
    if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
        // Copied out: the object may be resized by Python code while we hold a view of it.
        let copy = data
            .py()
            .import("builtins")?
            .getattr("bytes")?
            .call1((data,))?;
        let copy = copy.cast::<PyBytes>()?;
        return Ok(f(copy.as_bytes()));
    }
    Err(PyTypeError::new_err(format!(
        "data argument must be a bytes-like object, not {:?}",
        data.get_type().name()?.to_string()
    )))
}

#[pymethods]
impl StreamCore {
    #[new]
    #[pyo3(signature = (r#loop, transport, fd, protocol))]
    fn new(
        r#loop: Py<PyAny>,
        transport: &Bound<'_, PyAny>,
        fd: RawFd,
        protocol: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        Ok(Self {
            fd,
            loop_: r#loop,
            transport: Some(PyWeakrefReference::new(transport)?.unbind()),
            buffered: is_buffered_protocol(protocol)?,
            protocol: Some(protocol.clone().unbind()),
            queue: WriteQueue::new(),
            high_water: DEFAULT_HIGH_WATER,
            low_water: DEFAULT_HIGH_WATER / 4,
            protocol_paused: false,
            closing: false,
            eof: false,
            conn_lost: 0,
            reading_paused: false,
        })
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        with_bytes(data, |bytes| Self::write_bytes(slf, bytes))?
    }

    fn writelines(slf: &Bound<'_, Self>, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut joined = Vec::new();
        for line in lines.try_iter()? {
            with_bytes(&line?, |bytes| joined.extend_from_slice(bytes))?;
        }
        Self::write_bytes(slf, &joined)
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let (send_fin, fd) = {
            let mut this = slf.borrow_mut();
            if this.closing || this.eof {
                return Ok(());
            }
            this.eof = true;
            (this.queue.is_empty(), this.fd)
        };
        if send_fin {
            shutdown_write(fd)?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
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
        Self::remove_reader(slf)?;
        if drained {
            slf.borrow_mut().conn_lost += 1;
            Self::remove_writer(slf)?;
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

    fn is_reading(&self) -> bool {
        !self.closing && !self.reading_paused
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut this = slf.borrow_mut();
            if this.closing || this.reading_paused {
                return Ok(());
            }
            this.reading_paused = true;
        }
        Self::remove_reader(slf)
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut this = slf.borrow_mut();
            if this.closing || !this.reading_paused {
                return Ok(());
            }
            this.reading_paused = false;
        }
        Self::add_watcher(slf, false)
    }

    /// Starts reading, unless the protocol paused reading in `connection_made`.
    #[pyo3(signature = (_transport=None))]
    fn _start_reading(
        slf: &Bound<'_, Self>,
        _transport: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if slf.borrow().is_reading() {
            Self::add_watcher(slf, false)?;
        }
        Ok(())
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        let high = high.unwrap_or_else(|| low.map_or(DEFAULT_HIGH_WATER as i64, |l| 4 * l));
        let low = low.unwrap_or(high / 4);
        if !(high >= low && low >= 0) {
            return Err(PyValueError::new_err(format!(
                "high ({high}) must be >= low ({low}) must be >= 0"
            )));
        }
        {
            let mut this = slf.borrow_mut();
            this.high_water = high as usize;
            this.low_water = low as usize;
        }
        Self::maybe_pause_protocol(slf)
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        (self.low_water, self.high_water)
    }

    fn get_write_buffer_size(&self) -> usize {
        self.queue.len()
    }

    fn set_protocol(&mut self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        self.buffered = is_buffered_protocol(protocol)?;
        self.protocol = Some(protocol.clone().unbind());
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol.as_ref().map(|p| p.clone_ref(py))
    }

    /// Reader callback. `_transport` is the Python transport, passed by the watcher only to keep
    /// it alive while the watcher is registered.
    #[pyo3(signature = (_transport=None))]
    fn _read_ready(slf: &Bound<'_, Self>, _transport: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let (lost, buffered) = {
            let this = slf.borrow();
            (this.conn_lost > 0, this.buffered)
        };
        let Some(protocol) = Self::protocol_of(slf) else {
            return Ok(());
        };
        if lost {
            return Ok(());
        }
        if buffered {
            Self::read_into_buffer(slf, &protocol)
        } else {
            Self::read_into_protocol(slf, &protocol)
        }
    }

    #[pyo3(signature = (_transport=None))]
    fn _write_ready(slf: &Bound<'_, Self>, _transport: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let flushed = {
            let mut this = slf.borrow_mut();
            if this.conn_lost > 0 {
                return Ok(());
            }
            let fd = this.fd;
            this.queue.flush(fd)
        };
        match flushed {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) => {
                Self::remove_writer(slf)?;
                slf.borrow_mut().queue.clear();
                return Self::fatal_error(slf, err.into(), "Fatal write error on socket transport");
            }
            Ok(_) => {}
        }
        Self::maybe_resume_protocol(slf)?;
        let (drained, closing, eof, fd) = {
            let this = slf.borrow();
            (this.queue.is_empty(), this.closing, this.eof, this.fd)
        };
        if drained {
            Self::remove_writer(slf)?;
            if closing {
                slf.borrow_mut().conn_lost += 1;
                Self::_call_connection_lost(slf, None, None)?;
            } else if eof {
                shutdown_write(fd)?;
            }
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        visit.call(&self.transport)?;
        visit.call(&self.protocol)?;
        Ok(())
    }

    fn __clear__(&mut self) {
        self.transport = None;
        self.protocol = None;
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
