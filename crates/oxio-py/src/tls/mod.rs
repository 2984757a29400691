//! The native TLS layer: asyncio's `SSLProtocol` state machine between a plain stream transport
//! and the application's protocol. OpenSSL runs under the user's own `ssl.SSLContext`, through
//! an `ssl.SSLObject` over two `ssl.MemoryBIO`s that this layer fills and drains.
//!
//! `TlsProtocol` faces two ways. To the plain transport below (`oxio._transports.SocketTransport`)
//! it is the protocol: ciphertext arrives in `data_received` and leaves through the transport's
//! `write`. To the application it is the core of the app transport (`oxio._tls.SSLTransport`):
//! plaintext arrives in `write` and leaves through the app protocol's `data_received` or
//! `buffer_updated`. The state machine itself is in `machine.rs`. See docs/design.md, "TLS".

mod bio;
mod machine;
mod records;

use std::collections::VecDeque;
use std::ffi::c_char;

use pyo3::exceptions::{
    PyConnectionAbortedError, PyException, PyTimeoutError, PyTypeError, PyValueError,
};
use pyo3::ffi;
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyFloat, PyMemoryView};

use crate::transport::{self, is_buffered_protocol, with_bytes, FlowControl, Wiring, WriteCore};

/// asyncio's `FLOW_CONTROL_HIGH_WATER_SSL_WRITE`: plaintext buffered before `pause_writing`.
const WRITE_HIGH_WATER: usize = 512 * 1024;
/// asyncio's `FLOW_CONTROL_HIGH_WATER_SSL_READ`: ciphertext buffered before the plain
/// transport stops reading.
const READ_HIGH_WATER: usize = 256 * 1024;

/// asyncio's `SSLProtocolState`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TlsState {
    /// No TLS session: not started yet, failed, or over.
    Unwrapped,
    DoHandshake,
    /// Application data flows both ways.
    Wrapped,
    /// Closing: decrypting what the peer already sent before sending close_notify.
    Flushing,
    /// close_notify sent or being sent; waiting for the peer's.
    Shutdown,
}

impl TlsState {
    /// Any state may fall back to `Unwrapped`; otherwise the machine only moves forward.
    fn can_become(self, next: Self) -> bool {
        use TlsState::*;
        matches!(
            (self, next),
            (_, Unwrapped)
                | (Unwrapped, DoHandshake)
                | (DoHandshake, Wrapped)
                | (Wrapped, Flushing)
                | (Flushing, Shutdown)
        )
    }

    fn name(self) -> &'static str {
        match self {
            Self::Unwrapped => "UNWRAPPED",
            Self::DoHandshake => "DO_HANDSHAKE",
            Self::Wrapped => "WRAPPED",
            Self::Flushing => "FLUSHING",
            Self::Shutdown => "SHUTDOWN",
        }
    }
}

/// Which of the app protocol's callbacks ran: `connection_made`, then at most one
/// `eof_received`, then `connection_lost` (asyncio's `AppProtocolState`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum AppState {
    Init,
    ConnectionMade,
    Eof,
    ConnectionLost,
}

/// The `SSLObject` and the memory BIOs it reads ciphertext from and writes ciphertext to.
struct SslPipe {
    object: Py<PyAny>,
    /// What `read`/`write` are called on per record: `ssl.SSLObject`'s inner `_sslobj` when the
    /// object is exactly that class, whose methods only forward there (one Python frame less
    /// per call); the object itself when a context's `sslobject_class` made it something else.
    records: Py<PyAny>,
    /// `records` is `ssl.SSLObject`'s inner object, OpenSSL's own record layer with no Python
    /// code of the user's in between: oxio may then skip calls whose outcome it knows.
    native: bool,
    incoming: Py<PyAny>,
    outgoing: Py<PyAny>,
}

#[pyclass(module = "oxio._oxio")]
pub struct TlsProtocol {
    /// The loop, the app transport (weakly) and the app protocol.
    wiring: Wiring,
    /// The app transport, held from creation to `connection_lost` as asyncio's SSLProtocol
    /// holds it: users may drop every reference to it while the connection lives.
    app_transport: Option<Py<PyAny>>,
    /// The plain transport below, from `connection_made` to `connection_lost`.
    transport: Option<Py<PyAny>>,
    ssl: SslPipe,
    /// `get_extra_info()` keys that TLS adds: `sslcontext`, then after the handshake
    /// `peercert`, `cipher`, `compression` and `ssl_object`.
    extra: Py<PyDict>,
    /// Resolved once the handshake succeeded or failed.
    waiter: Option<Py<PyAny>>,
    state: TlsState,
    app_state: AppState,
    /// The app protocol is an `asyncio.BufferedProtocol`.
    buffered: bool,
    /// The app transport's `is_closing()`.
    closed: bool,
    handshake_timeout: f64,
    shutdown_timeout: f64,
    handshake_timer: Option<Py<PyAny>>,
    shutdown_timer: Option<Py<PyAny>>,
    /// Plaintext the SSLObject has not taken yet (writes before the handshake completed).
    backlog: VecDeque<Py<PyBytes>>,
    backlog_size: usize,
    /// Flow control of the app's writes: backlog plus ciphertext not yet handed down.
    write_flow: FlowControl,
    /// Water marks of the incoming BIO, which pause and resume the plain transport's reading.
    read_flow: FlowControl,
    ssl_reading_paused: bool,
    /// The plain transport asked us to stop writing to it: ciphertext waits in the BIO.
    ssl_writing_paused: bool,
    app_reading_paused: bool,
    /// The plain transport reached end of stream.
    eof_received: bool,
    /// Nonzero once the connection is lost; counts writes attempted after that.
    conn_lost: u32,
}

transport::impl_core!(TlsProtocol);
// For the app side, `connection_lost` is the app protocol's, and the transport told is the app
// transport.
transport::connection_lost_method!(TlsProtocol);

impl WriteCore for TlsProtocol {
    fn flow(&self) -> &FlowControl {
        &self.write_flow
    }

    fn flow_mut(&mut self) -> &mut FlowControl {
        &mut self.write_flow
    }

    fn write_buffer_size(&self) -> usize {
        Python::attach(|py| self.backlog_size + bio::pending(self.ssl.outgoing.bind(py)))
    }
}

/// The object to call `read`/`write` on for `sslobj` (see `SslPipe::records`).
// NOTE: HTTPS keep-alive (wrk, 32 connections, server pinned) went from about 0.8x to 0.93x of
// uvloop's requests/s at equal server CPU when records stopped going through the wrapper.
fn record_layer<'py>(sslobj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = sslobj.py();
    let ssl_object = py
        .import(intern!(py, "ssl"))?
        .getattr(intern!(py, "SSLObject"))?;
    if sslobj.get_type().is(&ssl_object) {
        if let Ok(inner) = sslobj.getattr(intern!(py, "_sslobj")) {
            return Ok(inner);
        }
    }
    Ok(sslobj.clone())
}

/// A handshake or shutdown timeout: a positive number, or asyncio's constant when `None`.
fn timeout_or_default(
    py: Python<'_>,
    value: Option<&Bound<'_, PyAny>>,
    what: &str,
    default_name: &str,
) -> PyResult<f64> {
    let Some(value) = value else {
        // Read at each connection, so a patched `asyncio.constants` applies as in asyncio.
        let constants = py.import(intern!(py, "asyncio.constants"))?;
        return constants.getattr(default_name)?.extract();
    };
    let seconds: f64 = value.extract()?;
    if seconds <= 0.0 {
        return Err(PyValueError::new_err(format!(
            "{what} should be a positive number, got {}",
            value.str()?
        )));
    }
    Ok(seconds)
}

impl TlsProtocol {
    /// Ciphertext straight from the plain transport's read buffer: what `data_received` does,
    /// with the bytes lent to the incoming BIO instead of copied into a `bytes` first (asyncio's
    /// TLS layer is a `BufferedProtocol` for the same reason). `StreamCore` calls this, then
    /// `on_ciphertext` once its read buffer is free again.
    // NOTE: per server CPU-second, 3 alternating runs each: TLS echo 100 KiB 6.39k -> 6.65k ops,
    // 10 KiB 48.6k -> 50.8k, HTTPS keep-alive 69.1k -> 70.8k requests.
    pub(crate) fn receive(slf: &Bound<'_, Self>, ciphertext: &[u8]) -> PyResult<()> {
        if ciphertext.is_empty() {
            return Ok(());
        }
        let py = slf.py();
        // SAFETY: the GIL is held; the view lends `ciphertext`, which outlives this call, and
        // is read-only (`PyBUF_READ`), so nothing writes through the cast-away const.
        let view = unsafe {
            ffi::PyMemoryView_FromMemory(
                ciphertext.as_ptr().cast::<c_char>().cast_mut(),
                ciphertext.len() as ffi::Py_ssize_t,
                ffi::PyBUF_READ,
            )
        };
        // SAFETY: a new reference, or NULL with an exception set.
        let view = unsafe { Bound::from_owned_ptr_or_err(py, view)? };
        let written = Self::incoming(slf).call_method1(intern!(py, "write"), (&view,));
        // `MemoryBIO.write` copies and keeps nothing; should anything else hold the view, it is
        // released so that it cannot reach the buffer once this call returns.
        // SAFETY: `view` is a live object and the GIL is held.
        if unsafe { ffi::Py_REFCNT(view.as_ptr()) } > 1 {
            view.call_method0(intern!(py, "release"))?;
        }
        written.map(drop)
    }

    /// Takes up the step of the current state after ciphertext arrived.
    pub(crate) fn on_ciphertext(slf: &Bound<'_, Self>) -> PyResult<()> {
        let state = slf.borrow().state;
        match state {
            TlsState::DoHandshake => Self::do_handshake(slf),
            TlsState::Wrapped => Self::do_read(slf),
            TlsState::Flushing => Self::do_flush(slf),
            TlsState::Shutdown => Self::do_shutdown(slf),
            TlsState::Unwrapped => Ok(()),
        }
    }
}

#[pymethods]
impl TlsProtocol {
    #[new]
    #[pyo3(signature = (
        r#loop, app_transport, app_protocol, sslcontext, waiter, server_side=false,
        server_hostname=None, call_connection_made=true, ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ))]
    #[allow(clippy::too_many_arguments)] // asyncio's SSLProtocol signature, one to one.
    fn new(
        r#loop: Py<PyAny>,
        app_transport: &Bound<'_, PyAny>,
        app_protocol: &Bound<'_, PyAny>,
        sslcontext: &Bound<'_, PyAny>,
        waiter: Option<Py<PyAny>>,
        server_side: bool,
        server_hostname: Option<&Bound<'_, PyAny>>,
        call_connection_made: bool,
        ssl_handshake_timeout: Option<&Bound<'_, PyAny>>,
        ssl_shutdown_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let py = app_transport.py();
        let handshake_timeout = timeout_or_default(
            py,
            ssl_handshake_timeout,
            "ssl_handshake_timeout",
            "SSL_HANDSHAKE_TIMEOUT",
        )?;
        let shutdown_timeout = timeout_or_default(
            py,
            ssl_shutdown_timeout,
            "ssl_shutdown_timeout",
            "SSL_SHUTDOWN_TIMEOUT",
        )?;
        let memory_bio = py
            .import(intern!(py, "ssl"))?
            .getattr(intern!(py, "MemoryBIO"))?;
        let incoming = memory_bio.call0()?;
        let outgoing = memory_bio.call0()?;
        // A server names no peer, and an empty name means no SNI and no hostname check.
        let server_hostname = match server_hostname {
            Some(name) if !server_side && name.is_truthy()? => Some(name),
            _ => None,
        };
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "server_side"), server_side)?;
        kwargs.set_item(intern!(py, "server_hostname"), server_hostname)?;
        let object = sslcontext.call_method(
            intern!(py, "wrap_bio"),
            (&incoming, &outgoing),
            Some(&kwargs),
        )?;
        let records = record_layer(&object)?;
        let native = !records.is(&object);
        let extra = PyDict::new(py);
        extra.set_item(intern!(py, "sslcontext"), sslcontext)?;
        Ok(Self {
            wiring: Wiring::new(r#loop, app_transport, -1, app_protocol)?,
            app_transport: Some(app_transport.clone().unbind()),
            transport: None,
            ssl: SslPipe {
                object: object.unbind(),
                records: records.unbind(),
                native,
                incoming: incoming.unbind(),
                outgoing: outgoing.unbind(),
            },
            extra: extra.unbind(),
            waiter,
            state: TlsState::Unwrapped,
            app_state: if call_connection_made {
                AppState::Init
            } else {
                AppState::ConnectionMade
            },
            buffered: is_buffered_protocol(app_protocol)?,
            closed: false,
            handshake_timeout,
            shutdown_timeout,
            handshake_timer: None,
            shutdown_timer: None,
            backlog: VecDeque::new(),
            backlog_size: 0,
            write_flow: FlowControl::new(WRITE_HIGH_WATER).pausing_at_the_mark(),
            read_flow: FlowControl::new(READ_HIGH_WATER),
            ssl_reading_paused: false,
            ssl_writing_paused: false,
            app_reading_paused: false,
            eof_received: false,
            conn_lost: 0,
        })
    }

    // -- the protocol of the plain transport ---------------------------------------------

    fn connection_made(slf: &Bound<'_, Self>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        slf.borrow_mut().transport = Some(transport.clone().unbind());
        Self::start_handshake(slf)
    }

    fn data_received(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        Self::incoming(slf).call_method1(intern!(py, "write"), (data,))?;
        Self::on_ciphertext(slf)
    }

    /// The peer closed its side of the stream, with or without close_notify. Returns true
    /// (keep the plain transport open) only while the app has paused reading mid-close.
    fn eof_received(slf: &Bound<'_, Self>) -> PyResult<Option<bool>> {
        slf.borrow_mut().eof_received = true;
        let result = Self::on_eof(slf);
        if let Err(err) = &result {
            if err.is_instance_of::<PyException>(slf.py()) {
                if let Some(transport) = Self::transport(slf) {
                    transport.call_method0(intern!(slf.py(), "close"))?;
                }
            }
        }
        result
    }

    #[pyo3(signature = (exc=None))]
    fn connection_lost(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        // Objects leave the borrow before they are dropped: a drop may run `__del__`.
        let (app_transport, _transport, tell_app, timers) = {
            let mut this = slf.borrow_mut();
            this.backlog.clear();
            this.backlog_size = 0;
            this.conn_lost += 1;
            this.closed = true;
            let tell_app = this.state != TlsState::DoHandshake
                && matches!(this.app_state, AppState::ConnectionMade | AppState::Eof);
            if tell_app {
                this.app_state = AppState::ConnectionLost;
            }
            this.state = TlsState::Unwrapped;
            let timers = [this.handshake_timer.take(), this.shutdown_timer.take()];
            (
                this.app_transport.take(),
                this.transport.take(),
                tell_app,
                timers,
            )
        };
        Self::outgoing(slf).call_method0(intern!(py, "read"))?;
        if tell_app {
            transport::schedule_connection_lost(slf, exc.clone())?;
        } else {
            slf.borrow_mut().wiring.clear();
        }
        drop(app_transport);
        Self::wakeup_waiter(slf, exc.as_ref())?;
        for timer in timers.into_iter().flatten() {
            timer.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        Ok(())
    }

    fn pause_writing(&mut self) {
        self.ssl_writing_paused = true;
    }

    fn resume_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.borrow_mut().ssl_writing_paused = false;
        Self::process_outgoing(slf)
    }

    // -- the core of the app transport ---------------------------------------------------

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let is_bytes_like = data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>();
        if !is_bytes_like {
            return Err(PyTypeError::new_err(format!(
                "data: expecting a bytes-like instance, got {}",
                data.get_type().name()?
            )));
        }
        let direct = data.is_instance_of::<PyBytes>() || data.is_instance_of::<PyByteArray>();
        if direct && slf.borrow().state == TlsState::Wrapped && slf.borrow().backlog.is_empty() {
            return Self::write_wrapped(slf, data);
        }
        let chunk = owned_bytes(data)?;
        if chunk.as_bytes().is_empty() {
            return Ok(());
        }
        Self::write_appdata(slf, vec![chunk])
    }

    /// asyncio's test hook of the same name: queues `data` behind whatever waits, without
    /// flushing (CPython's tests fill the backlog this way to test a shutdown behind it).
    #[pyo3(name = "_test__append_write_backlog")]
    fn append_write_backlog_for_tests(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let chunk = owned_bytes(data)?;
        self.backlog_size += chunk.as_bytes().len();
        self.backlog.push_back(chunk.unbind());
        Ok(())
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let chunks = list_of_data
            .try_iter()?
            .map(|data| owned_bytes(&data?))
            .collect::<PyResult<Vec<_>>>()?;
        Self::write_appdata(slf, chunks)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.borrow().closed {
            return Ok(());
        }
        slf.borrow_mut().closed = true;
        Self::start_shutdown(slf)
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::_force_close(slf, None)
    }

    /// Ends the connection at once with `connection_lost(exc)`, nothing flushed.
    #[pyo3(signature = (exc=None))]
    fn _force_close(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        slf.borrow_mut().closed = true;
        Self::abort_with(slf, exc)
    }

    fn is_closing(&self) -> bool {
        self.closed
    }

    fn is_reading(&self) -> bool {
        !self.app_reading_paused
    }

    fn pause_reading(&mut self) {
        self.app_reading_paused = true;
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        if !slf.borrow().app_reading_paused {
            return Ok(());
        }
        slf.borrow_mut().app_reading_paused = false;
        Self::call_soon(slf, intern!(slf.py(), "_continue_after_resume"))
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        slf.borrow_mut()
            .write_flow
            .set_limits(high, low)
            .map_err(PyValueError::new_err)?;
        Self::control_app_writing(slf)
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.write_flow.limits()
    }

    fn get_write_buffer_size(&self) -> usize {
        self.write_buffer_size()
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_read_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        slf.borrow_mut()
            .read_flow
            .set_limits(high, low)
            .map_err(PyValueError::new_err)?;
        Self::control_ssl_reading(slf)
    }

    fn get_read_buffer_limits(&self) -> (usize, usize) {
        self.read_flow.limits()
    }

    fn get_read_buffer_size(slf: &Bound<'_, Self>) -> usize {
        bio::pending(&Self::incoming(slf))
    }

    /// TLS keys first, then the plain transport's (`peername`, `socket`...).
    #[pyo3(signature = (name, default=None))]
    fn get_extra_info<'py>(
        slf: &Bound<'py, Self>,
        name: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let extra = slf.borrow().extra.clone_ref(py).into_bound(py);
        if let Some(value) = extra.get_item(name)? {
            return Ok(value);
        }
        let default = default.unwrap_or_else(|| py.None().into_bound(py));
        match Self::transport(slf) {
            Some(transport) => {
                transport.call_method1(intern!(py, "get_extra_info"), (name, default))
            }
            None => Ok(default),
        }
    }

    fn set_protocol(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let buffered = is_buffered_protocol(protocol)?;
        slf.borrow_mut().buffered = buffered;
        transport::replace_protocol(slf, protocol);
        Ok(())
    }

    fn _protocol_paused(&self) -> bool {
        self.write_flow.is_paused()
    }

    // -- callbacks scheduled on the loop -------------------------------------------------

    fn _check_handshake_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.borrow().state != TlsState::DoHandshake {
            return Ok(());
        }
        let message = format!(
            "SSL handshake is taking longer than {} seconds: aborting the connection",
            PyFloat::new(slf.py(), slf.borrow().handshake_timeout).repr()?
        );
        let err = PyConnectionAbortedError::new_err(message);
        Self::fatal_error(slf, err, "Fatal error on transport")
    }

    fn _check_shutdown_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        if !matches!(slf.borrow().state, TlsState::Flushing | TlsState::Shutdown) {
            return Ok(());
        }
        let err = PyTimeoutError::new_err("SSL shutdown timed out");
        match Self::transport(slf) {
            Some(transport) => transport
                .call_method1(intern!(slf.py(), "_force_close"), (err.value(slf.py()),))
                .map(drop),
            None => Ok(()),
        }
    }

    /// More decrypted data may be waiting after a read filled the app's whole buffer.
    fn _do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)
    }

    /// The app resumed reading: take up where the pause left off.
    fn _continue_after_resume(slf: &Bound<'_, Self>) -> PyResult<()> {
        let state = slf.borrow().state;
        match state {
            TlsState::Wrapped => Self::do_read(slf),
            TlsState::Flushing => Self::do_flush(slf),
            TlsState::Shutdown => Self::do_shutdown(slf),
            TlsState::Unwrapped | TlsState::DoHandshake => Ok(()),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.wiring.traverse(&visit)?;
        visit.call(&self.app_transport)?;
        visit.call(&self.transport)?;
        visit.call(&self.ssl.object)?;
        visit.call(&self.ssl.records)?;
        visit.call(&self.ssl.incoming)?;
        visit.call(&self.ssl.outgoing)?;
        visit.call(&self.extra)?;
        visit.call(&self.waiter)?;
        visit.call(&self.handshake_timer)?;
        visit.call(&self.shutdown_timer)?;
        for chunk in &self.backlog {
            visit.call(chunk)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.wiring.clear();
        self.app_transport = None;
        self.transport = None;
        self.waiter = None;
        self.handshake_timer = None;
        self.shutdown_timer = None;
        self.backlog.clear();
    }
}

/// `data` as a `bytes` the backlog may keep: a mutable buffer is copied, as asyncio's plain
/// transports copy it, so later changes by the caller cannot alter what is sent.
fn owned_bytes<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(bytes.clone());
    }
    with_bytes(data, |view| PyBytes::new(data.py(), view))
}
