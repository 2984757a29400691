"""Subprocesses: `subprocess_exec`, `subprocess_shell` and the transport underneath them.

The process side is asyncio's own: `asyncio.base_subprocess.BaseSubprocessTransport` drives the
protocol callbacks in asyncio's order over the loop's pipe transports (native in oxio), and the
argument checks of `subprocess_exec`/`subprocess_shell` are taken from `BaseEventLoop` so that
they follow the running Python exactly. What oxio adds is how a child starts (a `Popen` whose
common case starts natively, see `_spawn`) and how its exit is noticed: a pidfd polled by the
loop itself (no SIGCHLD handler, no thread, no `waitpid` on a pid it was not given, so it never
races another watcher), with a waiting thread per child where pidfds are unavailable. A child
watcher that the user installed on the policy (3.11 to 3.13) is honoured instead, as asyncio
honours it.
"""

import os
import threading
from asyncio import base_events, base_subprocess
from asyncio.log import logger

from . import _compat, _spawn


class SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    def _start(self, args, shell, stdin, stdout, stderr, bufsize, **kwargs):
        self._proc = _spawn.popen_class()(
            args,
            shell=shell,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            universal_newlines=False,
            bufsize=bufsize,
            **kwargs,
        )


def _exit_code(pid):
    """Reaps `pid` and returns its exit code (negative for a signal), as asyncio reports it."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        # Someone else reaped it: the status is lost, as with asyncio's watchers.
        logger.warning("Unknown child process pid %d, will report returncode 255", pid)
        return 255
    return os.waitstatus_to_exitcode(status)


def _pidfd_usable():
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


class _ChildWatcher:
    """The `AbstractChildWatcher` protocol that `_make_subprocess_transport` relies on."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass

    def is_active(self):
        return True


class PidfdWatcher(_ChildWatcher):
    """Polls a pidfd per child on the loop; reaps exactly the children it was given."""

    def __init__(self, loop):
        self._loop = loop
        self._pidfds = {}

    def add_child_handler(self, pid, callback, *args):
        pidfd = os.pidfd_open(pid)
        self._pidfds[pid] = pidfd
        self._loop._add_reader(pidfd, self._child_exited, pid, callback, args)

    def _child_exited(self, pid, callback, args):
        self._forget(pid)
        callback(pid, _exit_code(pid), *args)

    def _forget(self, pid):
        pidfd = self._pidfds.pop(pid)
        self._loop._remove_reader(pidfd)
        os.close(pidfd)

    def close(self):
        """The loop is closing: children still running are reaped by threads, so none is
        left a zombie and no pidfd stays open; their transports hear nothing more."""
        for pid in list(self._pidfds):
            self._forget(pid)
            threading.Thread(target=_exit_code, args=(pid,), daemon=True).start()


class ThreadWatcher(_ChildWatcher):
    """A waiting thread per child, for systems without pidfds."""

    def add_child_handler(self, pid, callback, *args):
        thread = threading.Thread(
            target=self._wait, args=(pid, callback, args), name=f"oxio-waitpid-{pid}", daemon=True
        )
        thread.start()

    @staticmethod
    def _wait(pid, callback, args):
        callback(pid, _exit_code(pid), *args)

    def close(self):
        pass  # each thread reaps its child whatever happens to the loop


class SubprocessMixin:
    subprocess_exec = base_events.BaseEventLoop.subprocess_exec
    subprocess_shell = base_events.BaseEventLoop.subprocess_shell
    _log_subprocess = base_events.BaseEventLoop._log_subprocess

    @property
    def _child_watcher(self):
        watcher = self.__dict__.get("_oxio_child_watcher")
        if watcher is None:
            watcher = PidfdWatcher(self) if _pidfd_usable() else ThreadWatcher()
            self.__dict__["_oxio_child_watcher"] = watcher
        return watcher

    def _close_child_watcher(self):
        watcher = self.__dict__.pop("_oxio_child_watcher", None)
        if watcher is not None:
            watcher.close()

    async def _make_subprocess_transport(
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs
    ):
        with _compat.policy_child_watcher() or self._child_watcher as watcher:
            if not watcher.is_active():
                # Checked before the process exists, so that nothing runs unwatched.
                raise RuntimeError(
                    "asyncio.get_child_watcher() is not activated, "
                    "subprocess support is not installed."
                )
            waiter = self.create_future()
            transport = SubprocessTransport(
                self,
                protocol,
                args,
                shell,
                stdin,
                stdout,
                stderr,
                bufsize,
                waiter=waiter,
                extra=extra,
                **kwargs,
            )
            watcher.add_child_handler(transport.get_pid(), self._child_watcher_callback, transport)
            try:
                await waiter
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                transport.close()
                await transport._wait()
                raise
        return transport

    def _child_watcher_callback(self, pid, returncode, transport):
        # Called on the loop thread or a watcher thread. Like asyncio, report the exit one
        # iteration later, so pipe data that arrived with it is delivered first.
        self.call_soon_threadsafe(self.call_soon, transport._process_exited, returncode)
