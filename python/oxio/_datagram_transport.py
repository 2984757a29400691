"""`DatagramTransport`: the `asyncio.DatagramTransport` of UDP and Unix datagram sockets.

Receiving, `sendto` with its queue, flow control and the close sequence are native
(`_oxio.DatagramCore`); this class is what user code sees and may patch, and it owns the socket.
"""

import warnings
from asyncio import transports

from . import _compat
from ._oxio import DatagramCore
from ._transports import _set_result_unless_cancelled, add_socket_extra


class DatagramTransport(transports.DatagramTransport, transports.Transport):
    """Also an `asyncio.Transport`, as asyncio's own datagram transport is on every version
    (code and CPython's tests check for it); its stream methods raise NotImplementedError."""

    _sock = None  # read by __del__ even if __init__ failed early

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        super().__init__(extra)
        add_socket_extra(self._extra, sock)
        self._loop = loop
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._address = address
        self._core = core = DatagramCore(
            loop,
            self,
            sock,
            protocol,
            remote=address,
            # asyncio tests the peer name's truth: a socketpair's '' counts as unconnected.
            connected=bool(self._extra["peername"]),
            header_size=_compat.DATAGRAM_HEADER_SIZE,
            sends_empty=_compat.DATAGRAM_SENDS_EMPTY,
        )
        # NOTE: sendto() is the one method called per datagram; binding the native method on the
        # instance skips a Python frame per call. Code may still reassign it.
        self.sendto = core.sendto
        loop._transports[self._sock_fd] = self
        loop.call_soon(protocol.connection_made, self)
        # Receiving starts only once connection_made() has run.
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

    def sendto(self, data, addr=None):
        self._core.sendto(data, addr)

    def close(self):
        self._core.close()

    def abort(self):
        self._core.abort()

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

    def _connection_lost_done(self):
        """Called by the core after protocol.connection_lost(): release the socket."""
        self._sock.close()
        self._sock = None
        self._loop = None
