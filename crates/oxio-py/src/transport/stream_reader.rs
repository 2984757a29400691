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
use pyo3::types::{PyByteArray, PyInt, PyString, PyType};

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

impl Stock {
    /// What `asyncio.streams` holds now.
    fn current(py: Python<'_>) -> PyResult<Self> {
        let streams = py.import(intern!(py, "asyncio.streams"))?;
        let protocol_type = streams
            .getattr(intern!(py, "StreamReaderProtocol"))?
            .cast_into::<PyType>()?;
        let reader_type = streams
            .getattr(intern!(py, "StreamReader"))?
            .cast_into::<PyType>()?;
        let attr = |class: &Bound<'_, PyType>, name| class.getattr(name).map(Bound::unbind);
        Ok(Self {
            data_received: attr(&protocol_type, intern!(py, "data_received"))?,
            stream_reader: attr(&protocol_type, intern!(py, "_stream_reader"))?,
            feed_data: attr(&reader_type, intern!(py, "feed_data"))?,
            wakeup_waiter: attr(&reader_type, intern!(py, "_wakeup_waiter"))?,
            protocol_type: protocol_type.unbind(),
            reader_type: reader_type.unbind(),
        })
    }

    fn is_unchanged_in(&self, now: &Self) -> bool {
        self.protocol_type.is(&now.protocol_type)
            && self.reader_type.is(&now.reader_type)
            && self.data_received.is(&now.data_received)
            && self.stream_reader.is(&now.stream_reader)
            && self.feed_data.is(&now.feed_data)
            && self.wakeup_waiter.is(&now.wakeup_waiter)
    }
}

static STOCK: PyOnceLock<Stock> = PyOnceLock::new();

// The bound-method type and its accessor, in CPython's C API though not in pyo3's bindings.
extern "C" {
    static mut PyMethod_Type: ffi::PyTypeObject;
    fn PyMethod_Function(method: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// Reads what asyncio's classes hold. Called when `_oxio` is imported, so that a later patch of
/// one of their methods is seen as a change.
pub(crate) fn capture_stock(py: Python<'_>) -> PyResult<()> {
    STOCK.get_or_try_init(py, || Stock::current(py)).map(drop)
}

/// Whether `protocol` is a stock `asyncio.StreamReaderProtocol` whose classes still run
/// asyncio's code, so that [`reader_to_feed`] and [`data_appended`] may stand in for its
/// `data_received`. Checked when a transport gets its protocol.
pub(crate) fn is_stock_protocol(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = protocol.py();
    let Some(stock) = STOCK.get(py) else {
        return Ok(false);
    };
    if !protocol.get_type().is(stock.protocol_type.bind(py)) {
        return Ok(false);
    }
    Ok(stock.is_unchanged_in(&Stock::current(py)?))
}

/// A `StreamReader` that received data is to be appended to.
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
    if shadows(protocol, intern!(py, "data_received"), &stock.data_received) {
        return None;
    }
    let reader_ref = protocol.getattr(intern!(py, "_stream_reader_wr")).ok()?;
    if reader_ref.is_none() {
        return None;
    }
    let reader = reader_ref.call0().ok()?;
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

/// Whether `obj.name` is something else than its class's `function` bound to it: an attribute
/// set on the instance, as code that wraps a live reader's `feed_data` does.
// NOTE: reading the function out of the bound method through the C API, rather than its
// `__func__`, halves the check (callgrind: 640 instructions down to about 300). Looking in the
// instance's `__dict__` instead would be cheaper still, but on 3.11 and 3.12 asking for that
// dict takes the instance off its inline attribute values, which slowed the Python half of
// every read by more than the check saved.
fn shadows(obj: &Bound<'_, PyAny>, name: &Bound<'_, PyString>, function: &Py<PyAny>) -> bool {
    let Ok(found) = obj.getattr(name) else {
        return true;
    };
    // SAFETY: `PyMethod_Type` is a static type object of the interpreter, only read here; when
    // `found` is a bound method, PyMethod_Function returns its function as a borrowed reference
    // and cannot fail.
    unsafe {
        if !std::ptr::eq(ffi::Py_TYPE(found.as_ptr()), &raw const PyMethod_Type) {
            return true;
        }
        !std::ptr::eq(PyMethod_Function(found.as_ptr()), function.as_ptr())
    }
}

/// The rest of `feed_data` once the data is in `feed.buffer`: `_wakeup_waiter()`, then
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
    if !feed
        .buffer
        .len()
        .into_pyobject(py)?
        .gt(PyInt::new(py, 2).mul(limit)?)?
    {
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
