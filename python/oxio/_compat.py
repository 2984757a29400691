"""Version switches: every place where asyncio's behaviour depends on the Python version."""

import sys
from asyncio import events, unix_events

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)
PY314 = sys.version_info >= (3, 14)

# 3.12 gave the exception handler the context of the failed task/handle to run in.
EXCEPTION_HANDLER_RUNS_IN_CONTEXT = PY312
# 3.14 passes every keyword of create_task() through to the task factory.
CREATE_TASK_FORWARDS_KWARGS = PY314

# 3.13 made DatagramTransport.sendto(b"") send an empty datagram (it did nothing before), and
# counts 8 header bytes per queued datagram in the write buffer size, so that a flood of empty
# datagrams still reaches the high-water mark.
DATAGRAM_SENDS_EMPTY = PY313
DATAGRAM_HEADER_SIZE = 8 if PY313 else 0

# asyncio.DefaultEventLoopPolicy on Unix, by the private name that exists on 3.11 to 3.14: 3.14
# deprecates the public name (and warns on access), not the class.
DefaultEventLoopPolicy = unix_events._UnixDefaultEventLoopPolicy

# asyncio.Server counts its connections; 3.13 also tracks the transports themselves so that
# close_clients()/abort_clients() can reach them.
if PY313:

    def server_attach(server, transport):
        server._attach(transport)

    def server_detach(server, transport):
        server._detach(transport)

else:

    def server_attach(server, transport):
        server._attach()

    def server_detach(server, transport):
        server._detach()


def new_server(
    loop, sockets, protocol_factory, backlog, ssl, ssl_handshake_timeout, ssl_shutdown_timeout
):
    """An `asyncio.Server` over listening sockets; it hands its TLS settings back to the
    loop's `_start_serving`."""
    import asyncio

    return asyncio.Server(
        loop,
        sockets,
        protocol_factory,
        ssl,
        backlog,
        ssl_handshake_timeout,
        ssl_shutdown_timeout,
    )


def policy_child_watcher():
    """The child watcher installed on the event loop policy, or None (3.14 has none).

    asyncio's loop takes its child watcher from the policy on 3.11 to 3.13; oxio does so only
    when one was installed there (by the user, or by a call to `get_child_watcher()`), and
    otherwise watches its children itself.
    """
    if PY314:
        return None
    return getattr(events.get_event_loop_policy(), "_watcher", None)
