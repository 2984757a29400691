//! Turning asyncio's "file object or fd" arguments into a raw fd, as `selectors` does.

use std::os::fd::RawFd;

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;

/// An `int` or an object with `fileno()`, validated like `selectors._fileobj_to_fd`.
pub fn fd_of(fileobj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd: i64 = match fileobj.extract::<i64>() {
        Ok(fd) => fd,
        Err(_) => fileobj
            .call_method0(intern!(fileobj.py(), "fileno"))
            .and_then(|n| n.extract::<i64>())
            .map_err(|_| {
                PyValueError::new_err(format!(
                    "Invalid file object: {}",
                    fileobj.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?,
    };
    if fd < 0 || fd > RawFd::MAX as i64 {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    Ok(fd as RawFd)
}
