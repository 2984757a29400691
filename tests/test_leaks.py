"""No fd or memory leaks: loops created and closed, sockets driven through sock_*."""

import asyncio
import gc
import os
import socket


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def rss_kib():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def churn_loops(loop_factory, count):
    for _ in range(count):
        loop = loop_factory()
        loop.call_soon(print)
        loop.call_later(10, print)
        loop.close()


def test_10k_loops_leave_fds_and_memory_flat(loop_factory):
    churn_loops(loop_factory, 1000)  # warm-up: allocator pools, caches
    gc.collect()
    fds, rss = open_fds(), rss_kib()
    churn_loops(loop_factory, 10_000)
    gc.collect()
    assert open_fds() == fds
    # A leak of even one small object per loop would show as >1 MiB; allow allocator noise.
    assert rss_kib() - rss < 2048, f"RSS grew by {rss_kib() - rss} KiB"


async def echo_round(loop, listener):
    client = socket.socket()
    client.setblocking(False)
    accept = asyncio.ensure_future(loop.sock_accept(listener))
    await loop.sock_connect(client, listener.getsockname())
    server, _ = await accept
    await loop.sock_sendall(client, b"ping")
    data = await loop.sock_recv(server, 4)
    await loop.sock_sendall(server, data)
    assert await loop.sock_recv(client, 4) == b"ping"
    server.close()
    client.close()


def test_10k_sockets_through_sock_methods_leave_fds_and_memory_flat(loop, run):
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    listener.setblocking(False)

    async def rounds(count):
        for _ in range(count):
            await echo_round(loop, listener)

    run(rounds(500))
    gc.collect()
    fds, rss = open_fds(), rss_kib()
    run(rounds(5000))  # two sockets per round: 10,000 sockets
    gc.collect()
    assert open_fds() == fds
    assert rss_kib() - rss < 2048, f"RSS grew by {rss_kib() - rss} KiB"
    listener.close()
