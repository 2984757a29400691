"""What the Python halves of oxio's transports share. Each holds a native core (`self._core`,
from `_oxio`) that keeps the transport's state; these mixins forward asyncio's transport
methods to it, and `SocketOwner` owns the socket object of socket-based transports.
"""

import warnings
from asyncio import trsock


class CoreTransport:
    """Methods every asyncio transport has."""

    def close(self):
        self._core.close()

    def is_closing(self):
        return self._core.is_closing()

    def set_protocol(self, protocol):
        self._core.set_protocol(protocol)

    def get_protocol(self):
        return self._core.get_protocol()


class CoreReading:
    """`asyncio.ReadTransport`'s flow control."""

    def is_reading(self):
        return self._core.is_reading()

    def pause_reading(self):
        self._core.pause_reading()

    def resume_reading(self):
        self._core.resume_reading()


class CoreWriting:
    """`asyncio.WriteTransport`'s buffer and flow control, and abort()."""

    def abort(self):
        self._core.abort()

    def set_write_buffer_limits(self, high=None, low=None):
        self._core.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self):
        return self._core.get_write_buffer_limits()

    def get_write_buffer_size(self):
        return self._core.get_write_buffer_size()


class SocketOwner:
    """A transport that owns a socket object until its protocol's connection_lost() ran."""

    _sock = None  # read by __del__ even if __init__ failed early

    def _own_socket(self, loop, sock):
        add_socket_extra(self._extra, sock)
        self._loop = loop
        self._sock = sock
        self._sock_fd = sock.fileno()

    def __repr__(self):
        state = "closed" if self._sock is None else "closing" if self.is_closing() else "open"
        return f"<{type(self).__name__} fd={self._sock_fd} {state}>"

    def __del__(self, _warn=warnings.warn):
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()

    def _connection_lost_done(self):
        """Called by the core after protocol.connection_lost(): release the socket."""
        self._sock.close()
        self._sock = None
        self._loop = None


def add_socket_extra(extra, sock):
    """The `socket`, `sockname` and `peername` entries of `get_extra_info()`, as asyncio's."""
    extra["socket"] = trsock.TransportSocket(sock)
    try:
        extra["sockname"] = sock.getsockname()
    except OSError:
        extra["sockname"] = None
    if "peername" not in extra:
        try:
            extra["peername"] = sock.getpeername()
        except OSError:
            extra["peername"] = None


def set_result_unless_cancelled(fut, result):
    if not fut.cancelled():
        fut.set_result(result)
