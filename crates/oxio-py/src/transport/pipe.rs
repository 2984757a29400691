//! The native halves of oxio's pipe transports (`connect_read_pipe`, `connect_write_pipe`, and
//! the pipes of subprocesses), with the semantics of asyncio's `unix_events` pipe transports.
//!
//! They differ from stream sockets on purpose, as asyncio's do: an exception in
//! `data_received` is an ordinary callback error, not fatal to the pipe; end of stream always
//! closes the read side; writes after `close()` are dropped; and `close()` of a write pipe is
//! `write_eof()`. The Python halves live in `oxio._pipes`.

use std::io;

use oxio_core::transport::stream::{read, write};
use oxio_core::WriteQueue;
use pyo3::exceptions::{PyBrokenPipeError, PyOSError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::os_error;
use crate::transport::{
    self, add_reader, add_writer, maybe_pause_protocol, maybe_resume_protocol, protocol_of,
    remove_reader, remove_writer, schedule_connection_lost, with_bytes, with_read_buffer,
    FlowControl, Wiring, WriteCore, LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};

#[pyclass(module = "oxio._oxio")]
pub struct ReadPipeCore {
    wiring: Wiring,
    closing: bool,
    paused: bool,
}

transport::impl_core!(ReadPipeCore);

transport::impl_read_core!(ReadPipeCore, paused);
transport::read_transport_methods!(ReadPipeCore);
transport::connection_lost_method!(ReadPipeCore);

impl ReadPipeCore {
    fn close_with(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        slf.borrow_mut().closing = true;
        remove_reader(slf)?;
        schedule_connection_lost(slf, exc)
    }

    /// asyncio reports every read error except `EIO` (a tty whose other side closed).
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr) -> PyResult<()> {
        let py = slf.py();
        let is_eio = err.is_instance_of::<PyOSError>(py)
            && err
                .value(py)
                .getattr(intern!(py, "errno"))?
                .extract::<i32>()
                .ok()
                == Some(libc::EIO);
        if !is_eio {
            transport::report_error(slf, "Fatal read error on pipe transport", &err)?;
        }
        Self::close_with(slf, Some(err.value(py).clone().into_any()))
    }
}

#[pymethods]
impl ReadPipeCore {
    #[new]
    fn new(
        r#loop: Py<PyAny>,
        transport: &Bound<'_, PyAny>,
        fd: i32,
        protocol: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        Ok(Self {
            wiring: Wiring::new(r#loop, transport, fd, protocol)?,
            closing: false,
            paused: false,
        })
    }

    fn is_closing(&self) -> bool {
        self.closing
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.borrow().closing {
            return Ok(());
        }
        Self::close_with(slf, None)
    }

    fn set_protocol(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) {
        transport::replace_protocol(slf, protocol);
    }

    /// Reader callback; `_transport` rides along to keep the Python transport alive.
    #[pyo3(signature = (_transport=None))]
    fn _read_ready(slf: &Bound<'_, Self>, _transport: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let fd = slf.borrow().wiring.fd;
        let received = with_read_buffer(|buf| read(fd, buf).map(|n| PyBytes::new(py, &buf[..n])));
        match received {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(err) => Self::fatal_error(slf, os_error(slf.py(), err)),
            Ok(data) if data.as_bytes().is_empty() => {
                slf.borrow_mut().closing = true;
                remove_reader(slf)?;
                if let Some(protocol) = protocol_of(slf) {
                    let eof_received = protocol.getattr(intern!(py, "eof_received"))?;
                    transport::loop_of(slf)
                        .call_method1(intern!(py, "call_soon"), (eof_received,))?;
                }
                schedule_connection_lost(slf, None)
            }
            Ok(data) => {
                let Some(protocol) = protocol_of(slf) else {
                    return Ok(());
                };
                // An exception here is the callback's error, reported by the loop; the pipe
                // stays open, as in asyncio.
                protocol.call_method1(intern!(py, "data_received"), (data,))?;
                Ok(())
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.wiring.traverse(&visit)
    }

    fn __clear__(&mut self) {
        self.wiring.clear();
    }
}

#[pyclass(module = "oxio._oxio")]
pub struct WritePipeCore {
    wiring: Wiring,
    queue: WriteQueue,
    flow: FlowControl,
    /// Nonzero once the pipe broke or was aborted; counts writes attempted after that.
    conn_lost: u32,
    /// `close()`, `write_eof()` or `abort()` was called.
    closing: bool,
    /// `connection_lost` is scheduled or ran: the fd may already belong to someone else.
    finished: bool,
}

transport::impl_core!(WritePipeCore);
transport::write_buffer_methods!(WritePipeCore);
transport::connection_lost_method!(WritePipeCore);

impl WriteCore for WritePipeCore {
    fn flow(&self) -> &FlowControl {
        &self.flow
    }

    fn flow_mut(&mut self) -> &mut FlowControl {
        &mut self.flow
    }

    fn write_buffer_size(&self) -> usize {
        self.queue.len()
    }
}

impl WritePipeCore {
    fn close_with(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let had_queue = {
            let mut this = slf.borrow_mut();
            if this.finished {
                return Ok(());
            }
            this.finished = true;
            this.closing = true;
            let had_queue = !this.queue.is_empty();
            this.queue.clear();
            had_queue
        };
        if had_queue {
            remove_writer(slf)?;
        }
        remove_reader(slf)?;
        schedule_connection_lost(slf, exc)
    }

    /// asyncio treats any OS error on a write pipe as the pipe closing (the reader went away);
    /// anything else also reaches the loop's exception handler.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr) -> PyResult<()> {
        let py = slf.py();
        if !err.is_instance_of::<PyOSError>(py) {
            transport::report_error(slf, "Fatal write error on pipe transport", &err)?;
        }
        Self::close_with(slf, Some(err.value(py).clone().into_any()))
    }

    fn write_bytes(slf: &Bound<'_, Self>, data: &[u8]) -> PyResult<()> {
        let py = slf.py();
        if data.is_empty() {
            return Ok(());
        }
        let (dropped, queued_before, fd) = {
            let mut this = slf.borrow_mut();
            let dropped = this.conn_lost > 0 || this.closing;
            if dropped {
                this.conn_lost += 1;
            }
            (
                dropped.then_some(this.conn_lost),
                !this.queue.is_empty(),
                this.wiring.fd,
            )
        };
        if let Some(attempts) = dropped {
            if attempts > LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                let message = "pipe closed by peer or os.write(pipe, data) raised exception.";
                transport::log_warning(py, message)?;
            }
            return Ok(());
        }
        let mut rest = data;
        if !queued_before {
            match write(fd, data) {
                Ok(n) => rest = &data[n..],
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => {
                    slf.borrow_mut().conn_lost += 1;
                    return Self::fatal_error(slf, os_error(slf.py(), err));
                }
            }
            if rest.is_empty() {
                return Ok(());
            }
            add_writer(slf, intern!(py, "_write_ready"))?;
        }
        slf.borrow_mut().queue.push(rest);
        maybe_pause_protocol(slf)
    }
}

#[pymethods]
impl WritePipeCore {
    #[new]
    fn new(
        r#loop: Py<PyAny>,
        transport: &Bound<'_, PyAny>,
        fd: i32,
        protocol: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        Ok(Self {
            wiring: Wiring::new(r#loop, transport, fd, protocol)?,
            queue: WriteQueue::new(),
            flow: FlowControl::default(),
            conn_lost: 0,
            closing: false,
            finished: false,
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

    fn can_write_eof(&self) -> bool {
        true
    }

    /// No more writes; the pipe closes once the queue drains.
    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let drained = {
            let mut this = slf.borrow_mut();
            if this.closing {
                return Ok(());
            }
            this.closing = true;
            this.finished = this.queue.is_empty();
            this.finished
        };
        if drained {
            remove_reader(slf)?;
            schedule_connection_lost(slf, None)?;
        }
        Ok(())
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::write_eof(slf)
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_with(slf, None)
    }

    fn is_closing(&self) -> bool {
        self.closing
    }

    fn set_protocol(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) {
        transport::replace_protocol(slf, protocol);
    }

    /// Watches the pipe's own fd for reading: on a FIFO or socket that fires when the reading
    /// side closes, which is how asyncio notices a vanished reader before the next write.
    #[pyo3(signature = (_transport=None))]
    fn _watch_for_hangup(
        slf: &Bound<'_, Self>,
        _transport: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if slf.borrow().closing {
            return Ok(());
        }
        add_reader(slf, intern!(slf.py(), "_read_ready"))
    }

    /// The reading side closed: a pending queue can no longer be delivered.
    #[pyo3(signature = (_transport=None))]
    fn _read_ready(slf: &Bound<'_, Self>, _transport: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        if slf.borrow().queue.is_empty() {
            return Self::close_with(slf, None);
        }
        let broken = py.get_type::<PyBrokenPipeError>().call0()?;
        Self::close_with(slf, Some(broken))
    }

    #[pyo3(signature = (_transport=None))]
    fn _write_ready(slf: &Bound<'_, Self>, _transport: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let flushed = {
            let mut this = slf.borrow_mut();
            let fd = this.wiring.fd;
            this.queue.flush_to_pipe(fd)
        };
        match flushed {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) => {
                {
                    let mut this = slf.borrow_mut();
                    this.queue.clear();
                    this.conn_lost += 1;
                }
                // Whatever is queued is lost: the writer watch goes with it.
                remove_writer(slf)?;
                return Self::fatal_error(slf, os_error(slf.py(), err));
            }
            Ok(_) => {}
        }
        if !slf.borrow().queue.is_empty() {
            return Ok(());
        }
        remove_writer(slf)?;
        maybe_resume_protocol(slf)?;
        let finish = {
            let mut this = slf.borrow_mut();
            this.finished |= this.closing;
            this.closing
        };
        if finish {
            remove_reader(slf)?;
            transport::call_connection_lost(slf, None)?;
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.wiring.traverse(&visit)
    }

    fn __clear__(&mut self) {
        self.wiring.clear();
    }
}
