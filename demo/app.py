"""The web app of `make demo`: a small aiohttp JSON API, served on the event loop it is told.

    python demo/app.py LOOP tcp:HOST:PORT

Port 0 picks a free port. Once it accepts connections it prints {"address": "tcp:HOST:PORT"}
with the port it got (what benches/netbench.py's running_server waits for), then serves until
it is killed.

GET /items/ID answers a JSON document about item ID. Like a handler that asks a database, it
awaits the answer from another task: the lookup goes through a queue to a worker task and comes
back on a future, so every request exercises tasks, futures and a queue on top of the loop's
transports.
"""

import asyncio
import json
import sys

from aiohttp import web
from loops import loop_factory


class Catalogue:
    """Item lookups served by one worker task, as a connection to a database would serve them."""

    def __init__(self):
        self.requests = asyncio.Queue()
        # Held here because the loop keeps only a weak reference to a task.
        self.worker = asyncio.create_task(self.serve())

    async def serve(self):
        while True:
            item_id, answer = await self.requests.get()
            answer.set_result({"id": item_id, "name": f"item {item_id}", "in_stock": item_id % 3})

    async def lookup(self, item_id):
        answer = asyncio.get_running_loop().create_future()
        self.requests.put_nowait((item_id, answer))
        return await answer


async def get_item(request):
    item = await request.app["catalogue"].lookup(int(request.match_info["id"]))
    return web.json_response(item)


async def serve(endpoint):
    app = web.Application()
    app["catalogue"] = Catalogue()
    app.router.add_get(r"/items/{id:\d+}", get_item)
    # No access log: writing a line per request would measure the logging, not the loop.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = endpoint.removeprefix("tcp:").rpartition(":")
    site = web.TCPSite(runner, host, int(port))
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    print(json.dumps({"address": f"tcp:{bound_host}:{bound_port}"}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    loop_name, endpoint = sys.argv[1:3]
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        runner.run(serve(endpoint))
