"""TLS: `SSLTransport`, the `asyncio.Transport` an application sees over TLS, and the loop's
`start_tls` and `_make_ssl_transport`.

The TLS state machine, its buffers and flow control are native (`_oxio.TlsProtocol`, asyncio's
`SSLProtocol` rebuilt); it is the protocol of a plain `SocketTransport` below and the core of
the `SSLTransport` above. OpenSSL does the cryptography under the user's `ssl.SSLContext`.
"""

import ssl
import warnings
from asyncio import constants, transports

from ._oxio import TlsProtocol


def _default_client_context(server_side, server_hostname):
    """The context of `ssl=True`: verified, and checking the host name unless SNI is off."""
    if server_side:
        raise ValueError("Server side SSL needs a valid SSLContext")
    context = ssl.create_default_context()
    if not server_hostname:
        context.check_hostname = False
    return context


class SSLTransport(transports._FlowControlMixin, transports.Transport):
    """A `_FlowControlMixin`, like asyncio's, for `loop.sendfile()`'s fallback; the flow
    control itself is native. The name says "SSL", as asyncio's `_SSLProtocolTransport` does:
    code (CPython's own tests among it) recognises TLS transports by it."""

    _core = None  # read by __del__ even if __init__ failed early
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(
        self,
        loop,
        protocol,
        sslcontext,
        waiter,
        server_side=False,
        server_hostname=None,
        call_connection_made=True,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        # The mixin's own __init__ would set up a second, Python-side flow control.
        transports.Transport.__init__(self)
        if not sslcontext:
            sslcontext = _default_client_context(server_side, server_hostname)
        self._loop = loop
        self._core = core = TlsProtocol(
            loop,
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            call_connection_made,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
        # NOTE: as on SocketTransport, the per-message method is the native one.
        self.write = core.write

    def __repr__(self):
        state = "closing" if self.is_closing() else "open"
        return f"<{type(self).__name__} {state}>"

    def __del__(self, _warn=warnings.warn):
        if self._core is not None and not self._core.is_closing():
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)

    def get_extra_info(self, name, default=None):
        return self._core.get_extra_info(name, default)

    def write(self, data):
        self._core.write(data)

    def writelines(self, list_of_data):
        self._core.writelines(list_of_data)

    def write_eof(self):
        raise NotImplementedError  # TLS has no half-close; asyncio refuses it too

    def can_write_eof(self):
        return False

    def close(self):
        self._core.close()

    def abort(self):
        self._core.abort()

    def _force_close(self, exc):
        self._core._force_close(exc)

    def is_closing(self):
        return self._core.is_closing()

    def is_reading(self):
        return self._core.is_reading()

    def pause_reading(self):
        self._core.pause_reading()

    def resume_reading(self):
        self._core.resume_reading()

    def set_write_buffer_limits(self, high=None, low=None):
        self._core.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self):
        return self._core.get_write_buffer_limits()

    def get_write_buffer_size(self):
        return self._core.get_write_buffer_size()

    def set_read_buffer_limits(self, high=None, low=None):
        self._core.set_read_buffer_limits(high, low)

    def get_read_buffer_limits(self):
        return self._core.get_read_buffer_limits()

    def get_read_buffer_size(self):
        return self._core.get_read_buffer_size()

    def set_protocol(self, protocol):
        self._core.set_protocol(protocol)

    def get_protocol(self):
        return self._core.get_protocol()

    @property
    def _protocol_paused(self):
        return self._core._protocol_paused()

    @property
    def _ssl_protocol(self):
        """The TLS layer, as asyncio's TLS transports name it: code (CPython's tests among it)
        reaches through it for `pause_writing()`/`resume_writing()`, the plain transport's flow
        control as the TLS layer sees it."""
        return self._core

    def _test__append_write_backlog(self, data):
        self._core._test__append_write_backlog(data)

    def _connection_lost_done(self):
        """Called by the core after protocol.connection_lost(); the plain transport below
        owns the socket, so there is nothing left to release here."""


class TlsMixin:
    def _make_ssl_transport(
        self,
        rawsock,
        protocol,
        sslcontext,
        waiter=None,
        *,
        server_side=False,
        server_hostname=None,
        extra=None,
        server=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """A `SSLTransport` for `protocol` over a new plain transport of `rawsock`."""
        app_transport = SSLTransport(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        self._make_socket_transport(rawsock, app_transport._core, extra=extra, server=server)
        return app_transport

    async def start_tls(
        self,
        transport,
        protocol,
        sslcontext,
        *,
        server_side=False,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(
                f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
            )
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        waiter = self.create_future()
        app_transport = SSLTransport(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            call_connection_made=False,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        tls = app_transport._core
        # Stop reading first, so no bytes reach the TLS layer before its connection_made().
        transport.pause_reading()
        transport.set_protocol(tls)
        connection_made = self.call_soon(tls.connection_made, transport)
        resume_reading = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            connection_made.cancel()
            resume_reading.cancel()
            raise
        return app_transport
