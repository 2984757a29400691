"""Tasks, task factories, the exception-handler API, async generators and debug mode."""

import asyncio
import contextvars
import gc
import logging
import sys
import time
import weakref

import pytest


def test_create_task_name_and_context(run, loop):
    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")

    async def read():
        return var.get()

    async def main():
        task = loop.create_task(read(), name="reader", context=ctx)
        assert task.get_name() == "reader"
        return await task

    assert run(main()) == "in-ctx"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda loop, coro: loop.create_task(), "missing 1 required positional argument: 'coro'"),
        (lambda loop, coro: loop.create_task(coro, coro), "positional argument"),
        (
            lambda loop, coro: loop.create_task(coro, coro=coro),
            "multiple values for argument 'coro'",
        ),
        (lambda loop, coro: loop.create_task(coro, color=1), "unexpected keyword argument 'color'"),
        (lambda loop, coro: loop.create_task(1), "a coroutine was expected, got 1"),
    ],
)
def test_create_task_argument_errors(loop, call, message):
    async def never_run():
        pass

    coro = never_run()
    try:
        with pytest.raises(TypeError, match=message):
            call(loop, coro)
    finally:
        coro.close()


def test_create_task_argument_errors_come_before_the_closed_check(loop):
    # Python binds the arguments before create_task's body looks at the loop; 3.14 forwards
    # unknown keywords to the task, so there the closed loop is what is reported.
    async def never_run():
        pass

    coro = never_run()
    loop.close()
    forwarded = sys.version_info >= (3, 14)
    try:
        with pytest.raises(
            RuntimeError if forwarded else TypeError,
            match="is closed" if forwarded else "unexpected keyword argument 'color'",
        ):
            loop.create_task(coro, color=1)
        with pytest.raises(TypeError, match="multiple values for argument 'coro'"):
            loop.create_task(coro, coro=coro)
    finally:
        coro.close()


def test_create_task_keyword_named_twice_by_a_caller_in_c_is_refused(loop):
    from _testcapi import pyobject_vectorcall

    async def never_run():
        pass

    coro = never_run()
    try:
        for keyword in ("name", "context"):
            with pytest.raises(TypeError, match=f"multiple values for argument '{keyword}'"):
                pyobject_vectorcall(loop.create_task, (coro, None, None), (keyword, keyword))
    finally:
        coro.close()


def test_a_failing_done_callback_reaches_the_handler_with_its_handle(run, loop, loop_errors):
    # The C Future schedules its done callbacks through call_soon; oxio keeps no handle for
    # them until one fails, and then reports one as asyncio does.
    def fail(future):
        raise ZeroDivisionError("boom")

    async def main():
        future = loop.create_future()
        future.add_done_callback(fail)
        future.set_result("value")
        await asyncio.sleep(0)
        return future

    future = run(main())
    (context,) = loop_errors.expect(1)
    assert context["message"].startswith(f"Exception in callback {fail.__qualname__}(<Future")
    assert isinstance(context["exception"], ZeroDivisionError)
    assert context["handle"]._callback is fail
    assert context["handle"]._args == (future,)


def test_task_steps_scheduled_before_debug_mode_are_timed(loop, caplog):
    async def slow():
        time.sleep(0.06)
        return "done"

    task = loop.create_task(slow())
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        assert loop.run_until_complete(task) == "done"
    assert any(
        record.getMessage().startswith("Executing <Task") and "took" in record.getMessage()
        for record in caplog.records
    )


def test_create_task_takes_coro_name_and_context_by_keyword(run, loop):
    async def main():
        task = loop.create_task(coro=asyncio.sleep(0, "done"), name=None, context=None)
        assert task.get_name().startswith("Task-")
        return await task

    assert run(main()) == "done"


def test_futures_and_tasks_belong_to_the_loop_that_made_them(run, loop, loop_factory):
    # Made while the loop runs on this thread, before it runs (another loop set as current),
    # and from another thread while it runs: each belongs to `loop`.
    other = loop_factory()
    asyncio.set_event_loop(other)
    try:
        early = loop.create_future()
        early_task = loop.create_task(asyncio.sleep(0))

        async def main():
            from_thread = await asyncio.to_thread(loop.create_future)
            task = loop.create_task(asyncio.sleep(0))
            named = loop.create_task(asyncio.sleep(0), name="named")
            await asyncio.gather(task, named)
            return loop.create_future(), from_thread, task, named

        inside, from_thread, task, named = run(main())
        run(early_task)
    finally:
        asyncio.set_event_loop(loop)
        other.close()
    for made in (early, early_task, inside, from_thread, task, named):
        assert made.get_loop() is loop
    assert type(inside) is asyncio.Future and type(task) is asyncio.Task
    assert task.get_name().startswith("Task-") and named.get_name() == "named"


def test_patched_future_and_task_classes_are_called_with_the_loop(run, loop, monkeypatch):
    calls = []

    class StrictFuture(asyncio.Future):
        def __init__(self, *, loop):
            calls.append(("future", loop))
            super().__init__(loop=loop)

    class StrictTask(asyncio.Task):
        def __init__(self, coro, *, loop, name=None, context=None):
            calls.append(("task", loop))
            super().__init__(coro, loop=loop, name=name, context=context)

    async def main():
        monkeypatch.setattr(asyncio.futures, "Future", StrictFuture)
        monkeypatch.setattr(asyncio.tasks, "Task", StrictTask)
        future = loop.create_future()
        task = loop.create_task(asyncio.sleep(0))
        await task
        return future, task

    future, task = run(main())
    assert type(future) is StrictFuture and type(task) is StrictTask
    assert calls == [("future", loop), ("task", loop)]


def test_classes_that_change_their_keywords_change_no_later_call(run, loop, monkeypatch):
    seen = []

    class GreedyFuture(asyncio.Future):
        def __init__(self, **kwargs):
            seen.append(dict(kwargs))
            kwargs.clear()
            kwargs["stolen"] = True
            super().__init__(loop=loop)

    class GreedyTask(asyncio.Task):
        def __init__(self, coro, **kwargs):
            seen.append(dict(kwargs))
            kwargs.clear()
            super().__init__(coro, loop=loop)

    async def main():
        monkeypatch.setattr(asyncio.futures, "Future", GreedyFuture)
        monkeypatch.setattr(asyncio.tasks, "Task", GreedyTask)
        futures = [loop.create_future() for _ in range(2)]
        tasks = [loop.create_task(asyncio.sleep(0)) for _ in range(2)]
        named = loop.create_task(asyncio.sleep(0), name="named")
        await asyncio.gather(*tasks, named)
        for future in futures:
            future.cancel()

    run(main())
    task_keywords = {"loop": loop, "name": None, "context": None}
    assert seen == [{"loop": loop}] * 2 + [task_keywords] * 2 + [{**task_keywords, "name": "named"}]


def test_a_closed_loop_is_freed_without_the_cyclic_gc(loop_factory):
    loop = loop_factory()
    loop.create_future().cancel()
    loop.close()
    freed = weakref.ref(loop)
    gc.disable()
    try:
        del loop
        assert freed() is None
    finally:
        gc.enable()


def test_task_factory_called_as_cpython_calls_it(run, loop):
    calls = []

    def factory(loop_, coro, **kwargs):
        calls.append(sorted(kwargs))
        return asyncio.Task(coro, loop=loop_, **kwargs)

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def main():
        await loop.create_task(asyncio.sleep(0))
        await loop.create_task(asyncio.sleep(0), context=contextvars.copy_context())
        task = loop.create_task(asyncio.sleep(0), name="named")
        await task
        return task.get_name()

    assert run(main()) == "named"
    # The first call wraps main() itself, from run_until_complete().
    assert calls == [[], [], ["context"], []]


def test_two_argument_task_factory_still_works(run, loop):
    loop.set_task_factory(lambda loop_, coro: asyncio.Task(coro, loop=loop_))
    assert run(asyncio.sleep(0, "ok")) == "ok"


def test_bad_task_factory_is_refused(loop):
    with pytest.raises(TypeError, match="task factory must be a callable or None"):
        loop.set_task_factory(42)


def test_bad_exception_handler_is_refused(loop):
    with pytest.raises(TypeError, match="A callable object or None is expected"):
        loop.set_exception_handler(42)


def test_default_exception_handler_logs_asyncio_format(loop, caplog):
    loop.set_exception_handler(None)

    def boom():
        raise RuntimeError("kaput")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(boom)
        loop.call_soon(loop.stop)
        loop.run_forever()
    (record,) = caplog.records
    assert record.getMessage().startswith("Exception in callback ")
    assert "boom" in record.getMessage()
    assert "handle: <Handle" in record.getMessage()
    assert record.exc_info[0] is RuntimeError


def test_failing_custom_handler_falls_back_to_default(loop, caplog):
    def bad_handler(loop_, context):
        raise ValueError("handler broke")

    loop.set_exception_handler(bad_handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "original"})
    (record,) = caplog.records
    assert "Unhandled error in exception handler" in record.getMessage()
    assert record.exc_info[0] is ValueError


def test_unretrieved_task_exception_reaches_handler(loop, loop_errors):
    async def fail():
        raise KeyError("lost")

    async def main():
        loop.create_task(fail())
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    import gc

    gc.collect()
    (context,) = loop_errors.expect(1)
    assert isinstance(context["exception"], KeyError)
    assert context["message"] == "Task exception was never retrieved"


def test_shutdown_asyncgens_closes_pending_generators(run, loop):
    closed = []

    async def gen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def main():
        agen = gen()
        await agen.__anext__()
        return agen

    agen = run(main())
    run(loop.shutdown_asyncgens())
    assert closed == [True]
    del agen


def test_run_in_executor_and_shutdown(run, loop):
    async def main():
        result = await loop.run_in_executor(None, sum, [1, 2, 3])
        await loop.shutdown_default_executor()
        return result

    assert run(main()) == 6
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, sum, [1])


def test_set_default_executor_requires_thread_pool(loop):
    with pytest.raises(TypeError, match="executor must be ThreadPoolExecutor"):
        loop.set_default_executor(object())


def test_getaddrinfo_and_getnameinfo(run, loop):
    infos = run(loop.getaddrinfo("127.0.0.1", 80, type=0))
    assert any(info[4][:2] == ("127.0.0.1", 80) for info in infos)
    host, port = run(loop.getnameinfo(("127.0.0.1", 80), 0x02 | 0x01))
    assert (host, port) == ("127.0.0.1", "80")


def test_debug_mode_warns_about_slow_callbacks(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(time.sleep, 0.05)
        loop.call_soon(loop.stop)
        loop.run_forever()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Executing <Handle") and "took" in m for m in messages), messages


def test_debug_mode_rejects_coroutines_and_wrong_thread(loop):
    loop.set_debug(True)

    async def coro_fn():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with call_soon"):
        loop.call_soon(coro_fn)
    with pytest.raises(TypeError, match="a callable object was expected by call_soon"):
        loop.call_soon(42)

    import threading

    errors = []

    async def main():
        def other_thread():
            try:
                loop.call_soon(print)
            except RuntimeError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=other_thread)
        thread.start()
        await loop.run_in_executor(None, thread.join)

    loop.run_until_complete(main())
    assert errors and "Non-thread-safe operation" in errors[0]


def test_debug_records_source_traceback(loop):
    loop.set_debug(True)
    handle = loop.call_soon(print)
    assert handle._source_traceback
    assert handle._source_traceback[-1][2] == "test_debug_records_source_traceback"
    handle.cancel()


def test_debug_mode_from_environment(tmp_path):
    import subprocess
    import sys

    script = "import oxio; l = oxio.new_event_loop(); print(l.get_debug()); l.close()"
    for env, expected in (({"PYTHONASYNCIODEBUG": "1"}, "True"), ({}, "False")):
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", **env},
        )
        assert out.stdout.strip() == expected, out.stderr
    out = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script], capture_output=True, text=True
    )
    assert out.stdout.strip() == "True"
