//! The oxio engine: a monotonic clock, a timer heap, a level-triggered readiness poller, a
//! cross-thread waker, the byte paths of stream and datagram sockets, write flow control, and
//! the start of a child process.
//!
//! Nothing here knows about Python. The binding crate (`oxio-py`) owns every Python object and
//! drives one loop iteration out of these parts, in the phases written down in `docs/design.md`.
//! Callers identify I/O sources by a plain `u64` token and timers by an opaque payload, as smol's
//! `polling` does, so the engine can be tested, fuzzed and sanitised without libpython.

pub mod clock;
pub mod fd_map;
pub mod process;
pub mod reactor;
pub mod timer;
pub mod transport;
pub mod waker;

pub use clock::monotonic;
pub use fd_map::FdMap;
pub use process::{Spawn, SpawnError};
pub use reactor::{Event, Events, Interest, Poller};
pub use timer::TimerHeap;
pub use transport::datagram::{Address, DatagramQueue, SockAddr};
pub use transport::flow_control::FlowControl;
pub use transport::stream::WriteQueue;
pub use waker::Waker;
