"""add_reader/add_writer and the sock_* coroutines, over real sockets."""

import asyncio
import errno
import os
import socket
import subprocess
import sys
import tempfile

import pytest


def socketpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_add_reader_is_level_triggered(loop):
    a, b = socketpair()
    calls = []

    def on_readable():
        calls.append(a.recv(1))  # reads one byte of three
        if len(calls) == 3:
            loop.remove_reader(a)
            loop.stop()

    loop.add_reader(a, on_readable)
    b.send(b"xyz")
    loop.run_forever()
    assert calls == [b"x", b"y", b"z"]
    a.close()
    b.close()


def test_add_reader_with_args_and_remove(loop):
    a, b = socketpair()
    seen = []
    loop.add_reader(a.fileno(), lambda tag: (seen.append(tag), loop.stop()), "tag")
    b.send(b"x")
    loop.run_forever()
    assert seen == ["tag"]
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a.fileno()) is False
    a.close()
    b.close()


def test_add_writer_and_replacement(loop):
    a, b = socketpair()
    seen = []
    loop.add_writer(a, seen.append, "first")
    loop.add_writer(a, lambda: (seen.append("second"), loop.remove_writer(a), loop.stop()))
    loop.run_forever()
    assert seen == ["second"]
    assert loop.remove_writer(a) is False
    a.close()
    b.close()


def test_invalid_file_objects(loop):
    with pytest.raises(ValueError, match="Invalid file"):
        loop.add_reader(-1, print)
    with pytest.raises(ValueError, match="Invalid file object"):
        loop.add_reader(object(), print)


def test_regular_file_is_refused_like_epoll_selector(loop):
    with tempfile.TemporaryFile() as f:
        with pytest.raises(PermissionError) as refused:
            loop.add_reader(f.fileno(), print)
        assert refused.value.errno == errno.EPERM
        assert loop.remove_reader(f.fileno()) is False


def test_closed_fd_is_refused_with_ebadf(loop):
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        for add in (loop.add_reader, loop.add_writer):
            with pytest.raises(OSError) as refused:
                add(read_end, print)
            assert refused.value.errno == errno.EBADF
            assert refused.value.strerror == os.strerror(errno.EBADF)
    finally:
        os.close(write_end)


def test_remove_after_close_returns_false(loop_factory):
    loop = loop_factory()
    a, b = socketpair()
    loop.add_reader(a, print)
    loop.close()
    assert loop.remove_reader(a) is False
    a.close()
    b.close()


def test_sock_echo_roundtrip(run, loop):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)

    async def server():
        conn, _ = await loop.sock_accept(listener)
        with conn:
            while data := await loop.sock_recv(conn, 65536):
                await loop.sock_sendall(conn, data)

    async def client():
        sock = socket.socket()
        sock.setblocking(False)
        with sock:
            await loop.sock_connect(sock, listener.getsockname())
            payload = os.urandom(1 << 20)
            sender = asyncio.ensure_future(loop.sock_sendall(sock, payload))
            received = bytearray()
            buf = bytearray(65536)
            while len(received) < len(payload):
                n = await loop.sock_recv_into(sock, buf)
                received += buf[:n]
            await sender
            return bytes(received) == payload

    async def main():
        server_task = asyncio.ensure_future(server())
        ok = await client()
        await server_task
        return ok

    assert run(main())
    listener.close()


def test_sock_connect_refused(run, loop):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    address = probe.getsockname()
    probe.close()
    sock = socket.socket()
    sock.setblocking(False)
    with pytest.raises(ConnectionRefusedError):
        run(loop.sock_connect(sock, address))
    sock.close()


def test_sock_connect_resolves_names(run, loop):
    listener = socket.create_server(("127.0.0.1", 0))
    sock = socket.socket()
    sock.setblocking(False)
    run(loop.sock_connect(sock, ("localhost", listener.getsockname()[1])))
    assert sock.getpeername()[1] == listener.getsockname()[1]
    sock.close()
    listener.close()


def test_cancelled_sock_recv_leaves_no_watcher(run, loop):
    a, b = socketpair()

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The fd is free again: a new reader can be added and fires.
        fut = loop.create_future()
        loop.add_reader(a, fut.set_result, "ready")
        b.send(b"x")
        result = await fut
        assert loop.remove_reader(a) is True
        return result

    assert run(main()) == "ready"
    a.close()
    b.close()


def test_udp_sendto_recvfrom(run, loop):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)

    async def main():
        receiving = asyncio.ensure_future(loop.sock_recvfrom(server, 100))
        await asyncio.sleep(0)
        await loop.sock_sendto(client, b"ping", server.getsockname())
        data, addr = await receiving
        buf = bytearray(100)
        await loop.sock_sendto(client, b"pong", server.getsockname())
        n, addr2 = await loop.sock_recvfrom_into(server, buf)
        return data, bytes(buf[:n]), addr == addr2 == client.getsockname()

    assert run(main()) == (b"ping", b"pong", True)
    server.close()
    client.close()


def test_sock_methods_refuse_blocking_sockets_in_debug(run, loop):
    loop.set_debug(True)
    sock = socket.socket()
    with pytest.raises(ValueError, match="the socket must be non-blocking"):
        run(loop.sock_recv(sock, 1))
    sock.close()


@pytest.mark.parametrize("fallback", [True, False])
def test_sock_sendfile(run, loop, fallback, tmp_path):
    data = os.urandom(300_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    a, b = socketpair()

    async def main():
        received = bytearray()

        async def reader():
            while len(received) < 100_000:
                received.extend(await loop.sock_recv(b, 65536))

        reading = asyncio.ensure_future(reader())
        with open(path, "rb") as f:
            sent = await loop.sock_sendfile(a, f, 1000, 100_000, fallback=fallback)
            position = f.tell()
        await reading
        return sent, position, bytes(received)

    sent, position, received = run(main())
    assert sent == 100_000
    assert position == 101_000
    assert received == data[1000:101_000]
    a.close()
    b.close()


def test_sock_sendfile_argument_checks(run, loop, tmp_path):
    a, b = socketpair()
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with open(path, "rb") as f:
        with pytest.raises(ValueError, match="count must be a positive integer"):
            run(loop.sock_sendfile(a, f, 0, 0))
        with pytest.raises(TypeError, match="offset must be a non-negative integer"):
            run(loop.sock_sendfile(a, f, "0"))
    with open(path) as text:
        with pytest.raises(ValueError, match="binary mode"):
            run(loop.sock_sendfile(a, text))
    a.close()
    b.close()


REMOVE_FROM_CLOSED_FD = """
import asyncio, os, socket, sys
import oxio

loop = oxio.new_event_loop() if sys.argv[1] == "oxio" else asyncio.new_event_loop()
a, b = socket.socketpair()
fd = os.dup(a.fileno())


class Callback:
    def __call__(self):
        pass

    def __del__(self):
        # Calls back into the loop while remove_reader is still on the stack.
        loop.call_soon(print, "scheduled from __del__")


loop.add_reader(fd, Callback())
loop.add_writer(fd, lambda: None)
os.close(fd)
try:
    loop.remove_reader(fd)
except OSError as exc:
    print("remove_reader raised", exc.errno)
print("done")
"""


def test_removing_a_watcher_of_a_closed_fd_reports_it_and_can_reenter_the_loop(loop_name):
    # A closed fd with a reader and a writer left makes epoll refuse the change: asyncio raises
    # OSError. The removed callback's __del__ must still be free to call the loop (a hang here
    # means it ran while the loop's lock was held).
    result = subprocess.run(
        [sys.executable, "-c", REMOVE_FROM_CLOSED_FD, loop_name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"remove_reader raised {errno.EBADF}", "done"]
