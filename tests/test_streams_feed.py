"""What an asyncio `StreamReader` receives from a socket transport: every byte in order, the
reader's flow control, and every hook code may put between the two (a `feed_data` or
`data_received` set on the instance, a patched class, a subclass). oxio feeds a stock reader
natively (docs/design.md, "Feeding asyncio's streams"); each test runs on the stdlib loop and
on oxio and must see the same."""

import asyncio
import socket
import sys
from unittest import mock

import pytest

SIZES = [1, 1000, 70_000, 300_000, 1_000_000]


async def stream_pair(limit=2**16, reader_factory=None):
    """A stream (reader, writer) over one end of a socket pair, and the other end, non-blocking."""
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    if reader_factory is None:
        reader, writer = await asyncio.open_connection(sock=ours, limit=limit)
    else:
        reader = reader_factory(limit=limit)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.create_connection(lambda: protocol, sock=ours)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer, peer


async def close_pair(writer, peer):
    peer.close()
    writer.close()
    await writer.wait_closed()


async def until(condition):
    """Lets the loop run until `condition()` holds, for at most a second."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition did not come to hold")


def payload(size):
    return bytes(i % 251 for i in range(size))


@pytest.mark.parametrize("size", SIZES)
def test_bytes_arrive_whole_and_in_order(run, size):
    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        data = payload(size)
        sending = loop.create_task(loop.sock_sendall(peer, data))
        received = bytearray()
        while len(received) < size:
            received += await reader.read(65536)
        await sending
        assert received == data
        peer.shutdown(socket.SHUT_WR)
        assert await reader.read() == b""
        assert reader.at_eof()
        await close_pair(writer, peer)

    run(main())


class Limit(int):
    """An `int` of another type: oxio compares it in Python's arithmetic, not in machine words."""


@pytest.mark.parametrize("limit", [1024, Limit(1024)], ids=["int", "int-subclass"])
def test_reading_pauses_past_twice_the_limit_and_resumes(run, limit):
    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair(limit=limit)
        transport = writer.transport
        data = payload(64 * 1024)
        sending = loop.create_task(loop.sock_sendall(peer, data))
        await until(lambda: not transport.is_reading())
        assert reader._paused
        assert len(reader._buffer) > 2 * 1024
        received = await reader.readexactly(len(data))
        await sending
        assert received == data
        assert transport.is_reading()
        await close_pair(writer, peer)

    run(main())


def test_feed_data_set_on_the_reader_sees_every_byte(run):
    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        seen = []
        stock_feed_data = reader.feed_data

        def metered_feed_data(data):
            seen.append(bytes(data))
            stock_feed_data(data)

        reader.feed_data = metered_feed_data
        data = payload(200_000)
        await loop.sock_sendall(peer, data)
        assert await reader.readexactly(len(data)) == data
        assert b"".join(seen) == data
        await close_pair(writer, peer)

    run(main())


def test_data_received_set_on_the_protocol_replaces_it(run):
    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        protocol = writer.transport.get_protocol()
        seen = bytearray()
        protocol.data_received = seen.extend
        data = payload(5000)
        await loop.sock_sendall(peer, data)
        await until(lambda: len(seen) == len(data))
        assert seen == data
        assert not reader._buffer
        await close_pair(writer, peer)

    run(main())


def test_a_patched_feed_data_is_called(run):
    stock_feed_data = asyncio.StreamReader.feed_data

    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        with mock.patch.object(
            asyncio.StreamReader, "feed_data", autospec=True, side_effect=stock_feed_data
        ) as patched:
            await loop.sock_sendall(peer, b"hello")
            assert await reader.readexactly(5) == b"hello"
        assert patched.call_count >= 1
        await close_pair(writer, peer)

    run(main())


def test_a_reader_subclass_gets_its_own_feed_data(run):
    class CountingReader(asyncio.StreamReader):
        fed = 0

        def feed_data(self, data):
            self.fed += len(data)
            super().feed_data(data)

    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair(reader_factory=CountingReader)
        data = payload(100_000)
        await loop.sock_sendall(peer, data)
        assert await reader.readexactly(len(data)) == data
        assert reader.fed == len(data)
        await close_pair(writer, peer)

    run(main())


def test_a_cancelled_read_leaves_the_data_for_the_next(run):
    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        waiting = loop.create_task(reader.read(100))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await loop.sock_sendall(peer, b"kept")
        assert await reader.readexactly(4) == b"kept"
        await close_pair(writer, peer)

    run(main())


def test_data_for_a_cancelled_waiter_is_kept(run):
    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        waiter = reader._waiter = loop.create_future()
        waiter.cancel()
        await loop.sock_sendall(peer, b"kept")
        await until(lambda: reader._buffer)
        assert reader._waiter is None
        assert waiter.cancelled()
        assert await reader.readexactly(4) == b"kept"
        await close_pair(writer, peer)

    run(main())


def test_the_stock_reader_is_fed_without_python_frames(run, loop_name):
    """The one test of how, not what: oxio's native path runs no `feed_data`."""

    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        calls = []
        sys.setprofile(lambda frame, event, arg: event == "call" and calls.append(frame))
        try:
            for size in (10, 200_000):
                await loop.sock_sendall(peer, payload(size))
                assert await reader.readexactly(size) == payload(size)
        finally:
            sys.setprofile(None)
        fed = [frame for frame in calls if frame.f_code is asyncio.StreamReader.feed_data.__code__]
        assert (len(fed) == 0) if loop_name == "oxio" else (len(fed) >= 2)
        await close_pair(writer, peer)

    run(main())


def test_feed_data_of_another_reader_feeds_that_reader(run):
    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        other = asyncio.StreamReader()
        reader.feed_data = other.feed_data
        await loop.sock_sendall(peer, b"elsewhere")
        assert await other.readexactly(9) == b"elsewhere"
        assert not reader._buffer
        await close_pair(writer, peer)

    run(main())


def test_a_patched_module_class_makes_the_readers(run):
    class TaggedReader(asyncio.StreamReader):
        pass

    async def main():
        loop = asyncio.get_running_loop()
        with mock.patch("asyncio.streams.StreamReader", TaggedReader):
            reader, writer, peer = await stream_pair()
        assert type(reader) is TaggedReader
        await loop.sock_sendall(peer, b"tagged")
        assert await reader.readexactly(6) == b"tagged"
        await close_pair(writer, peer)

    run(main())


def test_a_transport_that_cannot_pause_is_forgotten(run):
    def cannot_pause():
        raise NotImplementedError

    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair(limit=1024)
        writer.transport.pause_reading = cannot_pause
        data = payload(20_000)
        await loop.sock_sendall(peer, data)
        await until(lambda: reader._transport is None)
        assert not reader._paused
        assert await reader.readexactly(len(data)) == data
        await close_pair(writer, peer)

    run(main())


def test_a_buffer_of_another_type_is_extended_by_python(run):
    class Buffer(bytearray):
        pass

    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        reader._buffer = Buffer()
        await loop.sock_sendall(peer, b"typed")
        assert await reader.readexactly(5) == b"typed"
        assert type(reader._buffer) is Buffer
        await close_pair(writer, peer)

    run(main())


def test_a_reader_that_lost_its_protocol_link_drops_the_data(run):
    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        writer.transport.get_protocol()._stream_reader_wr = None
        await loop.sock_sendall(peer, b"dropped")
        await asyncio.sleep(0.05)
        assert not reader._buffer
        await close_pair(writer, peer)

    run(main())


async def fails_fatally(loop_errors, reader, writer, peer, exception_type):
    """The reader's next read, the transport's report and its closing all carry
    `exception_type`."""
    with pytest.raises(exception_type):
        await reader.read(10)
    (context,) = loop_errors.expect(1)
    assert context["message"] == "Fatal error: protocol.data_received() call failed."
    assert isinstance(context["exception"], exception_type)
    peer.close()
    writer.close()
    with pytest.raises(exception_type):
        await writer.wait_closed()


def test_data_after_feed_eof_fails_as_feed_data_asserts(run, loop_errors):
    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        reader.feed_eof()
        await loop.sock_sendall(peer, b"late")
        await until(lambda: reader.exception() is not None)
        await fails_fatally(loop_errors, reader, writer, peer, AssertionError)

    run(main())


def test_a_waiter_already_done_fails_as_set_result_does(run, loop_errors):
    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        waiter = reader._waiter = loop.create_future()
        waiter.set_result(None)
        await loop.sock_sendall(peer, b"data")
        await until(lambda: reader.exception() is not None)
        await fails_fatally(loop_errors, reader, writer, peer, asyncio.InvalidStateError)

    run(main())


@pytest.mark.parametrize("size", [4, 200_000])
def test_a_reader_whose_buffer_is_exported_fails_like_extend(run, loop_errors, size):
    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        # A large message first, so that the next large read takes oxio's direct path.
        await loop.sock_sendall(peer, payload(size))
        assert await reader.readexactly(size) == payload(size)
        view = memoryview(reader._buffer)
        await loop.sock_sendall(peer, payload(size))
        try:
            await fails_fatally(loop_errors, reader, writer, peer, BufferError)
        finally:
            view.release()

    run(main())
