"""CPython's loop-parametrized test mixins, bound to the loop under test.

Collected only by `run.py` (the file name keeps it out of the main pytest run). The loop comes
from the `OXIO_CONFORMANCE_LOOP` environment variable: `oxio` or `asyncio`.
"""

import asyncio
import os
import selectors
import unittest

from test.test_asyncio import (
    test_buffered_proto,
    test_events,
    test_sendfile,
    test_server,
    test_sock_lowlevel,
    test_sslproto,
)
from test.test_asyncio import utils as test_utils

import oxio

if os.environ.get("OXIO_CONFORMANCE_LOOP") == "oxio":
    make_loop = oxio.new_event_loop
else:

    def make_loop():
        return asyncio.SelectorEventLoop(selectors.EpollSelector())


class LoopUnderTest:
    def create_event_loop(self):
        return make_loop()

    def new_loop(self):
        return make_loop()


# test_events binds its mixin together with the subprocess mixin on Unix; subprocesses are
# tested through test_subprocess instead, so only the loop tests are bound here.
class EventLoopTests(LoopUnderTest, test_events.UnixEventLoopTestsMixin, test_utils.TestCase):
    pass


class SubprocessEventsTests(
    LoopUnderTest,
    test_events.UnixEventLoopTestsMixin,
    test_events.SubprocessTestsMixin,
    test_utils.TestCase,
):
    # Only the subprocess tests: the loop tests already ran in EventLoopTests.
    pass


for _name in dir(test_events.EventLoopTestsMixin):
    if _name.startswith("test_") and not hasattr(test_events.SubprocessTestsMixin, _name):
        setattr(SubprocessEventsTests, _name, None)


class SockTests(LoopUnderTest, test_sock_lowlevel.BaseSockTestsMixin, test_utils.TestCase):
    pass


class SendfileTests(LoopUnderTest, test_sendfile.SendfileTestsBase, test_utils.TestCase):
    pass


class StartServerTests(LoopUnderTest, test_server.BaseStartServer, unittest.TestCase):
    pass


class BufferedProtocolTests(
    LoopUnderTest, test_buffered_proto.BaseTestBufferedProtocol, unittest.TestCase
):
    pass


class StartTLSTests(LoopUnderTest, test_sslproto.BaseStartTLS, unittest.TestCase):
    pass


del _name
