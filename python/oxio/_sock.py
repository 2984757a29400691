"""The loop's `sock_*` operations that stay in Python: `sock_connect` and `sock_sendfile`.

`sock_recv`, `sock_recv_into`, `sock_recvfrom`, `sock_recvfrom_into`, `sock_sendall`,
`sock_sendto` and `sock_accept` are methods of the Rust base class that return a native coroutine
object (`_oxio.SockCoroutine`, registered here as a `collections.abc.Coroutine`, so
`asyncio.iscoroutine` accepts it and `create_task` runs it); docs/design.md describes it.

The operations here have the same shape (asyncio's selector loop spells it out once per method):
attempt it (looking the socket method up at each attempt, since tests and wrappers swap them);
on `BlockingIOError` watch the fd and attempt again when it is ready; finish the
future with the result or the error; unregister the watcher when the future is done, including
when it is cancelled, so no watcher is left behind.
"""

import collections.abc
import errno
import functools
import os
import socket
from asyncio import exceptions

from ._oxio import SockCoroutine

try:
    import ssl
except ImportError:  # pragma: no cover - Python built without ssl
    ssl = None

_SENDFILE_FALLBACK_BUFFER = 256 * 1024

collections.abc.Coroutine.register(SockCoroutine)


class SockMixin:
    def _check_sock(self, sock):
        if ssl is not None and isinstance(sock, ssl.SSLSocket):
            raise TypeError("Socket cannot be of type SSLSocket")
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    async def _sock_io(self, sock, write, attempt, retry=None):
        """Runs `attempt()`; while it would block, waits for readiness and runs `retry()`."""
        try:
            return attempt()
        except (BlockingIOError, InterruptedError):
            pass
        fut = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        watch = self._add_writer if write else self._add_reader
        handle = watch(fd, _retry_when_ready, fut, retry or attempt)
        fut.add_done_callback(functools.partial(self._sock_io_done, fd, write, handle))
        try:
            return await fut
        finally:
            fut = None  # break the cycle through the traceback

    def _sock_io_done(self, fd, write, handle, fut):
        # A cancelled handle was already replaced or removed by someone else.
        if not handle.cancelled():
            (self.remove_writer if write else self.remove_reader)(fd)

    async def sock_connect(self, sock, address):
        self._check_sock(sock)
        if sock.family == socket.AF_INET or (socket.has_ipv6 and sock.family == socket.AF_INET6):
            address = await self._resolve_sock_address(sock, address)

        def connect_result():
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err in (errno.EINPROGRESS, errno.EALREADY):
                raise BlockingIOError
            if err != 0:
                raise OSError(err, f"Connect call failed {address}")

        return await self._sock_io(sock, True, lambda: sock.connect(address), connect_result)

    async def _resolve_sock_address(self, sock, address):
        host, port = address[:2]
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        try:
            # A literal address resolves without touching DNS, so it is done inline.
            infos = socket.getaddrinfo(host, port, sock.family, sock.type, sock.proto, flags)
        except (socket.gaierror, UnicodeError, TypeError):
            infos = await self.getaddrinfo(
                host, port, family=sock.family, type=sock.type, proto=sock.proto
            )
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned empty list")
        resolved = infos[0][4]
        if sock.family == socket.AF_INET6 and len(address) > 2:
            resolved = (resolved[0], resolved[1], *address[2:])
        return resolved

    async def sock_sendfile(self, sock, file, offset=0, count=None, *, fallback=True):
        self._check_sock(sock)
        _check_sendfile_params(sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except exceptions.SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sock_sendfile_fallback(sock, file, offset, count)

    async def _sock_sendfile_native(self, sock, file, offset, count):
        try:
            fileno = file.fileno()
            size = os.fstat(fileno).st_size
        except (AttributeError, OSError, ValueError) as exc:
            raise exceptions.SendfileNotAvailableError("not a regular file") from exc
        blocksize = count if count else size
        if not blocksize:
            return 0
        total = 0

        def send_chunk():
            nonlocal total
            want = (count - total) if count else blocksize
            if want <= 0:
                return total
            try:
                sent = os.sendfile(sock.fileno(), fileno, offset + total, want)
            except (BlockingIOError, InterruptedError):
                raise
            except OSError as exc:
                if total == 0:
                    raise exceptions.SendfileNotAvailableError("os.sendfile call failed") from exc
                if exc.errno == errno.ENOTCONN:
                    raise ConnectionError("socket is not connected", errno.ENOTCONN) from exc
                raise
            if sent == 0:
                return total  # end of file
            total += sent
            raise BlockingIOError  # more to send: wait until the socket is writable again

        try:
            return await self._sock_io(sock, True, send_chunk)
        finally:
            if total:
                file.seek(offset + total)

    async def _sock_sendfile_fallback(self, sock, file, offset, count):
        if offset:
            file.seek(offset)
        blocksize = min(count, _SENDFILE_FALLBACK_BUFFER) if count else _SENDFILE_FALLBACK_BUFFER
        buf = bytearray(blocksize)
        total = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total, blocksize)
                    if blocksize <= 0:
                        break
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    break
                await self.sock_sendall(sock, view[:read])
                total += read
            return total
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset + total)


def _retry_when_ready(fut, operation):
    if fut.done():
        return
    try:
        result = operation()
    except (BlockingIOError, InterruptedError):
        return
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _check_sendfile_params(sock, file, offset, count):
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if not sock.type == socket.SOCK_STREAM:
        raise ValueError("only SOCK_STREAM type sockets are supported")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")
