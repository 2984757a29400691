"""Stream transports (TCP and Unix) over real sockets: the asyncio.Transport API, flow control,
ordering on close, half-close and errors. Each test runs on the stdlib loop and on oxio."""

import array
import asyncio
import random
import socket

import pytest


class Recorder(asyncio.Protocol):
    """Records every callback in order; `done` resolves at connection_lost."""

    def __init__(self, loop, keep_open=False):
        self.events = []
        self.data = bytearray()
        self.keep_open = keep_open
        self.transport = None
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.data += data
        if not self.events or self.events[-1] != "data":
            self.events.append("data")

    def eof_received(self):
        self.events.append("eof")
        return self.keep_open

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))
        self.done.set_result(exc)


async def connected_pair(loop, keep_open=False):
    """A transport over one end of a socketpair, and the raw peer socket."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    transport, protocol = await loop.connect_accepted_socket(
        lambda: Recorder(loop, keep_open), ours
    )
    return transport, protocol, peer


async def deliver(loop, protocol_factory, payload):
    """Sends `payload` to a transport over one end of a socketpair, then closes the other end;
    returns the protocol once its connection is lost, with the exception it was lost with."""
    ours, peer = socket.socketpair()
    with peer:
        _, protocol = await loop.connect_accepted_socket(protocol_factory, ours)
        peer.sendall(payload)
    return protocol, await protocol.done


async def read_until_eof(loop, sock):
    chunks = []
    while chunk := await loop.sock_recv(sock, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_transport_is_an_asyncio_transport_with_reassignable_write(loop, run):
    async def main():
        transport, protocol, peer = await connected_pair(loop)
        assert isinstance(transport, asyncio.Transport)
        assert isinstance(transport, asyncio.ReadTransport)
        assert isinstance(transport, asyncio.WriteTransport)
        assert transport.get_protocol() is protocol
        sock = transport.get_extra_info("socket")
        assert sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM
        assert sock.fileno() >= 0
        assert transport.get_extra_info("peername") == ""  # an unnamed socketpair end
        assert transport.get_extra_info("missing", "default") == "default"
        assert transport.can_write_eof() is True
        assert transport.is_reading()
        written = []
        transport.write = written.append  # frameworks' tests do this
        transport.write(b"captured")
        assert written == [b"captured"]
        transport.close()
        await protocol.done
        peer.close()

    run(main())


def test_echo_both_ways_and_close_order(loop, run):
    async def main():
        transport, protocol, peer = await connected_pair(loop)
        await asyncio.sleep(0)
        await loop.sock_sendall(peer, b"ping")
        while bytes(protocol.data) != b"ping":
            await asyncio.sleep(0.001)
        transport.write(b"pong")
        transport.writelines([b"-", bytearray(b"a"), memoryview(b"b")])
        assert await loop.sock_recv(peer, 100) == b"pong-ab"
        peer.close()
        assert await protocol.done is None
        assert protocol.events == ["made", "data", "eof", ("lost", None)]

    run(main())


def test_bytes_written_before_close_reach_the_peer_before_fin(loop, run):
    payload = bytes(range(256)) * 8192  # 2 MiB: far more than the socket buffer takes

    async def main():
        transport, protocol, peer = await connected_pair(loop)
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        transport.close()
        assert transport.is_closing()
        # asyncio still queues writes made after close() until the queue drains.
        transport.write(b"tail")
        received = await read_until_eof(loop, peer)
        assert received == payload + b"tail"
        assert await protocol.done is None
        peer.close()

    run(main())


def test_abort_drops_queued_bytes(loop, run):
    async def main():
        transport, protocol, peer = await connected_pair(loop)
        transport.write(b"x" * (4 * 1024 * 1024))
        assert transport.get_write_buffer_size() > 0
        transport.abort()
        assert await protocol.done is None
        assert transport.get_write_buffer_size() == 0
        received = await read_until_eof(loop, peer)
        assert len(received) < 4 * 1024 * 1024
        peer.close()

    run(main())


def test_flow_control_pauses_at_high_and_resumes_at_low_water(loop, run):
    async def main():
        transport, protocol, peer = await connected_pair(loop)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        transport.write(b"x" * (1024 * 1024))
        assert protocol.events[-1] == "pause"
        total = 0
        while "resume" not in protocol.events:
            total += len(await loop.sock_recv(peer, 65536))
        assert transport.get_write_buffer_size() <= 16 * 1024
        transport.close()
        total += len(await read_until_eof(loop, peer))
        assert total == 1024 * 1024
        await protocol.done
        peer.close()

    run(main())


def test_set_write_buffer_limits(loop, run):
    async def main():
        transport, protocol, peer = await connected_pair(loop)
        transport.set_write_buffer_limits(high=100)
        assert transport.get_write_buffer_limits() == (25, 100)
        transport.set_write_buffer_limits(low=10)
        assert transport.get_write_buffer_limits() == (10, 40)
        with pytest.raises(ValueError):
            transport.set_write_buffer_limits(high=1, low=2)
        transport.close()
        await protocol.done
        peer.close()

    run(main())


def test_write_type_errors_and_write_after_eof(loop, run):
    async def main():
        transport, protocol, peer = await connected_pair(loop)
        with pytest.raises(TypeError):
            transport.write("text")
        transport.write(b"")  # a no-op
        transport.write_eof()
        with pytest.raises(RuntimeError):
            transport.write(b"late")
        assert await read_until_eof(loop, peer) == b""
        transport.close()
        await protocol.done
        peer.close()

    run(main())


def test_write_takes_data_by_position_or_keyword_and_nothing_else(loop, run):
    async def main():
        transport, protocol, peer = await connected_pair(loop)
        for bad_call in (
            lambda: transport.write(),
            lambda: transport.write(b"a", b"b"),
            lambda: transport.write(b"a", data=b"b"),
            lambda: transport.write(payload=b"a"),
        ):
            with pytest.raises(TypeError):
                bad_call()
        transport.write(data=b"by keyword, ")
        transport.write(b"by position")
        transport.write_eof()
        assert await read_until_eof(loop, peer) == b"by keyword, by position"
        transport.close()
        await protocol.done
        peer.close()

    run(main())


def test_half_close_keep_open_lets_the_protocol_still_write(loop, run):
    async def main():
        transport, protocol, peer = await connected_pair(loop, keep_open=True)
        await asyncio.sleep(0)
        peer.shutdown(socket.SHUT_WR)
        while "eof" not in protocol.events:
            await asyncio.sleep(0.001)
        assert not transport.is_closing()
        transport.write(b"after eof")
        transport.close()
        assert await read_until_eof(loop, peer) == b"after eof"
        await protocol.done
        assert protocol.events == ["made", "eof", ("lost", None)]
        peer.close()

    run(main())


def test_write_eof_half_closes_and_reading_goes_on(loop, run):
    async def main():
        transport, protocol, peer = await connected_pair(loop)
        transport.write(b"request")
        transport.write_eof()
        assert await read_until_eof(loop, peer) == b"request"
        await loop.sock_sendall(peer, b"response")
        peer.close()
        await protocol.done
        assert bytes(protocol.data) == b"response"

    run(main())


def test_reset_by_peer_reaches_connection_lost(loop, run):
    async def main():
        transport, protocol, peer = await connected_pair(loop)
        await asyncio.sleep(0)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        # Unread data makes close() send RST on a socketpair, as on TCP.
        await loop.sock_sendall(peer, b"x")
        peer.close()
        exc = await protocol.done
        # Data may or may not be read before the reset; the connection ends either way.
        assert exc is None or isinstance(exc, ConnectionError)

    run(main())


def test_write_to_a_closed_peer_is_a_connection_error(loop, run):
    async def main():
        transport, protocol, peer = await connected_pair(loop)
        await asyncio.sleep(0)
        peer.close()
        while not transport.is_closing():
            transport.write(b"x" * 65536)
            await asyncio.sleep(0.001)
        exc = await protocol.done
        assert exc is None or isinstance(exc, (BrokenPipeError, ConnectionResetError))
        for _ in range(3):
            transport.write(b"dropped after connection_lost")

    run(main())


def test_pause_and_resume_reading(loop, run):
    async def main():
        transport, protocol, peer = await connected_pair(loop)
        await asyncio.sleep(0)
        transport.pause_reading()
        assert not transport.is_reading()
        transport.pause_reading()  # idempotent
        await loop.sock_sendall(peer, b"held back")
        await asyncio.sleep(0.05)
        assert protocol.data == b""
        transport.resume_reading()
        assert transport.is_reading()
        while protocol.data != b"held back":
            await asyncio.sleep(0.001)
        transport.close()
        assert not transport.is_reading()
        await protocol.done
        peer.close()

    run(main())


def test_pause_reading_in_connection_made_holds_data(loop, run):
    class Paused(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    async def main():
        ours, peer = socket.socketpair()
        peer.sendall(b"early")
        transport, protocol = await loop.connect_accepted_socket(lambda: Paused(loop), ours)
        await asyncio.sleep(0.05)
        assert protocol.data == b""
        transport.resume_reading()
        while protocol.data != b"early":
            await asyncio.sleep(0.001)
        transport.close()
        await protocol.done
        peer.close()

    run(main())


def test_buffered_protocol_receives_into_its_buffer(loop, run):
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buffer = bytearray(7)
            self.received = bytearray()
            self.sizes = []
            self.done = loop.create_future()

        def get_buffer(self, sizehint):
            return self.buffer

        def buffer_updated(self, nbytes):
            self.sizes.append(nbytes)
            self.received += self.buffer[:nbytes]

        def eof_received(self):
            return False

        def connection_lost(self, exc):
            self.done.set_result(exc)

    async def main():
        protocol, _ = await deliver(loop, Buffered, b"0123456789abcdef")
        assert protocol.received == b"0123456789abcdef"
        assert max(protocol.sizes) <= 7

    run(main())


def test_buffered_protocol_receives_into_any_writable_buffer_format(loop, run):
    class IntArray(asyncio.BufferedProtocol):
        def __init__(self):
            self.buffer = array.array("i", [0] * 4)
            self.received = bytearray()
            self.done = loop.create_future()

        def get_buffer(self, sizehint):
            return self.buffer

        def buffer_updated(self, nbytes):
            # nbytes counts bytes, not items.
            self.received += self.buffer.tobytes()[:nbytes]

        def connection_lost(self, exc):
            self.done.set_result(exc)

    async def main():
        protocol, exc = await deliver(loop, IntArray, b"0123456789abcdefghij")
        assert exc is None
        assert protocol.received == b"0123456789abcdefghij"

    run(main())


def _raise_value_error():
    raise ValueError("no buffer today")


@pytest.mark.parametrize(
    ("make_buffer", "error", "message"),
    [
        (lambda: bytearray(), RuntimeError, "Fatal error: protocol.get_buffer() call failed."),
        (lambda: 42, TypeError, "Fatal error: protocol.get_buffer() call failed."),
        (_raise_value_error, ValueError, "Fatal error: protocol.get_buffer() call failed."),
        (lambda: b"read-only", TypeError, "Fatal read error on socket transport"),
        (lambda: [1, 2, 3], TypeError, "Fatal read error on socket transport"),
        (
            lambda: memoryview(bytearray(8))[::2],
            TypeError,
            "Fatal read error on socket transport",
        ),
    ],
    ids=["empty", "no-len", "raises", "read-only", "not-a-buffer", "not-contiguous"],
)
def test_a_bad_get_buffer_fails_the_connection_as_asyncio_does(
    loop, run, loop_errors, make_buffer, error, message
):
    class Bad(asyncio.BufferedProtocol):
        def __init__(self):
            self.done = loop.create_future()

        def get_buffer(self, sizehint):
            return make_buffer()

        def buffer_updated(self, nbytes):
            raise AssertionError("nothing can have been received")

        def connection_lost(self, exc):
            self.done.set_result(exc)

    _, exc = run(deliver(loop, Bad, b"data"))
    assert type(exc) is error
    (context,) = loop_errors.expect(1)
    assert context["message"] == message
    assert context["exception"] is exc


def test_set_protocol_switches_receiver(loop, run):
    async def main():
        transport, first, peer = await connected_pair(loop)
        second = Recorder(loop)
        transport.set_protocol(second)
        assert transport.get_protocol() is second
        await loop.sock_sendall(peer, b"to second")
        peer.close()
        await second.done
        assert second.data == b"to second"
        assert first.data == b""

    run(main())


def test_exception_in_data_received_reaches_the_handler_and_closes(loop, run, loop_errors):
    class Failing(Recorder):
        def data_received(self, data):
            raise ZeroDivisionError("boom")

    _, exc = run(deliver(loop, lambda: Failing(loop), b"x"))
    assert isinstance(exc, ZeroDivisionError)
    (context,) = loop_errors.expect(1)
    assert context["message"] == "Fatal error: protocol.data_received() call failed."
    assert isinstance(context["exception"], ZeroDivisionError)
    assert context["protocol"] is not None


def test_unix_socket_server_and_connection(loop, run, tmp_path):
    path = str(tmp_path / "s.sock")

    async def main():
        received = loop.create_future()

        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                self.transport.write(data.upper())

        server = await loop.create_unix_server(Echo, path)
        transport, protocol = await loop.create_unix_connection(lambda: Recorder(loop), path)
        assert transport.get_extra_info("peername") == path
        transport.write(b"hello")
        while protocol.data != b"HELLO":
            await asyncio.sleep(0.001)
        received.set_result(None)
        transport.close()
        await protocol.done
        server.close()
        await server.wait_closed()

    run(main())


def test_queued_bytes_are_a_copy_of_what_was_written(loop, run):
    async def main():
        transport, protocol, peer = await connected_pair(loop)
        block = bytearray(b"a" * (4 * 1024 * 1024))
        transport.write(block)
        assert transport.get_write_buffer_size() > 0  # the socket took only part of it
        block[:] = b"b" * len(block)  # changing the caller's object changes nothing queued
        transport.write(memoryview(b"0123456789")[2:7])
        transport.close()
        received = await read_until_eof(loop, peer)
        assert received == b"a" * (4 * 1024 * 1024) + b"23456"
        await protocol.done
        peer.close()

    run(main())


def test_replaced_protocol_may_call_the_transport_from_its_finalizer(loop, run):
    class Finalizing(asyncio.Protocol):
        def __init__(self, transport_box):
            self.transport_box = transport_box

        def __del__(self):
            # A finalizer that looks at the transport while set_protocol() runs.
            self.transport_box[0].is_closing()

    async def main():
        transport, protocol, peer = await connected_pair(loop)
        box = [transport]
        transport.set_protocol(Finalizing(box))
        transport.set_protocol(protocol)  # drops the Finalizing instance
        assert transport.get_protocol() is protocol
        transport.close()
        await protocol.done
        peer.close()

    run(main())


def test_write_accepts_any_buffer_format(loop, run):
    import array

    async def main():
        transport, protocol, peer = await connected_pair(loop)
        words = array.array("i", [1, 2, 3])
        transport.write(memoryview(words))
        transport.write(memoryview(b"")[:0])
        transport.close()
        assert await read_until_eof(loop, peer) == words.tobytes()
        await protocol.done
        peer.close()

    run(main())


def test_large_reads_then_small_ones_arrive_intact(loop, run):
    # oxio receives a large read straight into its own `bytes` and small ones through a shared
    # buffer, switching per read; the protocol must see every byte once, in order.
    rng = random.Random(1)
    chunks = [rng.randbytes(300_000), b"tiny", rng.randbytes(100_000), b"x", rng.randbytes(70_000)]

    async def main():
        transport, protocol, peer = await connected_pair(loop)
        for chunk in chunks:
            await loop.sock_sendall(peer, chunk)
            await asyncio.sleep(0.01)  # let each chunk arrive as one read, or a few
        peer.shutdown(socket.SHUT_WR)
        await protocol.done
        peer.close()
        return bytes(protocol.data)

    assert run(main()) == b"".join(chunks)


def test_reads_of_one_size_each_bring_their_own_bytes(loop, run):
    # oxio copies a read into the `bytes` of the previous one when the protocol kept no
    # reference to it. What the protocol keeps must never change, and every read's contents
    # and hash must be its own (the hash of the previous contents is cached in the object).
    rng = random.Random(2)
    messages = [rng.randbytes(1024) for _ in range(20)]

    class Keeper(asyncio.Protocol):
        def __init__(self):
            self.kept = []
            self.copies = []
            self.stale_hashes = 0

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            copy = bytes(bytearray(data))
            self.stale_hashes += hash(data) != hash(copy)
            self.copies.append(copy)
            if len(self.copies) % 2:
                self.kept.append(data)
            self.transport.write(b"!")

    async def main():
        ours, peer = socket.socketpair()
        transport, protocol = await loop.connect_accepted_socket(Keeper, ours)
        for message in messages:
            # One message at a time, so that each read brings one message of the same size. The
            # peer is a blocking socket served by a thread: the loop thread reads nothing else.
            await loop.run_in_executor(None, peer.sendall, message)
            assert await loop.run_in_executor(None, peer.recv, 1) == b"!"
        transport.close()
        peer.close()
        return protocol

    protocol = run(main())
    assert b"".join(protocol.copies) == b"".join(messages)
    assert protocol.kept == protocol.copies[::2]
    assert protocol.stale_hashes == 0
