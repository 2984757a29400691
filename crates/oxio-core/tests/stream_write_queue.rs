//! The write queue keeps order across partial writes and flushes with one vectored call.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use oxio_core::transport::stream::{read, recv, send, shutdown_write, write};
use oxio_core::WriteQueue;

#[test]
fn flush_sends_queued_chunks_in_order() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let mut queue = WriteQueue::new();
    queue.push(b"hello ");
    queue.push(b"");
    queue.push(b"world");
    assert_eq!(queue.len(), 11);
    assert_eq!(queue.flush_to_socket(a.as_raw_fd()).unwrap(), 11);
    assert!(queue.is_empty());
    let mut got = [0u8; 11];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello world");
}

#[test]
fn partial_flushes_resume_where_they_stopped() {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut queue = WriteQueue::new();
    for chunk in payload.chunks(70_000) {
        queue.push(chunk);
    }
    let mut received = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !queue.is_empty() {
        match queue.flush_to_socket(a.as_raw_fd()) {
            Ok(_) => {}
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock),
        }
        loop {
            match recv(b.as_raw_fd(), &mut buf) {
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => panic!("{err}"),
            }
        }
    }
    while received.len() < payload.len() {
        let n = recv(b.as_raw_fd(), &mut buf).unwrap();
        received.extend_from_slice(&buf[..n]);
    }
    assert_eq!(received, payload);
}

#[test]
fn send_to_a_closed_peer_is_an_error_not_a_signal() {
    let (a, b) = UnixStream::pair().unwrap();
    drop(b);
    let err = send(a.as_raw_fd(), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
}

#[test]
fn shutdown_write_delivers_end_of_stream() {
    let (a, b) = UnixStream::pair().unwrap();
    send(a.as_raw_fd(), b"last").unwrap();
    shutdown_write(a.as_raw_fd()).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 4);
    assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 0);
}

#[test]
fn pipes_flush_with_writev_and_read_to_end_of_stream() {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let [read_end, write_end] = fds;
    let mut queue = WriteQueue::new();
    queue.push(b"through ");
    queue.push(b"a pipe");
    assert_eq!(write(write_end, b">").unwrap(), 1);
    assert_eq!(queue.flush_to_pipe(write_end).unwrap(), 14);
    // SAFETY: `write_end` is open and owned by this test.
    unsafe { libc::close(write_end) };
    let mut buf = [0u8; 32];
    assert_eq!(read(read_end, &mut buf).unwrap(), 15);
    assert_eq!(&buf[..15], b">through a pipe");
    assert_eq!(read(read_end, &mut buf).unwrap(), 0);
    // SAFETY: `read_end` is open and owned by this test.
    unsafe { libc::close(read_end) };
}

#[test]
fn readable_bytes_counts_what_recv_uninit_then_takes() {
    use oxio_core::transport::stream::{readable_bytes, recv_uninit};
    use std::mem::MaybeUninit;

    let (mut a, b) = UnixStream::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    assert_eq!(readable_bytes(b.as_raw_fd()).unwrap(), 0);
    std::io::Write::write_all(&mut a, b"twelve bytes").unwrap();
    assert_eq!(readable_bytes(b.as_raw_fd()).unwrap(), 12);
    let mut buf = [MaybeUninit::<u8>::uninit(); 32];
    assert_eq!(recv_uninit(b.as_raw_fd(), &mut buf, 0).unwrap(), 12);
    // SAFETY: the kernel initialised the first 12 bytes.
    let got: Vec<u8> = buf[..12]
        .iter()
        .map(|byte| unsafe { byte.assume_init() })
        .collect();
    assert_eq!(got, b"twelve bytes");
    let err = recv_uninit(b.as_raw_fd(), &mut buf, 0).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
}
