//! Decrypting a batch of records into the one `bytes` that the app's `data_received` gets,
//! for the native record layer: each `read(n, buffer)` writes into the unfilled tail of that
//! `bytes`, so there is no `bytes` per record and no join.

use std::ffi::c_char;
use std::ptr::NonNull;

use pyo3::ffi::{self, compat};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::bio;
use super::machine::{join, ssl_call, Ssl};
use crate::transport::READ_SIZE;

/// What one batch of reads produced.
pub(super) struct Decrypted<'py> {
    /// The plaintext, if any record carried some.
    pub(super) data: Option<Bound<'py, PyBytes>>,
    /// The batch ended with the peer's close_notify.
    pub(super) close_notify: bool,
}

/// Decrypts every record the incoming BIO holds, plus what OpenSSL already decrypted, into
/// one `bytes`. `records` must be `ssl.SSLObject`'s inner object (OpenSSL's own `read`, which
/// keeps no reference to the buffer it fills).
///
/// The loop stops without a call when nothing is readable (see `readable`), where asyncio's
/// loop calls `read` once more to catch `SSLWantReadError`. Up to one record's worth of
/// ciphertext, `read(n)` returns the `bytes` itself; past that, the records are read into one
/// `bytes` in place.
// NOTE: per server CPU-second, 3 alternating runs each, against the `read(256 KiB)` per record
// and the join before: TLS echo 1 KiB 53k -> 63k ops, 100 KiB 6.07k -> 6.53k, HTTPS
// keep-alive 52k -> 64k requests (uvloop: 63k). Skipping the final, failing read alone made
// 1 KiB fall to 29k: with no 256 KiB block freed whole any more, glibc's mmap threshold
// stayed low and every `read(256 KiB)` mapped and unmapped its buffer.
pub(super) fn read_records<'py>(
    records: &Bound<'py, PyAny>,
    incoming: &Bound<'py, PyAny>,
) -> PyResult<Decrypted<'py>> {
    match readable(records, incoming, false)? {
        hint if hint > ONE_RECORD => read_in_place(records, incoming, hint),
        hint => read_each(records, incoming, hint),
    }
}

/// The ciphertext of one full record (16 KiB of plaintext and TLS's largest expansion).
const ONE_RECORD: usize = 16 * 1024 + 256;

/// One `read(n)` per record, `n` the plaintext that can be waiting, so that each `bytes` is
/// made at about its size; more than one are joined.
// NOTE: a read into a fresh memoryview cost about 130 ns more than `read(n)` for a 100-byte
// or 1 KiB record (microbenchmark over MemoryBIO), and `read_in_place` adds a writer. Against
// the writer for every batch, 4 alternating runs per server CPU-second: TLS echo 10 KiB 54.1k
// -> 57.2k ops; HTTPS keep-alive and echo 1 KiB unchanged within noise (79.2k/79.5k,
// 82.5k/82.6k).
fn read_each<'py>(
    records: &Bound<'py, PyAny>,
    incoming: &Bound<'py, PyAny>,
    readable: usize,
) -> PyResult<Decrypted<'py>> {
    let size = |readable: usize| (readable > 0).then(|| readable.min(READ_SIZE));
    read_sized(records, size(readable), |asked, got| {
        Ok(size(self::readable(records, incoming, got < asked)?))
    })
}

/// `read(n)` records until `SSLWantReadError`, close_notify, or `next(asked, got)` gives no
/// next size; the records joined into one `bytes`.
pub(super) fn read_sized<'py>(
    records: &Bound<'py, PyAny>,
    first: Option<usize>,
    mut next: impl FnMut(usize, usize) -> PyResult<Option<usize>>,
) -> PyResult<Decrypted<'py>> {
    let py = records.py();
    let mut chunks = Vec::new();
    let mut close_notify = false;
    let mut asked = first;
    while let Some(size) = asked {
        let result = records.call_method1(intern!(py, "read"), (size,));
        match ssl_call(py, result)? {
            Ssl::WouldBlock => break,
            Ssl::Failed(err) => return Err(err),
            Ssl::Done(chunk) => {
                let chunk = chunk.cast_into::<PyBytes>()?;
                let got = chunk.as_bytes().len();
                if got == 0 {
                    close_notify = true;
                    break;
                }
                chunks.push(chunk);
                asked = next(size, got)?;
            }
        }
    }
    let data = match chunks.len() {
        0 => None,
        1 => chunks.pop(),
        _ => Some(join(py, &chunks)?),
    };
    Ok(Decrypted { data, close_notify })
}

/// Many records into one `bytes`, each `read(n, buffer)` filling the next part of it.
fn read_in_place<'py>(
    records: &Bound<'py, PyAny>,
    incoming: &Bound<'py, PyAny>,
    mut readable: usize,
) -> PyResult<Decrypted<'py>> {
    let py = records.py();
    let mut writer = BytesWriter::new(py, readable)?;
    let mut close_notify = false;
    while readable > 0 {
        if writer.spare() == 0 {
            // The rest of a record partly read before can be up to a record's plaintext.
            writer.grow(readable.max(ONE_RECORD))?;
        }
        let asked = writer.spare();
        let target = writer.spare_view()?;
        let step = read_into(records, asked, &target);
        writer.retire(target)?;
        match step? {
            ReadInto::Blocked => break,
            ReadInto::CloseNotify => {
                close_notify = true;
                break;
            }
            ReadInto::Read(n) => {
                writer.advance(n);
                readable = self::readable(records, incoming, n < asked)?;
            }
        }
    }
    let data = match writer.filled {
        0 => None,
        _ => Some(writer.finish()?),
    };
    Ok(Decrypted { data, close_notify })
}

/// What one `read(n, buffer)` of the TLS object did.
pub(super) enum ReadInto {
    /// Wrote this many bytes of plaintext at the start of the buffer.
    Read(usize),
    /// Nothing until more ciphertext arrives.
    Blocked,
    /// The peer's close_notify: the plaintext stream has ended.
    CloseNotify,
}

/// `records.read(asked, target)`: decrypts up to `asked` bytes into the writable `target`.
pub(super) fn read_into(
    records: &Bound<'_, PyAny>,
    asked: usize,
    target: &Bound<'_, PyAny>,
) -> PyResult<ReadInto> {
    let py = records.py();
    let result = records.call_method1(intern!(py, "read"), (asked, target));
    match ssl_call(py, result)? {
        Ssl::WouldBlock => Ok(ReadInto::Blocked),
        Ssl::Failed(err) => Err(err),
        Ssl::Done(count) => match count.extract::<usize>()? {
            0 => Ok(ReadInto::CloseNotify),
            n => Ok(ReadInto::Read(n)),
        },
    }
}

/// A hint of the plaintext that `read` can return now: the ciphertext in the incoming BIO,
/// else the bytes OpenSSL decrypted and has not handed out (`pending()`). Zero means a read
/// would only raise `SSLWantReadError`: OpenSSL takes one record at a time from the BIO
/// (Python offers no way to turn on read-ahead), so a partial record it already took cannot
/// complete without more ciphertext. Such a record is also why this is only a hint: its
/// plaintext can exceed the ciphertext left in the BIO.
///
/// `drained` says that the last `read` returned less than it asked for, which it does only
/// once its record is used up: then OpenSSL holds nothing decrypted and `pending()`, which
/// releases and takes back the GIL, is not called.
// NOTE: two `pending()` calls per request were 1.2% of the server's CPU in HTTPS keep-alive.
pub(super) fn readable(
    records: &Bound<'_, PyAny>,
    incoming: &Bound<'_, PyAny>,
    drained: bool,
) -> PyResult<usize> {
    let waiting = bio::pending(incoming);
    if waiting > 0 || drained {
        return Ok(waiting);
    }
    records
        .call_method0(intern!(records.py(), "pending"))?
        .extract()
}

/// A `bytes` under construction (`PyBytesWriter`, CPython 3.15's API, through pyo3's shim on
/// older versions): `filled` bytes written, `capacity` allocated.
struct BytesWriter<'py> {
    py: Python<'py>,
    raw: NonNull<compat::PyBytesWriter>,
    capacity: usize,
    filled: usize,
    /// A view of its memory could not be released: the memory is leaked, never freed.
    leaked: bool,
}

impl<'py> BytesWriter<'py> {
    fn new(py: Python<'py>, capacity: usize) -> PyResult<Self> {
        // SAFETY: the GIL is held (`py`); a NULL result has set a Python exception.
        let raw = unsafe { compat::PyBytesWriter_Create(capacity as ffi::Py_ssize_t) };
        match NonNull::new(raw) {
            Some(raw) => Ok(Self {
                py,
                raw,
                capacity,
                filled: 0,
                leaked: false,
            }),
            None => Err(PyErr::fetch(py)),
        }
    }

    fn spare(&self) -> usize {
        self.capacity - self.filled
    }

    fn advance(&mut self, written: usize) {
        // OpenSSL never writes past the length it was given; `min` keeps the invariant even so.
        self.filled += written.min(self.spare());
    }

    /// Makes room for `more` bytes past the filled ones (the data pointer may move).
    fn grow(&mut self, more: usize) -> PyResult<()> {
        let capacity = self.filled + more;
        // SAFETY: the GIL is held and `raw` is a live writer; the filled bytes are kept.
        let status =
            unsafe { compat::PyBytesWriter_Resize(self.raw.as_ptr(), capacity as ffi::Py_ssize_t) };
        if status < 0 {
            return Err(PyErr::fetch(self.py));
        }
        self.capacity = capacity;
        Ok(())
    }

    /// A writable memoryview of the unfilled bytes. It must go back through `retire` before
    /// the writer changes: it points into the writer's memory without owning it.
    fn spare_view(&mut self) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: the GIL is held and `raw` is a live writer, whose data is `capacity` bytes
        // long; `filled <= capacity`, so the pointer stays within (or one past) that block.
        let view = unsafe {
            let data = compat::PyBytesWriter_GetData(self.raw.as_ptr()).cast::<c_char>();
            ffi::PyMemoryView_FromMemory(
                data.add(self.filled),
                self.spare() as ffi::Py_ssize_t,
                ffi::PyBUF_WRITE,
            )
        };
        // SAFETY: `view` is a new reference or NULL with an exception set.
        unsafe { Bound::from_owned_ptr_or_err(self.py, view) }
    }

    /// Ends a view from `spare_view`. OpenSSL's `read` keeps no reference to its buffer, so
    /// this is the last one; if anything else still held it, the view is released so it can
    /// no longer reach the memory, and if even that fails (an export still open) the writer
    /// is leaked rather than freed under it.
    fn retire(&mut self, view: Bound<'py, PyAny>) -> PyResult<()> {
        // SAFETY: `view` is a live object and the GIL is held.
        if unsafe { ffi::Py_REFCNT(view.as_ptr()) } == 1 {
            return Ok(());
        }
        let released = view.call_method0(intern!(self.py, "release"));
        self.leaked = released.is_err();
        released.map(drop)
    }

    /// The `bytes` of the filled part.
    fn finish(self) -> PyResult<Bound<'py, PyBytes>> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the GIL is held and `raw` is a live writer, consumed here (it is not dropped
        // again: `this` is ManuallyDrop); the result is a new `bytes` or NULL with an exception.
        let bytes = unsafe {
            compat::PyBytesWriter_FinishWithSize(this.raw.as_ptr(), this.filled as ffi::Py_ssize_t)
        };
        // SAFETY: as above, a new reference or NULL with an exception set.
        let bytes = unsafe { Bound::from_owned_ptr_or_err(this.py, bytes)? };
        // SAFETY: `PyBytesWriter_Finish*` returns a `bytes` object.
        Ok(unsafe { bytes.cast_into_unchecked() })
    }
}

impl Drop for BytesWriter<'_> {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: the GIL is held for 'py and `raw` is a live writer, discarded once.
        unsafe { compat::PyBytesWriter_Discard(self.raw.as_ptr()) };
    }
}
