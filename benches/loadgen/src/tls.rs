//! TLS for the load generator: a rustls client session over a non-blocking stream.
//!
//! [`TlsStream`] reads and writes plaintext and keeps the contract [`crate::ReadyStream`] relies
//! on for plain sockets: a read or write comes back short only after the socket itself said
//! WouldBlock. Without that, a short plaintext read (one TLS record) would clear the readiness
//! flag while ciphertext still waits in the socket, and an edge-triggered poll would never
//! report it again. Ciphertext the socket could not take stays in the session until
//! [`Write::flush`], which the caller repeats whenever the socket may be writable.

use std::io::{self, ErrorKind, Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use mio::event::Source;
use mio::{Events, Interest, Poll, Registry, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::Stream;

/// A client configuration that trusts exactly the certificates in `ca_pem` (the bench makes a
/// throwaway CA per run), with ring as the crypto provider.
pub fn client_config(ca_pem: &Path) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).map_err(invalid)? {
        roots.add(cert.map_err(invalid)?).map_err(invalid)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, e)
}

pub struct TlsStream {
    sock: Box<dyn Stream>,
    session: ClientConnection,
}

impl TlsStream {
    /// Completes the handshake with `server` (the certificate is checked for that IP address)
    /// before returning, so that, like connect, it happens before the measured window.
    pub fn connect(
        mut sock: Box<dyn Stream>,
        config: Arc<ClientConfig>,
        server: IpAddr,
    ) -> io::Result<TlsStream> {
        let mut session =
            ClientConnection::new(config, ServerName::IpAddress(server.into())).map_err(invalid)?;
        // The socket is already non-blocking; a private poll waits out its WouldBlocks.
        let mut poll = Poll::new()?;
        poll.registry()
            .register(&mut sock, Token(0), Interest::READABLE | Interest::WRITABLE)?;
        let mut events = Events::with_capacity(1);
        while session.is_handshaking() {
            match session.complete_io(&mut sock) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => poll.poll(&mut events, None)?,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        poll.registry().deregister(&mut sock)?;
        Ok(TlsStream { sock, session })
    }
}

impl Read for TlsStream {
    /// Fills `buf` from decrypted records, reading ciphertext until `buf` is full, the socket
    /// would block (then a short count, or WouldBlock if nothing was read), or the stream ends.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        loop {
            match self.session.reader().read(&mut buf[filled..]) {
                Ok(0) => return Ok(filled), // close_notify: the end of the stream
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.session.read_tls(&mut self.sock) {
                Err(e) if e.kind() == ErrorKind::WouldBlock && filled > 0 => return Ok(filled),
                Err(e) => return Err(e),
                // At the socket's end, the session turns the next plaintext read into Ok(0)
                // or an UnexpectedEof error.
                Ok(_) => {
                    self.session.process_new_packets().map_err(invalid)?;
                }
            }
        }
    }
}

impl Write for TlsStream {
    /// Encrypts as much of `buf` as the socket takes; a short count means it would block.
    /// The whole of `buf` may be accepted with some ciphertext still pending for `flush`.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut accepted = 0;
        loop {
            match self.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock && accepted > 0 => return Ok(accepted),
                Err(e) => return Err(e),
            }
            if accepted == buf.len() {
                return Ok(accepted);
            }
            // The session buffers a bounded amount of plaintext; it is empty here, so this
            // accepts at least one byte.
            accepted += self.session.writer().write(&buf[accepted..])?;
        }
    }

    /// Writes the pending ciphertext out; WouldBlock if the socket cannot take all of it.
    fn flush(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            self.session.write_tls(&mut self.sock)?;
        }
        Ok(())
    }
}

impl Source for TlsStream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.sock.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.sock.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.sock.deregister(registry)
    }
}
