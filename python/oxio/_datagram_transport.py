"""`DatagramTransport`: the `asyncio.DatagramTransport` of UDP and Unix datagram sockets.

Receiving, `sendto` with its queue, flow control and the close sequence are native
(`_oxio.DatagramCore`); this class is what user code sees and may patch, and it owns the socket.
"""

from asyncio import transports

from . import _compat
from ._core_transport import (
    CoreReading,
    CoreTransport,
    CoreWriting,
    SocketOwner,
    set_result_unless_cancelled,
)
from ._oxio import DatagramCore


class DatagramTransport(
    SocketOwner,
    CoreTransport,
    CoreReading,
    CoreWriting,
    transports.DatagramTransport,
    transports.Transport,
):
    """Also an `asyncio.Transport`, as asyncio's own datagram transport is on every version
    (code and CPython's tests check for it); its stream methods raise NotImplementedError."""

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        super().__init__(extra)
        self._own_socket(loop, sock)
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
            loop.call_soon(set_result_unless_cancelled, waiter, None)

    def sendto(self, data, addr=None):
        self._core.sendto(data, addr)
