"""The network servers of `make bench`, each run on the loop under test in its own process.

    python benches/net_servers.py LOOP SERVER [--tls CERT KEY] ENDPOINT

ENDPOINT is `tcp:HOST:PORT` (port 0 picks a free one) or `unix:PATH`, as for benches/loadgen.
With --tls the Protocol servers (`protocol`, `buffered`, `http`) serve TLS with that certificate
chain and key, through the loop's own `ssl=` support.
Once the server accepts connections it prints one JSON line, {"address": ENDPOINT}, with the port
it got, then serves until it is killed. A loop that cannot run SERVER prints {"missing": reason}
instead and exits with status 3.

The echo servers echo whatever arrives and know nothing of the message size, like
benches/loadgen's `echo-limit`, the reference they are compared against.
"""

import argparse
import asyncio
import json
import socket
import ssl
import sys
import traceback

from workloads import new_loop

# What asyncio's selector transports read per recv(); every server here reads as much, so the
# rows differ only by the API they go through.
READ_SIZE = 256 * 1024


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = bytearray(READ_SIZE)

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        # The slice is a copy on purpose: the transport may keep what it cannot send at once,
        # and the next read overwrites self.buffer.
        self.transport.write(self.buffer[:nbytes])


class HttpProtocol(asyncio.Protocol):
    """A minimal HTTP/1.1 server: one fixed response to every request, keep-alive, pipelining.

    It parses the request line and the headers up to the blank line, and answers all the
    requests one read completed with a single write, in order. Requests with a body are refused,
    since nothing here would read it.
    """

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!"
    )
    BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    MAX_HEAD = 64 * 1024

    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        data = self.pending + data if self.pending else data
        answered = 0
        start = 0
        keep_alive = True
        while keep_alive and (end := data.find(b"\r\n\r\n", start)) != -1:
            keep_alive = self.parse_head(data[start:end])
            if keep_alive is None:
                self.transport.write(self.RESPONSE * answered + self.BAD_REQUEST)
                self.transport.close()
                return
            answered += 1
            start = end + 4
        self.pending = data[start:]
        if answered:
            self.transport.write(self.RESPONSE * answered)
        if not keep_alive:
            self.transport.close()
        elif len(self.pending) > self.MAX_HEAD:
            self.transport.write(self.BAD_REQUEST)
            self.transport.close()

    @staticmethod
    def parse_head(head):
        """Whether the connection stays open after this request; None if it is refused."""
        request_line, *header_lines = head.split(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return None
        keep_alive = parts[2] == b"HTTP/1.1"
        for line in header_lines:
            name, colon, value = line.partition(b":")
            if not colon:
                return None
            name = name.strip().lower()
            if name == b"connection":
                keep_alive = value.strip().lower() == b"keep-alive"
            elif name in (b"content-length", b"transfer-encoding") and value.strip() != b"0":
                return None
        return keep_alive


def parse_endpoint(endpoint):
    """`tcp:HOST:PORT` to (AF_INET, (HOST, PORT)); `unix:PATH` to (AF_UNIX, PATH)."""
    kind, _, where = endpoint.partition(":")
    if kind == "tcp":
        host, _, port = where.rpartition(":")
        return socket.AF_INET, (host, int(port))
    if kind == "unix":
        return socket.AF_UNIX, where
    raise SystemExit(f"bad endpoint {endpoint!r}: expected tcp:HOST:PORT or unix:PATH")


def format_endpoint(sock):
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"tcp:{host}:{port}"


def listen_kwargs(endpoint):
    family, address = parse_endpoint(endpoint)
    if family == socket.AF_UNIX:
        return True, {"path": address}
    return False, {"host": address[0], "port": address[1]}


def protocol_server(factory):
    async def serve(endpoint, ready, ssl=None):
        loop = asyncio.get_running_loop()
        unix, kwargs = listen_kwargs(endpoint)
        create = loop.create_unix_server if unix else loop.create_server
        server = await create(factory, **kwargs, ssl=ssl)
        ready(server.sockets[0])
        # Serves until the process is killed. Not `async with server` (rsloop's server is no
        # context manager) nor `serve_forever()` (rloop has none).
        await loop.create_future()

    return serve


async def streams_echo(endpoint, ready):
    async def echo(reader, writer):
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
        writer.close()

    unix, kwargs = listen_kwargs(endpoint)
    start = asyncio.start_unix_server if unix else asyncio.start_server
    server = await start(echo, **kwargs)
    ready(server.sockets[0])
    await asyncio.get_running_loop().create_future()  # As in `protocol_server`.


async def sock_echo(endpoint, ready):
    loop = asyncio.get_running_loop()
    family, address = parse_endpoint(endpoint)
    listener = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(128)
    listener.setblocking(False)
    ready(listener)

    async def echo(conn):
        with conn:
            while data := await loop.sock_recv(conn, READ_SIZE):
                await loop.sock_sendall(conn, data)

    # The loop holds only weak references to tasks; these keep the connections' tasks alive.
    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        if family == socket.AF_INET:
            # Transports set TCP_NODELAY themselves; without it the tail of each echo waits
            # for the client's delayed ACK.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(echo(conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


SERVERS = {
    "sock": sock_echo,
    "protocol": protocol_server(EchoProtocol),
    "buffered": protocol_server(EchoBufferedProtocol),
    "streams": streams_echo,
    "http": protocol_server(HttpProtocol),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("loop")
    parser.add_argument("server", choices=SERVERS)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("endpoint")
    args = parser.parse_args()
    # Made first: rsloop patches ssl.SSLContext when it is imported, and serves only a context
    # whose certificate was loaded after that.
    loop = new_loop(args.loop)
    # Only the servers that take a context get one: the others have no TLS to offer.
    options = {}
    if args.tls:
        options["ssl"] = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        options["ssl"].load_cert_chain(*args.tls)
    ready_printed = False

    def ready(sock):
        nonlocal ready_printed
        print(json.dumps({"address": format_endpoint(sock)}), flush=True)
        ready_printed = True

    try:
        loop.run_until_complete(SERVERS[args.server](args.endpoint, ready, **options))
    except Exception as exc:
        if ready_printed:
            raise
        reason = traceback.format_exception_only(exc)[-1].strip()
        print(json.dumps({"missing": reason}), flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
