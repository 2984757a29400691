"""Datagram transports (UDP and Unix datagram sockets) and create_datagram_endpoint: echo,
addresses as the protocol sees them, errors, argument checks, buffering and closing. Each test
runs on the stdlib loop and on oxio."""

import asyncio
import os
import socket
import tempfile

import pytest

from oxio import _compat


class Recorder(asyncio.DatagramProtocol):
    """Records datagrams and errors; `done` resolves at connection_lost."""

    def __init__(self, loop, echo=False):
        self.echo = echo
        self.datagrams = []
        self.errors = []
        self.events = []
        self.transport = None
        self.received = asyncio.Event()
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def datagram_received(self, data, addr):
        self.datagrams.append((data, addr))
        self.received.set()
        if self.echo and addr is not None:  # an unbound sender cannot be answered
            self.transport.sendto(data.upper(), addr)

    def error_received(self, exc):
        self.errors.append(exc)
        self.received.set()

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.done.set_result(exc)


async def next_datagram(protocol):
    await asyncio.wait_for(protocol.received.wait(), 5)
    protocol.received.clear()
    return protocol.datagrams[-1] if protocol.datagrams else None


async def close(*transports):
    protocols = [transport.get_protocol() for transport in transports]
    for transport in transports:
        transport.close()
    for protocol in protocols:
        await protocol.done


def has_ipv6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("connected", [True, False])
def test_echo(loop, run, host, connected):
    if host == "::1" and not has_ipv6():
        pytest.skip("no IPv6 loopback")

    async def main():
        server, server_proto = await loop.create_datagram_endpoint(
            lambda: Recorder(loop, echo=True), local_addr=(host, 0)
        )
        server_addr = server.get_extra_info("sockname")
        if connected:
            client, client_proto = await loop.create_datagram_endpoint(
                lambda: Recorder(loop), remote_addr=server_addr[:2]
            )
            client.sendto(b"hello")
            assert client.get_extra_info("peername") == server_addr
        else:
            client, client_proto = await loop.create_datagram_endpoint(
                lambda: Recorder(loop), local_addr=(host, 0)
            )
            client.sendto(b"hello", server_addr[:2])
            assert client.get_extra_info("peername") is None
        assert await next_datagram(client_proto) == (b"HELLO", server_addr)
        client_addr = client.get_extra_info("sockname")
        assert server_proto.datagrams == [(b"hello", client_addr)]
        assert isinstance(server, asyncio.BaseTransport)
        assert isinstance(server.get_extra_info("socket"), asyncio.trsock.TransportSocket)
        await close(server, client)
        assert client_proto.events == ["made", ("lost", None)]
        assert client.is_closing()

    run(main())


def test_existing_socket(loop, run):
    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        transport, protocol = await loop.create_datagram_endpoint(lambda: Recorder(loop), sock=sock)
        assert transport.get_extra_info("sockname") == sock.getsockname()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.sendto(b"x", sock.getsockname())
            assert await next_datagram(protocol) == (b"x", peer.getsockname())
        await close(transport)
        assert sock.fileno() == -1

    run(main())


def test_unix_datagrams_and_their_addresses(loop, run):
    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "server.sock")
            # A stale socket file from an earlier endpoint is removed, as asyncio does.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stale:
                stale.bind(path)
            server, server_proto = await loop.create_datagram_endpoint(
                lambda: Recorder(loop, echo=True), local_addr=path, family=socket.AF_UNIX
            )
            client_path = os.path.join(tmp, "client.sock")
            client, client_proto = await loop.create_datagram_endpoint(
                lambda: Recorder(loop),
                local_addr=client_path,
                remote_addr=path,
                family=socket.AF_UNIX,
            )
            client.sendto(b"named")
            assert await next_datagram(client_proto) == (b"NAMED", path)
            assert server_proto.datagrams == [(b"named", client_path)]

            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
                unbound.sendto(b"anonymous", path)
                await next_datagram(server_proto)
            assert server_proto.datagrams[-1] == (b"anonymous", None)

            name = f"\0oxio-test-{os.getpid()}"
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
                abstract.bind(name)
                abstract.sendto(b"abstract", path)
                await next_datagram(server_proto)
                assert abstract.recv(100) == b"ABSTRACT"
            assert server_proto.datagrams[-1] == (b"abstract", name.encode())
            await close(server, client)

    run(main())


def test_connection_refused_reaches_error_received(loop, run):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            gone.bind(("127.0.0.1", 0))
            addr = gone.getsockname()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), remote_addr=addr
        )
        transport.sendto(b"anyone?")
        await asyncio.wait_for(protocol.received.wait(), 5)
        assert [type(exc) for exc in protocol.errors] == [ConnectionRefusedError]
        assert not transport.is_closing()
        await close(transport)

    run(main())


def test_connected_transport_rejects_other_addresses(loop, run):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            addr = peer.getsockname()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: Recorder(loop), remote_addr=addr
            )
            with pytest.raises(ValueError, match="Invalid address"):
                transport.sendto(b"x", ("127.0.0.1", addr[1] + 1))
            transport.sendto(b"y", addr)  # its own peer is fine
            assert peer.recv(10) == b"y"
            with pytest.raises(TypeError):
                transport.sendto("not bytes")
            await close(transport)

    run(main())


def test_host_names_resolve_as_socket_sendto_does(loop, run):
    async def main():
        server, server_proto = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        port = server.get_extra_info("sockname")[1]
        client, client_proto = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), family=socket.AF_INET
        )
        client.sendto(b"by name", ("localhost", port))
        assert (await next_datagram(server_proto))[0] == b"by name"
        client.sendto(b"x", ("no-such-host.invalid", port))
        assert [type(exc) for exc in client_proto.errors] == [socket.gaierror]
        await close(server, client)

    run(main())


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({}, ValueError),  # no address and no family
        ({"local_addr": "127.0.0.1"}, TypeError),
        ({"local_addr": ("127.0.0.1", 0, 0)}, TypeError),
        ({"local_addr": ("127.0.0.1", 0), "family": socket.AF_INET6}, OSError),
        ({"local_addr": ("127.0.0.1", 0), "remote_addr": ("::1", 1)}, ValueError),
        ({"local_addr": ("127.0.0.1", 0), "reuse_address": True}, TypeError),
        ({"local_addr": ("127.0.0.1", 0), "reuse_address": False}, TypeError),
        ({"family": socket.AF_UNIX, "local_addr": ("a", 1)}, TypeError),
        ({"sock": "stream"}, ValueError),
        ({"sock": "dgram", "local_addr": ("127.0.0.1", 0)}, ValueError),
        ({"sock": "dgram", "reuse_port": True}, ValueError),
    ],
)
def test_argument_errors(loop, run, kwargs, exc):
    socks = {
        "stream": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
        "dgram": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
    }
    kwargs = dict(kwargs)
    sock = kwargs["sock"] = socks[kwargs["sock"]]() if "sock" in kwargs else None
    try:
        with pytest.raises(exc):
            run(loop.create_datagram_endpoint(asyncio.DatagramProtocol, **kwargs))
    finally:
        if sock is not None:
            sock.close()


def test_socket_options(loop, run):
    async def main():
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Recorder(loop),
            local_addr=("127.0.0.1", 0),
            reuse_port=True,
            allow_broadcast=True,
        )
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        await close(transport)

    run(main())


@pytest.fixture
def unix_pair(tmp_path):
    """A connected Unix datagram socket and its bound peer, which nobody reads, so the sender
    fills up. (A socketpair will not do: its peer name is '', which asyncio treats as
    unconnected.)"""
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(str(tmp_path / "peer.sock"))
    ours = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.bind(str(tmp_path / "ours.sock"))
    ours.connect(peer.getsockname())
    yield ours, peer
    ours.close()
    peer.close()


def drain(sock):
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recv(2000))
        except BlockingIOError:
            return datagrams


def test_buffer_accounting_flow_control_and_close_flushes(loop, run, unix_pair):
    ours, peer = unix_pair
    header = _compat.DATAGRAM_HEADER_SIZE

    async def main():
        transport, protocol = await loop.create_datagram_endpoint(lambda: Recorder(loop), sock=ours)
        transport.set_write_buffer_limits(high=2500)
        assert transport.get_write_buffer_limits() == (625, 2500)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        while transport.get_write_buffer_size() == 0:
            transport.sendto(b"d" * 1000)
        assert transport.get_write_buffer_size() == 1000 + header
        transport.sendto(b"e" * 1000)
        transport.sendto(b"g" * 1000)
        assert transport.get_write_buffer_size() == 3 * (1000 + header)
        assert protocol.events == ["made", "pause"]
        transport.close()
        assert transport.is_closing()
        received = []
        while not protocol.done.done():
            received += drain(peer)
            await asyncio.sleep(0.001)
        received += drain(peer)
        assert received[-3:] == [b"d" * 1000, b"e" * 1000, b"g" * 1000]
        assert protocol.events == ["made", "pause", "resume", ("lost", None)]

    peer.setblocking(False)
    run(main())


def test_abort_drops_the_queue(loop, run, unix_pair):
    ours, peer = unix_pair

    async def main():
        transport, protocol = await loop.create_datagram_endpoint(lambda: Recorder(loop), sock=ours)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        while transport.get_write_buffer_size() == 0:
            transport.sendto(b"d" * 1000)
        transport.abort()
        assert await protocol.done is None
        assert transport.get_protocol() is None

    run(main())


def test_empty_datagrams_follow_the_python_version(loop, run, unix_pair):
    ours, peer = unix_pair

    async def main():
        transport, protocol = await loop.create_datagram_endpoint(lambda: Recorder(loop), sock=ours)
        transport.sendto(b"")
        transport.sendto(b"end")
        expected = [b"", b"end"] if _compat.DATAGRAM_SENDS_EMPTY else [b"end"]
        assert [peer.recv(10) for _ in expected] == expected
        await close(transport)

    run(main())


def test_set_protocol_and_reader_conflicts(loop, run, unix_pair):
    ours, peer = unix_pair

    async def main():
        transport, first = await loop.create_datagram_endpoint(lambda: Recorder(loop), sock=ours)
        second = Recorder(loop)
        transport.set_protocol(second)
        assert transport.get_protocol() is second
        peer.sendto(b"to second", ours.getsockname())
        assert (await next_datagram(second))[0] == b"to second"
        assert first.datagrams == []
        with pytest.raises(RuntimeError):
            loop.add_reader(ours.fileno(), lambda: None)
        await close(transport)

    run(main())


def test_transport_is_a_datagram_transport(loop, loop_name, run, unix_pair):
    ours, _ = unix_pair

    async def main():
        transport, _ = await loop.create_datagram_endpoint(lambda: Recorder(loop), sock=ours)
        # asyncio's own class derives from asyncio.DatagramTransport only from 3.13 on.
        if loop_name == "oxio" or _compat.PY313:
            assert isinstance(transport, asyncio.DatagramTransport)
        assert isinstance(transport, asyncio.Transport)
        await close(transport)

    run(main())


def test_pause_and_resume_reading(loop, run):
    async def main():
        received = []
        got = asyncio.Event()

        class Receiver(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                received.append(data)
                got.set()

        transport, _ = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
        address = transport.get_extra_info("sockname")
        assert transport.is_reading()
        transport.pause_reading()
        assert not transport.is_reading()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"held", address)
            await asyncio.sleep(0.05)
            assert received == []
            transport.resume_reading()
            await asyncio.wait_for(got.wait(), 5)
        assert received == [b"held"]
        transport.close()
        assert not transport.is_reading()
        await asyncio.sleep(0)

    run(main())


@pytest.mark.parametrize("loop_name", ["oxio"], indirect=True)
def test_sends_queued_after_close_leave_no_writer_behind(loop, run, tmp_path):
    """A deliberate difference: asyncio keeps the writer of the closed socket and logs an
    AttributeError on every iteration after; oxio drops the queue with the socket."""

    async def main():
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(tmp_path / "rx"))
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        filler.setblocking(False)
        try:
            while True:  # fill the receiver's queue: nobody reads it
                filler.sendto(b"f" * 1024, str(tmp_path / "rx"))
        except BlockingIOError:
            pass
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=str(tmp_path / "tx"), family=socket.AF_UNIX
        )
        fd = transport.get_extra_info("socket").fileno()
        transport.close()
        transport.sendto(b"late", str(tmp_path / "rx"))  # the socket is full: queued
        assert transport.get_write_buffer_size() > 0
        await asyncio.sleep(0.01)  # connection_lost runs and the socket closes
        assert not loop._has_writer(fd)
        filler.close()
        receiver.close()

    run(main())
