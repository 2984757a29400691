"""`oxio.Loop`: the Rust base class plus the asyncio glue that runs once per loop or per task."""

import asyncio
import sys
import warnings
import weakref
from asyncio import coroutines, events, futures, tasks

from . import _compat
from ._datagram import DatagramMixin
from ._debug import DebugMixin
from ._errors import ExceptionHandlerMixin
from ._executor import ExecutorMixin
from ._network import NetworkMixin
from ._oxio import EventLoop
from ._pipes import PipesMixin
from ._sendfile import SendfileMixin
from ._signals import SignalMixin
from ._sock import SockMixin
from ._subprocess import SubprocessMixin
from ._tls import TlsMixin


# NOTE: EventLoop comes first: every call into it checks `isinstance(self, EventLoop)`, which
# walks the MRO from the start; behind eleven mixins that walk was 3% of `call_soon` (callgrind).
# No mixin defines a name EventLoop defines, so the order changes no lookup.
class Loop(
    EventLoop,
    NetworkMixin,
    TlsMixin,
    PipesMixin,
    SendfileMixin,
    SubprocessMixin,
    DatagramMixin,
    SockMixin,
    SignalMixin,
    ExecutorMixin,
    ExceptionHandlerMixin,
    DebugMixin,
    asyncio.AbstractEventLoop,
):
    """An asyncio event loop whose scheduler, timers and I/O polling run in Rust."""

    def __init__(self):
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self.set_debug(coroutines._is_debug_mode())

    def __repr__(self):
        return (
            f"<{self.__class__.__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    def __del__(self, _warn=warnings.warn):
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # -- lifecycle -------------------------------------------------------------------------

    def _check_closed(self):
        if self.is_closed():
            raise RuntimeError("Event loop is closed")

    def _check_running(self):
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def run_forever(self):
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        old_hooks = sys.get_asyncgen_hooks()
        try:
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            events._set_running_loop(self)
            self._run_forever()
        finally:
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_hooks)

    def run_until_complete(self, future):
        self._check_closed()
        self._check_running()
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            # The task is ours: if run_until_complete raises, nobody else will retrieve its
            # exception, so don't warn that it was never retrieved.
            future._log_destroy_pending = False
        future.add_done_callback(_stop_loop_when_done)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                future.exception()
            raise
        finally:
            future.remove_done_callback(_stop_loop_when_done)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def close(self):
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if sys.is_finalizing():
            self._signal_handlers = None
        else:
            self._close_signals()
        self._close_child_watcher()
        self._close()
        self._shutdown_executor_now()

    # -- futures and tasks -----------------------------------------------------------------

    # create_future, create_task, set_task_factory and get_task_factory are native.

    def _create_task_slow(self, coro, name, context, /, **kwargs):
        """create_task() with a task factory or extra keywords (3.14 and later; the native part
        refuses them before), as CPython calls them."""
        factory = self._task_factory
        if factory is None:
            task = tasks.Task(coro, loop=self, name=name, context=context, **kwargs)
            if task._source_traceback:
                del task._source_traceback[-1]
            return task
        if _compat.CREATE_TASK_FORWARDS_KWARGS:
            if name is not None:
                kwargs["name"] = name
            if context is not None:
                kwargs["context"] = context
            return factory(self, coro, **kwargs)
        if context is None:
            # CPython calls factories that predate `context=` with two arguments.
            task = factory(self, coro)
        else:
            task = factory(self, coro, context=context)
        if name is not None:
            task.set_name(name)
        return task

    # -- async generators ------------------------------------------------------------------

    def _asyncgen_firstiter_hook(self, agen):
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                f"loop.shutdown_asyncgens() call",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )
        self._asyncgens.add(agen)

    def _asyncgen_finalizer_hook(self, agen):
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    async def shutdown_asyncgens(self):
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await tasks.gather(*[agen.aclose() for agen in closing], return_exceptions=True)
        for result, agen in zip(results, closing, strict=True):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": "an error occurred during closing of "
                        f"asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    # -- file descriptors ------------------------------------------------------------------

    def add_reader(self, fd, callback, *args):
        self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def remove_reader(self, fd):
        self._ensure_fd_no_transport(fd)
        return self._remove_reader(fd)

    def add_writer(self, fd, callback, *args):
        self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_writer(self, fd):
        self._ensure_fd_no_transport(fd)
        return self._remove_writer(fd)


def _stop_loop_when_done(fut):
    if fut._loop is not None:
        fut._loop.stop()
