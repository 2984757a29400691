"""TLS on both loops, against real peers: servers and clients on the loop itself, Python `ssl`
sockets in threads, and `openssl s_server`/`s_client` subprocesses.

Certificates and keys are made at test time by the `openssl` CLI; no key is committed.
"""

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

HOST = "127.0.0.1"

requires_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


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


@pytest.fixture
def openssl_process(loop):
    """Starts `openssl` subprocesses; each is killed and reaped in teardown (before the loop
    fixture checks for leaked fds)."""
    processes = []

    def start(*args, **popen):
        process = subprocess.Popen(["openssl", *args], **popen)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()
        process.communicate(timeout=10)


def wait_for_port(port, timeout=10.0):
    """Blocks until something listens on 127.0.0.1:port (an s_server starting up)."""
    deadline = threading.Event()
    for _ in range(int(timeout / 0.05)):
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        deadline.wait(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def free_port():
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


# -- certificates and verification --------------------------------------------------------


def test_self_signed_echo_and_extra_info(run, certs):
    server_context = certs.server_context("self")
    client_context = certs.client_context("self.pem")

    async def main():
        async with tls_server(echo_upper, server_context) as port:
            return await exchange(port, client_context, server_hostname="localhost")

    answer, info = run(main())
    assert answer == b"HELLO"
    assert dict(x[0] for x in info["peercert"]["subject"]) == {"commonName": "localhost"}
    name, version, bits = info["cipher"]
    assert version == "TLSv1.3" and bits >= 128
    assert info["compression"] is None
    assert isinstance(info["ssl_object"], ssl.SSLObject)
    assert info["ssl_object"].server_hostname == "localhost"
    assert info["sslcontext"] is client_context
    assert info["peername"][0] == HOST and info["sockname"][0] == HOST
    assert info["socket"].family == socket.AF_INET


def test_ca_chain_against_thread_server(run, certs):
    def serve(tls):
        tls.sendall(tls.recv(100).upper())
        tls.unwrap()

    server = ThreadServer(certs.server_context(), serve)

    async def main():
        return await exchange(server.port, certs.client_context(), server_hostname="localhost")

    try:
        answer, info = run(main())
    finally:
        server.join()
    assert answer == b"HELLO"
    assert dict(x[0] for x in info["peercert"]["issuer"]) == {"commonName": "oxio test CA"}


def test_host_defaults_to_server_hostname_and_ip_san(run, certs):
    async def main():
        async with tls_server(echo_upper, certs.server_context()) as port:
            # No server_hostname: the host, an IP address, is what gets verified.
            return await exchange(port, certs.client_context())

    answer, info = run(main())
    assert answer == b"HELLO"
    assert info["ssl_object"].server_hostname == HOST


def test_client_certificate(run, certs):
    server_context = certs.server_context(verify_mode=ssl.CERT_REQUIRED)
    server_context.load_verify_locations(certs.path("ca.pem"))
    client_context = certs.client_context()
    client_context.load_cert_chain(certs.path("client.pem"), certs.path("client.key"))
    seen = []

    async def handler(reader, writer):
        seen.append(writer.get_extra_info("peercert"))
        await echo_upper(reader, writer)

    async def main():
        async with tls_server(handler, server_context) as port:
            return await exchange(port, client_context, server_hostname="localhost")

    answer, _ = run(main())
    assert answer == b"HELLO"
    assert dict(x[0] for x in seen[0]["subject"]) == {"commonName": "oxio client"}


@pytest.mark.parametrize(
    ("server_cert", "hostname", "reason"),
    [
        ("server", "wrong.example", "Hostname mismatch"),
        ("expired", "localhost", "certificate has expired"),
        ("self", "localhost", "self-signed certificate"),
    ],
)
def test_verification_failures(run, certs, loop_errors, server_cert, hostname, reason):
    async def main():
        async with tls_server(echo_upper, certs.server_context(server_cert)) as port:
            with pytest.raises(ssl.SSLCertVerificationError, match=reason):
                await asyncio.open_connection(
                    HOST, port, ssl=certs.client_context(), server_hostname=hostname
                )

    run(main())
    # Both loops report the server side's failed handshake the same way.
    for context in loop_errors.contexts[loop_errors.expected :]:
        assert context["message"] == "Error on transport creation for incoming connection"
    loop_errors.expect(len(loop_errors.contexts) - loop_errors.expected)


def test_ssl_true_uses_a_verifying_default_context(run, certs):
    async def main():
        async with tls_server(echo_upper, certs.server_context("self")) as port:
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.open_connection(HOST, port, ssl=True, server_hostname="localhost")

    run(main())


def test_empty_server_hostname_disables_sni(run, certs, loop_errors):
    client_context = certs.client_context(check_hostname=False)
    names = []

    def remember_sni(sslobj, name, context):
        names.append(name)

    server_context = certs.server_context()
    server_context.sni_callback = remember_sni

    async def main():
        async with tls_server(echo_upper, server_context) as port:
            return await exchange(port, client_context, server_hostname="")

    answer, info = run(main())
    assert answer == b"HELLO"
    assert names == [None]
    assert info["ssl_object"].server_hostname is None


# -- protocol versions and ALPN -----------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_pinned_protocol_version(run, certs, version):
    server_context = certs.server_context(minimum_version=version, maximum_version=version)

    async def main():
        async with tls_server(echo_upper, server_context) as port:
            return await exchange(port, certs.client_context(), server_hostname="localhost")

    answer, info = run(main())
    assert answer == b"HELLO"
    assert info["cipher"][1] == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]


def test_no_common_protocol_version(run, certs, loop_errors):
    server_context = certs.server_context(minimum_version=ssl.TLSVersion.TLSv1_3)
    client_context = certs.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)

    async def main():
        async with tls_server(echo_upper, server_context) as port:
            # The server's alert, or its hang-up when that arrives first.
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                await asyncio.open_connection(
                    HOST, port, ssl=client_context, server_hostname="localhost"
                )

    run(main())
    loop_errors.expect(len(loop_errors.contexts))


@requires_openssl
def test_alpn_against_openssl_s_server(run, certs, openssl_process):
    port = free_port()
    openssl_process(
        "s_server", "-accept", f"{HOST}:{port}", "-www", "-alpn", "h2,http/1.1",
        "-cert", certs.path("server.pem"), "-key", certs.path("server.key"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port(port)
    client_context = certs.client_context()
    client_context.set_alpn_protocols(["h2"])

    async def main():
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=client_context, server_hostname="localhost"
        )
        selected = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        page = await reader.read()  # -www closes with close_notify after the page
        writer.close()
        await writer.wait_closed()
        return selected, page

    selected, page = run(main())
    assert selected == "h2"
    assert page.startswith(b"HTTP/1.0 200 ok")


@requires_openssl
def test_openssl_s_client_against_loop_server(run, certs):
    async def main():
        async with tls_server(echo_upper, certs.server_context()) as port:
            client = await asyncio.create_subprocess_exec(
                "openssl", "s_client", "-connect", f"{HOST}:{port}", "-quiet", "-no_ign_eof",
                "-verify_return_error", "-CAfile", certs.path("ca.pem"),
                "-servername", "localhost",
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                client.stdin.write(b"over tls\n")
                line = await asyncio.wait_for(client.stdout.readline(), 30)
                client.stdin.close()  # s_client sends close_notify and exits
                await asyncio.wait_for(client.wait(), 30)
            finally:
                if client.returncode is None:
                    client.kill()
                    await client.wait()
            return line

    assert run(main()) == b"OVER TLS\n"


# -- plaintext on one side ----------------------------------------------------------------


def test_plaintext_client_to_tls_server(run, certs, loop_errors):
    async def main():
        async with tls_server(echo_upper, certs.server_context()) as port:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            answer = await reader.read()
            writer.close()
            await writer.wait_closed()
            return answer

    # The server gives up on the handshake and closes; no plaintext comes back.
    assert b"HTTP" not in run(main())
    loop_errors.expect(len(loop_errors.contexts))


def test_tls_client_to_plaintext_server(run, certs):
    async def speak_plaintext(reader, writer):
        writer.write(b"220 plain text here\r\n" * 4)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(speak_plaintext, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ssl.SSLError, match="WRONG_VERSION_NUMBER|wrong version"):
                await asyncio.open_connection(
                    HOST, port, ssl=certs.client_context(), server_hostname="localhost"
                )
        finally:
            server.close()
            await server.wait_closed()

    run(main())


# -- start_tls ----------------------------------------------------------------------------


def test_start_tls_upgrades_a_live_connection(run, certs):
    async def handler(reader, writer):
        assert await reader.readline() == b"STARTTLS\r\n"
        writer.write(b"OK\r\n")
        await writer.drain()
        await writer.start_tls(certs.server_context())
        await echo_upper(reader, writer)

    async def main():
        server = await asyncio.start_server(handler, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"STARTTLS\r\n")
            assert await reader.readline() == b"OK\r\n"
            assert writer.get_extra_info("ssl_object") is None
            await writer.start_tls(certs.client_context(), server_hostname="localhost")
            cipher = writer.get_extra_info("cipher")
            writer.write(b"secret")
            answer = await reader.readexactly(6)
            writer.close()
            await writer.wait_closed()
            return cipher, answer
        finally:
            server.close()
            await server.wait_closed()

    cipher, answer = run(main())
    assert cipher is not None and answer == b"SECRET"


def test_start_tls_argument_checks(run, loop, certs):
    async def main():
        server = await asyncio.start_server(echo_upper, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            transport, protocol = await loop.create_connection(asyncio.Protocol, HOST, port)
            with pytest.raises(TypeError, match="sslcontext is expected"):
                await loop.start_tls(transport, protocol, object())
            with pytest.raises(ValueError, match="ssl_handshake_timeout should be a positive"):
                await loop.start_tls(
                    transport, protocol, certs.client_context(), ssl_handshake_timeout=0
                )
            transport.close()
            await settle()  # the server's handler sees end of stream
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_connection_argument_checks(run, loop, certs):
    async def main():
        with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
            await loop.create_connection(asyncio.Protocol, HOST, 1, server_hostname="x")
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
            await loop.create_connection(asyncio.Protocol, HOST, 1, ssl_handshake_timeout=1)
        with socket.socket() as sock:
            with pytest.raises(ValueError, match="You must set server_hostname"):
                await loop.create_connection(asyncio.Protocol, sock=sock, ssl=True)
        with pytest.raises(TypeError, match="ssl argument must be an SSLContext or None"):
            await loop.create_server(asyncio.Protocol, HOST, 0, ssl=True)
        with pytest.raises(ValueError, match="you have to pass server_hostname"):
            await loop.create_unix_connection(asyncio.Protocol, "/nonexistent", ssl=True)

    run(main())


# -- failures during the handshake --------------------------------------------------------


def test_peer_vanishes_mid_handshake(run, certs):
    async def vanish(reader, writer):
        await reader.read(1)  # part of the ClientHello
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(vanish, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ConnectionResetError):
                await asyncio.open_connection(
                    HOST, port, ssl=certs.client_context(), server_hostname="localhost"
                )
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_handshake_timeout(run, loop, certs):
    async def silent(reader, writer):
        await reader.read()  # never answers the ClientHello
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(silent, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            started = loop.time()
            with pytest.raises(ConnectionAbortedError, match="SSL handshake is taking longer"):
                await loop.create_connection(
                    asyncio.Protocol,
                    HOST,
                    port,
                    ssl=certs.client_context(),
                    server_hostname="localhost",
                    ssl_handshake_timeout=0.2,
                )
            return loop.time() - started
        finally:
            server.close()
            await server.wait_closed()

    assert 0.2 <= run(main()) < 5


# -- data flow, flow control and closing --------------------------------------------------


def test_large_transfer_both_ways_with_flow_control(run, loop, certs):
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB

    def serve_slowly(tls):
        time.sleep(0.5)  # the client's buffers fill up meanwhile
        received = 0
        while received < len(payload):
            data = tls.recv(65536)
            received += len(data)
            tls.sendall(data.upper())
        tls.unwrap()

    server = ThreadServer(certs.server_context(), serve_slowly)

    class Sender(asyncio.Protocol):
        """Writes 64 KiB at a time for as long as the transport lets it."""

        def __init__(self):
            self.events = []
            self.sent = 0
            self.paused = False
            self.received = bytearray()
            self.lost = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport
            self.produce()

        def produce(self):
            while not self.paused and self.sent < len(payload):
                self.transport.write(payload[self.sent : self.sent + 65536])
                self.sent += 65536

        def pause_writing(self):
            self.paused = True
            self.events.append(("pause", self.transport.get_write_buffer_size()))

        def resume_writing(self):
            self.paused = False
            self.events.append(("resume", self.transport.get_write_buffer_size()))
            self.produce()

        def data_received(self, data):
            self.received += data

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        # Small kernel buffers, so that the TLS layer's own buffer has to absorb the backlog.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        sock.connect((HOST, server.port))
        transport, sender = await loop.create_connection(
            Sender, sock=sock, ssl=certs.client_context(), server_hostname="localhost"
        )
        assert transport.get_write_buffer_limits() == (128 * 1024, 512 * 1024)
        assert await asyncio.wait_for(sender.lost, 30) is None  # the peer's close_notify
        return sender

    try:
        sender = run(main())
    finally:
        server.join()
    assert sender.received == payload.upper()
    # The app was paused once 512 KiB waited to be sent, and resumed at 128 KiB.
    assert [kind for kind, _ in sender.events[:2]] == ["pause", "resume"]
    assert sender.events[0][1] >= 512 * 1024
    assert sender.events[1][1] <= 128 * 1024


def test_pause_reading_stops_the_plain_transport(run, loop, certs):
    chunk = b"x" * 65536
    total = 4 * 1024 * 1024

    class SlowReader(asyncio.Protocol):
        def __init__(self):
            self.received = 0
            self.done = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            # Paused after the first data, not in connection_made(): asyncio would then also
            # hold back the client's last TLS 1.3 handshake message, and the server would hang.
            if not self.received:
                self.transport.pause_reading()
            self.received += len(data)
            if self.received == total:
                self.done.set_result(None)

    async def flood(reader, writer):
        for _ in range(total // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        await reader.read()
        writer.close()

    async def main():
        async with tls_server(flood, certs.server_context()) as port:
            transport, reader = await loop.create_connection(
                SlowReader, HOST, port, ssl=certs.client_context(), server_hostname="localhost"
            )
            await asyncio.sleep(0.3)
            assert 0 < reader.received < total and not transport.is_reading()
            # Ciphertext piles up below the TLS layer only up to its read high-water mark.
            buffered = transport.get_read_buffer_size()
            # (The last read of the plain transport may overshoot the mark by one read.)
            assert 0 < buffered <= 2 * 256 * 1024
            transport.resume_reading()
            await asyncio.wait_for(reader.done, 30)
            transport.close()
            return reader.received

    assert run(main()) == total


def test_buffered_protocol_app(run, loop, certs):
    payload = b"0123456789abcdef" * 65536  # 1 MiB

    class Receiver(asyncio.BufferedProtocol):
        def __init__(self):
            self.buffer = bytearray(10000)
            self.received = bytearray()
            self.done = loop.create_future()

        def get_buffer(self, sizehint):
            return self.buffer

        def buffer_updated(self, nbytes):
            self.received += self.buffer[:nbytes]

        def eof_received(self):
            self.done.set_result(None)

    async def send_and_close(reader, writer):
        writer.write(payload)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        async with tls_server(send_and_close, certs.server_context()) as port:
            transport, receiver = await loop.create_connection(
                Receiver, HOST, port, ssl=certs.client_context(), server_hostname="localhost"
            )
            await asyncio.wait_for(receiver.done, 30)
            transport.close()
            return receiver.received

    assert run(main()) == payload


def test_close_notify_from_peer(run, loop, certs):
    """The peer's close_notify reaches the app as end of stream, and ours answers it."""

    def serve(tls):
        tls.sendall(b"bye")
        tls.unwrap()  # sends close_notify and waits for the peer's

    server = ThreadServer(certs.server_context(), serve)
    events = []

    class Client(asyncio.Protocol):
        def __init__(self):
            self.lost = loop.create_future()

        def data_received(self, data):
            events.append(data)

        def eof_received(self):
            events.append("eof")

        def connection_lost(self, exc):
            events.append(exc)
            self.lost.set_result(None)

    async def main():
        transport, client = await loop.create_connection(
            Client, HOST, server.port, ssl=certs.client_context(), server_hostname="localhost"
        )
        await asyncio.wait_for(client.lost, 10)

    try:
        run(main())
    finally:
        server.join()  # unwrap() returned: our close_notify arrived
    assert events == [b"bye", "eof", None]


def test_close_sends_close_notify(run, loop, certs):
    received = []

    def serve(tls):
        while data := tls.recv(100):
            received.append(data)
        received.append("close_notify")  # recv() returns b"" only on a clean TLS close
        tls.unwrap()

    server = ThreadServer(certs.server_context(), serve)

    async def main():
        reader, writer = await asyncio.open_connection(
            HOST, server.port, ssl=certs.client_context(), server_hostname="localhost"
        )
        writer.write(b"last words")
        writer.close()
        assert writer.is_closing()
        await writer.wait_closed()

    try:
        run(main())
    finally:
        server.join()
    assert b"".join(x for x in received if isinstance(x, bytes)) == b"last words"
    assert received[-1] == "close_notify"


def test_unclean_shutdown_ends_the_stream(run, loop, certs):
    """A peer that closes TCP without close_notify: end of stream, as in asyncio."""

    def serve(tls):
        tls.sendall(b"partial")
        tls.unwrap  # noqa: B018 -- deliberately not called: the socket closes without it

    server = ThreadServer(certs.server_context(), serve)

    async def main():
        reader, writer = await asyncio.open_connection(
            HOST, server.port, ssl=certs.client_context(), server_hostname="localhost"
        )
        data = await reader.read()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        return data

    try:
        assert run(main()) == b"partial"
    finally:
        server.join()


def test_writes_after_close_are_dropped(run, loop, certs):
    async def main():
        async with tls_server(echo_upper, certs.server_context()) as port:
            transport, _ = await loop.create_connection(
                asyncio.Protocol,
                HOST,
                port,
                ssl=certs.client_context(),
                server_hostname="localhost",
            )
            assert not transport.can_write_eof()
            with pytest.raises(NotImplementedError):
                transport.write_eof()
            with pytest.raises(TypeError, match="data: expecting a bytes-like instance"):
                transport.write("text")
            transport.close()
            transport.write(b"dropped")

    run(main())


# -- other entry points -------------------------------------------------------------------


def test_unix_sockets(run, certs, tmp_path):
    path = str(tmp_path / "tls.sock")

    async def main():
        server = await asyncio.start_unix_server(echo_upper, path, ssl=certs.server_context())
        try:
            reader, writer = await asyncio.open_unix_connection(
                path, ssl=certs.client_context(), server_hostname="localhost"
            )
            writer.write(b"unix")
            answer = await reader.readexactly(4)
            writer.close()
            await writer.wait_closed()
            return answer
        finally:
            server.close()
            await server.wait_closed()

    assert run(main()) == b"UNIX"


def test_connect_accepted_socket(run, loop, certs):
    async def main():
        listener = socket.create_server((HOST, 0))
        port = listener.getsockname()[1]
        listener.setblocking(False)
        with listener:
            connecting = asyncio.ensure_future(
                asyncio.open_connection(
                    HOST, port, ssl=certs.client_context(), server_hostname="localhost"
                )
            )
            conn, _ = await loop.sock_accept(listener)
            transport, _ = await loop.connect_accepted_socket(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
                conn,
                ssl=certs.server_context(),
            )
            reader, writer = await connecting
            peer_tls = transport.get_extra_info("ssl_object")
            writer.close()
            await writer.wait_closed()
            transport.close()
            return peer_tls

    assert run(main()).server_side
