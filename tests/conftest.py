"""Differential fixtures: every test body runs once on the stdlib loop and once on oxio.

The `loop` fixture records every call to the loop's exception handler; teardown fails the test
if any arrived that the test did not claim with `loop_errors.expect(...)`, or if the test left
more file descriptors open than it found.
"""

import asyncio
import gc
import os

import pytest

import oxio

LOOPS = {
    "asyncio": asyncio.SelectorEventLoop,
    "oxio": oxio.new_event_loop,
}


class LoopErrors:
    """Exception-handler calls seen during a test."""

    def __init__(self):
        self.contexts = []
        self.expected = 0

    def handler(self, loop, context):
        self.contexts.append(context)

    def expect(self, count=1):
        """Claims `count` handler calls so far as part of the test, and returns them."""
        self.expected += count
        assert len(self.contexts) == self.expected, self.contexts
        return self.contexts[self.expected - count : self.expected]


@pytest.fixture(params=sorted(LOOPS))
def loop_name(request):
    return request.param


@pytest.fixture
def loop_factory(loop_name):
    return LOOPS[loop_name]


@pytest.fixture
def loop_errors():
    return LoopErrors()


@pytest.fixture
def loop(loop_factory, loop_errors):
    fds_before = set(os.listdir("/proc/self/fd"))
    loop = loop_factory()
    loop.set_exception_handler(loop_errors.handler)
    asyncio.set_event_loop(loop)
    yield loop
    try:
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    finally:
        asyncio.set_event_loop(None)
    gc.collect()
    unexpected = loop_errors.contexts[loop_errors.expected :]
    assert not unexpected, f"unexpected exception-handler calls: {unexpected}"
    leaked = set(os.listdir("/proc/self/fd")) - fds_before
    assert not leaked, f"file descriptors left open: {sorted(leaked)}"


@pytest.fixture
def run(loop):
    """`run(coro)` runs a coroutine to completion on the test's loop."""
    return loop.run_until_complete
