"""Differential fixtures: every test body runs once on the stdlib loop and once on oxio.

The `loop` fixture records every call to the loop's exception handler; teardown fails the test
if any arrived that the test did not claim with `loop_errors.expect(...)`, or if the test left
more file descriptors open than it found.

It also holds the TLS material the TLS tests share: a CA, leaves it signed and a self-signed
certificate, made at test time by the `openssl` CLI; no key is committed.
"""

import asyncio
import gc
import os
import shutil
import ssl
import subprocess

import pytest

import oxio

LOOPS = {
    "asyncio": asyncio.SelectorEventLoop,
    "oxio": oxio.new_event_loop,
}


class LoopErrors:
    """Exception-handler calls seen during a test."""

    def __init__(self):
        self.contexts = []
        self.expected = 0

    def handler(self, loop, context):
        self.contexts.append(context)

    def expect(self, count=1):
        """Claims `count` handler calls so far as part of the test, and returns them."""
        self.expected += count
        assert len(self.contexts) == self.expected, self.contexts
        return self.contexts[self.expected - count : self.expected]


@pytest.fixture(params=sorted(LOOPS))
def loop_name(request):
    return request.param


@pytest.fixture
def loop_factory(loop_name):
    return LOOPS[loop_name]


@pytest.fixture
def loop_errors():
    return LoopErrors()


@pytest.fixture
def loop(loop_factory, loop_errors):
    fds_before = set(os.listdir("/proc/self/fd"))
    loop = loop_factory()
    loop.set_exception_handler(loop_errors.handler)
    asyncio.set_event_loop(loop)
    yield loop
    try:
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    finally:
        asyncio.set_event_loop(None)
    gc.collect()
    unexpected = loop_errors.contexts[loop_errors.expected :]
    assert not unexpected, f"unexpected exception-handler calls: {unexpected}"
    leaked = set(os.listdir("/proc/self/fd")) - fds_before
    assert not leaked, f"file descriptors left open: {sorted(leaked)}"


@pytest.fixture
def run(loop):
    """`run(coro)` runs a coroutine to completion on the test's loop."""
    return loop.run_until_complete


LEAF_EXTENSIONS = """\
subjectAltName=DNS:localhost,IP:127.0.0.1
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash
"""


class Certs:
    """Paths of a CA, leaves it signed, and a self-signed certificate."""

    def __init__(self, directory):
        self.dir = directory

    def path(self, name):
        return str(self.dir / name)

    def _openssl(self, *args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    def make_ca(self):
        self._openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=oxio test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", self.path("ca.key"), "-out", self.path("ca.pem"),
        )  # fmt: skip

    def make_leaf(self, name, cn, days):
        (self.dir / "leaf.ext").write_text(LEAF_EXTENSIONS)
        self._openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", self.path(f"{name}.key"), "-out", self.path(f"{name}.csr"),
        )  # fmt: skip
        self._openssl(
            "x509", "-req", "-in", self.path(f"{name}.csr"), "-days", str(days),
            "-CA", self.path("ca.pem"), "-CAkey", self.path("ca.key"), "-CAcreateserial",
            "-extfile", self.path("leaf.ext"), "-out", self.path(f"{name}.pem"),
        )  # fmt: skip

    def make_self_signed(self):
        self._openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", self.path("self.key"), "-out", self.path("self.pem"),
        )  # fmt: skip

    def server_context(self, name="server", **options):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.path(f"{name}.pem"), self.path(f"{name}.key"))
        for option, value in options.items():
            setattr(context, option, value)
        return context

    def client_context(self, cafile="ca.pem", **options):
        context = ssl.create_default_context(cafile=self.path(cafile))
        for option, value in options.items():
            setattr(context, option, value)
        return context


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI")
    made = Certs(tmp_path_factory.mktemp("certs"))
    made.make_ca()
    made.make_leaf("server", "localhost", days=2)
    made.make_leaf("client", "oxio client", days=2)
    # `-days -1`: notAfter a day before notBefore, which is now: expired.
    made.make_leaf("expired", "localhost", days=-1)
    made.make_self_signed()
    return made
