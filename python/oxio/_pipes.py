"""Pipe transports: `connect_read_pipe`, `connect_write_pipe`, and the pipes of subprocesses.

As in asyncio, they take pipes, FIFOs, character devices (ttys) and sockets, and refuse regular
files. The byte paths are native (`_oxio.ReadPipeCore`, `_oxio.WritePipeCore`); these classes
are the `asyncio` transports users see, and they own the pipe object.
"""

import os
import stat
import warnings
from asyncio import transports

from ._core_transport import CoreReading, CoreTransport, CoreWriting, set_result_unless_cancelled
from ._oxio import ReadPipeCore, WritePipeCore


class _PipeTransport(CoreTransport):
    """What both pipe directions share: the pipe object, its repr, and its release."""

    _pipe = None  # read by __del__ even if __init__ failed early

    def _attach(self, loop, pipe):
        self._extra["pipe"] = pipe
        self._loop = loop
        self._pipe = pipe
        self._fileno = pipe.fileno()
        return os.fstat(self._fileno).st_mode

    def __repr__(self):
        state = "closed" if self._pipe is None else "closing" if self.is_closing() else "open"
        return f"<{type(self).__name__} fd={self._fileno} {state}>"

    def __del__(self, _warn=warnings.warn):
        if self._pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._pipe.close()

    def _connection_lost_done(self):
        """Called by the core after protocol.connection_lost(): release the pipe."""
        self._pipe.close()
        self._pipe = None
        self._loop = None


class ReadPipeTransport(_PipeTransport, CoreReading, transports.ReadTransport):
    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        mode = self._attach(loop, pipe)
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            self._pipe = None
            raise ValueError("Pipe transport is for pipes/sockets only.")
        os.set_blocking(self._fileno, False)
        self._core = core = ReadPipeCore(loop, self, self._fileno, protocol)
        loop.call_soon(protocol.connection_made, self)
        # Reading starts only once connection_made() has run.
        loop.call_soon(core._start_reading, self)
        if waiter is not None:
            loop.call_soon(set_result_unless_cancelled, waiter, None)


class WritePipeTransport(_PipeTransport, CoreWriting, transports.WriteTransport):
    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        mode = self._attach(loop, pipe)
        is_fifo, is_socket = stat.S_ISFIFO(mode), stat.S_ISSOCK(mode)
        if not (is_fifo or is_socket or stat.S_ISCHR(mode)):
            self._pipe = None
            raise ValueError("Pipe transport is only for pipes, sockets and character devices")
        os.set_blocking(self._fileno, False)
        self._core = core = WritePipeCore(loop, self, self._fileno, protocol)
        # NOTE: as for sockets, write() is bound to the native method on the instance.
        self.write = core.write
        loop.call_soon(protocol.connection_made, self)
        if is_fifo or is_socket:
            # A FIFO or socket polls readable when its reading side closes.
            loop.call_soon(core._watch_for_hangup, self)
        if waiter is not None:
            loop.call_soon(set_result_unless_cancelled, waiter, None)

    def write(self, data):
        self._core.write(data)

    def writelines(self, list_of_data):
        self._core.writelines(list_of_data)

    def write_eof(self):
        self._core.write_eof()

    def can_write_eof(self):
        return True


class PipesMixin:
    async def connect_read_pipe(self, protocol_factory, pipe):
        return await self._connect_pipe(ReadPipeTransport, protocol_factory, pipe)

    async def connect_write_pipe(self, protocol_factory, pipe):
        return await self._connect_pipe(WritePipeTransport, protocol_factory, pipe)

    async def _connect_pipe(self, transport_class, protocol_factory, pipe):
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = transport_class(self, pipe, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol
