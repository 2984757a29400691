"""call_soon, call_later, call_at and their handles, on both loops."""

import asyncio
import contextvars
import threading
import time

import pytest


def test_call_soon_runs_fifo_with_args(loop):
    seen = []
    for i in range(5):
        loop.call_soon(seen.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [0, 1, 2, 3, 4]


def test_callbacks_scheduled_while_running_wait_for_next_iteration(loop):
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "scheduled-by-first")

    loop.call_soon(first)
    loop.call_soon(order.append, "second")
    loop.call_soon(loop.stop)
    loop.run_forever()
    # stop() ends the loop after the current iteration: the late callback has not run yet.
    assert order == ["first", "second"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == ["first", "second", "scheduled-by-first"]


def test_cancelled_handle_never_runs(loop):
    seen = []
    handle = loop.call_soon(seen.append, "soon")
    timer = loop.call_later(0, seen.append, "later")
    handle.cancel()
    timer.cancel()
    assert handle.cancelled() and timer.cancelled()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert seen == []


def test_call_later_zero_returns_timer_handle(loop):
    handle = loop.call_later(0, lambda: None)
    assert type(handle).__name__ == "TimerHandle"
    assert handle.when() == handle._when
    assert handle.when() <= loop.time()
    handle.cancel()


def test_timers_never_fire_early(loop):
    lateness = []

    def fire(when):
        lateness.append(loop.time() - when)

    for delay in (0.001, 0.002, 0.005, 0.01, 0.0005):
        h = loop.call_later(delay, lambda: None)
        h.cancel()
        when = loop.time() + delay
        loop.call_at(when, fire, when)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert len(lateness) == 5
    assert min(lateness) >= 0


# asyncio's heapq leaves equal deadlines in arbitrary order; oxio promises FIFO (docs/compat.md).
@pytest.mark.parametrize("loop_name", ["oxio"], indirect=True)
def test_same_deadline_timers_fire_in_scheduling_order(loop):
    when = loop.time() + 0.01
    seen = []
    for i in range(50):
        loop.call_at(when, seen.append, i)
    loop.run_until_complete(asyncio.sleep(0.03))
    assert seen == list(range(50))


def test_timer_order_by_deadline(loop):
    seen = []
    loop.call_later(0.03, seen.append, 3)
    loop.call_later(0.01, seen.append, 1)
    loop.call_later(0.02, seen.append, 2)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert seen == [1, 2, 3]


def test_a_long_batch_of_timers_runs_in_deadline_order_without_the_cancelled(loop):
    # All due at once, scheduled out of order: one batch far longer than oxio's prefetch
    # distance. Every third is cancelled up front; every fifth to run cancels the next one,
    # which is then already in the same batch.
    count = 3000
    base = loop.time() - 1
    ranks = [i * 7919 % count for i in range(count)]
    seen = []
    timers = {}

    def fire(rank):
        seen.append(rank)
        if rank % 5 == 0 and rank + 1 in timers:
            timers[rank + 1].cancel()

    for rank in ranks:
        timers[rank] = loop.call_at(base + rank * 1e-6, fire, rank)
    for rank in range(0, count, 3):
        timers[rank].cancel()
    loop.run_until_complete(asyncio.sleep(0.01))
    expected = []
    for rank in range(count):
        if rank % 3 == 0 or (rank - 1 in expected[-1:] and (rank - 1) % 5 == 0):
            continue
        expected.append(rank)
    assert seen == expected
    assert all(not timer._scheduled for timer in timers.values())


def test_time_is_monotonic_with_sub_millisecond_resolution(loop):
    a = loop.time()
    assert abs(a - time.monotonic()) < 0.01
    readings = {loop.time() for _ in range(1000)}
    assert len(readings) > 10


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at", "call_soon_threadsafe"])
def test_context_argument(loop, method):
    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    seen = []
    args = {"call_later": (0,), "call_at": (loop.time(),)}.get(method, ())
    handle = getattr(loop, method)(*args, lambda: seen.append(var.get()), context=ctx)
    assert handle._context is ctx  # get_context() arrived in 3.12
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert seen == ["in-ctx"]


def test_context_keyword_spelled_by_distinct_string_objects(run, loop):
    # The keyword's name arrives as whatever string object the caller built: interned from
    # source code, asyncio's C Future and Task's own, or made at run time as here. Each
    # spelling is recognised, whichever came first.
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    async def main():
        for n in range(3):
            ctx = contextvars.copy_context()
            ctx.run(var.set, n)
            keyword = "".join(["con", "text"])
            loop.call_soon(lambda: seen.append(var.get()), **{keyword: ctx})
        future = loop.create_future()
        loop.call_soon(future.set_result, "done", context=contextvars.copy_context())
        task = loop.create_task(asyncio.sleep(0, "slept"))
        return await future, await task

    assert run(main()) == ("done", "slept")
    assert seen == [0, 1, 2]
    with pytest.raises(TypeError, match="unexpected keyword argument 'contexts'"):
        loop.call_soon(print, **{"".join(["con", "texts"]): None})


def test_context_named_twice_by_a_caller_in_c_is_refused(loop):
    # Python's call syntax cannot name a keyword twice; a vectorcall from C can.
    from _testcapi import pyobject_vectorcall

    context = contextvars.copy_context()
    for method in (loop.call_soon, loop.call_soon_threadsafe):
        with pytest.raises(TypeError, match="multiple values for argument 'context'"):
            pyobject_vectorcall(method, (print, context, context), ("context", "context"))


def test_default_context_is_a_copy(loop):
    var = contextvars.ContextVar("var", default="unset")
    var.set("outer")
    seen = []

    def cb():
        seen.append(var.get())
        var.set("changed-in-callback")

    loop.call_soon(cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["outer"]
    assert var.get() == "outer"


def test_call_soon_threadsafe_wakes_the_loop(loop):
    seen = []

    def from_thread():
        time.sleep(0.05)
        loop.call_soon_threadsafe(seen.append, "woken")
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=from_thread)
    thread.start()
    start = time.monotonic()
    loop.run_forever()
    thread.join()
    assert seen == ["woken"]
    assert time.monotonic() - start < 5


def test_none_delay_and_when_raise_type_error(loop):
    with pytest.raises(TypeError):
        loop.call_later(None, lambda: None)
    with pytest.raises(TypeError):
        loop.call_at(None, lambda: None)


def test_closed_loop_refuses_work(loop_factory):
    loop = loop_factory()
    loop.close()
    loop.close()  # twice is fine
    assert loop.is_closed()
    for call in (
        lambda: loop.call_soon(print),
        lambda: loop.call_later(1, print),
        lambda: loop.call_at(1, print),
        lambda: loop.call_soon_threadsafe(print),
        lambda: loop.run_forever(),
    ):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        loop.create_task(coro)
    coro.close()


def test_exception_in_callback_goes_to_handler(loop, loop_errors):
    def boom():
        raise ZeroDivisionError("boom")

    handle = loop.call_soon(boom)
    loop.call_soon(loop.stop)
    loop.run_forever()
    (context,) = loop_errors.expect(1)
    assert isinstance(context["exception"], ZeroDivisionError)
    assert context["handle"] is handle
    assert context["message"].startswith("Exception in callback ")


def test_keyboard_interrupt_in_callback_propagates(loop):
    def interrupt():
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()


def test_handle_repr_mentions_callback(loop):
    def my_callback():
        pass

    handle = loop.call_soon(my_callback)
    assert "my_callback" in repr(handle)
    assert repr(handle).startswith("<Handle")
    timer = loop.call_later(10, my_callback)
    assert repr(timer).startswith("<TimerHandle when=")
    handle.cancel()
    timer.cancel()
    assert repr(handle) == "<Handle cancelled>"
    assert repr(timer).startswith("<TimerHandle cancelled when=")


class Reentrant:
    """A callback whose finalizer or repr calls back into the handle that holds it."""

    def __init__(self, on_del=None, on_repr=None):
        self.on_del, self.on_repr = on_del, on_repr

    def __call__(self):
        pass

    def __del__(self):
        if self.on_del:
            self.on_del()

    def __repr__(self):
        if self.on_repr:
            self.on_repr()
        return "<Reentrant>"


@pytest.mark.parametrize("method", ["call_soon", "call_later"])
def test_a_finalizer_run_by_cancel_sees_the_handle_cancelled(loop, method):
    # oxio drops a cancelled handle's callback only once the handle is consistent again.
    seen = []
    schedule = getattr(loop, method)
    args = (3600,) if method == "call_later" else ()
    callback = Reentrant(on_del=lambda: seen.append((handle.cancelled(), repr(handle))))
    handle = schedule(*args, callback)
    del callback
    handle.cancel()
    [(cancelled, shown)] = seen
    assert cancelled is True
    assert shown.startswith(f"<{type(handle).__name__} cancelled")
    assert "Reentrant" not in shown


def test_a_callback_repr_that_cancels_its_own_handle(loop):
    # repr(handle) calls repr(callback), which here cancels the handle it is being shown by.
    handle = loop.call_soon(Reentrant(on_repr=lambda: handle.cancel()))
    assert "<Reentrant>" in repr(handle)
    assert handle.cancelled()
    assert repr(handle) == "<Handle cancelled>"


@pytest.mark.parametrize(
    "when, runs", [(float("inf"), False), (float("nan"), True), (-1e300, True)]
)
def test_extreme_deadlines(loop, when, runs):
    # asyncio runs a timer unless `when >= end_time`, which a NaN never is.
    seen = []
    handle = loop.call_at(when, seen.append, "fired")
    loop.call_later(0.01, seen.append, "later")
    loop.run_until_complete(asyncio.sleep(0.05))
    assert seen == (["fired", "later"] if runs else ["later"])
    handle.cancel()


def run_callbacks(loop, count):
    """Runs `count` callbacks that nothing keeps a reference to, then stops."""
    for _ in range(count):
        loop.call_soon(int)
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_a_handle_its_caller_keeps_is_never_reused(loop):
    # oxio reuses handles that ran and that nothing else references; these are referenced.
    kept = loop.call_soon(divmod, 7, 2)
    loop.call_soon(loop.stop)
    loop.run_forever()
    before = repr(kept)
    run_callbacks(loop, 3000)
    fresh = [loop.call_soon(int) for _ in range(3000)]
    assert all(handle is not kept for handle in fresh)
    assert (kept._callback, kept._args, kept.cancelled()) == (divmod, (7, 2), False)
    assert repr(kept) == before
    for handle in fresh:
        handle.cancel()


def test_a_handle_the_exception_handler_keeps_is_never_reused(loop):
    kept = []
    loop.set_exception_handler(lambda _loop, context: kept.append(context["handle"]))

    def boom():
        raise ZeroDivisionError

    loop.call_soon(boom)
    run_callbacks(loop, 3000)
    (handle,) = kept
    assert handle._callback is boom and handle._args == ()
    assert "boom" in repr(handle)


def test_a_callback_sees_none_of_the_context_changes_of_callbacks_before_it(loop):
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    def change():
        var.set("changed")

    def read():
        seen.append(var.get())

    # Each round runs in handles the last round left behind (on oxio).
    for _ in range(3):
        for _ in range(100):
            loop.call_soon(change)
        loop.call_soon(loop.stop)
        loop.run_forever()
        for _ in range(100):
            loop.call_soon(read)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert seen == ["unset"] * 300


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_call_soon_arguments_as_asyncio_takes_them(loop, method):
    schedule = getattr(loop, method)
    seen = []
    schedule(callback=seen.append, context=None).cancel()
    schedule(seen.append, "positional", context=contextvars.copy_context())
    schedule(callback=lambda: seen.append("by keyword"))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["positional", "by keyword"]
    bad_calls = [
        ((), {}, "missing 1 required positional argument: 'callback'"),
        ((seen.append,), {"callback": seen.append}, "multiple values for argument 'callback'"),
        ((seen.append,), {"delay": 1}, "unexpected keyword argument 'delay'"),
    ]
    for args, kwargs, message in bad_calls:
        with pytest.raises(TypeError, match=message):
            schedule(*args, **kwargs)


@pytest.mark.parametrize("method", ["call_later", "call_at"])
def test_timer_arguments_as_asyncio_takes_them(loop, method):
    schedule = getattr(loop, method)
    first = "delay" if method == "call_later" else "when"
    at = 0 if method == "call_later" else loop.time()
    seen = []
    schedule(at, seen.append, "positional", context=contextvars.copy_context())
    schedule(**{first: at, "callback": lambda: seen.append("by keyword")})
    loop.run_until_complete(asyncio.sleep(0.01))
    assert seen == ["positional", "by keyword"]
    bad_calls = [
        ((), {}, f"missing 2 required positional arguments: '{first}' and 'callback'"),
        ((at,), {}, "missing 1 required positional argument: 'callback'"),
        ((at, print), {first: at}, f"multiple values for argument '{first}'"),
        ((at, print), {"loop": loop}, "unexpected keyword argument 'loop'"),
        ((None, print), {}, "None"),
    ]
    for args, kwargs, message in bad_calls:
        with pytest.raises(TypeError, match=message):
            schedule(*args, **kwargs)
