//! Stdlib objects the binding uses, imported once and named by origin (uvloop's `stdlib.pxi`).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

static FORMAT_CALLBACK_SOURCE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SSL_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SSL_WANT_READ_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SSL_SYSCALL_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SSL_CERTIFICATE_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static AIO_CANCELLED_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static AIO_BUFFERED_PROTOCOL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn cached<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    module: &str,
    attr: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || Ok(py.import(module)?.getattr(attr)?.unbind()))
        .map(|obj| obj.bind(py))
}

/// `asyncio.format_helpers._format_callback_source(callback, args)`: "func(1, 2) at file:line".
pub fn format_callback_source(
    py: Python<'_>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<String> {
    let format = cached(
        py,
        &FORMAT_CALLBACK_SOURCE,
        "asyncio.format_helpers",
        "_format_callback_source",
    )?;
    format.call1((callback, args))?.extract()
}

/// "file:line" of the last frame of an `extract_stack()` result, asyncio's "created at" note.
pub fn frame_location(py: Python<'_>, traceback: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
    let _ = py;
    if traceback.len()? == 0 {
        return Ok(None);
    }
    let frame = traceback.get_item(-1)?;
    let file: String = frame.get_item(0)?.extract()?;
    let line: i64 = frame.get_item(1)?.extract()?;
    Ok(Some(format!("{file}:{line}")))
}

/// `repr(value)` of a float, so reprs print deadlines exactly as asyncio does.
pub fn float_repr(py: Python<'_>, value: f64) -> PyResult<String> {
    Ok(pyo3::types::PyFloat::new(py, value).repr()?.to_string())
}

/// `ssl.SSLError`, the base of every error OpenSSL reports through Python's `ssl`.
pub fn ssl_error(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    cached(py, &SSL_ERROR, "ssl", "SSLError")
}

/// `ssl.SSLWantReadError`: the SSLObject needs more bytes from the peer.
pub fn ssl_want_read_error(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    cached(py, &SSL_WANT_READ_ERROR, "ssl", "SSLWantReadError")
}

/// `ssl.SSLSyscallError`, which a memory-BIO SSLObject raises when its input ran dry.
pub fn ssl_syscall_error(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    cached(py, &SSL_SYSCALL_ERROR, "ssl", "SSLSyscallError")
}

/// `ssl.CertificateError` (`SSLCertVerificationError`): the peer's certificate was refused.
pub fn ssl_certificate_error(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    cached(py, &SSL_CERTIFICATE_ERROR, "ssl", "CertificateError")
}

/// `asyncio.CancelledError`.
pub fn aio_cancelled_error(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    cached(py, &AIO_CANCELLED_ERROR, "asyncio", "CancelledError")
}

/// `asyncio.BufferedProtocol`.
pub fn aio_buffered_protocol(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    cached(py, &AIO_BUFFERED_PROTOCOL, "asyncio", "BufferedProtocol")
}

static SOCKET_SOCKET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SSL_SOCKET: PyOnceLock<Option<Py<PyAny>>> = PyOnceLock::new();

/// `socket.socket`, the class whose unpatched methods the `sock_*` coroutines may bypass.
pub fn socket_socket(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    cached(py, &SOCKET_SOCKET, "socket", "socket")
}

/// `ssl.SSLSocket`, or `None` when Python was built without `ssl`.
pub fn ssl_socket(py: Python<'_>) -> Option<&Bound<'_, PyAny>> {
    SSL_SOCKET
        .get_or_init(py, || {
            py.import("ssl")
                .and_then(|ssl| ssl.getattr("SSLSocket"))
                .ok()
                .map(Bound::unbind)
        })
        .as_ref()
        .map(|class| class.bind(py))
}
