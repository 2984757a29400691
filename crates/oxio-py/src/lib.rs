//! `oxio._oxio`: the PyO3 face of the oxio engine. Every `#[pyclass]` of the project lives in
//! this crate; the engine (`oxio-core`) stays free of Python.

mod attached_cell;
mod buffer;
mod context;
mod errors;
mod event_loop;
mod fd;
mod handle;
mod process;
mod raw_method;
mod sock;
mod stdlib;
mod tasks;
mod tls;
mod transport;

use pyo3::prelude::*;

#[pymodule]
fn _oxio(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::EventLoop>()?;
    event_loop::install_raw_methods(m.py())?;
    event_loop::learn_c_asyncio_keywords(m.py());
    m.add_class::<handle::Handle>()?;
    m.add_class::<handle::TimerHandle>()?;
    m.add_class::<sock::SockCoroutine>()?;
    sock::install_am_send(m.py());
    m.add_class::<transport::stream::StreamCore>()?;
    transport::stream_methods::install(m.py())?;
    transport::stream_reader::capture_stock(m.py());
    m.add_class::<transport::pipe::ReadPipeCore>()?;
    m.add_class::<transport::pipe::WritePipeCore>()?;
    m.add_class::<transport::datagram::DatagramCore>()?;
    m.add_class::<tls::TlsProtocol>()?;
    m.add_function(wrap_pyfunction!(process::spawn, m)?)?;
    m.add_function(wrap_pyfunction!(process::spawn_supported, m)?)?;
    Ok(())
}
