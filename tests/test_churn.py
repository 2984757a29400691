"""Echo servers on the loop under test against misbehaving clients and connection churn.

Misbehaving clients are plain blocking sockets in threads, so they misbehave the same way
whatever the loop: they reset connections, half-close and then read the whole echo, or send
byte by byte. Churn opens and closes many connections from the loop itself; the count is
OXIO_CHURN_CONNECTIONS (default small enough for `make test`; 100,000 by hand), and
OXIO_TLS_CHURN_CONNECTIONS for TLS, where every connection costs two handshakes in this process.
"""

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import gc
import os
import socket
import struct
import threading
import time

import pytest

CHURN_CONNECTIONS = int(os.environ.get("OXIO_CHURN_CONNECTIONS", "20000"))
# About 7 s per loop on 2 cores. Much below 2000 the allocator's own drift (up to ~0.5 MiB seen
# on asyncio) can exceed the per-connection RSS bound of check_churn.
TLS_CHURN_CONNECTIONS = int(os.environ.get("OXIO_TLS_CHURN_CONNECTIONS", "5000"))


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


class ServerStats:
    """What the server side saw: connections still open, and how each one ended."""

    def __init__(self):
        self.open = 0
        self.closed = 0
        self.errors = []  # exception types that ended connections

    def lost(self, exc):
        self.open -= 1
        self.closed += 1
        if exc is not None:
            self.errors.append(type(exc))


class EchoProtocol(asyncio.Protocol):
    def __init__(self, stats):
        self.stats = stats

    def connection_made(self, transport):
        self.stats.open += 1
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    # eof_received returns None: the transport closes once the echo is flushed.

    def connection_lost(self, exc):
        self.stats.lost(exc)


def streams_echo(stats):
    async def handle(reader, writer):
        stats.open += 1
        error = None
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError as exc:
            error = exc
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            stats.lost(error)

    return handle


async def start_echo_server(kind, stats, ssl=None):
    if kind == "protocol":
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: EchoProtocol(stats), "127.0.0.1", 0, ssl=ssl)
    return await asyncio.start_server(streams_echo(stats), "127.0.0.1", 0, ssl=ssl)


async def wait_until(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# -- misbehaving clients: blocking sockets, run in threads ------------------------------------


def connect(address):
    return socket.create_connection(address, timeout=10)


def read_to_eof(sock):
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def resetting_client(address, n):
    """Sends, reads part of the echo, then closes with SO_LINGER 0: the kernel sends a RST."""
    with connect(address) as sock:
        sock.sendall(b"r%d " % n * 1000)
        sock.recv(100)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return None


def half_closing_client(address, n):
    """Sends 256 KiB from a second thread, then shuts its write side; reads the echo to EOF."""
    payload = os.urandom(256 * 1024)
    with connect(address) as sock:

        def send():
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        # Reading while sending: the server may stop reading while its echo is unread.
        sender = threading.Thread(target=send)
        sender.start()
        echoed = read_to_eof(sock)
        sender.join()
    return echoed == payload


def slow_client(address, n):
    """Sends byte by byte with small sleeps, then half-closes and reads the echo to EOF."""
    payload = b"slow client %d\n" % n * 4
    with connect(address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one segment per byte
        for byte in payload:
            sock.send(bytes([byte]))
            time.sleep(0.002)
        sock.shutdown(socket.SHUT_WR)
        echoed = read_to_eof(sock)
    return echoed == payload


@pytest.mark.parametrize("kind", ["protocol", "streams"])
def test_misbehaving_clients_lose_no_data_and_leak_no_fds(loop, run, kind):
    clients = [resetting_client] * 20 + [half_closing_client] * 20 + [slow_client] * 8
    stats = ServerStats()

    async def main():
        fds = open_fds()
        server = await start_echo_server(kind, stats)
        address = server.sockets[0].getsockname()
        with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
            runs = [
                loop.run_in_executor(pool, client, address, n) for n, client in enumerate(clients)
            ]
            results = await asyncio.wait_for(asyncio.gather(*runs), 30)
        # Every half-closing and slow client got exactly its bytes back.
        assert results == [None] * 20 + [True] * 28
        # The server saw every connection end, resets as resets and nothing else as an error.
        await wait_until(lambda: stats.closed == len(clients))
        assert stats.open == 0
        assert set(stats.errors) <= {ConnectionResetError, BrokenPipeError}, stats.errors
        assert len(stats.errors) == 20, stats.errors  # exactly the resetting clients
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)  # transports release their sockets after connection_lost
        gc.collect()
        assert open_fds() == fds

    run(main())


# -- churn --------------------------------------------------------------------------------


class PingClient(asyncio.Protocol):
    """Sends a ping, closes once its echo is back; `done` resolves on connection_lost."""

    def __init__(self, done):
        self.done = done
        self.received = b""

    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"ping")

    def data_received(self, data):
        self.received += data
        if self.received == b"ping":
            self.transport.close()

    def connection_lost(self, exc):
        self.done.set_result(self.received)


async def churn(loop, address, count, ssl=None, concurrency=32):
    """Opens, pings and closes `count` connections, `concurrency` at a time."""

    async def worker(share):
        for _ in range(share):
            done = loop.create_future()
            await loop.create_connection(functools.partial(PingClient, done), *address, ssl=ssl)
            assert await done == b"ping"

    shares = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]
    await asyncio.gather(*(worker(share) for share in shares))


def check_churn(loop, run, label, count, server_ssl=None, client_ssl=None):
    stats = ServerStats()
    server = run(start_echo_server("protocol", stats, ssl=server_ssl))
    address = server.sockets[0].getsockname()
    # Warm-up: pools, caches, and for TLS OpenSSL's own per-thread state.
    run(churn(loop, address, max(count // 10, 100), ssl=client_ssl))
    run(wait_until(lambda: stats.open == 0))
    gc.collect()
    fds, rss = open_fds(), rss_kib()

    started = time.monotonic()
    run(churn(loop, address, count, ssl=client_ssl))
    elapsed = time.monotonic() - started
    run(wait_until(lambda: stats.open == 0))
    gc.collect()
    fds_after, rss_after = open_fds(), rss_kib()
    print(
        f"\nchurn {label}: {count} connections in {elapsed:.1f} s; "
        f"fds {fds} -> {fds_after}; VmRSS {rss} -> {rss_after} KiB"
    )
    server.close()
    run(server.wait_closed())

    assert stats.errors == []
    assert fds_after == fds
    # Bound: a quarter of a KiB per connection, so a leak of 1 KiB per connection fails it.
    assert rss_after - rss < count / 4, f"VmRSS grew by {rss_after - rss} KiB"


def test_connection_churn_leaves_fds_and_rss_flat(loop, run, loop_name):
    check_churn(loop, run, loop_name, CHURN_CONNECTIONS)


def test_tls_connection_churn_leaves_fds_and_rss_flat(loop, run, loop_name, certs):
    """Both ends are TLS on the loop under test; a leaked SSLObject, BIO or transport per
    connection would weigh several KiB, well over the bound."""
    server_ssl, client_ssl = certs.server_context(), certs.client_context()
    check_churn(loop, run, f"{loop_name} TLS", TLS_CHURN_CONNECTIONS, server_ssl, client_ssl)


def test_reset_reaches_connection_lost_as_an_oserror_with_errno(loop, run):
    """Code tells a reset from other errors by `exc.errno`, as asyncio's own OSErrors allow."""

    async def main():
        stats = ServerStats()
        lost = loop.create_future()

        class Recording(EchoProtocol):
            def connection_lost(self, exc):
                super().connection_lost(exc)
                lost.set_result(exc)

        server = await loop.create_server(lambda: Recording(stats), "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        await loop.run_in_executor(None, resetting_client, address, 0)
        exc = await asyncio.wait_for(lost, 10)
        server.close()
        await server.wait_closed()
        assert type(exc) is ConnectionResetError
        assert exc.errno == errno.ECONNRESET
        assert exc.strerror == os.strerror(errno.ECONNRESET)
        assert str(exc) == f"[Errno {errno.ECONNRESET}] {os.strerror(errno.ECONNRESET)}"

    run(main())
