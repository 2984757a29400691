"""TLS on both loops, against real peers: servers and clients on the loop itself, Python `ssl`
sockets in threads, and `openssl s_server`/`s_client` subprocesses.

This file covers certificates and verification, protocol versions and ALPN, plaintext on one
side, start_tls and handshake failures; test_tls_data.py covers data flow and closing.
Certificates and keys are made at test time by the `openssl` CLI; no key is committed.
"""

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import threading

import pytest
from tls_peers import HOST, ThreadServer, echo_upper, exchange, settle, tls_server

requires_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


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


def test_a_custom_sslobject_class_is_used_for_every_record(run, certs):
    """oxio reads and writes records through the inner object only for `ssl.SSLObject` itself;
    a context's own `sslobject_class` keeps seeing every call, as on asyncio."""
    calls = {"read": 0, "write": 0}

    class CountingSSLObject(ssl.SSLObject):
        def read(self, *args):
            calls["read"] += 1
            return super().read(*args)

        def write(self, data):
            calls["write"] += 1
            return super().write(data)

    client_context = certs.client_context("self.pem")
    client_context.sslobject_class = CountingSSLObject

    async def main():
        async with tls_server(echo_upper, certs.server_context("self")) as port:
            return await exchange(port, client_context, server_hostname="localhost")

    answer, info = run(main())
    assert answer == b"HELLO"
    assert isinstance(info["ssl_object"], CountingSSLObject)
    assert calls["read"] >= 1 and calls["write"] >= 1


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
