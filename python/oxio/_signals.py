"""Unix signal handlers, delivered through `signal.set_wakeup_fd` into the loop.

The C-level handler is installed by `signal.signal()` before `add_signal_handler` returns, so a
signal sent right after the call is recorded by the interpreter and its number written to the
wake-up socket, which the loop reads like any other fd.
"""

import errno
import signal
import socket
from asyncio import coroutines
from asyncio.log import logger

from ._oxio import Handle


def _noop_handler(signum, frame):
    """Installed as the Python-level handler: the work happens when the loop reads the fd."""


class SignalMixin:
    _signal_handlers = None
    _signal_sock = None  # (read end, write end) of the wake-up socketpair, made on first use

    def add_signal_handler(self, sig, callback, *args):
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        wakeup = self._signal_wakeup_socket()
        try:
            # Raises ValueError outside the main thread, as asyncio reports it.
            signal.set_wakeup_fd(wakeup.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))

        if self._signal_handlers is None:
            self._signal_handlers = {}
        self._signal_handlers[sig] = Handle(callback, args, self, None)
        try:
            signal.signal(sig, _noop_handler)
            # Let interrupted system calls restart rather than fail with EINTR.
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                self._reset_wakeup_fd()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise

    def remove_signal_handler(self, sig):
        self._check_signal(sig)
        handlers = self._signal_handlers or {}
        if handlers.pop(sig, None) is None:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise
        if not handlers:
            self._reset_wakeup_fd()
        return True

    def _check_signal(self, sig):
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def _signal_wakeup_socket(self):
        if self._signal_sock is None:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self._signal_sock = (reader, writer)
            self._add_reader(reader.fileno(), self._read_signals)
        return self._signal_sock[1]

    def _read_signals(self):
        reader = self._signal_sock[0]
        while True:
            try:
                data = reader.recv(4096)
            except InterruptedError:
                continue
            except BlockingIOError:
                return
            if not data:
                return
            for signum in data:
                self._dispatch_signal(signum)

    def _dispatch_signal(self, signum):
        handle = (self._signal_handlers or {}).get(signum)
        if handle is None:
            return
        if handle.cancelled():
            self.remove_signal_handler(signum)
        else:
            # Scheduled like call_soon_threadsafe: the signal may have arrived while the loop
            # thread was blocked, and the handler runs on the next iteration.
            self._schedule_handle(handle)

    def _reset_wakeup_fd(self):
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd(-1) failed: %s", exc)

    def _close_signals(self):
        """close(): restore default handlers and release the wake-up socketpair."""
        for sig in list(self._signal_handlers or ()):
            self.remove_signal_handler(sig)
        if self._signal_sock is not None:
            self._remove_reader(self._signal_sock[0].fileno())
            for sock in self._signal_sock:
                sock.close()
            self._signal_sock = None
