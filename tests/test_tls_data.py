"""TLS on both loops: data flow and flow control in both directions, closing (close_notify
either way, unclean shutdown), and the other entry points (Unix sockets,
connect_accepted_socket). Certificates come from the `certs` fixture (tests/conftest.py).
"""

import asyncio
import contextlib
import hashlib
import random
import socket
import ssl
import time

import pytest
from tls_peers import HOST, ThreadServer, echo_upper, settle, tls_server

# -- data flow, flow control and closing --------------------------------------------------


def test_large_transfer_both_ways_with_flow_control(run, loop, certs):
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB

    def serve_slowly(tls):
        time.sleep(0.5)  # the client's buffers fill up meanwhile
        received = 0
        while received < len(payload):
            data = tls.recv(65536)
            received += len(data)
            tls.sendall(data.upper())
        tls.unwrap()

    server = ThreadServer(certs.server_context(), serve_slowly)

    class Sender(asyncio.Protocol):
        """Writes 64 KiB at a time for as long as the transport lets it."""

        def __init__(self):
            self.events = []
            self.sent = 0
            self.paused = False
            self.received = bytearray()
            self.lost = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport
            self.produce()

        def produce(self):
            while not self.paused and self.sent < len(payload):
                self.transport.write(payload[self.sent : self.sent + 65536])
                self.sent += 65536

        def pause_writing(self):
            self.paused = True
            self.events.append(("pause", self.transport.get_write_buffer_size()))

        def resume_writing(self):
            self.paused = False
            self.events.append(("resume", self.transport.get_write_buffer_size()))
            self.produce()

        def data_received(self, data):
            self.received += data

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        # Small kernel buffers, so that the TLS layer's own buffer has to absorb the backlog.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        sock.connect((HOST, server.port))
        transport, sender = await loop.create_connection(
            Sender, sock=sock, ssl=certs.client_context(), server_hostname="localhost"
        )
        assert transport.get_write_buffer_limits() == (128 * 1024, 512 * 1024)
        assert await asyncio.wait_for(sender.lost, 30) is None  # the peer's close_notify
        return sender

    try:
        sender = run(main())
    finally:
        server.join()
    assert sender.received == payload.upper()
    # The app was paused once 512 KiB waited to be sent, and resumed at 128 KiB.
    assert [kind for kind, _ in sender.events[:2]] == ["pause", "resume"]
    assert sender.events[0][1] >= 512 * 1024
    assert sender.events[1][1] <= 128 * 1024


def test_pause_reading_stops_the_plain_transport(run, loop, certs):
    chunk = b"x" * 65536
    total = 4 * 1024 * 1024

    class SlowReader(asyncio.Protocol):
        def __init__(self):
            self.received = 0
            self.done = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            # Paused after the first data, not in connection_made(): asyncio would then also
            # hold back the client's last TLS 1.3 handshake message, and the server would hang.
            if not self.received:
                self.transport.pause_reading()
            self.received += len(data)
            if self.received == total:
                self.done.set_result(None)

    async def flood(reader, writer):
        for _ in range(total // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        await reader.read()
        writer.close()

    async def main():
        async with tls_server(flood, certs.server_context()) as port:
            transport, reader = await loop.create_connection(
                SlowReader, HOST, port, ssl=certs.client_context(), server_hostname="localhost"
            )
            await asyncio.sleep(0.3)
            assert 0 < reader.received < total and not transport.is_reading()
            # Ciphertext piles up below the TLS layer only up to its read high-water mark.
            buffered = transport.get_read_buffer_size()
            # (The last read of the plain transport may overshoot the mark by one read.)
            assert 0 < buffered <= 2 * 256 * 1024
            transport.resume_reading()
            await asyncio.wait_for(reader.done, 30)
            transport.close()
            return reader.received

    assert run(main()) == total


def test_buffered_protocol_app(run, loop, certs):
    payload = b"0123456789abcdef" * 65536  # 1 MiB

    class Receiver(asyncio.BufferedProtocol):
        def __init__(self):
            self.buffer = bytearray(10000)
            self.received = bytearray()
            self.done = loop.create_future()

        def get_buffer(self, sizehint):
            return self.buffer

        def buffer_updated(self, nbytes):
            self.received += self.buffer[:nbytes]

        def eof_received(self):
            self.done.set_result(None)

    async def send_and_close(reader, writer):
        writer.write(payload)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        async with tls_server(send_and_close, certs.server_context()) as port:
            transport, receiver = await loop.create_connection(
                Receiver, HOST, port, ssl=certs.client_context(), server_hostname="localhost"
            )
            await asyncio.wait_for(receiver.done, 30)
            transport.close()
            return receiver.received

    assert run(main()) == payload


def _send_records_chopped(port, context, pieces, seed):
    """A blocking TLS client that encrypts `pieces` as records of their sizes, sends the
    ciphertext in pieces of unrelated sizes (records split across reads, several records in
    one read), and returns the server's answer: the SHA-256 of what it received."""
    rng = random.Random(seed)
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")

        def receive():
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("server closed")
            incoming.write(data)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                receive()
        sock.sendall(outgoing.read())
        for piece in pieces:
            tls.write(piece)
        stream = outgoing.read()
        at = 0
        while at < len(stream):
            size = rng.choice((1, 7, 300, 5000, 16406, 16500, 40000, 100000))
            sock.sendall(stream[at : at + size])
            at += size
            time.sleep(0.0005)
        answer = b""
        while len(answer) < 32:
            try:
                answer += tls.read(32 - len(answer))
            except ssl.SSLWantReadError:
                receive()
        return answer


@pytest.mark.parametrize("app", ["protocol", "buffered"])
def test_records_split_and_joined_across_reads(run, loop, certs, app):
    """Whatever way the ciphertext is cut into reads, the app gets every byte once, in order:
    records split across reads, several in one read, records of 1 byte to 16 KiB."""
    rng = random.Random(7)
    sizes = [1, 100, 16384, 16383, 16385, 40000, 3, 70000, 5, 16384 * 3, 1000, 2]
    pieces = [rng.randbytes(size) for size in sizes * 3]
    total = sum(sizes) * 3

    class Digest(asyncio.BufferedProtocol):
        """Hashes what arrives through a small buffer (a full buffer is the `call_soon` path)."""

        def connection_made(self, transport):
            self.transport = transport
            # A memoryview: asyncio slices what get_buffer() returns, and a bytearray's slice
            # is a copy that its reads would fill in vain.
            self.buffer = memoryview(bytearray(1000))
            self.hash = hashlib.sha256()
            self.received = 0

        def get_buffer(self, sizehint):
            return self.buffer

        def buffer_updated(self, nbytes):
            self.data_received(self.buffer[:nbytes])

        def data_received(self, data):
            self.hash.update(data)
            self.received += len(data)
            if self.received == total:
                self.transport.write(self.hash.digest())

    factory = Digest if app == "buffered" else type("Plain", (asyncio.Protocol,), dict(
        connection_made=Digest.connection_made, data_received=Digest.data_received
    ))  # fmt: skip

    async def main():
        server = await loop.create_server(factory, HOST, 0, ssl=certs.server_context())
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(
                    _send_records_chopped, port, certs.client_context(), pieces, seed=3
                ),
                30,
            )
        finally:
            server.close()
            await server.wait_closed()
            await settle()

    assert run(main()) == hashlib.sha256(b"".join(pieces)).digest()


def test_close_notify_from_peer(run, loop, certs):
    """The peer's close_notify reaches the app as end of stream, and ours answers it."""

    def serve(tls):
        tls.sendall(b"bye")
        tls.unwrap()  # sends close_notify and waits for the peer's

    server = ThreadServer(certs.server_context(), serve)
    events = []

    class Client(asyncio.Protocol):
        def __init__(self):
            self.lost = loop.create_future()

        def data_received(self, data):
            events.append(data)

        def eof_received(self):
            events.append("eof")

        def connection_lost(self, exc):
            events.append(exc)
            self.lost.set_result(None)

    async def main():
        transport, client = await loop.create_connection(
            Client, HOST, server.port, ssl=certs.client_context(), server_hostname="localhost"
        )
        await asyncio.wait_for(client.lost, 10)

    try:
        run(main())
    finally:
        server.join()  # unwrap() returned: our close_notify arrived
    assert events == [b"bye", "eof", None]


def test_close_sends_close_notify(run, loop, certs):
    received = []

    def serve(tls):
        while data := tls.recv(100):
            received.append(data)
        received.append("close_notify")  # recv() returns b"" only on a clean TLS close
        tls.unwrap()

    server = ThreadServer(certs.server_context(), serve)

    async def main():
        reader, writer = await asyncio.open_connection(
            HOST, server.port, ssl=certs.client_context(), server_hostname="localhost"
        )
        writer.write(b"last words")
        writer.close()
        assert writer.is_closing()
        await writer.wait_closed()

    try:
        run(main())
    finally:
        server.join()
    assert b"".join(x for x in received if isinstance(x, bytes)) == b"last words"
    assert received[-1] == "close_notify"


def test_unclean_shutdown_ends_the_stream(run, loop, certs):
    """A peer that closes TCP without close_notify: end of stream, as in asyncio."""

    def serve(tls):
        tls.sendall(b"partial")
        tls.unwrap  # noqa: B018 -- deliberately not called: the socket closes without it

    server = ThreadServer(certs.server_context(), serve)

    async def main():
        reader, writer = await asyncio.open_connection(
            HOST, server.port, ssl=certs.client_context(), server_hostname="localhost"
        )
        data = await reader.read()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        return data

    try:
        assert run(main()) == b"partial"
    finally:
        server.join()


def test_writes_after_close_are_dropped(run, loop, certs):
    async def main():
        async with tls_server(echo_upper, certs.server_context()) as port:
            transport, _ = await loop.create_connection(
                asyncio.Protocol,
                HOST,
                port,
                ssl=certs.client_context(),
                server_hostname="localhost",
            )
            assert not transport.can_write_eof()
            with pytest.raises(NotImplementedError):
                transport.write_eof()
            with pytest.raises(TypeError, match="data: expecting a bytes-like instance"):
                transport.write("text")
            transport.close()
            transport.write(b"dropped")

    run(main())


# -- other entry points -------------------------------------------------------------------


def test_unix_sockets(run, certs, tmp_path):
    path = str(tmp_path / "tls.sock")

    async def main():
        server = await asyncio.start_unix_server(echo_upper, path, ssl=certs.server_context())
        try:
            reader, writer = await asyncio.open_unix_connection(
                path, ssl=certs.client_context(), server_hostname="localhost"
            )
            writer.write(b"unix")
            answer = await reader.readexactly(4)
            writer.close()
            await writer.wait_closed()
            return answer
        finally:
            server.close()
            await server.wait_closed()

    assert run(main()) == b"UNIX"


def test_connect_accepted_socket(run, loop, certs):
    async def main():
        listener = socket.create_server((HOST, 0))
        port = listener.getsockname()[1]
        listener.setblocking(False)
        with listener:
            connecting = asyncio.ensure_future(
                asyncio.open_connection(
                    HOST, port, ssl=certs.client_context(), server_hostname="localhost"
                )
            )
            conn, _ = await loop.sock_accept(listener)
            transport, _ = await loop.connect_accepted_socket(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
                conn,
                ssl=certs.server_context(),
            )
            reader, writer = await connecting
            peer_tls = transport.get_extra_info("ssl_object")
            writer.close()
            await writer.wait_closed()
            transport.close()
            return peer_tls

    assert run(main()).server_side
