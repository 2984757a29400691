"""The scheduling workloads of `make bench`. Each returns the number of operations it did.

Run in a fresh process per measurement by `run.py`:
    python benches/workloads.py LOOP WORKLOAD [SCALE]
prints one JSON line: operations, wall seconds, and CPU seconds of this process. A measurement
runs the workload at its size again and again until it has lasted `MIN_SECONDS`. SCALE (default
1) scales both the size and that time; `make bench-quick` runs a quarter.
"""

import asyncio
import dataclasses
import importlib
import json
import sys
import time
from collections.abc import Awaitable, Callable


async def callback_chains(schedule, n):
    """`n` callbacks, each scheduling the next through `schedule`, in ten chains."""
    done = asyncio.get_running_loop().create_future()
    remaining = n

    def tick():
        nonlocal remaining
        remaining -= 1
        if remaining > 0:
            schedule(tick)
        elif remaining == 0:
            done.set_result(None)

    # Ten chains in flight, so the ready queue holds more than one callback per iteration.
    # Each chain stops once the count is spent; a chain left running would go on into the
    # measured run after the warm-up and be timed without being counted.
    for _ in range(10):
        schedule(tick)
    await done
    return n


async def call_soon(n):
    return await callback_chains(asyncio.get_running_loop().call_soon, n)


async def call_soon_threadsafe(n):
    """call_soon's chains through call_soon_threadsafe, called from the loop's own thread: the
    price of the lock and of waking the poll that a call from another thread pays."""
    return await callback_chains(asyncio.get_running_loop().call_soon_threadsafe, n)


async def call_later(n):
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    fired = 0

    def fire():
        nonlocal fired
        fired += 1
        if fired == n:
            done.set_result(None)

    for i in range(n):
        loop.call_later(0.001 * (i % 10), fire)
        # Every other timer is cancelled before it fires, as timeouts usually are.
        loop.call_later(0.001 * (i % 10), fire).cancel()
    await done
    return 2 * n


async def sleep0(n):
    for _ in range(n):
        await asyncio.sleep(0)
    return n


async def gather(n):
    async def noop():
        pass

    await asyncio.gather(*(noop() for _ in range(n)))
    return n


async def create_task_await(n):
    """Spawn a task running a trivial coroutine and await it, one at a time."""

    async def noop():
        pass

    for _ in range(n):
        await asyncio.create_task(noop())
    return n


async def queue_ping_pong(n):
    ping, pong = asyncio.Queue(), asyncio.Queue()

    async def echo():
        for _ in range(n):
            pong.put_nowait(await ping.get())

    task = asyncio.create_task(echo())
    for i in range(n):
        ping.put_nowait(i)
        await pong.get()
    await task
    return n


async def sock_echo(n, size=1024):
    """Round trips of 1 KiB through loop.sock_* over a socketpair, both ends on this loop."""
    import socket

    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    payload = b"x" * size

    async def echo():
        for _ in range(n):
            data = await loop.sock_recv(b, size)
            while len(data) < size:
                data += await loop.sock_recv(b, size - len(data))
            await loop.sock_sendall(b, data)

    task = asyncio.ensure_future(echo())
    for _ in range(n):
        await loop.sock_sendall(a, payload)
        got = 0
        while got < size:
            got += len(await loop.sock_recv(a, size - got))
    await task
    a.close()
    b.close()
    return n


async def subprocess_spawn(n):
    """Spawn `true` and wait for it, one after another: the whole create/exit/reap path."""
    for _ in range(n):
        proc = await asyncio.create_subprocess_exec("true")
        await proc.wait()
    return n


async def subprocess_pipe(mib):
    """MiB read from a child writing `mib` MiB of zeros to its stdout, through a StreamReader."""
    proc = await asyncio.create_subprocess_exec(
        "head", "-c", f"{mib}M", "/dev/zero", stdout=asyncio.subprocess.PIPE
    )
    total = 0
    while chunk := await proc.stdout.read(1 << 20):
        total += len(chunk)
    await proc.wait()
    assert total == mib << 20, total
    return mib


@dataclasses.dataclass(frozen=True)
class Workload:
    run: Callable[[int], Awaitable[int]]
    size: int
    # False where the size is what the row is about (a gather of 100k), so --scale leaves it.
    scalable: bool = True
    warmup_size: int = 1000


WORKLOADS = {
    "call_soon": Workload(call_soon, 200_000),
    "call_soon_threadsafe": Workload(call_soon_threadsafe, 200_000),
    "call_later": Workload(call_later, 100_000),
    "sleep(0)": Workload(sleep0, 100_000),
    "create_task+await": Workload(create_task_await, 100_000),
    "gather 100k": Workload(gather, 100_000, scalable=False),
    "queue ping-pong": Workload(queue_ping_pong, 50_000),
    "sock_* echo 1 KiB": Workload(sock_echo, 20_000),
    "subprocess spawn+wait": Workload(subprocess_spawn, 300, warmup_size=20),
    "subprocess pipe MiB": Workload(subprocess_pipe, 1024, warmup_size=16),
}


# The loops besides asyncio's own; each module has `new_event_loop()`.
OTHER_LOOPS = ("uvloop", "rloop", "rsloop", "veloxloop", "oxio")


def new_loop(name):
    if name == "asyncio":
        return asyncio.new_event_loop()
    if name not in OTHER_LOOPS:
        raise SystemExit(f"unknown loop {name}")
    return importlib.import_module(name).new_event_loop()


# How long one measurement runs at least. The fastest loops finish a call_soon run in 25 ms, and
# one stall of the shared machine there made a sample slow by half (rloop, 4.5M against 8.3M
# calls/s, in the run of 2026-11-26 04:07); over half a second such a stall moves it by 4%.
MIN_SECONDS = 0.5


def measure(loop_name, name, scale=1.0):
    workload = WORKLOADS[name]
    size = round(workload.size * scale) if workload.scalable else workload.size
    loop = new_loop(loop_name)
    try:
        loop.run_until_complete(workload.run(workload.warmup_size))
        ops, started, cpu = 0, time.perf_counter(), time.process_time()
        while (wall := time.perf_counter() - started) < MIN_SECONDS * scale or not ops:
            ops += loop.run_until_complete(workload.run(size))
        cpu = time.process_time() - cpu
    finally:
        loop.close()
    return {"ops": ops, "wall": wall, "cpu": cpu}


if __name__ == "__main__":
    scale = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    print(json.dumps(measure(sys.argv[1], sys.argv[2], scale)))
