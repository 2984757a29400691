"""pytest plugin for the conformance runs: makes asyncio's default policy create oxio loops.

Patching the policy's loop factory (rather than installing a policy) survives the
`set_event_loop_policy(None)` calls that CPython's test modules make in their tear-downs.
This patch lives in the test harness only; oxio itself never patches the stdlib.
"""

import os


def pytest_configure(config):
    if os.environ.get("OXIO_CONFORMANCE_LOOP") != "oxio":
        return
    import asyncio

    import oxio

    policy_class = type(asyncio.get_event_loop_policy())
    policy_class._loop_factory = oxio.Loop
