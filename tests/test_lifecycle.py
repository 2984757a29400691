"""run_forever, run_until_complete, stop, close, nesting, and the public entry points."""

import asyncio
import subprocess
import sys
import textwrap
import threading

import pytest

import oxio


def test_run_until_complete_returns_result(run):
    async def answer():
        await asyncio.sleep(0)
        return 42

    assert run(answer()) == 42


def test_run_until_complete_raises_the_exception(run):
    async def fail():
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        run(fail())


def test_stop_before_future_completes(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed."):
        loop.run_until_complete(fut)


def test_stop_then_run_forever_runs_one_iteration(loop):
    seen = []
    loop.stop()
    loop.call_soon(seen.append, 1)
    loop.run_forever()
    assert seen == [1]
    assert not loop.is_running()


def test_running_twice_is_refused(loop):
    errors = []

    def nested():
        try:
            loop.run_forever()
        except RuntimeError as exc:
            errors.append(str(exc))
        loop.stop()

    loop.call_soon(nested)
    loop.run_forever()
    assert errors == ["This event loop is already running"]


def test_running_inside_another_loop_is_refused(loop, loop_factory):
    other = loop_factory()
    errors = []

    async def main():
        coro = asyncio.sleep(0)
        try:
            other.run_until_complete(coro)
        except RuntimeError as exc:
            errors.append(str(exc))
        coro.close()

    loop.run_until_complete(main())
    other.close()
    assert errors == ["Cannot run the event loop while another loop is running"]


def test_close_while_running_is_refused(loop):
    async def main():
        with pytest.raises(RuntimeError, match="Cannot close a running event loop"):
            loop.close()

    loop.run_until_complete(main())


def test_is_running_and_running_loop(loop):
    seen = []

    async def main():
        seen.append((loop.is_running(), asyncio.get_running_loop() is loop))

    assert not loop.is_running()
    loop.run_until_complete(main())
    assert seen == [(True, True)]
    assert not loop.is_running()


def test_loop_runs_in_another_thread(loop_factory):
    loop = loop_factory()
    started = threading.Event()
    thread = threading.Thread(target=lambda: (started.set(), loop.run_forever()))
    thread.start()
    started.wait()
    future = asyncio.run_coroutine_threadsafe(asyncio.sleep(0.01, "done"), loop)
    assert future.result(timeout=5) == "done"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_oxio_run_contract():
    async def main():
        loop = asyncio.get_running_loop()
        return type(loop).__name__

    assert oxio.run(main()) == "Loop"
    with pytest.raises(ValueError, match="a coroutine was expected"):
        oxio.run(lambda: None)


def test_oxio_run_refuses_a_running_loop():
    async def main():
        coro = asyncio.sleep(0)
        try:
            oxio.run(coro)
        finally:
            coro.close()

    with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
        oxio.run(main())


def test_runner_with_loop_factory():
    with asyncio.Runner(loop_factory=oxio.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), oxio.Loop)
        assert runner.run(asyncio.sleep(0, "ok")) == "ok"


def test_install_makes_new_loops_oxio():
    old = asyncio.get_event_loop_policy()
    try:
        oxio.install()
        loop = asyncio.new_event_loop()
        assert isinstance(loop, oxio.Loop)
        assert isinstance(asyncio.get_event_loop_policy(), asyncio.DefaultEventLoopPolicy)
        loop.close()
    finally:
        asyncio.set_event_loop_policy(old)


def test_loop_is_an_abstract_event_loop():
    loop = oxio.new_event_loop()
    assert isinstance(loop, asyncio.AbstractEventLoop)
    loop.close()


def test_ctrl_c_cancels_main_task_and_raises_keyboard_interrupt():
    script = textwrap.dedent(
        """
        import asyncio, os, signal, oxio
        async def main():
            asyncio.get_running_loop().call_later(0.1, os.kill, os.getpid(), signal.SIGINT)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                print("main cancelled", flush=True)
                raise
        try:
            oxio.run(main())
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    assert out.stdout.split() == ["main", "cancelled", "KeyboardInterrupt"], out.stderr


def test_unclosed_loop_warns(loop_factory):
    loop = loop_factory()
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        loop.__del__()
    loop.close()


def test_the_native_base_comes_first_and_no_mixin_shadows_it():
    # oxio.Loop lists EventLoop first for speed (see loop.py); that is only safe while no
    # Python mixin defines a name the native class defines.
    from oxio._oxio import EventLoop

    assert oxio.Loop.__mro__[1] is EventLoop
    native = set(vars(EventLoop)) - {"__doc__", "__module__"}
    mixins = [cls for cls in oxio.Loop.__mro__[2:] if cls.__module__.startswith("oxio.")]
    assert len(mixins) > 5
    for cls in mixins:
        assert not native & set(vars(cls)), cls
