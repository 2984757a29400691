//! The reference echo server: one thread, mio, a 256 KiB buffer per connection.
//!
//! It is what a single core can do when the event loop costs nothing, so each echo row of the
//! benches can say how close a Python loop gets. It echoes whatever arrives and does not know
//! the message size. Prints `{"address": "..."}` once it listens, then serves until killed.

use std::io::{self, ErrorKind};

use mio::{Events, Interest, Poll, Token};
use oxio_loadgen::{Endpoint, Flags, Listener, ReadyStream};

const USAGE: &str = "echo-limit --listen tcp:HOST:PORT|unix:PATH";
const LISTENER: Token = Token(usize::MAX);
/// The same read size as the Python servers and asyncio's selector transports.
const BUFFER_SIZE: usize = 256 * 1024;

struct Conn {
    stream: ReadyStream,
    buf: Box<[u8]>,
    /// `buf[start..end]` was read and not yet written back. While it is non-empty the server
    /// reads nothing more from this peer: a slow reader gets backpressure, not an unbounded queue.
    start: usize,
    end: usize,
}

impl Conn {
    /// Writes back what is pending and reads more, until one of them would block.
    /// Returns false once the peer has closed its side.
    fn pump(&mut self) -> io::Result<bool> {
        loop {
            while self.start < self.end {
                match self.stream.write(&self.buf[self.start..self.end])? {
                    Some(n) => self.start += n,
                    None => return Ok(true),
                }
            }
            match self.stream.read(&mut self.buf)? {
                Some(0) => return Ok(false),
                Some(n) => (self.start, self.end) = (0, n),
                None => return Ok(true),
            }
        }
    }
}

fn main() -> io::Result<()> {
    let flags = Flags::from_env(USAGE);
    let endpoint: Endpoint = flags.required("listen");
    let mut listener = endpoint.bind()?;
    let mut poll = Poll::new()?;
    listener.register(poll.registry(), LISTENER)?;
    println!("{{\"address\": \"{}\"}}", listener.local_endpoint()?);

    // Indexed by token; a closed connection leaves a hole that the next accept fills.
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut events = Events::with_capacity(256);
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            result => result?,
        }
        for event in &events {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut conns)?;
                continue;
            }
            // A reset from the peer ends that connection like a clean close does.
            let slot = &mut conns[event.token().0];
            let open = slot.as_mut().is_some_and(|conn| {
                conn.stream.on_event(event);
                conn.pump().unwrap_or(false)
            });
            if !open {
                if let Some(mut conn) = slot.take() {
                    poll.registry().deregister(&mut conn.stream.stream)?;
                }
            }
        }
    }
}

fn accept_all(listener: &Listener, poll: &Poll, conns: &mut Vec<Option<Conn>>) -> io::Result<()> {
    loop {
        let mut stream = match listener.accept() {
            Ok(stream) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        };
        let index = conns
            .iter()
            .position(Option::is_none)
            .unwrap_or(conns.len());
        poll.registry().register(
            &mut stream,
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let conn = Conn {
            stream: ReadyStream::new(stream),
            buf: vec![0; BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
        };
        if index == conns.len() {
            conns.push(Some(conn));
        } else {
            conns[index] = Some(conn);
        }
    }
}
