"""The `sock_*` coroutines as asyncio defines them: coroutine protocol, waiting, cancellation,
errors, and the sockets whose own methods must be called (subclasses, patched classes)."""

import asyncio
import contextlib
import errno
import gc
import itertools
import random
import resource
import socket
import ssl
import struct
import threading
import time
from unittest import mock

import pytest


def socketpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def tcp_pair():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    client.setblocking(False)
    server.setblocking(False)
    return client, server


def test_sock_methods_return_coroutines(loop):
    a, b = socketpair()
    coros = [
        loop.sock_recv(a, 1),
        loop.sock_recv_into(a, bytearray(1)),
        loop.sock_recvfrom(a, 1),
        loop.sock_recvfrom_into(a, bytearray(1)),
        loop.sock_sendall(a, b"x"),
        loop.sock_sendto(a, b"x", None),
        loop.sock_accept(a),
    ]
    for coro in coros:
        assert asyncio.iscoroutine(coro)
        coro.close()
    a.close()
    b.close()


def test_create_task_runs_sock_recv(run, loop):
    a, b = socketpair()

    async def main():
        task = loop.create_task(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        assert not task.done()
        b.send(b"hello")
        return await task

    assert run(main()) == b"hello"
    a.close()
    b.close()


def test_coroutine_protocol_by_hand(run, loop):
    a, b = socketpair()
    b.send(b"now")
    coro = loop.sock_recv(a, 10)
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    assert stop.value.value == b"now"
    # A finished coroutine cannot run again.
    with pytest.raises(RuntimeError):
        coro.send(None)
    coro.close()
    a.close()
    b.close()


def test_errors_surface_at_await_not_at_call(run, loop):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(socket.socket(), do_handshake_on_connect=False) as tls:
        coro = loop.sock_recv(tls, 1)  # no error yet: checks run when the coroutine starts
        with pytest.raises(TypeError, match="Socket cannot be of type SSLSocket"):
            run(coro)
        with pytest.raises(TypeError, match="Socket cannot be of type SSLSocket"):
            run(loop.sock_sendall(tls, b"x"))


def test_cancel_mid_recv_removes_the_watcher_and_keeps_the_data(run, loop):
    a, b = socketpair()

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.remove_reader(a) is False
        b.send(b"later")
        # The cancelled receive consumed nothing.
        return await loop.sock_recv(a, 10)

    assert run(main()) == b"later"
    a.close()
    b.close()


def test_wait_for_timeout_on_sock_recv(run, loop):
    a, b = socketpair()

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(a, 10), 0.01)
        assert loop.remove_reader(a) is False

    run(main())
    a.close()
    b.close()


def test_cancel_mid_sendall_removes_the_writer(run, loop):
    a, b = socketpair()

    async def main():
        task = asyncio.ensure_future(loop.sock_sendall(a, b"x" * (8 << 20)))
        await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.remove_writer(a) is False

    run(main())
    a.close()
    b.close()


def test_partial_sendall_waits_for_a_paused_reader(run, loop):
    a, b = socketpair()
    payload = bytes(range(256)) * 16384  # 4 MiB: far more than the socket buffers hold

    async def main():
        sender = asyncio.ensure_future(loop.sock_sendall(a, bytearray(payload)))
        await asyncio.sleep(0.02)
        assert not sender.done()  # the reader has not read: the rest waits
        received = bytearray()
        while len(received) < len(payload):
            received += await loop.sock_recv(b, 65536)
        assert await sender is None
        assert loop.remove_writer(a) is False
        return bytes(received)

    assert run(main()) == payload
    a.close()
    b.close()


def test_pending_sendall_pins_its_bytearray(run, loop):
    a, b = socketpair()
    data = bytearray(8 << 20)

    async def main():
        sender = asyncio.ensure_future(loop.sock_sendall(a, data))
        await asyncio.sleep(0.01)
        assert not sender.done()
        with pytest.raises(BufferError):
            data.extend(b"more")
        sender.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sender

    run(main())
    a.close()
    b.close()


def test_sendall_of_nothing_and_of_other_buffers(run, loop):
    a, b = socketpair()

    async def main():
        assert await loop.sock_sendall(a, b"") is None
        await loop.sock_sendall(a, memoryview(b"-abc-")[1:4])
        await loop.sock_sendall(a, struct.pack("<2I", 1, 2))
        return await loop.sock_recv(b, 100)

    assert run(main()) == b"abc" + struct.pack("<2I", 1, 2)
    a.close()
    b.close()


def test_recv_into_a_memoryview_slice(run, loop):
    a, b = socketpair()
    buf = bytearray(b"..........")

    async def main():
        receiving = asyncio.ensure_future(loop.sock_recv_into(a, memoryview(buf)[2:6]))
        await asyncio.sleep(0)
        b.send(b"abcdefgh")
        n = await receiving
        rest = await loop.sock_recv(a, 100)
        return n, rest

    assert run(main()) == (4, b"efgh")
    assert buf == bytearray(b"..abcd....")
    a.close()
    b.close()


def test_recv_sizes(run, loop):
    a, b = socketpair()

    async def main():
        b.send(b"xyz")
        assert await loop.sock_recv(a, 0) == b""
        with pytest.raises(ValueError, match="negative buffersize"):
            await loop.sock_recv(a, -1)
        with pytest.raises(TypeError):
            await loop.sock_recv(a, "3")
        return await loop.sock_recv(a, 1 << 20)  # larger than any internal buffer

    assert run(main()) == b"xyz"
    a.close()
    b.close()


def test_zero_length_reads_answer_at_once_and_consume_nothing(run, loop):
    a, b = socketpair()
    udp_a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_a.bind(("127.0.0.1", 0))
    for sock in (udp_a, udp_b):
        sock.setblocking(False)

    async def main():
        # Nothing is queued on the stream: recv(0) must not wait for data.
        idle = await asyncio.wait_for(loop.sock_recv(a, 0), 5)
        idle_into = await asyncio.wait_for(loop.sock_recv_into(a, bytearray()), 5)
        udp_b.sendto(b"datagram", udp_a.getsockname())
        await asyncio.sleep(0.05)
        zero = await asyncio.wait_for(loop.sock_recv(udp_a, 0), 5)
        # ... and on a datagram socket it must leave the datagram queued.
        rest = await asyncio.wait_for(loop.sock_recv(udp_a, 100), 5)
        return idle, idle_into, zero, rest

    assert run(main()) == (b"", 0, b"", b"datagram")
    for sock in (a, b, udp_a, udp_b):
        sock.close()


def test_recv_into_refuses_readonly_buffers(run, loop):
    a, b = socketpair()
    b.send(b"x")
    with pytest.raises(TypeError):
        run(loop.sock_recv_into(a, b"immutable"))
    a.close()
    b.close()


def test_end_of_stream(run, loop):
    a, b = socketpair()

    async def main():
        receiving = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        b.close()
        return await receiving

    assert run(main()) == b""
    a.close()


def _reset(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_peer_reset_while_waiting(run, loop):
    client, server = tcp_pair()

    async def main():
        receiving = asyncio.ensure_future(loop.sock_recv(server, 10))
        await asyncio.sleep(0.01)
        _reset(client)
        with pytest.raises(ConnectionResetError) as raised:
            await receiving
        assert raised.value.errno == errno.ECONNRESET
        assert loop.remove_reader(server) is False

    run(main())
    server.close()


def test_peer_reset_before_the_call(run, loop):
    client, server = tcp_pair()
    _reset(client)

    async def main():
        await asyncio.sleep(0.01)
        with pytest.raises(ConnectionResetError):
            await loop.sock_recv(server, 10)

    run(main())
    server.close()


def test_closed_socket_raises_ebadf(run, loop):
    a, b = socketpair()
    a.close()
    with pytest.raises(OSError) as raised:
        run(loop.sock_recv(a, 10))
    assert raised.value.errno == errno.EBADF
    with pytest.raises(OSError) as raised:
        run(loop.sock_sendall(a, b"x"))
    assert raised.value.errno == errno.EBADF
    b.close()


def test_accepted_socket_is_non_blocking(run, loop):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)

    async def main():
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        await asyncio.sleep(0)
        client = socket.create_connection(listener.getsockname())
        conn, address = await accepting
        with conn, client:
            return conn.gettimeout(), address == client.getsockname()

    assert run(main()) == (0.0, True)
    listener.close()


def test_socket_subclass_methods_are_called(run, loop):
    class Recorded(socket.socket):
        calls = 0

        def recv(self, n):
            Recorded.calls += 1
            return super().recv(n)

    a, b = socket.socketpair()
    sub = Recorded(fileno=a.detach())
    sub.setblocking(False)
    b.setblocking(False)

    async def main():
        receiving = asyncio.ensure_future(loop.sock_recv(sub, 10))
        await asyncio.sleep(0)
        b.send(b"hi")
        return await receiving

    assert run(main()) == b"hi"
    assert Recorded.calls == 2  # would block, then the retry once readable
    sub.close()
    b.close()


def test_patched_socket_class_is_honoured(run, loop):
    a, b = socketpair()
    b.send(b"real")
    with mock.patch.object(socket.socket, "recv", return_value=b"patched", create=True):
        assert run(loop.sock_recv(a, 10)) == b"patched"
    assert run(loop.sock_recv(a, 10)) == b"real"
    a.close()
    b.close()


def test_fd_owned_by_a_transport_is_refused(run, loop):
    a, b = socketpair()

    async def main():
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        with pytest.raises(RuntimeError, match="is used by transport"):
            await loop.sock_recv(a, 10)
        transport.close()
        await asyncio.sleep(0)

    run(main())
    b.close()


# oxio keeps the fd of a finished sock_* wait registered (edge-triggered) for the next wait
# through the same socket object; these pin down that nothing of that is visible: no spinning,
# no lost or stray wake-ups, whatever happens to the fd and its number in between.


async def _cpu_while_idle(seconds=0.1):
    start = time.process_time()
    await asyncio.sleep(seconds)
    return time.process_time() - start


def test_unread_data_after_a_wait_does_not_spin_the_loop(run, loop):
    a, b = socketpair()

    async def main():
        receiving = asyncio.ensure_future(loop.sock_recv(a, 1))
        await asyncio.sleep(0)
        b.send(b"12345")  # one byte is read, four stay pending with nobody waiting
        assert await receiving == b"1"
        cancelled = asyncio.ensure_future(loop.sock_recv(b, 1))
        await asyncio.sleep(0)
        cancelled.cancel()
        a.send(b"x")  # arrives for a wait that was cancelled
        return await _cpu_while_idle()

    assert run(main()) < 0.05
    a.close()
    b.close()


async def _receive_after_a_wait(loop, reader, writer, data):
    """`sock_recv` on `reader` once it waits (so the loop registered its fd), then `data`."""
    receiving = asyncio.ensure_future(loop.sock_recv(reader, 10))
    await asyncio.sleep(0)
    writer.send(data)
    assert await receiving == data


def _pair_reusing(number):
    """A socketpair one of whose ends got fd `number`: that end (the reader), then the other."""
    c, d = socketpair()
    if number not in (c.fileno(), d.fileno()):  # the tests are about a reused number
        c.close()
        d.close()
        raise AssertionError(f"fd {number} was not reused")
    return (c, d) if c.fileno() == number else (d, c)


def test_fd_number_reused_after_close(run, loop):
    a, b = socketpair()

    async def main():
        await _receive_after_a_wait(loop, a, b, b"first")
        old = a.fileno()
        a.close()
        b.close()
        c, d = _pair_reusing(old)
        try:
            for reader, writer in ((c, d), (d, c)):
                await _receive_after_a_wait(loop, reader, writer, b"second")
            fut = loop.create_future()
            loop.add_reader(c, fut.set_result, "readable")
            d.send(b"x")
            assert await fut == "readable"
            assert loop.remove_reader(c) is True
        finally:
            c.close()
            d.close()

    run(main())


def test_fd_closed_while_a_duplicate_lives(run, loop):
    a, b = socketpair()

    async def main():
        await _receive_after_a_wait(loop, a, b, b"one")
        old = a.fileno()
        dup = a.dup()  # keeps the open file (and any registration of it) alive
        a.close()
        try:
            b.send(b"unread")  # readable, through a number the loop no longer knows
            assert await _cpu_while_idle() < 0.05
            reader, writer = _pair_reusing(old)
            try:
                await _receive_after_a_wait(loop, reader, writer, b"new")
            finally:
                reader.close()
                writer.close()
        finally:
            dup.close()

    run(main())
    b.close()


def test_a_closed_fds_duplicate_never_wakes_the_new_owner_of_its_number(run, loop):
    a, b = socketpair()

    async def main():
        await _receive_after_a_wait(loop, a, b, b"one")
        old = a.fileno()
        dup = a.dup()  # the old file, and whatever the loop registered for it, lives on
        a.close()
        reader, writer = _pair_reusing(old)
        try:
            calls = []
            loop.add_reader(reader, calls.append, "new")
            for _ in range(3):  # traffic on the old file only
                b.send(b"old")
                await asyncio.sleep(0.01)
            assert calls == []
            writer.send(b"x")
            while not calls:
                await asyncio.sleep(0.001)
            assert loop.remove_reader(reader) is True
            assert dup.recv(100) == b"oldoldold"
            return calls[0]
        finally:
            reader.close()
            writer.close()
            dup.close()

    assert run(main()) == "new"
    b.close()


def test_one_socket_waits_to_read_then_to_write_then_to_read(run, loop):
    a, b = socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = b"w" * (1 << 20)

    async def main():
        for round_ in range(2):
            await _receive_after_a_wait(loop, a, b, b"r%d" % round_)
            sending = asyncio.ensure_future(loop.sock_sendall(a, payload))
            received = 0
            while received < len(payload):
                received += len(await loop.sock_recv(b, 1 << 16))
            await sending

    run(main())
    a.close()
    b.close()


def test_a_socket_served_elsewhere_after_a_wait_does_not_keep_waking_the_loop(run, loop):
    a, b = socketpair()

    def feed():
        for _ in range(200):
            b.send(b"x")
            time.sleep(0.001)

    async def main():
        await _receive_after_a_wait(loop, a, b, b"one")
        # From now on `a` is nobody's business on this loop (another thread or process would
        # read it); the loop sleeps while data keeps arriving for it.
        feeder = threading.Thread(target=feed)
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
        feeder.start()
        await asyncio.sleep(0.3)
        woken = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - before
        feeder.join()
        return woken

    assert run(main()) < 50  # one wake-up per arrival would be about 200
    a.close()
    b.close()


def test_sendall_through_a_socket_whose_send_takes_part_of_the_data(run, loop):
    class Chunked(socket.socket):
        def send(self, data, flags=0):
            return super().send(data[:4096], flags)

    client, server = tcp_pair()
    chunked = Chunked(client.family, client.type, fileno=client.detach())
    chunked.setblocking(False)
    payload = b"c" * 100_000

    async def main():
        await asyncio.wait_for(loop.sock_sendall(chunked, payload), 5)
        received = bytearray()
        while len(received) < len(payload):
            received += await asyncio.wait_for(loop.sock_recv(server, 1 << 16), 5)
        return bytes(received)

    assert run(main()) == payload
    chunked.close()
    server.close()


def test_finalizers_run_by_a_collection_during_a_wait_may_call_the_loop(run, loop):
    # Registering a wait may allocate, and so collect garbage: an abandoned async generator's
    # finalizer then calls `call_soon_threadsafe` on this very loop.
    async def agen():
        yield 1

    def abandon_in_a_cycle(phase, info):
        if phase == "stop":
            generator = agen()
            cycle = [generator]
            cycle.append(cycle)
            with contextlib.suppress(StopIteration):
                generator.asend(None).send(None)

    async def main():
        received = []
        threshold = gc.get_threshold()
        for collect_every in range(1, 8):
            a, b = socketpair()
            gc.callbacks.append(abandon_in_a_cycle)
            gc.set_threshold(collect_every)
            try:
                receiving = asyncio.ensure_future(loop.sock_recv(a, 10))
                await asyncio.sleep(0)
            finally:
                gc.set_threshold(*threshold)
                gc.callbacks.remove(abandon_in_a_cycle)
            b.send(b"x")
            received.append(await asyncio.wait_for(receiving, 5))
            a.close()
            b.close()
        gc.collect()
        for _ in range(3):
            await asyncio.sleep(0.01)
        return received

    unraisable = []
    with mock.patch("sys.unraisablehook", unraisable.append):
        assert run(main()) == [b"x"] * 7
    assert unraisable == []


def test_add_reader_after_a_sock_wait(run, loop):
    a, b = socketpair()

    async def main():
        await _receive_after_a_wait(loop, a, b, b"data")
        calls = []
        loop.add_reader(a, lambda: calls.append(a.recv(1)))
        b.send(b"xy")
        while len(calls) < 2:  # level-triggered again: called until drained
            await asyncio.sleep(0.001)
        assert loop.remove_reader(a) is True
        return calls

    assert run(main()) == [b"x", b"y"]
    a.close()
    b.close()


def test_add_reader_replaces_a_pending_sock_wait(run, loop):
    a, b = socketpair()

    async def main():
        receiving = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        fut = loop.create_future()
        loop.add_reader(a, fut.set_result, "mine")
        b.send(b"x")
        assert await fut == "mine"
        assert loop.remove_reader(a) is True
        assert not receiving.done()
        receiving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await receiving

    run(main())
    a.close()
    b.close()


def test_recv_and_sendall_wait_on_one_socket_at_once(run, loop):
    a, b = socketpair()
    payload = b"p" * (4 << 20)

    async def peer():
        received = bytearray()
        while len(received) < len(payload):
            received += await loop.sock_recv(b, 1 << 16)
        await loop.sock_sendall(b, b"done")
        return len(received)

    async def main():
        receiving = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        sending = asyncio.ensure_future(loop.sock_sendall(a, payload))
        await asyncio.sleep(0)
        got = await peer()
        await sending
        assert await receiving == b"done"
        assert loop.remove_reader(a) is False
        assert loop.remove_writer(a) is False
        return got

    assert run(main()) == len(payload)
    a.close()
    b.close()


def test_large_and_small_reads_arrive_intact_within_their_limits(run, loop):
    # oxio receives a large read straight into its own `bytes` and small ones through a shared
    # buffer, switching per read.
    a, b = socketpair()
    rng = random.Random(1)
    sent = [
        rng.randbytes(200_000),
        b"tiny",
        rng.randbytes(150_000),
        b"x" * 10,
        rng.randbytes(90_000),
    ]

    async def send():
        for chunk in sent:
            await loop.sock_sendall(b, chunk)
            await asyncio.sleep(0.01)  # each chunk arrives alone, as one read or a few

    async def main():
        sender = asyncio.create_task(send())
        received = bytearray()
        # A small limit follows each large one, while the rest of a large chunk waits.
        limits = itertools.cycle((256 * 1024, 1000))
        while len(received) < sum(map(len, sent)):
            limit = next(limits)
            data = await loop.sock_recv(a, limit)
            assert isinstance(data, bytes) and 0 < len(data) <= limit
            received += data
        await sender
        return bytes(received)

    assert run(main()) == b"".join(sent)
    a.close()
    b.close()


def test_large_datagrams_through_sock_recv_are_truncated_as_recv_truncates(run, loop):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setblocking(False)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    rng = random.Random(1)
    first, second = rng.randbytes(100_000), rng.randbytes(120_000)

    async def main():
        b.send(first)
        b.send(second)
        b.send(b"small")
        got_first = await loop.sock_recv(a, 256 * 1024)
        got_second = await loop.sock_recv(a, 1000)  # the rest of this datagram is discarded
        got_small = await loop.sock_recv(a, 256 * 1024)
        return got_first, got_second, got_small

    assert run(main()) == (first, second[:1000], b"small")
    a.close()
    b.close()
