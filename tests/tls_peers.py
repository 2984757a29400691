"""Peers for the TLS tests: a stream server on the loop, a client exchange, and a blocking
Python `ssl` server in a thread."""

import asyncio
import contextlib
import socket
import threading

HOST = "127.0.0.1"


async def echo_upper(reader, writer):
    """A stream handler answering each chunk in upper case until end of stream."""
    while data := await reader.read(65536):
        writer.write(data.upper())
        await writer.drain()
    writer.close()
    await writer.wait_closed()


@contextlib.asynccontextmanager
async def tls_server(handler, context):
    """A stream server on the loop; on exit it waits for its handlers to finish, and gives a
    refused handshake time to end (3.11's `wait_closed()` waits for neither)."""
    handlers = set()

    async def tracked(reader, writer):
        handlers.add(asyncio.current_task())
        await handler(reader, writer)

    server = await asyncio.start_server(tracked, HOST, 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        if handlers:
            await asyncio.wait(handlers, timeout=10)
        await settle()


async def settle():
    """Lets the other side of a failed handshake see the failure and close."""
    await asyncio.sleep(0.2)


async def exchange(port, context, message=b"hello", **kwargs):
    """Connects, sends `message`, half-closes by closing, returns the answer and the writer's
    TLS details."""
    reader, writer = await asyncio.open_connection(HOST, port, ssl=context, **kwargs)
    try:
        writer.write(message)
        answer = await reader.readexactly(len(message))
        info = {
            key: writer.get_extra_info(key)
            for key in ("peercert", "cipher", "compression", "ssl_object", "sslcontext")
        }
        info["peername"] = writer.get_extra_info("peername")
        info["sockname"] = writer.get_extra_info("sockname")
        info["socket"] = writer.get_extra_info("socket")
    finally:
        writer.close()
        await writer.wait_closed()
    return answer, info


class ThreadServer:
    """A blocking Python `ssl` server in a thread, serving one connection with `serve(sock)`."""

    def __init__(self, context, serve):
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.context = context
        self.serve = serve
        self.error = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(10)
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.serve(tls)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self):
        self.thread.join(15)
        self.listener.close()
        if self.error is not None:
            raise self.error
