"""`SocketTransport`: the `asyncio.Transport` of TCP and Unix stream sockets.

The byte paths, flow control and close sequence are native (`_oxio.StreamCore`); this class is
what user code sees and may patch, and it owns the socket object.
"""

import socket
import warnings
from asyncio import constants, transports, trsock

from . import _compat
from ._oxio import StreamCore


class SocketTransport(transports._FlowControlMixin, transports.Transport):
    """A `_FlowControlMixin` like asyncio's socket transports, which `loop.sendfile()`'s
    fallback requires; the flow control itself is native."""

    _sock = None  # read by __del__ even if __init__ failed early
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _start_tls_compatible = True

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        # The mixin's own __init__ would set up a second, Python-side flow control.
        transports.Transport.__init__(self, extra)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._loop = loop
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._server = server
        self._core = core = StreamCore(loop, self, self._sock_fd, protocol)
        # NOTE: write() is the one transport method called per message; binding the native
        # method on the instance skips a Python frame per call. Code may still reassign it.
        self.write = core.write
        if server is not None:
            _compat.server_attach(server, self)
        loop._transports[self._sock_fd] = self
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small writes leave at once, as asyncio sets it (Nagle off).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop.call_soon(protocol.connection_made, self)
        # Reading starts only once connection_made() has run.
        loop.call_soon(core._start_reading, self)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        state = "closed" if self._sock is None else "closing" if self.is_closing() else "open"
        return f"<{type(self).__name__} fd={self._sock_fd} {state}>"

    def __del__(self, _warn=warnings.warn):
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()

    def write(self, data):
        self._core.write(data)

    def writelines(self, list_of_data):
        self._core.writelines(list_of_data)

    def write_eof(self):
        self._core.write_eof()

    def can_write_eof(self):
        return True

    def close(self):
        self._core.close()

    def abort(self):
        self._core.abort()

    def _force_close(self, exc):
        """Ends the connection now with `connection_lost(exc)` (a TLS layer's failures)."""
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

    def set_protocol(self, protocol):
        self._core.set_protocol(protocol)

    def get_protocol(self):
        return self._core.get_protocol()

    @property
    def _protocol_paused(self):
        return self._core._protocol_paused()

    def _make_empty_waiter(self):
        """A future done once the write queue is empty (for sendfile)."""
        return self._core._make_empty_waiter()

    def _reset_empty_waiter(self):
        self._core._reset_empty_waiter()

    def _connection_lost_done(self):
        """Called by the core after protocol.connection_lost(): release the socket."""
        self._sock.close()
        self._sock = None
        self._loop = None
        server = self._server
        if server is not None:
            _compat.server_detach(server, self)
            self._server = None


def _set_result_unless_cancelled(fut, result):
    if not fut.cancelled():
        fut.set_result(result)
