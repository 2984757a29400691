"""The event loops `make demo` compares, by name."""

import asyncio
import importlib.util

LOOPS = ("asyncio", "uvloop", "oxio")


def loop_factory(name):
    """The new_event_loop of the loop called `name`."""
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if name == "oxio":
        import oxio

        return oxio.new_event_loop
    raise SystemExit(f"unknown loop {name!r}: expected one of {', '.join(LOOPS)}")


def available():
    """The loops that can be imported here; the demo leaves out the others and says so."""
    found = [name for name in LOOPS if importlib.util.find_spec(name) is not None]
    for name in sorted(set(LOOPS) - set(found)):
        print(f"({name} is not installed; it is left out)")
    return found
