"""Part two of `make demo`: one ordinary asyncio program, run on each loop in the same process.

The program mixes what real services do: many short tasks, timers, a queue pipeline, a
blocking call pushed to the default executor, a TCP server talking to many clients through
asyncio streams, and a few subprocesses. demo.py times a few runs on each loop and keeps the best.
"""

import asyncio
import hashlib
import time

from loops import loop_factory

TASKS = 20_000
PIPELINE_ITEMS = 20_000


async def many_tasks():
    async def work(i):
        await asyncio.sleep(0)
        return i

    results = await asyncio.gather(*(work(i) for i in range(TASKS)))
    assert sum(results) == TASKS * (TASKS - 1) // 2


async def timers():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    fired = 0

    def tick():
        nonlocal fired
        fired += 1
        if fired == 5_000:
            done.set_result(None)

    for i in range(5_000):
        loop.call_later((i % 20) / 1000, tick)
    await done


async def pipeline():
    raw, parsed = asyncio.Queue(maxsize=100), asyncio.Queue(maxsize=100)

    async def produce():
        for i in range(PIPELINE_ITEMS):
            await raw.put(i)
        await raw.put(None)

    async def transform():
        while (item := await raw.get()) is not None:
            await parsed.put(item * 2)
        await parsed.put(None)

    async def consume():
        total = 0
        while (item := await parsed.get()) is not None:
            total += item
        return total

    _, _, total = await asyncio.gather(produce(), transform(), consume())
    assert total == PIPELINE_ITEMS * (PIPELINE_ITEMS - 1)


async def executor_call():
    loop = asyncio.get_running_loop()
    digest = await loop.run_in_executor(None, hashlib.sha256, b"x" * 1_000_000)
    assert len(digest.hexdigest()) == 64


async def streams_echo(clients=50, round_trips=200):
    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line)
        writer.close()

    async def client(address):
        reader, writer = await asyncio.open_connection(*address)
        line = b"x" * 1023 + b"\n"
        for _ in range(round_trips):
            writer.write(line)
            assert await reader.readline() == line
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        address = server.sockets[0].getsockname()
        await asyncio.gather(*(client(address) for _ in range(clients)))


async def subprocesses(count=20):
    async def run(i):
        proc = await asyncio.create_subprocess_exec("echo", str(i), stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        return int(out)

    assert sorted(await asyncio.gather(*(run(i) for i in range(count)))) == list(range(count))


async def program():
    await many_tasks()
    await timers()
    await pipeline()
    await executor_call()
    await streams_echo()
    await subprocesses()


DESCRIPTION = (
    "20k tasks gathered, 5k timers, a 3-stage queue pipeline of 20k items, a hash computed in "
    "the default executor, 50 stream clients making 200 round trips each to a TCP server, and "
    "20 subprocesses"
)


def time_once(loop):
    """Wall-clock seconds of one run of the program on a fresh loop called `loop`."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        start = time.perf_counter()
        runner.run(program())
        return time.perf_counter() - start
