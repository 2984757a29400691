"""loop.sendfile() on stream transports: the zero-copy path, the fallback, and their rules.
Each test runs on the stdlib loop and on oxio."""

import asyncio
import io
import os
import socket

import pytest

DATA = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def datafile(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(DATA)
    with open(path, "rb") as f:
        yield f


class Collector(asyncio.Protocol):
    def __init__(self, loop):
        self.data = bytearray()
        self.done = loop.create_future()

    def data_received(self, data):
        self.data += data

    def connection_lost(self, exc):
        self.done.set_result(exc)


async def connected(loop):
    """A client transport and the server-side collector it talks to."""
    collector = Collector(loop)
    server = await loop.create_server(lambda: collector, "127.0.0.1", 0)
    transport, _ = await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname())
    return server, transport, collector


async def finish(server, transport, collector):
    transport.close()
    await collector.done
    server.close()
    await server.wait_closed()
    return bytes(collector.data)


def test_sendfile_between_writes(loop, run, datafile):
    async def main():
        server, transport, collector = await connected(loop)
        transport.write(b"head:")
        sent = await loop.sendfile(transport, datafile)
        transport.write(b":tail")
        assert sent == len(DATA)
        assert datafile.tell() == len(DATA)
        assert await finish(server, transport, collector) == b"head:" + DATA + b":tail"

    run(main())


def test_sendfile_offset_and_count(loop, run, datafile):
    async def main():
        server, transport, collector = await connected(loop)
        assert await loop.sendfile(transport, datafile, 1000, 5000) == 5000
        assert datafile.tell() == 6000
        assert await finish(server, transport, collector) == DATA[1000:6000]

    run(main())


def test_fallback_for_a_file_without_fd(loop, run):
    async def main():
        server, transport, collector = await connected(loop)
        assert await loop.sendfile(transport, io.BytesIO(DATA), 10) == len(DATA) - 10
        assert await finish(server, transport, collector) == DATA[10:]

    run(main())


def test_no_fallback_for_a_file_without_fd(loop, run):
    async def main():
        server, transport, collector = await connected(loop)
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sendfile(transport, io.BytesIO(DATA), fallback=False)
        assert await finish(server, transport, collector) == b""

    run(main())


def test_write_during_sendfile_is_refused(loop, run, datafile):
    async def main():
        server, transport, collector = await connected(loop)
        task = asyncio.ensure_future(loop.sendfile(transport, datafile))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="sendfile is in progress"):
            transport.write(b"interleaved")
        assert await task == len(DATA)
        transport.write(b"after")
        assert await finish(server, transport, collector) == DATA + b"after"

    run(main())


def test_closing_transport_and_pipes_are_refused(loop, run, datafile):
    async def main():
        server, transport, collector = await connected(loop)
        transport.close()
        with pytest.raises(RuntimeError, match="closing"):
            await loop.sendfile(transport, datafile)
        await collector.done
        server.close()
        await server.wait_closed()

        rfd, wfd = os.pipe()
        pipe, _ = await loop.connect_write_pipe(asyncio.Protocol, open(wfd, "wb", buffering=0))
        with pytest.raises(RuntimeError, match="not supported"):
            await loop.sendfile(pipe, datafile)
        pipe.close()
        await asyncio.sleep(0)
        os.close(rfd)

    run(main())


def test_peer_closing_mid_transfer(loop, run, tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"z" * (32 << 20))

    async def main():
        ours, peer = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        with open(big, "rb") as f:
            sending = asyncio.ensure_future(loop.sendfile(transport, f))
            await loop.run_in_executor(None, peer.recv, 1000)  # take a little, then go away
            peer.close()
            with pytest.raises(ConnectionError):
                await sending
        transport.close()
        await asyncio.sleep(0)

    run(main())
