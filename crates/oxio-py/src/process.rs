//! `spawn`: the engine's child start-up as the subprocess glue calls it in place of
//! `_posixsubprocess.fork_exec` (see `python/oxio/_spawn.py`).

use std::ffi::CString;
use std::os::fd::RawFd;

use oxio_core::{Spawn, SpawnError};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors;

/// Whether `spawn` works in this process (see `Spawn::supported`); where it does not (an old
/// glibc, or `vfork` emulated by a fork under qemu-user or Valgrind), `Popen` starts children.
#[pyfunction]
pub(crate) fn spawn_supported() -> bool {
    Spawn::supported()
}

/// Starts `program` with `argv` and returns its pid; `spawn_supported()` must be true.
/// `program` is a path when `search_path` is `None`, else a name looked up in it as `Popen`
/// does. `env` is a list of `NAME=value` entries, or `None` for this process's environment. A
/// child that did not start raises the `OSError` that `Popen` raises: naming `filename` when
/// the exec failed.
///
/// The GIL is released until the child has exec'd: an exec can take long (a program on a slow
/// file system), and CPython releases it there too since 3.11.5 (gh-104372).
#[pyfunction]
#[allow(clippy::too_many_arguments)] // Popen's options, one for one; keyword-only in Python.
#[pyo3(signature = (program, argv, *, env, search_path, stdio, close_fds, restore_signals, new_session, filename))]
pub(crate) fn spawn(
    py: Python<'_>,
    program: &Bound<'_, PyBytes>,
    argv: Vec<Bound<'_, PyBytes>>,
    env: Option<Vec<Bound<'_, PyBytes>>>,
    search_path: Option<&Bound<'_, PyBytes>>,
    stdio: [RawFd; 3],
    close_fds: bool,
    restore_signals: bool,
    new_session: bool,
    filename: &Bound<'_, PyAny>,
) -> PyResult<i32> {
    if stdio.iter().any(|&fd| fd != -1 && fd <= 2) {
        return Err(PyValueError::new_err(
            "stdio descriptors must be -1 or above 2",
        ));
    }
    let argv = c_strings(&argv)?;
    let env = env.as_deref().map(c_strings).transpose()?;
    let program = match search_path {
        None => Program::Path(c_string(program.as_bytes())?),
        Some(path) => {
            let (file, path) = (program.as_bytes(), path.as_bytes());
            if file.contains(&0) || path.contains(&0) {
                return Err(embedded_null());
            }
            Program::Search(file.to_vec(), path.to_vec())
        }
    };
    let request = Spawn {
        argv: &argv,
        env: env.as_deref(),
        stdio,
        close_fds,
        restore_signals,
        new_session,
    };
    let outcome = py.detach(|| match &program {
        Program::Path(path) => request.run(path),
        Program::Search(file, path) => request.run_searching(file, path),
    });
    match outcome {
        Ok(pid) => Ok(pid),
        Err(SpawnError::Unsupported) => Err(PyRuntimeError::new_err(
            "this process cannot start children natively; check spawn_supported() first",
        )),
        // Popen names no file when a set-up step failed, and the program when the exec did.
        Err(SpawnError::Setup(err)) => Err(errors::os_error(py, err)),
        Err(SpawnError::Exec(err)) => Err(errors::os_error_naming(filename, err)),
    }
}

/// What to exec: a path, or a name to look up in a search path.
enum Program {
    Path(CString),
    Search(Vec<u8>, Vec<u8>),
}

fn c_strings(items: &[Bound<'_, PyBytes>]) -> PyResult<Vec<CString>> {
    items.iter().map(|item| c_string(item.as_bytes())).collect()
}

fn c_string(bytes: &[u8]) -> PyResult<CString> {
    CString::new(bytes).map_err(|_| embedded_null())
}

/// What `os` and `_posixsubprocess` raise for a NUL inside a path, argument or variable.
fn embedded_null() -> PyErr {
    PyValueError::new_err("embedded null byte")
}
