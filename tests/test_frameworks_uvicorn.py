"""A FastAPI app (tests/asgi_app.py) served by uvicorn, with the loop under test.

Two ways in: `uvicorn.Server(config).serve()` run in-process on the test's loop, and the CLI
`python -m uvicorn asgi_app:app --loop oxio:new_event_loop` in a subprocess (uvicorn takes any
`module:function` as a loop factory and calls it with no arguments). The clients (httpx, the
`websockets` client, raw asyncio streams) run on the test's loop as well. One test serves HTTPS
(uvicorn's `ssl_certfile`/`ssl_keyfile`), so the loop's TLS runs under both ends.
"""

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys

import asgi_app
import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect as ws_connect

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
CLI_LOOP = {"asyncio": "asyncio", "oxio": "oxio:new_event_loop"}
LOOP_CLASS = {"asyncio": "asyncio.unix_events._UnixSelectorEventLoop", "oxio": "oxio.loop.Loop"}


@pytest.fixture
def no_uvicorn_errors(caplog):
    caplog.set_level(logging.WARNING, logger="uvicorn")
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@contextlib.asynccontextmanager
async def serving(**config_kwargs):
    """Runs asgi_app under uvicorn.Server.serve() on the running loop; yields (url, server)."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # log_config=None: records reach pytest's caplog instead of uvicorn's own handlers.
    config = uvicorn.Config(
        asgi_app.app, log_config=None, log_level="warning", access_log=False, **config_kwargs
    )
    server = uvicorn.Server(config)
    serve = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not serve.done(), serve
            await asyncio.sleep(0.01)
        scheme = "https" if config.is_ssl else "http"
        yield f"{scheme}://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(serve, 10)
        sock.close()  # uvicorn closes it too; this covers a failed start


# -- checks shared by the in-process and the subprocess tests -------------------------------
# `client_options` go to httpx.AsyncClient: `verify` with the test CA for HTTPS.


async def check_loop(url, loop_name, **client_options):
    async with httpx.AsyncClient(**client_options) as client:
        response = await client.get(f"{url}/loop")
    assert response.json() == {"loop": LOOP_CLASS[loop_name]}


async def check_concurrent_requests(url, count=200, **client_options):
    # Fewer connections than requests: requests queue for and reuse keep-alive connections.
    limits = httpx.Limits(max_connections=40)
    async with httpx.AsyncClient(limits=limits, timeout=20, **client_options) as client:
        responses = await asyncio.gather(*(client.get(f"{url}/items/{n}") for n in range(count)))
    assert [r.json() for r in responses] == [{"n": n} for n in range(count)]


async def check_streams(url, **client_options):
    expected = b"".join(asgi_app.chunk(i) for i in range(asgi_app.STREAM_CHUNKS))

    async def upload_body():
        for start in range(0, len(expected), asgi_app.CHUNK):
            yield expected[start : start + asgi_app.CHUNK]

    async with httpx.AsyncClient(timeout=20, **client_options) as client:
        async with client.stream("GET", f"{url}/stream") as response:
            assert response.headers["transfer-encoding"] == "chunked"
            received = b"".join([part async for part in response.aiter_raw()])
        assert received == expected
        # An async generator body goes out chunked: uvicorn streams it into request.stream().
        response = await client.post(f"{url}/upload", content=upload_body())
    digest = hashlib.sha256(expected).hexdigest()
    assert response.json() == {"size": len(expected), "sha256": digest}


async def check_websocket(url):
    async with ws_connect(url.replace("http", "ws") + "/ws") as ws:
        for n in range(50):
            await ws.send(f"message {n}")
            assert await ws.recv() == f"message {n}"
        big = os.urandom(512 * 1024)  # several socket buffers: flow control both ways
        await ws.send(big)
        assert await ws.recv() == big
    assert ws.close_code == 1000


async def check_client_disconnect(url, read_stats):
    """A client reads part of an endless stream and hangs up; the app's generator must stop."""
    before = await read_stats()
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /endless HTTP/1.1\r\nHost: test\r\n\r\n")
    await reader.readexactly(4 * asgi_app.CHUNK)
    writer.close()
    await writer.wait_closed()
    for _ in range(500):
        stats = await read_stats()
        if stats["endless_stopped"] > before["endless_stopped"]:
            break
        await asyncio.sleep(0.01)
    assert stats["endless_started"] == before["endless_started"] + 1
    assert stats["endless_stopped"] == before["endless_stopped"] + 1


# -- in-process: uvicorn.Server.serve() on the test's loop -----------------------------------


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_concurrent_requests(loop, run, loop_name, http, no_uvicorn_errors):
    async def main():
        async with serving(http=http) as (url, _):
            await check_loop(url, loop_name)
            await check_concurrent_requests(url)

    run(asyncio.wait_for(main(), 40))


def test_streaming_response_and_upload(loop, run, no_uvicorn_errors):
    async def main():
        async with serving() as (url, _):
            await check_streams(url)

    run(asyncio.wait_for(main(), 40))


# uvicorn's legacy "websockets" protocol warns on import that it is deprecated; that is
# uvicorn's news, not the loop's, so it is not turned into an error here.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:uvicorn")
@pytest.mark.parametrize("ws", ["websockets", "websockets-sansio"])
def test_websocket_echo(loop, run, ws, no_uvicorn_errors):
    async def main():
        async with serving(ws=ws) as (url, _):
            await check_websocket(url)

    run(asyncio.wait_for(main(), 40))


def test_https(loop, run, loop_name, certs, no_uvicorn_errors):
    """uvicorn wraps its listener with ssl= on the loop; httpx verifies against the test CA."""
    tls = {"ssl_certfile": certs.path("server.pem"), "ssl_keyfile": certs.path("server.key")}
    verify = certs.client_context()

    async def main():
        async with serving(**tls) as (url, _):
            assert url.startswith("https://")
            await check_loop(url, loop_name, verify=verify)
            await check_concurrent_requests(url, verify=verify)
            await check_streams(url, verify=verify)

    run(asyncio.wait_for(main(), 40))


def test_client_disconnect_mid_response(loop, run, no_uvicorn_errors):
    async def read_stats():
        return dict(asgi_app.stats)

    async def main():
        async with serving() as (url, server):
            await check_client_disconnect(url, read_stats)
            for _ in range(100):  # uvicorn forgets the connection too
                if not server.server_state.connections:
                    break
                await asyncio.sleep(0.01)
            assert not server.server_state.connections

    run(asyncio.wait_for(main(), 40))


def test_graceful_shutdown_finishes_in_flight_request(loop, run, no_uvicorn_errors):
    async def main():
        async with httpx.AsyncClient(timeout=20) as client, serving() as (url, server):
            in_flight = asyncio.ensure_future(client.post(f"{url}/slow", params={"delay": 0.5}))
            while not server.server_state.tasks:  # the request has reached the app
                await asyncio.sleep(0.01)
            server.should_exit = True
            response = await in_flight
            assert response.status_code == 200
            assert response.json() == {"slept": 0.5}
        # serving() has awaited serve(): the listener is gone.
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(url)

    run(asyncio.wait_for(main(), 40))


# -- the CLI in a subprocess: `--loop oxio:new_event_loop` -----------------------------------


@contextlib.contextmanager
def uvicorn_cli(loop_name):
    """Starts `python -m uvicorn asgi_app:app` with the chosen loop; yields (url, process)."""
    argv = [sys.executable, "-m", "uvicorn", "asgi_app:app", "--app-dir", TESTS_DIR]
    argv += ["--host", "127.0.0.1", "--port", "0", "--no-access-log", "--ws", "websockets-sansio"]
    argv += ["--loop", CLI_LOOP[loop_name]]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        log = []
        for line in proc.stderr:  # uvicorn reports the port it bound once it listens
            log.append(line)
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if found:
                break
        else:
            raise AssertionError(f"uvicorn did not start: {''.join(log)}")
        yield f"http://127.0.0.1:{found.group(1)}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_cli_loop_factory_serves_and_shuts_down_gracefully(loop, run, loop_name):
    async def read_stats(url):
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{url}/stats")).json()

    async def main(url, proc):
        await check_loop(url, loop_name)
        await check_concurrent_requests(url)
        await check_streams(url)
        await check_websocket(url)
        await check_client_disconnect(url, lambda: read_stats(url))
        # SIGTERM with a request in flight: uvicorn finishes it, then exits cleanly.
        async with httpx.AsyncClient(timeout=20) as client:
            in_flight = asyncio.ensure_future(client.post(f"{url}/slow", params={"delay": 0.5}))
            await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            response = await in_flight
        assert response.json() == {"slept": 0.5}

    with uvicorn_cli(loop_name) as (url, proc):
        run(asyncio.wait_for(main(url, proc), 40))
        # After its graceful shutdown uvicorn re-raises the signal it caught, so it dies of it.
        assert proc.wait(timeout=10) == -signal.SIGTERM
        rest = proc.stderr.read()
    assert "Finished server process" in rest, rest
    assert "ERROR" not in rest and "Traceback" not in rest, rest
