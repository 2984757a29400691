"""aiohttp's server and client, both on the loop under test, over real 127.0.0.1 sockets.

Each test starts an `aiohttp.web` app with `AppRunner`/`TCPSite` on an ephemeral port and
drives it with `aiohttp.ClientSession` from the same loop, so every byte crosses the loop's
stream transports twice. aiohttp logs handler failures instead of raising them, so each test
also fails on any ERROR record from aiohttp's loggers. One test runs it all over TLS: the site
with an SSLContext, the client verifying against the test CA.
"""

import asyncio
import contextlib
import hashlib
import io
import logging
import socket
import struct

import aiohttp
import pytest
from aiohttp import web

CHUNK = 64 * 1024
STREAM_BYTES = 4 * 1024 * 1024  # the streamed response and upload: several MB, many chunks


def pattern(size):
    """Deterministic, non-repeating-per-chunk bytes, so reordering or loss changes the hash."""
    block = hashlib.sha256(str(size).encode()).digest() * (CHUNK // 32)
    return b"".join(bytes([i % 251]) + block[1:] for i in range(size // CHUNK))


@pytest.fixture
def no_aiohttp_errors(caplog):
    caplog.set_level(logging.WARNING, logger="aiohttp")
    yield
    errors = [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= 40]
    assert not errors, [r.getMessage() for r in errors]


@contextlib.asynccontextmanager
async def serving(app, ssl_context=None, **runner_kwargs):
    """Runs `app` on 127.0.0.1 (HTTPS with `ssl_context`) and yields its base URL; cleans the
    runner up afterwards."""
    runner = web.AppRunner(app, access_log=None, **runner_kwargs)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    host, port = runner.addresses[0][:2]
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://{host}:{port}", runner
    finally:
        await runner.cleanup()


async def hello(request):
    return web.Response(text=f"hello {request.match_info['n']}")


async def stream_out(request):
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    data = pattern(STREAM_BYTES)
    for start in range(0, len(data), CHUNK):
        await response.write(data[start : start + CHUNK])
    await response.write_eof()
    return response


async def upload(request):
    digest, size = hashlib.sha256(), 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"size": size, "sha256": digest.hexdigest()})


async def ws_echo(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def make_app():
    app = web.Application()
    app.router.add_get("/hello/{n}", hello)
    app.router.add_get("/stream", stream_out)
    app.router.add_post("/upload", upload)
    app.router.add_get("/ws", ws_echo)
    return app


def test_many_concurrent_requests(loop, run, no_aiohttp_errors):
    async def main():
        async with serving(make_app()) as (url, _):
            # A connection limit below the request count makes requests queue for and reuse
            # keep-alive connections as well as open new ones.
            connector = aiohttp.TCPConnector(limit=50)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def get(n):
                    async with session.get(f"{url}/hello/{n}") as response:
                        assert response.status == 200
                        return await response.text()

                bodies = await asyncio.gather(*(get(n) for n in range(500)))
        assert bodies == [f"hello {n}" for n in range(500)]

    run(asyncio.wait_for(main(), 30))


def test_streaming_response_and_streaming_upload(loop, run, no_aiohttp_errors):
    expected = pattern(STREAM_BYTES)

    async def chunks():
        for start in range(0, len(expected), CHUNK):
            yield expected[start : start + CHUNK]
            await asyncio.sleep(0)

    async def main():
        async with serving(make_app()) as (url, _), aiohttp.ClientSession() as session:
            async with session.get(f"{url}/stream") as response:
                assert response.headers["Transfer-Encoding"] == "chunked"
                received = bytearray()
                async for chunk in response.content.iter_chunked(CHUNK):
                    received += chunk
            assert received == expected

            async with session.post(f"{url}/upload", data=chunks()) as response:
                assert response.status == 200
                assert await response.json() == {
                    "size": len(expected),
                    "sha256": hashlib.sha256(expected).hexdigest(),
                }

    run(asyncio.wait_for(main(), 30))


def test_websocket_echo(loop, run, no_aiohttp_errors):
    async def main():
        async with serving(make_app()) as (url, _), aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{url}/ws") as ws:
                for n in range(50):
                    await ws.send_str(f"message {n}")
                    assert await ws.receive_str() == f"message {n}"
                big = pattern(1024 * 1024)  # larger than a socket buffer: flow control both ways
                await ws.send_bytes(big)
                assert await ws.receive_bytes() == big
                await ws.close()
            assert ws.closed and ws.close_code == aiohttp.WSCloseCode.OK

    run(asyncio.wait_for(main(), 30))


def test_https_requests_streams_and_websocket(loop, run, certs, no_aiohttp_errors):
    expected = pattern(STREAM_BYTES)
    client_context = certs.client_context()

    async def main():
        async with (
            serving(make_app(), ssl_context=certs.server_context()) as (url, _),
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context)) as session,
        ):
            assert url.startswith("https://")

            async def get(n):
                async with session.get(f"{url}/hello/{n}") as response:
                    return await response.text()

            bodies = await asyncio.gather(*(get(n) for n in range(100)))
            assert bodies == [f"hello {n}" for n in range(100)]

            async with session.get(f"{url}/stream") as response:
                assert await response.read() == expected
            upload = io.BytesIO(expected)  # aiohttp sends a file object in chunks
            async with session.post(f"{url}/upload", data=upload) as response:
                assert await response.json() == {
                    "size": len(expected),
                    "sha256": hashlib.sha256(expected).hexdigest(),
                }
            async with session.ws_connect(f"{url}/ws") as ws:
                await ws.send_bytes(expected[: 1024 * 1024])
                assert await ws.receive_bytes() == expected[: 1024 * 1024]
                await ws.close()
            assert ws.close_code == aiohttp.WSCloseCode.OK

    run(asyncio.wait_for(main(), 30))


def test_client_disconnect_mid_response(loop, run, no_aiohttp_errors):
    seen = {}

    async def endless(request):
        response = web.StreamResponse()
        await response.prepare(request)
        seen["started"].set()
        try:
            while True:  # until the peer goes away
                await response.write(b"x" * CHUNK)
                await asyncio.sleep(0.001)
        except BaseException as exc:
            seen["error"] = exc
            seen["stopped"].set()
            raise

    async def main():
        seen["started"], seen["stopped"] = asyncio.Event(), asyncio.Event()
        app = web.Application()
        app.router.add_get("/endless", endless)
        async with serving(app) as (url, runner), aiohttp.ClientSession() as session:
            response = await session.get(f"{url}/endless")
            await response.content.readexactly(3 * CHUNK)
            await seen["started"].wait()
            response.close()  # drops the connection with the body half read
            await asyncio.wait_for(seen["stopped"].wait(), 10)
            # The handler's write fails: aiohttp raises a ConnectionResetError subclass.
            assert isinstance(seen["error"], ConnectionResetError), repr(seen["error"])
            # The server drops the connection: no request handler is left behind.
            for _ in range(100):
                if not runner.server.connections:
                    break
                await asyncio.sleep(0.01)
            assert runner.server.connections == []

    run(asyncio.wait_for(main(), 30))


def test_graceful_shutdown_with_requests_in_flight(loop, run, no_aiohttp_errors):
    outcomes = {}

    async def slow(request):
        delay = float(request.query["delay"])
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            outcomes[delay] = "cancelled"
            raise
        outcomes[delay] = "finished"
        return web.Response(text=f"slept {delay}")

    async def main():
        app = web.Application()
        app.router.add_post("/slow", slow)
        # Handlers get shutdown_timeout to finish; the one that would take longer is cancelled.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession() as session:
            # POST: aiohttp's client would retry an idempotent GET on a fresh connection.
            quick = asyncio.ensure_future(session.post(f"http://{host}:{port}/slow?delay=0.3"))
            stuck = asyncio.ensure_future(session.post(f"http://{host}:{port}/slow?delay=30"))
            while len(runner.server.connections) < 2:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # both handlers are running
            start = loop.time()
            await runner.cleanup()
            assert loop.time() - start < 5

            response = await quick
            assert response.status == 200
            assert await response.text() == "slept 0.3"
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await stuck
        assert outcomes == {0.3: "finished", 30.0: "cancelled"}
        # Nothing listens any more.
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, port)

    run(asyncio.wait_for(main(), 30))


def test_client_reset_mid_upload(loop, run, no_aiohttp_errors):
    """The peer resets while the handler reads the body: the read fails, nothing is logged."""
    seen = {}

    async def read_body(request):
        try:
            await request.read()
        except ConnectionResetError as exc:
            seen["error"] = exc
            seen["stopped"].set()
            raise
        return web.Response(text="complete")

    async def main():
        seen["stopped"] = asyncio.Event()
        app = web.Application()
        app.router.add_post("/body", read_body)
        async with serving(app) as (url, runner):
            port = int(url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = b"POST /body HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n\r\n"
            writer.write(head + b"z" * 100_000)
            await writer.drain()
            while not runner.server.connections:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # the handler is waiting for the rest of the body
            linger = struct.pack("ii", 1, 0)  # close() now sends a RST
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            writer.transport.abort()
            await asyncio.wait_for(seen["stopped"].wait(), 10)
            assert isinstance(seen["error"], ConnectionResetError)
            for _ in range(100):
                if not runner.server.connections:
                    break
                await asyncio.sleep(0.01)
            assert runner.server.connections == []

    run(asyncio.wait_for(main(), 30))
