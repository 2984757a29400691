"""add_signal_handler / remove_signal_handler with real signals."""

import asyncio
import os
import signal

import pytest


def test_handler_active_when_call_returns(loop):
    seen = []
    loop.add_signal_handler(signal.SIGUSR1, lambda *a: (seen.append(a), loop.stop()), "arg")
    # Sent before the loop runs: must be neither fatal nor lost.
    os.kill(os.getpid(), signal.SIGUSR1)
    loop.run_forever()
    assert seen == [("arg",)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_wakes_a_blocked_loop(run, loop):
    async def main():
        received = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR2, received.set_result, "usr2")
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGUSR2)
        result = await asyncio.wait_for(received, 5)
        loop.remove_signal_handler(signal.SIGUSR2)
        return result

    assert run(main()) == "usr2"


def test_argument_checks(loop):
    async def coro_fn():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        loop.add_signal_handler(signal.SIGUSR1, coro_fn)
    with pytest.raises(TypeError, match="sig must be an int"):
        loop.add_signal_handler("SIGUSR1", print)
    with pytest.raises(ValueError, match="invalid signal number"):
        loop.add_signal_handler(100_000, print)
    with pytest.raises(RuntimeError, match="cannot be caught"):
        loop.add_signal_handler(signal.SIGKILL, print)


def test_remove_sigint_restores_default_int_handler(loop):
    loop.add_signal_handler(signal.SIGINT, print)
    loop.remove_signal_handler(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_close_removes_handlers(loop_factory):
    loop = loop_factory()
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
