//! `MemoryBIO.pending`, asked of the getter that `_ssl.MemoryBIO` defines.
//!
//! The TLS layer asks how many bytes a BIO holds about seven times per record it handles (flow
//! control, and whether there is ciphertext to send or decrypt). Through `getattr` each answer
//! is a type lookup and a descriptor call around the C getter; the getter alone is a third of it.

use std::ptr::NonNull;

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// `_ssl.MemoryBIO` and the descriptor of its `pending` attribute, a C getter.
struct PendingGetter {
    bio_type: Py<PyType>,
    /// A `getset_descriptor` (checked when found), kept alive here with its `PyGetSetDef`.
    descriptor: Py<PyAny>,
}

static PENDING: PyOnceLock<Option<PendingGetter>> = PyOnceLock::new();

fn find(py: Python<'_>) -> PyResult<Option<PendingGetter>> {
    let bio_type = py
        .import(intern!(py, "_ssl"))?
        .getattr(intern!(py, "MemoryBIO"))?
        .cast_into::<PyType>()?;
    let descriptor = bio_type
        .getattr(intern!(py, "__dict__"))?
        .get_item(intern!(py, "pending"))?;
    // SAFETY: reading the type of a live object; `PyGetSetDescr_Type` is a static type object.
    let is_getset = unsafe {
        ffi::Py_TYPE(descriptor.as_ptr()) == std::ptr::addr_of_mut!(ffi::PyGetSetDescr_Type)
    };
    Ok(is_getset.then(|| PendingGetter {
        bio_type: bio_type.unbind(),
        descriptor: descriptor.unbind(),
    }))
}

/// Bytes waiting in `bio`, a `MemoryBIO`.
// NOTE: calling the getter directly took this function from 2,451 to 1,505 instructions per
// request of the HTTPS keep-alive server (7 calls), and the server from 43.5k to 42.0k
// (callgrind, wrk with 8 connections).
pub(super) fn pending(bio: &Bound<'_, PyAny>) -> usize {
    let py = bio.py();
    let getter = PENDING.get_or_init(py, || find(py).ok().flatten());
    let value = match getter {
        Some(getter) if bio.get_type().is(getter.bio_type.bind(py)) => {
            let descriptor = getter
                .descriptor
                .as_ptr()
                .cast::<ffi::PyGetSetDescrObject>();
            // SAFETY: `descriptor` is a live `getset_descriptor` of `_ssl.MemoryBIO` (checked in
            // `find`), whose `PyGetSetDef` lives as long as that type; `bio` is exactly an
            // instance of that type, which is what the getter expects, and the thread is
            // attached. The getter returns a new reference, or NULL with an exception set.
            let raw = unsafe {
                let def = &*(*descriptor).d_getset;
                def.get.map(|get| get(bio.as_ptr(), def.closure))
            };
            match raw.and_then(NonNull::new) {
                // SAFETY: a new, non-NULL reference the getter just returned.
                Some(raw) => Ok(unsafe { Bound::from_owned_ptr(py, raw.as_ptr()) }),
                None => Err(PyErr::fetch(py)),
            }
        }
        _ => bio.getattr(intern!(py, "pending")),
    };
    // A live BIO's `pending` is a plain integer and never fails.
    value.and_then(|n| n.extract()).unwrap_or(0)
}
