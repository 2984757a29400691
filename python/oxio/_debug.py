"""Debug-mode helpers called from the Rust base class: callback checks, stacks, slow callbacks."""

import sys
import time
from asyncio import base_events, coroutines, format_helpers
from asyncio.log import logger


class DebugMixin:
    """What asyncio does only when `loop.get_debug()` is true."""

    slow_callback_duration = 0.1
    _clock_resolution = time.get_clock_info("monotonic").resolution
    _current_handle = None

    def _check_callback(self, callback, method):
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError(f"coroutines cannot be used with {method}()")
        if not callable(callback):
            raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")

    def _extract_stack(self):
        # Frame 0 is this method; frame 1 is the user code that called call_soon() & co, which
        # the Rust base class calls us from directly.
        return format_helpers.extract_stack(sys._getframe(1))

    def _log_slow_callback(self, handle, seconds):
        # asyncio names a task's step by its task.
        callback = base_events._format_handle(handle)
        logger.warning("Executing %s took %.3f seconds", callback, seconds)

    @property
    def _debug(self):
        """asyncio's private flag, read by code borrowed from `BaseEventLoop` and by libraries."""
        return self.get_debug()

    def set_debug(self, enabled):
        self._set_debug_flag(bool(enabled))
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, bool(enabled))

    def _set_coroutine_origin_tracking(self, enabled):
        if bool(enabled) == bool(self._coroutine_origin_tracking_enabled):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(30)
        else:
            sys.set_coroutine_origin_tracking_depth(self._coroutine_origin_tracking_saved_depth)
        self._coroutine_origin_tracking_enabled = enabled

    _coroutine_origin_tracking_enabled = False
    _coroutine_origin_tracking_saved_depth = None
