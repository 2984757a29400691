"""oxio: asyncio's event loop, rebuilt in Rust.

Switch a program to it with one line::

    oxio.run(main())                                           # like asyncio.run()
    asyncio.run(main(), loop_factory=oxio.new_event_loop)      # Python 3.12+
    oxio.install()                                             # every new loop is oxio's
"""

import asyncio
from asyncio import coroutines, events

from . import _compat
from ._oxio import Handle, TimerHandle
from .loop import Loop

__all__ = [
    "EventLoopPolicy",
    "Handle",
    "Loop",
    "TimerHandle",
    "install",
    "new_event_loop",
    "run",
]

__version__ = "0.1.0"


def new_event_loop():
    """A new, unstarted oxio loop."""
    return Loop()


class EventLoopPolicy(_compat.DefaultEventLoopPolicy):
    """asyncio's default policy, making oxio loops.

    Subclassing the default policy keeps `get_child_watcher()` and friends working on 3.11.
    """

    def _loop_factory(self):
        return new_event_loop()


def install():
    """Makes every loop that asyncio creates from now on an oxio loop."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None):
    """Runs a coroutine on a fresh oxio loop, with the contract of `asyncio.run()`."""
    if events._get_running_loop() is not None:
        raise RuntimeError("oxio.run() cannot be called from a running event loop")
    if not coroutines.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
