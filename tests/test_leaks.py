"""No fd or memory leaks: loops created and closed, sockets driven through sock_*."""

import asyncio
import gc
import os
import socket
import warnings
import weakref

import pytest


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


class Holder:
    """Holds the handle that calls it back: the cycle `self.handle = loop.call_soon(self.cb)`."""

    def callback(self):
        pass


@pytest.mark.parametrize("queued_before", [0, 1000], ids=["short queue", "long queue"])
def test_a_handle_in_a_cycle_is_collected_after_it_ran(loop, run, queued_before):
    async def main():
        # Many handles first, so that one reused from any allocator cache is the one tested.
        for _ in range(5000):
            loop.call_soon(int)
        await asyncio.sleep(0)

        def make_cycle():
            # oxio hides handles that join a long ready queue from the cyclic GC until they run.
            for _ in range(queued_before):
                loop.call_soon(int)
            holder = Holder()
            holder.handle = loop.call_soon(holder.callback)
            return weakref.ref(holder)

        ref = make_cycle()
        await asyncio.sleep(0)
        gc.collect()
        return ref() is None

    assert run(main())


def test_timers_in_cycles_are_collected_once_fired_or_cancelled(loop, run):
    async def main():
        def make_cycle(delay, cancel):
            holder = Holder()
            holder.handle = loop.call_later(delay, holder.callback)
            if cancel:
                holder.handle.cancel()
            return weakref.ref(holder)

        fired = make_cycle(0, cancel=False)
        cancelled = make_cycle(3600, cancel=True)
        # More than 100 cancelled timers make the loop drop them from its heap.
        for _ in range(200):
            loop.call_later(3600, int).cancel()
        await asyncio.sleep(0.01)
        gc.collect()
        return fired() is None, cancelled() is None

    assert run(main()) == (True, True)


@pytest.mark.parametrize("queued_before", [0, 1000], ids=["short queue", "long queue"])
def test_a_stopped_loop_left_in_a_cycle_with_pending_callbacks_is_collected(
    loop_factory, queued_before
):
    def abandon():
        loop = loop_factory()

        async def schedule():
            # Scheduled while the loop runs, then still pending when it stops.
            for _ in range(queued_before):
                loop.call_soon(int)
            holder = Holder()
            holder.loop = loop
            holder.soon = loop.call_soon(holder.callback)
            holder.later = loop.call_later(3600, holder.callback)

        loop.run_until_complete(schedule())
        return weakref.ref(loop)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the loop is unclosed on purpose
        ref = abandon()
        gc.collect()
    assert ref() is None


def test_a_loop_left_with_pending_task_steps_and_done_callbacks_is_collected(loop_factory):
    # asyncio's C Task and Future schedule these without a handle object on oxio: the loop
    # itself must show them to the GC.
    def abandon():
        loop = loop_factory()
        waiter = loop.create_future()
        holder = Holder()
        holder.loop = loop
        holder.task = loop.create_task(waiter_of(waiter))
        loop.run_until_complete(asyncio.sleep(0))  # the task starts and waits
        waiter.add_done_callback(lambda future: holder.callback())
        # With the loop stopped, the task's wake-up and the done callback stay pending.
        waiter.set_result(holder)
        return weakref.ref(loop), weakref.ref(holder)

    async def waiter_of(future):
        await future

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the loop is unclosed on purpose
        refs = abandon()
        gc.collect()
    assert [ref() for ref in refs] == [None, None]


def test_handles_that_ran_are_not_left_for_the_gc_to_find(loop):
    handle_type = type(loop.call_soon(int))

    def live_handles():
        gc.collect()
        return sum(1 for obj in gc.get_objects() if type(obj) is handle_type)

    loop.call_soon(loop.stop)
    loop.run_forever()
    before = live_handles()
    for _ in range(3000):
        loop.call_soon(int)
    loop.call_soon(loop.stop)
    loop.run_forever()
    # oxio keeps some emptied handles for reuse, out of the GC's view: nobody can get at them.
    assert live_handles() == before
