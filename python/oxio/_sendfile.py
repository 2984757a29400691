"""`loop.sendfile(transport, file, ...)`: zero-copy `os.sendfile` on stream transports.

The public method and its read/write fallback are `BaseEventLoop`'s own, so modes, argument
checks and the fallback protocol follow the running Python. The native path, as asyncio's
selector loop does it: wait until the transport's queue is empty, stop reading, then hand the
socket to `sock_sendfile` with the transport set aside.
"""

from asyncio import base_events


class SendfileMixin:
    sendfile = base_events.BaseEventLoop.sendfile
    _sendfile_fallback = base_events.BaseEventLoop._sendfile_fallback

    async def _sendfile_native(self, transport, file, offset, count):
        del self._transports[transport._sock_fd]
        resume_reading = transport.is_reading()
        transport.pause_reading()
        await transport._make_empty_waiter()
        try:
            return await self.sock_sendfile(transport._sock, file, offset, count, fallback=False)
        finally:
            transport._reset_empty_waiter()
            if resume_reading:
                transport.resume_reading()
            self._transports[transport._sock_fd] = transport
