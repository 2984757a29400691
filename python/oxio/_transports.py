"""`SocketTransport`: the `asyncio.Transport` of TCP and Unix stream sockets.

The byte paths, flow control and close sequence are native (`_oxio.StreamCore`); this class is
what user code sees and may patch, and it owns the socket object.
"""

import socket
from asyncio import constants, transports

from . import _compat
from ._core_transport import (
    CoreReading,
    CoreTransport,
    CoreWriting,
    SocketOwner,
    set_result_unless_cancelled,
)
from ._oxio import StreamCore


class SocketTransport(
    SocketOwner,
    CoreTransport,
    CoreReading,
    CoreWriting,
    transports._FlowControlMixin,
    transports.Transport,
):
    """A `_FlowControlMixin` like asyncio's socket transports, which `loop.sendfile()`'s
    fallback requires; the flow control itself is native."""

    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _start_tls_compatible = True

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        # The mixin's own __init__ would set up a second, Python-side flow control.
        transports.Transport.__init__(self, extra)
        self._own_socket(loop, sock)
        self._server = server
        self._core = core = StreamCore(loop, self, self._sock_fd, protocol)
        # NOTE: write() is called per message, and is_closing() per response by aiohttp (a
        # profile of the demo's app counted one each per request); binding the native methods
        # on the instance skips a Python frame per call. Code may still reassign them.
        self.write = core.write
        self.is_closing = core.is_closing
        if server is not None:
            _compat.server_attach(server, self)
        loop._transports[self._sock_fd] = self
        if (
            sock.family in (socket.AF_INET, socket.AF_INET6)
            and sock.type == socket.SOCK_STREAM
            and sock.proto == socket.IPPROTO_TCP
        ):
            # Small writes leave at once (Nagle off), on the sockets asyncio sets it for.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop.call_soon(protocol.connection_made, self)
        # Reading starts only once connection_made() has run.
        loop.call_soon(core._start_reading, self)
        if waiter is not None:
            loop.call_soon(set_result_unless_cancelled, waiter, None)

    def write(self, data):
        self._core.write(data)

    def writelines(self, list_of_data):
        self._core.writelines(list_of_data)

    def write_eof(self):
        self._core.write_eof()

    def can_write_eof(self):
        return True

    def _force_close(self, exc):
        """Ends the connection now with `connection_lost(exc)` (a TLS layer's failures)."""
        self._core._force_close(exc)

    @property
    def _protocol_paused(self):
        return self._core._protocol_paused()

    def _make_empty_waiter(self):
        """A future done once the write queue is empty (for sendfile)."""
        return self._core._make_empty_waiter()

    def _reset_empty_waiter(self):
        self._core._reset_empty_waiter()

    def _connection_lost_done(self):
        super()._connection_lost_done()
        server = self._server
        if server is not None:
            _compat.server_detach(server, self)
            self._server = None
