//! Shared by the network bench binaries: endpoints, a stream over TCP or Unix, and flags.
//!
//! Both binaries speak the same endpoint syntax as `benches/net_servers.py`, `tcp:HOST:PORT` or
//! `unix:PATH`, so `benches/run.py` drives the Python servers and the reference server alike.

pub mod tls;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use mio::event::{Event, Source};
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

/// A connected, non-blocking byte stream; TCP and Unix sockets are handled alike.
pub trait Stream: Read + Write + Source {}

impl<T: Read + Write + Source> Stream for T {}

/// Where to listen or connect: `tcp:127.0.0.1:8000` or `unix:/tmp/echo.sock`.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("tcp", addr)) => addr
                .parse()
                .map(Endpoint::Tcp)
                .map_err(|e| format!("bad TCP address {addr:?}: {e}")),
            Some(("unix", path)) => Ok(Endpoint::Unix(path.into())),
            _ => Err(format!(
                "endpoint {s:?} is neither tcp:HOST:PORT nor unix:PATH"
            )),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "tcp:{addr}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Endpoint {
    /// Connects with a blocking connect, then switches to non-blocking: the load generator
    /// opens its connections before the clock starts, so a simple connect is the honest one.
    pub fn connect(&self) -> io::Result<Box<dyn Stream>> {
        Ok(match self {
            Endpoint::Tcp(addr) => {
                let stream = std::net::TcpStream::connect(addr)?;
                // Request-response traffic: Nagle would hold back the tail of each message
                // until the previous one is acknowledged.
                stream.set_nodelay(true)?;
                stream.set_nonblocking(true)?;
                Box::new(TcpStream::from_std(stream))
            }
            Endpoint::Unix(path) => {
                let stream = std::os::unix::net::UnixStream::connect(path)?;
                stream.set_nonblocking(true)?;
                Box::new(UnixStream::from_std(stream))
            }
        })
    }

    pub fn bind(&self) -> io::Result<Listener> {
        Ok(match self {
            Endpoint::Tcp(addr) => Listener::Tcp(TcpListener::bind(*addr)?),
            Endpoint::Unix(path) => Listener::Unix(UnixListener::bind(path)?, path.clone()),
        })
    }
}

/// A listening socket of either family.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => registry.register(l, token, Interest::READABLE),
            Listener::Unix(l, _) => registry.register(l, token, Interest::READABLE),
        }
    }

    pub fn accept(&self) -> io::Result<Box<dyn Stream>> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (stream, _) = l.accept()?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            Listener::Unix(l, _) => Box::new(l.accept()?.0),
        })
    }

    /// The bound address, with the port the kernel chose for `tcp:HOST:0`.
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        Ok(match self {
            Listener::Tcp(l) => Endpoint::Tcp(l.local_addr()?),
            Listener::Unix(_, path) => Endpoint::Unix(path.clone()),
        })
    }
}

/// `--name value` flags; every flag takes exactly one value. Bad input exits with the usage.
pub struct Flags {
    values: HashMap<String, String>,
    usage: &'static str,
}

impl Flags {
    pub fn from_env(usage: &'static str) -> Flags {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut values = HashMap::new();
        for pair in args.chunks(2) {
            match pair {
                [name, value] if name.starts_with("--") => {
                    values.insert(name[2..].to_string(), value.clone());
                }
                _ => fail(usage),
            }
        }
        Flags { values, usage }
    }

    pub fn optional<T: FromStr>(&self, name: &str) -> Option<T> {
        let value = self.values.get(name)?;
        Some(value.parse().unwrap_or_else(|_| fail(self.usage)))
    }

    pub fn get_or<T: FromStr>(&self, name: &str, default: T) -> T {
        self.optional(name).unwrap_or(default)
    }

    pub fn required<T: FromStr>(&self, name: &str) -> T {
        self.optional(name).unwrap_or_else(|| fail(self.usage))
    }
}

fn fail(usage: &str) -> ! {
    eprintln!("usage: {usage}");
    std::process::exit(2)
}

/// A stream and the readiness the poller last reported for it, kept the way tokio keeps it: an
/// event sets a flag, and only WouldBlock or a short read or write clears it. Registrations are
/// edge-triggered, and a short transfer means the kernel buffer was drained (or filled), so the
/// next change comes as a new event; no syscall is spent to learn that a socket would block.
pub struct ReadyStream {
    pub stream: Box<dyn Stream>,
    readable: bool,
    writable: bool,
}

impl ReadyStream {
    pub fn new(stream: Box<dyn Stream>) -> ReadyStream {
        // Nothing has been tried yet, so both directions are worth one attempt.
        ReadyStream {
            stream,
            readable: true,
            writable: true,
        }
    }

    pub fn on_event(&mut self, event: &Event) {
        // Errors and hang-ups are reported by the next read or write, so they count as ready.
        self.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
        self.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
    }

    /// Reads once if the stream may be readable; None if it is not, Some(0) at end of stream.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let (stream, ready) = (&mut self.stream, &mut self.readable);
        Self::transfer(ready, buf.len(), || stream.read(buf))
    }

    /// Writes once if the stream may be writable; None if it is not.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<Option<usize>> {
        let (stream, ready) = (&mut self.stream, &mut self.writable);
        Self::transfer(ready, buf.len(), || stream.write(buf))
    }

    /// Writes out what the stream buffers (a TLS session's ciphertext) if the stream may be
    /// writable; false if some of it has to wait for the next writable event.
    pub fn flush(&mut self) -> io::Result<bool> {
        let (stream, ready) = (&mut self.stream, &mut self.writable);
        Ok(Self::transfer(ready, 0, || stream.flush().map(|()| 0))?.is_some())
    }

    fn transfer(
        ready: &mut bool,
        len: usize,
        mut io: impl FnMut() -> io::Result<usize>,
    ) -> io::Result<Option<usize>> {
        while *ready {
            match io() {
                Ok(n) => {
                    *ready = n == len;
                    return Ok(Some(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => *ready = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}
