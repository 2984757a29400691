"""The FastAPI app that test_frameworks_uvicorn.py serves with uvicorn, in-process and as
`python -m uvicorn asgi_app:app` in a subprocess (so it imports nothing from the tests)."""

import asyncio
import hashlib

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

CHUNK = 64 * 1024
STREAM_CHUNKS = 64  # /stream sends 4 MiB

app = FastAPI()
# What /endless saw; read by in-process tests directly and by subprocess tests via /stats.
stats = {"endless_started": 0, "endless_stopped": 0}


def chunk(index):
    """The index-th chunk of /stream: distinct per chunk, so loss or reordering shows."""
    return bytes([index % 251]) * CHUNK


@app.get("/loop")
async def loop_type():
    loop = asyncio.get_running_loop()
    return {"loop": f"{type(loop).__module__}.{type(loop).__qualname__}"}


@app.get("/items/{n}")
async def item(n: int):
    return {"n": n}


@app.post("/slow")
async def slow(delay: float):
    await asyncio.sleep(delay)
    return {"slept": delay}


@app.post("/upload")
async def upload(request: Request):
    digest, size = hashlib.sha256(), 0
    async for part in request.stream():
        digest.update(part)
        size += len(part)
    return {"size": size, "sha256": digest.hexdigest()}


@app.get("/stream")
async def stream():
    async def body():
        for index in range(STREAM_CHUNKS):
            yield chunk(index)

    return StreamingResponse(body(), media_type="application/octet-stream")


@app.get("/endless")
async def endless():
    async def body():
        stats["endless_started"] += 1
        try:
            while True:  # until the client goes away and Starlette cancels the stream
                yield b"x" * CHUNK
                await asyncio.sleep(0.001)
        finally:
            stats["endless_stopped"] += 1

    return StreamingResponse(body(), media_type="application/octet-stream")


@app.get("/stats")
async def get_stats():
    return stats


@app.websocket("/ws")
async def ws_echo(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return
