//! asyncio's `StreamReaderProtocol.data_received` done natively: a stream transport appends
//! what it receives straight to the `StreamReader`'s buffer, then does the rest of `feed_data`
//! (wake the waiting reader, pause reading past twice the limit). No `bytes` object is made and
//! no Python frame runs for it, and the data is copied once less.
//!
//! Only the stdlib's own classes, with the methods asyncio defines, take this path. A subclass,
//! a patched method, or a reader in a state `feed_data` would refuse goes through
//! `protocol.data_received(data)` as before. See docs/design.md, "Feeding asyncio's streams".

use pyo3::exceptions::PyNotImplementedError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyInt, PyString, PyType, PyWeakrefReference};

/// The classes, and the class attributes that `data_received` runs, as asyncio defines them.
struct Stock {
    protocol_type: Py<PyType>,
    reader_type: Py<PyType>,
    data_received: Py<PyAny>,
    /// `StreamReaderProtocol._stream_reader`, a property over `_stream_reader_wr`.
    stream_reader: Py<PyAny>,
    feed_data: Py<PyAny>,
    wakeup_waiter: Py<PyAny>,
}

static STOCK: PyOnceLock<Stock> = PyOnceLock::new();

extern "C" {
    /// How `LOAD_METHOD` resolves `obj.name`: with 1, `*method` is the function the class
    /// defines, to be called with `obj`, and nothing on the instance shadows it; with 0, it is
    /// the attribute as `getattr` returns it, or NULL with an exception set. Exported by every
    /// CPython from 3.11 to 3.14, though not in pyo3's bindings.
    fn _PyObject_GetMethod(
        obj: *mut ffi::PyObject,
        name: *mut ffi::PyObject,
        method: *mut *mut ffi::PyObject,
    ) -> std::ffi::c_int;
}

/// Records asyncio's classes and methods, when `_oxio` is imported. Each method must come from
/// `asyncio/streams.py` itself, so that one patched before oxio was imported is not taken for
/// asyncio's; if one is not, or anything fails, no transport takes the native path.
pub(crate) fn capture_stock(py: Python<'_>) {
    if let Ok(Some(stock)) = stock_of_asyncio(py) {
        let _ = STOCK.set(py, stock);
    }
}

fn stock_of_asyncio(py: Python<'_>) -> PyResult<Option<Stock>> {
    let streams = py.import(intern!(py, "asyncio.streams"))?;
    let file = streams.getattr(intern!(py, "__file__"))?;
    let protocol_type = streams
        .getattr(intern!(py, "StreamReaderProtocol"))?
        .cast_into::<PyType>()?;
    let reader_type = streams
        .getattr(intern!(py, "StreamReader"))?
        .cast_into::<PyType>()?;
    let stream_reader = protocol_type.getattr(intern!(py, "_stream_reader"))?;
    let functions = [
        protocol_type.getattr(intern!(py, "data_received"))?,
        stream_reader.getattr(intern!(py, "fget"))?,
        reader_type.getattr(intern!(py, "feed_data"))?,
        reader_type.getattr(intern!(py, "_wakeup_waiter"))?,
    ];
    for function in &functions {
        let source = function
            .getattr(intern!(py, "__code__"))?
            .getattr(intern!(py, "co_filename"))?;
        if !source.eq(&file)? {
            return Ok(None);
        }
    }
    let [data_received, _, feed_data, wakeup_waiter] = functions.map(Bound::unbind);
    Ok(Some(Stock {
        protocol_type: protocol_type.unbind(),
        reader_type: reader_type.unbind(),
        data_received,
        stream_reader: stream_reader.unbind(),
        feed_data,
        wakeup_waiter,
    }))
}

/// Whether `protocol` is exactly asyncio's `StreamReaderProtocol`, which [`reader_to_feed`] and
/// [`data_appended`] may stand in for. Checked when a transport gets its protocol; what may
/// change later is checked on every read.
pub(crate) fn is_stock_protocol(protocol: &Bound<'_, PyAny>) -> bool {
    let py = protocol.py();
    STOCK
        .get(py)
        .is_some_and(|stock| protocol.get_type().is(stock.protocol_type.bind(py)))
}

/// A `StreamReader` that received data is to be appended to, and its buffer.
pub(crate) struct Feed<'py> {
    reader: Bound<'py, PyAny>,
    pub(crate) buffer: Bound<'py, PyByteArray>,
}

/// The reader a stock protocol's `data_received` would feed, when appending to its buffer does
/// exactly what `feed_data` would. `None` sends the data through Python: no reader (the
/// protocol lost it or never had one), a subclass, a method set on the instance, a reader at
/// EOF (`feed_data` asserts), or a buffer replaced by something else than a `bytearray`.
pub(crate) fn reader_to_feed<'py>(protocol: &Bound<'py, PyAny>) -> Option<Feed<'py>> {
    let py = protocol.py();
    let stock = STOCK.get(py)?;
    let protocol_type = stock.protocol_type.bind(py);
    if !protocol.get_type().is(protocol_type)
        || !protocol_type
            .getattr(intern!(py, "_stream_reader"))
            .is_ok_and(|property| property.is(&stock.stream_reader))
        || shadows(protocol, intern!(py, "data_received"), &stock.data_received)
    {
        return None;
    }
    let reader = protocol
        .getattr(intern!(py, "_stream_reader_wr"))
        .ok()?
        .cast_into_exact::<PyWeakrefReference>()
        .ok()?
        .upgrade()?;
    if !reader.get_type().is(stock.reader_type.bind(py))
        || reader.getattr(intern!(py, "_eof")).ok()?.is_truthy().ok()?
        || shadows(&reader, intern!(py, "feed_data"), &stock.feed_data)
        || shadows(&reader, intern!(py, "_wakeup_waiter"), &stock.wakeup_waiter)
    {
        return None;
    }
    let buffer = reader.getattr(intern!(py, "_buffer")).ok()?;
    let buffer = buffer.cast_into_exact::<PyByteArray>().ok()?;
    Some(Feed { reader, buffer })
}

/// Whether `obj.name` is something else than its class's `function` bound to `obj`: an
/// attribute set on the instance (as code that wraps a live reader's `feed_data` does), a
/// patched class, or another object's method.
// NOTE: asking `_PyObject_GetMethod`, which `LOAD_METHOD` uses, rather than getting the bound
// method, spares making and freeing a method object per check: the three checks of a read went
// from about 1,500 instructions to about 350 (callgrind, streams echo at 1 KiB). Looking in the
// instance's `__dict__` instead would be cheaper still, but on 3.11 and 3.12 asking for that
// dict takes the instance off its inline attribute values, which slowed the Python half of
// every read by more than the check saved.
fn shadows(obj: &Bound<'_, PyAny>, name: &Bound<'_, PyString>, function: &Py<PyAny>) -> bool {
    let mut found = std::ptr::null_mut();
    // SAFETY: `obj` and `name` are live objects (`name` a str) and the thread is attached;
    // `found` receives a new reference, or NULL with an exception set.
    let unbound = unsafe { _PyObject_GetMethod(obj.as_ptr(), name.as_ptr(), &mut found) };
    if found.is_null() {
        drop(PyErr::take(obj.py()));
        return true;
    }
    // SAFETY: `found` is the new, non-NULL reference just returned.
    let found = unsafe { Bound::from_owned_ptr(obj.py(), found) };
    // 1: `found` is the function the class defines, which no instance attribute shadows.
    unbound != 1 || !found.is(function)
}

/// The rest of `feed_data` once the data is in the reader's buffer: `_wakeup_waiter()`, then
/// `pause_reading()` on the reader's transport when the buffer passed twice the limit.
pub(crate) fn data_appended(feed: &Feed<'_>) -> PyResult<()> {
    let py = feed.reader.py();
    let reader = &feed.reader;
    let waiter = reader.getattr(intern!(py, "_waiter"))?;
    if !waiter.is_none() {
        reader.setattr(intern!(py, "_waiter"), py.None())?;
        if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
    }
    let transport = reader.getattr(intern!(py, "_transport"))?;
    if transport.is_none() || reader.getattr(intern!(py, "_paused"))?.is_truthy()? {
        return Ok(());
    }
    let limit = reader.getattr(intern!(py, "_limit"))?;
    if !past_twice(feed.buffer.len(), &limit)? {
        return Ok(());
    }
    match transport.call_method0(intern!(py, "pause_reading")) {
        Ok(_) => reader.setattr(intern!(py, "_paused"), true),
        // The transport cannot pause: forget it, so that the reader stops trying.
        Err(err) if err.is_instance_of::<PyNotImplementedError>(py) => {
            reader.setattr(intern!(py, "_transport"), py.None())
        }
        Err(err) => Err(err),
    }
}

/// `size > 2 * limit`, in machine integers when `limit` is an `int` that fits them (it always is,
/// unless code set something else), in Python's arithmetic otherwise.
fn past_twice(size: usize, limit: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = limit.py();
    match limit
        .cast_exact::<PyInt>()
        .ok()
        .map(|limit| limit.extract::<i64>())
    {
        Some(Ok(limit)) => Ok(i128::try_from(size).unwrap_or(i128::MAX) > 2 * i128::from(limit)),
        _ => size.into_pyobject(py)?.gt(PyInt::new(py, 2).mul(limit)?),
    }
}
