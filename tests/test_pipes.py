"""connect_read_pipe and connect_write_pipe over real pipes, FIFOs, socketpairs and ptys.
Each test runs on the stdlib loop and on oxio."""

import asyncio
import os
import pty
import socket

import pytest


class Reader(asyncio.Protocol):
    def __init__(self, loop):
        self.events = []
        self.data = bytearray()
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.events.append("made")

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.done.set_result(exc)


class Writer(asyncio.Protocol):
    def __init__(self, loop):
        self.events = []
        self.done = loop.create_future()

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))
        self.done.set_result(exc)


def write_all_and_close(fd, data):
    with open(fd, "wb", buffering=0) as f:
        f.write(data)


def drain_blocking(fd):
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_read_pipe_delivers_data_then_eof_then_lost(loop, run):
    async def main():
        rfd, wfd = os.pipe()
        pipe = open(rfd, "rb", buffering=0)
        transport, protocol = await loop.connect_read_pipe(lambda: Reader(loop), pipe)
        assert isinstance(transport, asyncio.ReadTransport)
        assert transport.get_extra_info("pipe") is pipe
        assert transport.is_reading()
        # More than a pipe holds: written from a thread while the loop reads.
        await loop.run_in_executor(None, write_all_and_close, wfd, b"abc" * 100_000)
        assert await protocol.done is None
        assert protocol.data == b"abc" * 100_000
        assert protocol.events == ["made", "eof", "lost"]
        assert pipe.closed

    run(main())


def test_read_pipe_pause_resume_and_close(loop, run):
    async def main():
        rfd, wfd = os.pipe()
        transport, protocol = await loop.connect_read_pipe(
            lambda: Reader(loop), open(rfd, "rb", buffering=0)
        )
        transport.pause_reading()
        assert not transport.is_reading()
        os.write(wfd, b"held")
        await asyncio.sleep(0.05)
        assert protocol.data == b""
        transport.resume_reading()
        while protocol.data != b"held":
            await asyncio.sleep(0.001)
        transport.close()
        assert transport.is_closing()
        assert await protocol.done is None
        assert protocol.events == ["made", "lost"]
        os.close(wfd)

    run(main())


def test_read_pipe_callback_error_keeps_the_pipe_open(loop, run, loop_errors):
    class Failing(Reader):
        def data_received(self, data):
            super().data_received(data)
            if len(self.data) == 1:
                raise ZeroDivisionError

    async def main():
        rfd, wfd = os.pipe()
        transport, protocol = await loop.connect_read_pipe(
            lambda: Failing(loop), open(rfd, "rb", buffering=0)
        )
        os.write(wfd, b"1")
        while len(protocol.data) < 1:
            await asyncio.sleep(0.001)
        os.write(wfd, b"2")
        os.close(wfd)
        assert await protocol.done is None
        assert protocol.data == b"12"

    run(main())
    (context,) = loop_errors.expect(1)
    assert isinstance(context["exception"], ZeroDivisionError)


def test_write_pipe_flow_control_and_close_delivers_everything(loop, run):
    payload = bytes(range(256)) * 4096  # 1 MiB, far more than a pipe holds

    async def main():
        rfd, wfd = os.pipe()
        transport, protocol = await loop.connect_write_pipe(
            lambda: Writer(loop), open(wfd, "wb", buffering=0)
        )
        assert isinstance(transport, asyncio.WriteTransport)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        transport.write(payload)
        assert protocol.events == ["pause"]
        assert transport.get_write_buffer_size() > 0
        transport.close()
        transport.write(b"dropped: the pipe is closing")
        received = await loop.run_in_executor(None, drain_blocking, rfd)
        assert received == payload
        assert await protocol.done is None
        assert protocol.events == ["pause", "resume", ("lost", None)]
        os.close(rfd)

    run(main())


def test_write_pipe_reader_gone_is_broken_pipe(loop, run):
    async def main():
        rfd, wfd = os.pipe()
        transport, protocol = await loop.connect_write_pipe(
            lambda: Writer(loop), open(wfd, "wb", buffering=0)
        )
        transport.write(b"x" * (1024 * 1024))
        os.close(rfd)
        exc = await protocol.done
        assert isinstance(exc, BrokenPipeError)
        assert transport.get_write_buffer_size() == 0
        for _ in range(3):
            transport.write(b"after the end")

    run(main())


def test_write_pipe_idle_reader_gone_closes_cleanly(loop, run):
    async def main():
        rfd, wfd = os.pipe()
        transport, protocol = await loop.connect_write_pipe(
            lambda: Writer(loop), open(wfd, "wb", buffering=0)
        )
        await asyncio.sleep(0)
        os.close(rfd)
        assert await protocol.done is None
        assert transport.is_closing()

    run(main())


def test_write_pipe_abort_drops_the_queue(loop, run):
    async def main():
        rfd, wfd = os.pipe()
        transport, protocol = await loop.connect_write_pipe(
            lambda: Writer(loop), open(wfd, "wb", buffering=0)
        )
        transport.write(b"x" * (1024 * 1024))
        transport.abort()
        assert transport.get_write_buffer_size() == 0
        assert await protocol.done is None
        received = await loop.run_in_executor(None, drain_blocking, rfd)
        assert len(received) < 1024 * 1024
        os.close(rfd)

    run(main())


def test_pipes_over_a_socketpair_and_a_fifo(loop, run, tmp_path):
    async def main():
        a, b = socket.socketpair()
        writer, _ = await loop.connect_write_pipe(lambda: Writer(loop), a)
        reader, protocol = await loop.connect_read_pipe(lambda: Reader(loop), b)
        writer.write(b"over a socketpair")
        writer.close()
        await protocol.done
        assert protocol.data == b"over a socketpair"

        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(fifo, os.O_WRONLY)
        reader, protocol = await loop.connect_read_pipe(
            lambda: Reader(loop), open(rfd, "rb", buffering=0)
        )
        writer, writer_protocol = await loop.connect_write_pipe(
            lambda: Writer(loop), open(wfd, "wb", buffering=0)
        )
        writer.write(b"through a fifo")
        writer.close()
        await protocol.done
        await writer_protocol.done
        assert protocol.data == b"through a fifo"

    run(main())


def test_a_pty_is_accepted_as_a_pipe(loop, run):
    async def main():
        leader, follower = pty.openpty()
        transport, protocol = await loop.connect_read_pipe(
            lambda: Reader(loop), open(leader, "rb", buffering=0)
        )
        os.write(follower, b"tty line\n")
        while b"tty line" not in protocol.data:
            await asyncio.sleep(0.001)
        transport.close()
        await protocol.done
        os.close(follower)

    run(main())


def test_regular_files_are_refused(loop, run, tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"data")

    async def main():
        with open(path, "rb") as f, pytest.raises(ValueError):
            await loop.connect_read_pipe(asyncio.Protocol, f)
        with open(path, "wb") as f, pytest.raises(ValueError):
            await loop.connect_write_pipe(asyncio.Protocol, f)

    run(main())


def test_streams_over_pipes(loop, run):
    async def main():
        rfd, wfd = os.pipe()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), open(rfd, "rb", buffering=0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, open(wfd, "wb", buffering=0)
        )
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        writer.write(b"line one\nline two\n")
        await writer.drain()
        writer.close()
        assert [line async for line in reader] == [b"line one\n", b"line two\n"]

    run(main())


@pytest.mark.parametrize("loop_name", ["oxio"], indirect=True)
def test_abort_after_close_leaves_a_reused_fd_alone(loop, run):
    """asyncio raises AttributeError here (its transport forgot its loop); oxio ignores the
    late abort, and above all leaves alone the reader of whoever reuses the fd number."""

    async def main():
        rfd, wfd = os.pipe()
        transport, protocol = await loop.connect_write_pipe(
            lambda: Writer(loop), open(wfd, "wb", buffering=0)
        )
        transport.close()
        await protocol.done  # the pipe's fd is closed now, and its number free
        a, b = socket.socketpair()
        readable = loop.create_future()
        loop.add_reader(a.fileno(), lambda: readable.done() or readable.set_result(True))
        transport.abort()  # too late to matter: must not touch whoever has the number now
        b.send(b"x")
        assert await asyncio.wait_for(readable, 5)
        loop.remove_reader(a.fileno())
        a.close()
        b.close()
        os.close(rfd)

    run(main())
