"""What an asyncio `StreamReader` receives from a socket transport: every byte in order, the
reader's flow control, and every hook code may put between the two (a `feed_data` or
`data_received` set on the instance, a patched class, a subclass). oxio feeds a stock reader
natively (docs/design.md, "Feeding asyncio's streams"); each test runs on the stdlib loop and
on oxio and must see the same."""

import asyncio
import socket
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


def test_reading_pauses_past_twice_the_limit_and_resumes(run):
    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair(limit=1024)
        transport = writer.transport
        data = payload(64 * 1024)
        sending = loop.create_task(loop.sock_sendall(peer, data))
        for _ in range(1000):
            if not transport.is_reading():
                break
            await asyncio.sleep(0.001)
        assert not transport.is_reading()
        # Paused once past 2 * limit, after the read that crossed it.
        assert 2 * 1024 < len(reader._buffer) <= 2 * 1024 + len(data)
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
        for _ in range(1000):
            if len(seen) == len(data):
                break
            await asyncio.sleep(0.001)
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


def test_a_reader_whose_buffer_is_exported_fails_like_extend(run, loop_errors):
    async def main():
        loop = asyncio.get_running_loop()
        reader, writer, peer = await stream_pair()
        view = memoryview(reader._buffer)
        await loop.sock_sendall(peer, b"data")
        with pytest.raises(BufferError):
            await reader.read(10)
        view.release()
        (context,) = loop_errors.expect(1)
        assert context["message"] == "Fatal error: protocol.data_received() call failed."
        assert isinstance(context["exception"], BufferError)
        peer.close()
        writer.close()
        with pytest.raises(BufferError):
            await writer.wait_closed()

    run(main())
