//! Socket addresses between Python and the engine: a received `SockAddr` becomes the object
//! `socket.recvfrom()` would return, and a Python address becomes a `SockAddr` when it has one of
//! the plain numeric forms. Anything else is left to the socket object itself (see `DatagramCore`).

use oxio_core::transport::datagram::{parse_ipv4, parse_ipv6};
use oxio_core::{Address, SockAddr};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString, PyTuple};
use pyo3::{ffi, IntoPyObjectExt};

/// Families whose addresses `to_python` and `from_python` convert natively.
pub fn is_native_family(family: i32) -> bool {
    matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX)
}

/// The sender address as CPython's `makesockaddr` builds it: `(host, port)`,
/// `(host, port, flowinfo, scope_id)`, a `str` path, `bytes` for an abstract name, or `None`.
pub fn to_python(py: Python<'_>, addr: &SockAddr) -> PyResult<Py<PyAny>> {
    match addr.decode()? {
        Address::Unnamed => Ok(py.None()),
        Address::Inet { host, port } => (host, port).into_py_any(py),
        Address::Inet6 {
            host,
            port,
            flowinfo,
            scope_id,
        } => (host, port, flowinfo, scope_id).into_py_any(py),
        Address::UnixPath(path) => fs_decode(py, &path),
        Address::UnixAbstract(name) => PyBytes::new(py, &name).into_py_any(py),
        Address::Other(family) => Err(PyOSError::new_err(format!(
            "cannot decode an address of family {family}"
        ))),
    }
}

/// A Python address of a plain numeric form for `family`, as a `SockAddr`; `None` for any other
/// form (a host name, a malformed tuple, a path too long), whose resolution or error CPython's
/// `sendto` must give.
pub fn from_python(family: i32, addr: &Bound<'_, PyAny>) -> Option<SockAddr> {
    match family {
        libc::AF_INET => {
            let addr = addr.cast::<PyTuple>().ok().filter(|t| t.len() == 2)?;
            let host = parse_ipv4(
                addr.get_item(0)
                    .ok()?
                    .cast::<PyString>()
                    .ok()?
                    .to_str()
                    .ok()?,
            )?;
            Some(SockAddr::inet(host, addr.get_item(1).ok()?.extract().ok()?))
        }
        libc::AF_INET6 => {
            let addr = addr
                .cast::<PyTuple>()
                .ok()
                .filter(|t| (2..=4).contains(&t.len()))?;
            let item = |i: usize| addr.get_item(i).ok();
            let host = parse_ipv6(item(0)?.cast::<PyString>().ok()?.to_str().ok()?)?;
            let port = item(1)?.extract().ok()?;
            let flowinfo: u32 = item(2).map_or(Some(0), |f| f.extract().ok())?;
            let scope_id = item(3).map_or(Some(0), |s| s.extract().ok())?;
            // CPython rejects a flow label beyond 20 bits; leave that error to it.
            (flowinfo <= 0xF_FFFF).then(|| SockAddr::inet6(host, port, flowinfo, scope_id))
        }
        libc::AF_UNIX => {
            if let Ok(path) = addr.cast::<PyString>() {
                return SockAddr::unix(fs_encode(path).ok()?.as_bytes());
            }
            if let Ok(path) = addr.cast::<PyBytes>() {
                return SockAddr::unix(path.as_bytes());
            }
            let path = addr.cast::<PyByteArray>().ok()?.to_vec();
            SockAddr::unix(&path)
        }
        _ => None,
    }
}

/// `os.fsdecode(path)`: the filesystem encoding with `surrogateescape`, as CPython decodes paths.
fn fs_decode(py: Python<'_>, path: &[u8]) -> PyResult<Py<PyAny>> {
    // SAFETY: `path` is readable for its length, which is passed; the call copies the bytes and
    // returns a new reference or NULL with an exception set, which `from_owned_ptr_or_err` takes.
    unsafe {
        let text = ffi::PyUnicode_DecodeFSDefaultAndSize(
            path.as_ptr().cast(),
            path.len() as ffi::Py_ssize_t,
        );
        Bound::from_owned_ptr_or_err(py, text).map(Bound::unbind)
    }
}

/// `os.fsencode(path)`.
fn fs_encode<'py>(path: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyBytes>> {
    // SAFETY: `path` is a live str; the call returns a new reference to bytes or NULL with an
    // exception set, which `from_owned_ptr_or_err` takes.
    let encoded = unsafe {
        Bound::from_owned_ptr_or_err(path.py(), ffi::PyUnicode_EncodeFSDefault(path.as_ptr()))
    }?;
    Ok(encoded.cast_into::<PyBytes>()?)
}
