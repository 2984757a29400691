//! The byte paths of transports, below Python: stream and pipe I/O with the write queue,
//! datagram I/O with socket addresses and the datagram queue, and write flow control.

pub mod datagram;
pub mod flow_control;
pub mod stream;
