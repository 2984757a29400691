//! The echo load generator: C connections, each sending S bytes and waiting for the full echo
//! before sending again, on one thread.
//!
//! After a warm-up it counts round trips over a fixed window and prints one JSON line:
//! `{"ops", "wall", "cpu", "client_cpu"}`, where `cpu` is the CPU time the server process
//! (`--server-pid`) spent in that same window, read from /proc at the window's edges, and
//! `client_cpu` is this process's, so a run can show that the generator was not the bottleneck.
//!
//! With `--tls-ca PEM` every connection is TLS (rustls), trusting only the certificates in PEM;
//! the handshakes, like the connects, happen before the clock starts.

use std::fs;
use std::io::{self, ErrorKind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use oxio_loadgen::tls::{self, TlsStream};
use oxio_loadgen::{Endpoint, Flags, ReadyStream, Stream};

const USAGE: &str = "loadgen --connect tcp:HOST:PORT|unix:PATH [--connections 32] [--size 1024] \
                     [--warmup 0.5] [--duration 2.0] [--server-pid PID] [--tls-ca PEM]";

struct Conn {
    stream: ReadyStream,
    /// Bytes of the current message written so far.
    sent: usize,
    /// The echo of the current message, filled up to `received`, with one byte to spare: the
    /// read that completes an echo is then short, which tells `ReadyStream` that the socket is
    /// drained (the server sends nothing else), so no read is spent just to see it would block.
    // NOTE: against echo-limit at 1 KiB (strace -c), recvfrom calls per round trip went from
    // 1.32 to 1.00 and epoll_wait from 0.01 to 0.03; the client's CPU per round trip fell by
    // about 3% within each of the machine's speed modes (5 alternating runs).
    echo: Box<[u8]>,
    received: usize,
}

impl Conn {
    /// Sends and receives until the socket would block; returns the round trips completed.
    /// Reads go on while the message is still being written, because the server echoes as it
    /// reads and both directions' buffers would otherwise fill up and deadlock.
    fn pump(&mut self, message: &[u8]) -> io::Result<u64> {
        let mut completed = 0;
        loop {
            // Ciphertext a TLS session could not write earlier goes out first; the echo of a
            // message whose tail is still in the session would never come.
            self.stream.flush()?;
            while self.sent < message.len() {
                match self.stream.write(&message[self.sent..])? {
                    Some(n) => self.sent += n,
                    None => break,
                }
            }
            while self.received < message.len() {
                match self.stream.read(&mut self.echo[self.received..])? {
                    Some(0) => {
                        return Err(io::Error::new(ErrorKind::UnexpectedEof, "server closed"))
                    }
                    Some(n) => self.received += n,
                    None => return Ok(completed),
                }
            }
            // A wrong echo is a bug in the loop under test, not a slow run: stop loudly.
            if self.received > message.len() {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    "the server sent more than the echo",
                ));
            }
            if self.echo[..message.len()] != *message {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    "echo differs from message",
                ));
            }
            (self.sent, self.received) = (0, 0);
            completed += 1;
        }
    }
}

/// What is counted at each edge of the measured window.
struct Mark {
    at: Instant,
    round_trips: u64,
    server_cpu: Option<f64>,
    client_cpu: f64,
}

impl Mark {
    fn take(round_trips: u64, server_pid: Option<u32>) -> io::Result<Mark> {
        Ok(Mark {
            at: Instant::now(),
            round_trips,
            server_cpu: server_pid
                .map(|pid| cpu_seconds(&pid.to_string()))
                .transpose()?,
            client_cpu: cpu_seconds("self")?,
        })
    }
}

/// Seconds a whole process (all its threads) has spent on a CPU, user and system time alike.
///
/// Summed from /proc/PID/task/*/schedstat, which counts nanoseconds; /proc/PID/stat counts
/// 10 ms ticks, too coarse for a window of a fraction of a second.
fn cpu_seconds(pid: &str) -> io::Result<f64> {
    let mut nanos = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let schedstat = match fs::read_to_string(task?.path().join("schedstat")) {
            Ok(schedstat) => schedstat,
            // A thread that exits meanwhile takes its time with it, from both edges alike.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        nanos += schedstat
            .split_whitespace()
            .next()
            .and_then(|field| field.parse::<u64>().ok())
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "unparsable schedstat"))?;
    }
    Ok(nanos as f64 / 1e9)
}

fn main() -> io::Result<()> {
    let flags = Flags::from_env(USAGE);
    let endpoint: Endpoint = flags.required("connect");
    let connections: usize = flags.get_or("connections", 32);
    let size: usize = flags.get_or("size", 1024);
    let warmup = Duration::from_secs_f64(flags.get_or("warmup", 0.5));
    let duration = Duration::from_secs_f64(flags.get_or("duration", 2.0));
    let server_pid: Option<u32> = flags.optional("server-pid");
    let tls_ca: Option<PathBuf> = flags.optional("tls-ca");
    let tls = match (&tls_ca, &endpoint) {
        (None, _) => None,
        (Some(ca), Endpoint::Tcp(addr)) => Some((tls::client_config(ca)?, addr.ip())),
        (Some(_), Endpoint::Unix(_)) => {
            let message = "--tls-ca needs a tcp: endpoint (certificates name an IP address)";
            return Err(io::Error::new(ErrorKind::InvalidInput, message));
        }
    };

    // Not all one byte value, so that a server echoing stale buffer contents is caught.
    let message: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(connections);
    for i in 0..connections {
        let mut stream = endpoint.connect()?;
        if let Some((config, server)) = &tls {
            let session = TlsStream::connect(stream, config.clone(), *server)?;
            stream = Box::new(session) as Box<dyn Stream>;
        }
        let interest = Interest::READABLE | Interest::WRITABLE;
        poll.registry().register(&mut stream, Token(i), interest)?;
        conns.push(Conn {
            stream: ReadyStream::new(stream),
            sent: 0,
            echo: vec![0; size + 1].into_boxed_slice(),
            received: 0,
        });
    }

    let mut round_trips = 0;
    for conn in &mut conns {
        round_trips += conn.pump(&message)?;
    }
    let window_start = Instant::now() + warmup;
    let mut start: Option<Mark> = None;
    let mut events = Events::with_capacity(connections);
    loop {
        let now = Instant::now();
        if start.is_none() && now >= window_start {
            start = Some(Mark::take(round_trips, server_pid)?);
        }
        let deadline = start
            .as_ref()
            .map_or(window_start, |mark| mark.at + duration);
        if now >= deadline {
            break;
        }
        match poll.poll(&mut events, Some(deadline - now)) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            result => result?,
        }
        for event in &events {
            let conn = &mut conns[event.token().0];
            conn.stream.on_event(event);
            round_trips += conn.pump(&message)?;
        }
    }
    let start = start.expect("the loop ends only after the window has started");
    let end = Mark::take(round_trips, server_pid)?;
    let server_cpu = match (start.server_cpu, end.server_cpu) {
        (Some(a), Some(b)) => format!("{:.4}", b - a),
        _ => "null".to_string(),
    };
    println!(
        "{{\"ops\": {}, \"wall\": {:.6}, \"cpu\": {server_cpu}, \"client_cpu\": {:.4}}}",
        end.round_trips - start.round_trips,
        (end.at - start.at).as_secs_f64(),
        end.client_cpu - start.client_cpu,
    );
    Ok(())
}
