//! The TLS state machine: handshake, reading, writing and shutdown, each step a call into the
//! `SSLObject` followed by moving ciphertext between its BIOs and the plain transport.
//!
//! Every step is re-entered when the input it waited for arrives (`data_received`,
//! `eof_received`, `resume_reading`), exactly where asyncio's `SSLProtocol` re-enters.

use pyo3::exceptions::{PyConnectionResetError, PyException, PyOSError, PyRuntimeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMemoryView, PySlice, PyString};

use super::records::{read_into, read_records, read_sized, readable, Decrypted, ReadInto};
use super::{bio, AppState, TlsProtocol, TlsState};
use crate::errors::is_exit;
use crate::stdlib;
use crate::transport::{self, protocol_of, with_bytes, WriteCore, READ_SIZE};

/// How a call into the `SSLObject` ended.
pub(super) enum Ssl<'py> {
    Done(Bound<'py, PyAny>),
    /// It needs more ciphertext from the peer (`SSLWantReadError`, or `SSLSyscallError`,
    /// which a memory-BIO object raises in the same situation).
    WouldBlock,
    /// OpenSSL refused: an `ssl.SSLError` for the connection, not a bug in oxio.
    Failed(PyErr),
}

pub(super) fn ssl_call<'py>(
    py: Python<'py>,
    result: PyResult<Bound<'py, PyAny>>,
) -> PyResult<Ssl<'py>> {
    match result {
        Ok(value) => Ok(Ssl::Done(value)),
        Err(err)
            if err.is_instance(py, stdlib::ssl_want_read_error(py)?)
                || err.is_instance(py, stdlib::ssl_syscall_error(py)?) =>
        {
            Ok(Ssl::WouldBlock)
        }
        Err(err) if err.is_instance(py, stdlib::ssl_error(py)?) => Ok(Ssl::Failed(err)),
        Err(err) => Err(err),
    }
}

impl TlsProtocol {
    // -- handshake -----------------------------------------------------------------------

    pub(super) fn start_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::set_state(slf, TlsState::DoHandshake)?;
        let timeout = slf.borrow().handshake_timeout;
        let timer = Self::call_later(slf, timeout, intern!(slf.py(), "_check_handshake_timeout"))?;
        slf.borrow_mut().handshake_timer = Some(timer);
        Self::do_handshake(slf)
    }

    pub(super) fn do_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let result = Self::sslobj(slf).call_method0(intern!(py, "do_handshake"));
        match ssl_call(py, result)? {
            Ssl::WouldBlock => Self::process_outgoing(slf),
            Ssl::Failed(err) => Self::on_handshake_complete(slf, Some(err)),
            Ssl::Done(_) => Self::on_handshake_complete(slf, None),
        }
    }

    /// Ends the handshake: on failure the connection is closed with the error and the waiter
    /// gets it; on success the TLS keys of `get_extra_info()` appear and the app connects.
    pub(super) fn on_handshake_complete(
        slf: &Bound<'_, Self>,
        failure: Option<PyErr>,
    ) -> PyResult<()> {
        let py = slf.py();
        let timer = slf.borrow_mut().handshake_timer.take();
        if let Some(timer) = timer {
            timer.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        let sslobj = Self::sslobj(slf);
        let peercert = match failure {
            None => Self::set_state(slf, TlsState::Wrapped)
                .and_then(|()| sslobj.call_method0(intern!(py, "getpeercert"))),
            Some(err) => Err(err),
        };
        let peercert = match peercert {
            Ok(peercert) => peercert,
            Err(err) if !err.is_instance_of::<PyException>(py) => return Err(err),
            Err(err) => {
                Self::set_state(slf, TlsState::Unwrapped)?;
                let message = if err.is_instance(py, stdlib::ssl_certificate_error(py)?) {
                    "SSL handshake failed on verifying the certificate"
                } else {
                    "SSL handshake failed"
                };
                let exc = err.value(py).clone().into_any();
                Self::fatal_error(slf, err, message)?;
                return Self::wakeup_waiter(slf, Some(&exc));
            }
        };
        let extra = slf.borrow().extra.clone_ref(py).into_bound(py);
        extra.set_item(intern!(py, "peercert"), peercert)?;
        extra.set_item(intern!(py, "cipher"), sslobj.call_method0("cipher")?)?;
        extra.set_item(
            intern!(py, "compression"),
            sslobj.call_method0("compression")?,
        )?;
        extra.set_item(intern!(py, "ssl_object"), &sslobj)?;
        let connect_app = slf.borrow().app_state == AppState::Init;
        if connect_app {
            slf.borrow_mut().app_state = AppState::ConnectionMade;
            let app_transport = transport::transport_of(slf);
            if let Some(protocol) = Self::app_protocol(slf) {
                protocol.call_method1(intern!(py, "connection_made"), (app_transport,))?;
            }
        }
        Self::wakeup_waiter(slf, None)?;
        Self::do_read(slf)
    }

    /// Resolves the waiter of `create_connection`/`start_tls` & co, once.
    pub(super) fn wakeup_waiter(
        slf: &Bound<'_, Self>,
        exc: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let Some(waiter) = slf.borrow_mut().waiter.take() else {
            return Ok(());
        };
        let waiter = waiter.into_bound(py);
        if waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            return Ok(());
        }
        match exc {
            Some(exc) => waiter.call_method1(intern!(py, "set_exception"), (exc,))?,
            None => waiter.call_method1(intern!(py, "set_result"), (py.None(),))?,
        };
        Ok(())
    }

    // -- shutdown ------------------------------------------------------------------------

    /// The app closed its transport, or the peer sent close_notify: flush, then shut down
    /// under the shutdown timeout. A close during the handshake aborts instead.
    pub(super) fn start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let state = slf.borrow().state;
        if matches!(
            state,
            TlsState::Flushing | TlsState::Shutdown | TlsState::Unwrapped
        ) {
            return Ok(());
        }
        slf.borrow_mut().closed = true;
        if state == TlsState::DoHandshake {
            return Self::abort_with(slf, None);
        }
        Self::set_state(slf, TlsState::Flushing)?;
        let timeout = slf.borrow().shutdown_timeout;
        let timer = Self::call_later(slf, timeout, intern!(slf.py(), "_check_shutdown_timeout"))?;
        slf.borrow_mut().shutdown_timer = Some(timer);
        Self::do_flush(slf)
    }

    /// Hands the app what the peer sent before our close_notify goes out.
    pub(super) fn do_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)?;
        Self::set_state(slf, TlsState::Shutdown)?;
        Self::do_shutdown(slf)
    }

    /// Sends close_notify and waits for the peer's (`SSLObject.unwrap`). After the plain
    /// transport's end of stream there is nothing to wait for: a peer that closed without
    /// close_notify (an unclean shutdown) ends the connection the same way.
    pub(super) fn do_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if !slf.borrow().eof_received {
            let result = Self::sslobj(slf).call_method0(intern!(py, "unwrap"));
            match ssl_call(py, result)? {
                Ssl::WouldBlock => return Self::process_outgoing(slf),
                Ssl::Failed(err) => return Self::on_shutdown_complete(slf, Some(err)),
                Ssl::Done(_) => {}
            }
        }
        Self::process_outgoing(slf)?;
        Self::call_eof_received(slf)?;
        Self::on_shutdown_complete(slf, None)
    }

    fn on_shutdown_complete(slf: &Bound<'_, Self>, failure: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let timer = slf.borrow_mut().shutdown_timer.take();
        if let Some(timer) = timer {
            timer.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        if let Some(err) = failure {
            return Self::fatal_error(slf, err, "Fatal error on transport");
        }
        if let Some(transport) = Self::transport(slf) {
            let close = transport.getattr(intern!(py, "close"))?;
            transport::loop_of(slf).call_method1(intern!(py, "call_soon"), (close,))?;
        }
        Ok(())
    }

    /// Drops the TLS session and closes the plain transport now, with `exc` if given.
    pub(super) fn abort_with(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        Self::set_state(slf, TlsState::Unwrapped)?;
        if let Some(transport) = Self::transport(slf) {
            transport.call_method1(intern!(slf.py(), "_force_close"), (exc,))?;
        }
        Ok(())
    }

    /// asyncio's `_fatal_error`: close the plain transport with the error; OS errors (every
    /// `ssl.SSLError` is one) and cancellations are the connection's fate, anything else is
    /// also reported to the loop's exception handler.
    pub(super) fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if let Some(transport) = Self::transport(slf) {
            transport.call_method1(intern!(py, "_force_close"), (err.value(py),))?;
        }
        if err.is_instance_of::<PyOSError>(py)
            || err.is_instance(py, stdlib::aio_cancelled_error(py)?)
        {
            return Ok(());
        }
        transport::report_error(slf, message, &err)
    }

    /// An `Exception` from a step is fatal to the connection; SystemExit, KeyboardInterrupt
    /// and cancellation propagate, as in asyncio.
    fn fatal_on_exception(
        slf: &Bound<'_, Self>,
        result: PyResult<()>,
        message: &str,
    ) -> PyResult<()> {
        match result {
            Err(err) if err.is_instance_of::<PyException>(slf.py()) => {
                Self::fatal_error(slf, err, message)
            }
            other => other,
        }
    }

    // -- writing -------------------------------------------------------------------------

    pub(super) fn write_appdata(
        slf: &Bound<'_, Self>,
        chunks: Vec<Bound<'_, PyBytes>>,
    ) -> PyResult<()> {
        let state = slf.borrow().state;
        if matches!(
            state,
            TlsState::Flushing | TlsState::Shutdown | TlsState::Unwrapped
        ) {
            let warn = {
                let mut this = slf.borrow_mut();
                this.conn_lost += 1;
                this.conn_lost > transport::LOG_THRESHOLD_FOR_CONNLOST_WRITES
            };
            if warn {
                transport::log_warning(slf.py(), "SSL connection is closed")?;
            }
            return Ok(());
        }
        {
            let mut this = slf.borrow_mut();
            for chunk in chunks {
                this.backlog_size += chunk.as_bytes().len();
                this.backlog.push_back(chunk.unbind());
            }
        }
        if state != TlsState::Wrapped {
            // Written out once the handshake completes (`do_read` flushes the backlog).
            return Ok(());
        }
        let result = Self::do_write(slf);
        Self::fatal_on_exception(slf, result, "Fatal error on SSL protocol")
    }

    /// `write(data)` once the session is up and nothing waits before it: `data` (a `bytes` or
    /// `bytearray`) goes to `SSLObject.write` as it is, as in asyncio, and only what OpenSSL
    /// did not take is copied into the backlog.
    // NOTE: with the single-size flow control and the skipped `pending()` calls, HTTPS
    // keep-alive went from 62.6k to 66.9k requests per server CPU-second (uvloop 52.4k in the
    // same alternating runs); this part saves a Vec, the backlog round trip and, for a
    // bytearray, a copy per write.
    pub(super) fn write_wrapped(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let len = with_bytes(data, <[u8]>::len)?;
        if len == 0 {
            return Ok(());
        }
        let result = (|| {
            let result = Self::records(slf).call_method1(intern!(py, "write"), (data,));
            let written: usize = match ssl_call(py, result)? {
                Ssl::WouldBlock => 0,
                Ssl::Failed(err) => return Err(err),
                Ssl::Done(count) => count.extract()?,
            };
            if written < len {
                let rest = with_bytes(data, |all| PyBytes::new(py, &all[written.min(len)..]))?;
                let mut this = slf.borrow_mut();
                this.backlog_size += rest.as_bytes().len();
                this.backlog.push_back(rest.unbind());
            }
            Self::process_outgoing(slf)
        })();
        Self::fatal_on_exception(slf, result, "Fatal error on SSL protocol")
    }

    /// Encrypts the backlog into the outgoing BIO, then sends it down.
    pub(super) fn do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let records = Self::records(slf);
        loop {
            let Some(chunk) = slf.borrow().backlog.front().map(|c| c.clone_ref(py)) else {
                break;
            };
            let chunk = chunk.into_bound(py);
            let result = records.call_method1(intern!(py, "write"), (&chunk,));
            let written: usize = match ssl_call(py, result)? {
                Ssl::WouldBlock => break,
                Ssl::Failed(err) => return Err(err),
                Ssl::Done(count) => count.extract()?,
            };
            let data = chunk.as_bytes();
            let mut this = slf.borrow_mut();
            // The backlog may have been emptied meanwhile (an abort from Python code that
            // OpenSSL called back into), so its front is checked, not assumed.
            let rest = (written < data.len()).then(|| PyBytes::new(py, &data[written..]).unbind());
            match (rest, this.backlog.front_mut()) {
                (Some(rest), Some(front)) => *front = rest,
                (None, Some(_)) => drop(this.backlog.pop_front()),
                (_, None) => break,
            }
            this.backlog_size = this.backlog_size.saturating_sub(written.min(data.len()));
        }
        Self::process_outgoing(slf)
    }

    /// Hands the ciphertext in the outgoing BIO to the plain transport, unless it asked us to
    /// pause, then updates the app's write flow control.
    pub(super) fn process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let outgoing = Self::outgoing(slf);
        // An empty BIO would give `b""`, which asyncio does not pass on either.
        if bio::pending(&outgoing) > 0 && !slf.borrow().ssl_writing_paused {
            let data = outgoing.call_method0(intern!(py, "read"))?;
            if let Some(transport) = Self::transport(slf) {
                transport.call_method1(intern!(py, "write"), (data,))?;
            }
        }
        Self::control_app_writing(slf)
    }

    // -- reading -------------------------------------------------------------------------

    /// Decrypts what the incoming BIO holds into the app, unless the app paused reading; then
    /// sends what the SSLObject wants to send (backlog, TLS 1.3 tickets, key updates).
    pub(super) fn do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let (state, paused, buffered) = {
            let this = slf.borrow();
            (this.state, this.app_reading_paused, this.buffered)
        };
        if !matches!(state, TlsState::Wrapped | TlsState::Flushing) {
            return Ok(());
        }
        let result = (|| {
            if !paused {
                if buffered {
                    Self::read_into_buffer(slf)?;
                } else {
                    Self::read_into_protocol(slf)?;
                }
                if slf.borrow().backlog.is_empty() {
                    Self::process_outgoing(slf)?;
                } else {
                    Self::do_write(slf)?;
                }
            }
            Self::control_ssl_reading(slf)
        })();
        Self::fatal_on_exception(slf, result, "Fatal error on SSL protocol")
    }

    /// Whether the TLS object is the stdlib's own (`native`), it, and its incoming BIO.
    fn record_layer<'py>(slf: &Bound<'py, Self>) -> (bool, Bound<'py, PyAny>, Bound<'py, PyAny>) {
        let py = slf.py();
        let this = slf.borrow();
        let ssl = &this.ssl;
        (
            ssl.native,
            ssl.records.bind(py).clone(),
            ssl.incoming.bind(py).clone(),
        )
    }

    /// Decrypts everything available and hands it to `data_received` in one `bytes`.
    fn read_into_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (native, records, incoming) = Self::record_layer(slf);
        let Decrypted { data, close_notify } = if native {
            read_records(&records, &incoming)?
        } else {
            read_chunks(&records)?
        };
        if let (Some(data), Some(protocol)) = (data, Self::app_protocol(slf)) {
            protocol.call_method1(intern!(py, "data_received"), (data,))?;
        }
        if close_notify {
            Self::on_close_notify(slf)?;
        }
        Ok(())
    }

    /// Decrypts straight into the buffer of a `BufferedProtocol`.
    fn read_into_buffer(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let Some(protocol) = Self::app_protocol(slf) else {
            return Ok(());
        };
        let hint = bio::pending(&Self::incoming(slf));
        let buffer = protocol.call_method1(intern!(py, "get_buffer"), (hint,))?;
        let view = PyMemoryView::from(&buffer)?;
        let wants = view.len()?;
        if wants == 0 {
            return Err(PyRuntimeError::new_err(
                "get_buffer() returned an empty buffer",
            ));
        }
        let (native, records, incoming) = Self::record_layer(slf);
        let mut filled = 0;
        let mut close_notify = false;
        let mut drained = false;
        while filled < wants {
            if native && readable(&records, &incoming, drained)? == 0 {
                // Where asyncio's loop catches `SSLWantReadError` (see `readable`).
                break;
            }
            let target = PySlice::new(py, filled as isize, wants as isize, 1);
            let target = view.get_item(target)?;
            let asked = wants - filled;
            match read_into(&records, asked, &target)? {
                ReadInto::Blocked => break,
                ReadInto::CloseNotify => {
                    close_notify = true;
                    break;
                }
                ReadInto::Read(n) => {
                    filled += n;
                    drained = n < asked;
                }
            }
        }
        if filled == wants {
            // The buffer is full and more may be decrypted: continue on the next iteration.
            Self::call_soon(slf, intern!(py, "_do_read"))?;
        }
        if filled > 0 {
            protocol.call_method1(intern!(py, "buffer_updated"), (filled,))?;
        }
        if close_notify {
            Self::on_close_notify(slf)?;
        }
        Ok(())
    }

    /// The peer sent close_notify: the app sees end of stream and we answer with ours.
    fn on_close_notify(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::call_eof_received(slf)?;
        Self::start_shutdown(slf)
    }

    /// `eof_received()` of the app, once. Over TLS the connection closes whatever it returns.
    fn call_eof_received(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if slf.borrow().app_state != AppState::ConnectionMade {
            return Ok(());
        }
        slf.borrow_mut().app_state = AppState::Eof;
        let Some(protocol) = Self::app_protocol(slf) else {
            return Ok(());
        };
        match protocol.call_method0(intern!(py, "eof_received")) {
            Ok(keep_open) => {
                if keep_open.is_truthy()? {
                    transport::log_warning(
                        py,
                        "returning true from eof_received() has no effect when using ssl",
                    )?;
                }
                Ok(())
            }
            Err(err) if is_exit(py, &err) => Err(err),
            Err(err) => Self::fatal_error(slf, err, "Error calling eof_received()"),
        }
    }

    /// Pauses the plain transport's reading while the incoming BIO holds more than the
    /// high-water mark of ciphertext (the app paused reading, so nothing drains it).
    pub(super) fn control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let size = bio::pending(&Self::incoming(slf));
        let method = {
            let mut this = slf.borrow_mut();
            let (low, high) = this.read_flow.limits();
            if size >= high && !this.ssl_reading_paused {
                this.ssl_reading_paused = true;
                intern!(py, "pause_reading")
            } else if size <= low && this.ssl_reading_paused {
                this.ssl_reading_paused = false;
                intern!(py, "resume_reading")
            } else {
                return Ok(());
            }
        };
        if let Some(transport) = Self::transport(slf) {
            transport.call_method0(method)?;
        }
        Ok(())
    }
}

impl TlsProtocol {
    // -- plumbing ------------------------------------------------------------------------

    pub(super) fn on_eof(slf: &Bound<'_, Self>) -> PyResult<Option<bool>> {
        let state = slf.borrow().state;
        match state {
            TlsState::DoHandshake => {
                let err = PyConnectionResetError::new_err(());
                Self::on_handshake_complete(slf, Some(err))?;
            }
            TlsState::Wrapped => {
                Self::set_state(slf, TlsState::Flushing)?;
                if slf.borrow().app_reading_paused {
                    return Ok(Some(true));
                }
                Self::do_flush(slf)?;
            }
            TlsState::Flushing => {
                Self::do_write(slf)?;
                Self::set_state(slf, TlsState::Shutdown)?;
                Self::do_shutdown(slf)?;
            }
            TlsState::Shutdown => Self::do_shutdown(slf)?,
            TlsState::Unwrapped => {}
        }
        Ok(None)
    }

    pub(super) fn set_state(slf: &Bound<'_, Self>, next: TlsState) -> PyResult<()> {
        let mut this = slf.borrow_mut();
        if !this.state.can_become(next) {
            return Err(PyRuntimeError::new_err(format!(
                "cannot switch state from {} to {}",
                this.state.name(),
                next.name()
            )));
        }
        this.state = next;
        Ok(())
    }

    pub(super) fn transport<'py>(slf: &Bound<'py, Self>) -> Option<Bound<'py, PyAny>> {
        let py = slf.py();
        slf.borrow().transport.as_ref().map(|t| t.bind(py).clone())
    }

    pub(super) fn app_protocol<'py>(slf: &Bound<'py, Self>) -> Option<Bound<'py, PyAny>> {
        protocol_of(slf)
    }

    pub(super) fn sslobj<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyAny> {
        slf.borrow().ssl.object.bind(slf.py()).clone()
    }

    /// Where records are read and written (`SslPipe::records`).
    pub(super) fn records<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyAny> {
        slf.borrow().ssl.records.bind(slf.py()).clone()
    }

    pub(super) fn incoming<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyAny> {
        slf.borrow().ssl.incoming.bind(slf.py()).clone()
    }

    pub(super) fn outgoing<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyAny> {
        slf.borrow().ssl.outgoing.bind(slf.py()).clone()
    }

    /// `loop.call_soon(self.<method>)`.
    pub(super) fn call_soon(slf: &Bound<'_, Self>, method: &Bound<'_, PyString>) -> PyResult<()> {
        let callback = slf.as_any().getattr(method)?;
        transport::loop_of(slf).call_method1(intern!(slf.py(), "call_soon"), (callback,))?;
        Ok(())
    }

    /// `loop.call_later(delay, self.<method>)`, returning the timer handle.
    pub(super) fn call_later(
        slf: &Bound<'_, Self>,
        delay: f64,
        method: &Bound<'_, PyString>,
    ) -> PyResult<Py<PyAny>> {
        let callback = slf.as_any().getattr(method)?;
        let timer = transport::loop_of(slf)
            .call_method1(intern!(slf.py(), "call_later"), (delay, callback))?;
        Ok(timer.unbind())
    }

    /// asyncio's `_control_app_writing`: the buffer size is taken once (it reads the outgoing
    /// BIO's `pending`), then `pause_writing` or else `resume_writing` if its mark is crossed.
    // NOTE: the generic pause and resume checks took the size twice, four `pending` lookups
    // per request with the second `process_outgoing`; see `write_wrapped` for the numbers.
    pub(super) fn control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let size = slf.borrow().write_buffer_size();
        let hook = {
            let mut this = slf.borrow_mut();
            if this.write_flow.should_pause(size) {
                (
                    intern!(py, "pause_writing"),
                    "protocol.pause_writing() failed",
                )
            } else if this.write_flow.should_resume(size) {
                (
                    intern!(py, "resume_writing"),
                    "protocol.resume_writing() failed",
                )
            } else {
                return Ok(());
            }
        };
        transport::call_flow_hook(slf, hook.0, hook.1)
    }
}

/// asyncio's reading loop, for a custom `sslobject_class`: `read(max_size)` until
/// `SSLWantReadError` or close_notify, the records joined into one `bytes`.
fn read_chunks<'py>(records: &Bound<'py, PyAny>) -> PyResult<Decrypted<'py>> {
    read_sized(records, Some(READ_SIZE), |_, _| Ok(Some(READ_SIZE)))
}

/// One `bytes` from several, built in place.
pub(super) fn join<'py>(
    py: Python<'py>,
    chunks: &[Bound<'py, PyBytes>],
) -> PyResult<Bound<'py, PyBytes>> {
    let total = chunks.iter().map(|c| c.as_bytes().len()).sum();
    PyBytes::new_with(py, total, |buf| {
        let mut at = 0;
        for chunk in chunks {
            let bytes = chunk.as_bytes();
            buf[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        }
        Ok(())
    })
}
