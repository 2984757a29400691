"""Datagram endpoints: `create_datagram_endpoint` for UDP and Unix datagram sockets, producing
`DatagramTransport`s.
"""

import socket
from asyncio.log import logger

from ._datagram_transport import DatagramTransport
from ._network import _remove_stale_socket


class DatagramMixin:
    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    async def create_datagram_endpoint(
        self,
        protocol_factory,
        local_addr=None,
        remote_addr=None,
        *,
        family=0,
        proto=0,
        flags=0,
        reuse_port=None,
        allow_broadcast=None,
        sock=None,
    ):
        if sock is not None:
            _check_given_socket(
                sock,
                local_addr=local_addr,
                remote_addr=remote_addr,
                family=family,
                proto=proto,
                flags=flags,
                reuse_port=reuse_port,
                allow_broadcast=allow_broadcast,
            )
            sock.setblocking(False)
            remote = None
        else:
            candidates = await self._datagram_candidates(
                local_addr, remote_addr, family, proto, flags
            )
            sock, remote = await self._open_datagram_socket(
                candidates, bool(local_addr), bool(remote_addr), reuse_port, allow_broadcast
            )

        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_datagram_transport(sock, protocol, remote, waiter)
        if self.get_debug():
            if local_addr:
                logger.info(
                    "Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                    local_addr,
                    remote_addr,
                    transport,
                    protocol,
                )
            else:
                logger.debug(
                    "Datagram endpoint remote_addr=%r created: (%r, %r)",
                    remote_addr,
                    transport,
                    protocol,
                )
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    async def _datagram_candidates(self, local_addr, remote_addr, family, proto, flags):
        """The `((family, proto), (local, remote))` pairs to try, in asyncio's order."""
        if not (local_addr or remote_addr):
            if family == 0:
                raise ValueError("unexpected address family")
            return [((family, proto), (None, None))]
        if family == socket.AF_UNIX:
            for addr in (local_addr, remote_addr):
                if addr is not None and not isinstance(addr, str):
                    raise TypeError("string is expected")
            if local_addr and local_addr[0] not in (0, "\x00"):  # not an abstract name
                _remove_stale_socket(local_addr)
            return [((family, proto), (local_addr, remote_addr))]

        # Both ends need an address of the same (family, proto); the first one resolved wins.
        by_family = {}
        for index, addr in ((0, local_addr), (1, remote_addr)):
            if addr is None:
                continue
            if not (isinstance(addr, tuple) and len(addr) == 2):
                raise TypeError("2-tuple is expected")
            infos = await self._resolve(
                addr, family=family, type=socket.SOCK_DGRAM, proto=proto, flags=flags
            )
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            for info_family, _, info_proto, _, address in infos:
                pair = by_family.setdefault((info_family, info_proto), [None, None])
                pair[index] = address
        candidates = [
            (key, pair)
            for key, pair in by_family.items()
            if not ((local_addr and pair[0] is None) or (remote_addr and pair[1] is None))
        ]
        if not candidates:
            raise ValueError("can not get address information")
        return candidates

    async def _open_datagram_socket(self, candidates, bind, connect, reuse_port, allow_broadcast):
        """The first candidate socket that binds and connects, and the remote address the
        transport must send to; the first error if none does."""
        exceptions = []
        for (family, proto), (local_address, remote_address) in candidates:
            sock = None
            try:
                sock = socket.socket(family=family, type=socket.SOCK_DGRAM, proto=proto)
                if reuse_port:
                    _set_reuse_port(sock)
                if allow_broadcast:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                sock.setblocking(False)
                if bind:
                    sock.bind(local_address)
                if connect and not allow_broadcast:
                    # A broadcast endpoint stays unconnected and sends to the address instead.
                    await self.sock_connect(sock, remote_address)
                return sock, remote_address if connect else None
            except OSError as exc:
                if sock is not None:
                    sock.close()
                exceptions.append(exc)
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
        raise exceptions[0]


def _check_given_socket(sock, **modifiers):
    if sock.type != socket.SOCK_DGRAM:
        raise ValueError(f"A UDP Socket was expected, got {sock!r}")
    problems = ", ".join(f"{name}={value}" for name, value in modifiers.items() if value)
    if problems:
        raise ValueError(
            f"socket modifier keyword arguments can not be used when sock is specified. "
            f"({problems})"
        )


def _set_reuse_port(sock):
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        ) from None
