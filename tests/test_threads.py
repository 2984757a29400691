"""Cross-thread use: call_soon_threadsafe storms, cancelling from other threads, executors."""

import asyncio
import threading


def test_call_soon_threadsafe_from_many_threads_runs_each_callback_once(loop):
    threads, per_thread = 4, 5000
    seen = []
    done = threading.Barrier(threads + 1)

    def producer(tag):
        for i in range(per_thread):
            loop.call_soon_threadsafe(seen.append, (tag, i))
        done.wait()

    async def main():
        workers = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        await loop.run_in_executor(None, done.wait)
        await asyncio.sleep(0.01)
        for w in workers:
            w.join()

    loop.run_until_complete(main())
    assert len(seen) == threads * per_thread
    for tag in range(threads):
        # Per producer thread, FIFO order is kept.
        assert [i for t, i in seen if t == tag] == list(range(per_thread))


def test_handle_cancelled_from_another_thread_never_runs(loop):
    seen = []

    async def main():
        handle = loop.call_later(0.05, seen.append, "ran")
        await loop.run_in_executor(None, handle.cancel)
        await asyncio.sleep(0.1)

    loop.run_until_complete(main())
    assert seen == []


def test_run_coroutine_threadsafe_round_trips(loop):
    results = []

    def client():
        for i in range(100):
            future = asyncio.run_coroutine_threadsafe(asyncio.sleep(0, i), loop)
            results.append(future.result(timeout=5))
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=client)
    thread.start()
    loop.run_forever()
    thread.join()
    assert results == list(range(100))
