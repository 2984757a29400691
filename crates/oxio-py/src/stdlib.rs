//! Stdlib objects the binding uses, imported once and named by origin (uvloop's `stdlib.pxi`).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

static FORMAT_CALLBACK_SOURCE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

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
