"""The network rows of `make bench`: a server pinned to one CPU, its load generator to another.

Each measurement starts a fresh server process, either benches/net_servers.py on the loop under
test or the reference server benches/loadgen `echo-limit`, and drives it from the other CPU:
benches/loadgen for the echo rows (with rustls for TLS), wrk for HTTP and HTTPS. On a 2-core
machine a Python client would saturate its own core before a fast server does; both of these are
native and single-threaded.
Every sample carries the server process's CPU seconds over the measured window, so the suite can
report operations per server CPU-second next to wall-clock rates.
"""

import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import re
import resource
import select
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
RELEASE = HERE.parent / "target" / "release"
LOADGEN = RELEASE / "loadgen"
ECHO_LIMIT = RELEASE / "echo-limit"
KIB = 1024


class Unavailable(Exception):
    """A loop could not run a row; the reason is reported in place of a figure."""


@dataclasses.dataclass(frozen=True)
class NetOptions:
    connections: int
    warmup: float
    seconds: float

    # wrk takes whole seconds and has no warm-up phase of its own: the HTTP rows measure whole
    # seconds, after a first run of one second as the warm-up, left out when the options ask
    # for less than a quarter of a second (bench-quick's short windows).
    @property
    def wrk_seconds(self):
        return max(1, round(self.seconds))

    @property
    def wrk_warmup(self):
        return 1 if self.warmup >= 0.25 else 0


def _pick_cpus():
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[-1], allowed[0]


# The server gets one CPU and the load generator another, so neither steals the other's core.
# On a single-CPU machine nothing is pinned.
SERVER_CPU, CLIENT_CPU = _pick_cpus()


def _pinned_to(cpu):
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def cpu_seconds(pid):
    """Seconds a whole process has spent on a CPU, from schedstat nanoseconds (as loadgen does)."""
    nanos = 0
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # the thread exited meanwhile
            nanos += int((task / "schedstat").read_text().split()[0])
    return nanos / 1e9


@contextlib.contextmanager
def _endpoint(family):
    if family == "tcp":
        yield "tcp:127.0.0.1:0"
    else:
        with tempfile.TemporaryDirectory(prefix="oxio-bench-") as tmp:
            yield f"unix:{tmp}/echo.sock"


def _tail(text):
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no output"


@contextlib.contextmanager
def running_server(command, family):
    """Runs a server until the block ends; yields its pid and the address it listens on.

    `command` gets an endpoint (`tcp:127.0.0.1:0` or `unix:PATH`) as its last argument; the
    server must print {"address": ENDPOINT} once it accepts connections, or {"missing": reason}.
    """
    with _endpoint(family) as endpoint, tempfile.TemporaryFile("w+") as stderr:
        # stderr goes to a file: a server logging errors must not block on a full pipe.
        proc = subprocess.Popen(
            [*command, endpoint],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            preexec_fn=_pinned_to(SERVER_CPU),
        )
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            line = proc.stdout.readline() if ready else ""
            status = json.loads(line) if line.startswith("{") else {}
            if "address" not in status:
                stderr.seek(0)
                raise Unavailable(status.get("missing") or f"server failed: {_tail(stderr.read())}")
            try:
                yield proc.pid, status["address"]
            except Unavailable as exc:
                stderr.seek(0)
                raise Unavailable(f"{exc}; server stderr: {_tail(stderr.read())}") from None
        finally:
            proc.kill()
            proc.wait()


def _run_client(command, timeout):
    """The client's stdout and the CPU seconds it used (user and system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run(
            [str(arg) for arg in command],
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_pinned_to(CLIENT_CPU),
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{pathlib.Path(command[0]).name} timed out") from None
    if out.returncode != 0:
        raise Unavailable(f"{pathlib.Path(command[0]).name} failed: {_tail(out.stderr)}")
    # Children's usage counts those reaped so far; the client is the only one reaped meanwhile
    # (the server is reaped after it).
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out.stdout, cpu


@dataclasses.dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and its key; `directory` holds them until exit."""

    directory: tempfile.TemporaryDirectory
    cert: pathlib.Path
    key: pathlib.Path


@functools.cache
def certificate():
    """The TLS rows' certificate, made by the openssl CLI once per run; no key is committed.

    CA:FALSE because rustls, in the load generator, refuses a CA certificate as a server's own;
    the load generator trusts this very certificate as its only root.
    """
    if shutil.which("openssl") is None:
        raise Unavailable("the openssl CLI is not installed")
    directory = tempfile.TemporaryDirectory(prefix="oxio-bench-tls-")
    made = Certificate(
        directory, *(pathlib.Path(directory.name, f) for f in ("cert.pem", "key.pem"))
    )
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE",
         "-keyout", made.key, "-out", made.cert],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return made


def measure_echo(server_command, family, size, opts, tls_ca=None):
    if not LOADGEN.exists():
        raise Unavailable(f"{LOADGEN} is not built (make bench-deps builds it)")
    with running_server(server_command, family) as (pid, address):
        out, _ = _run_client(
            [LOADGEN, "--connect", address, "--connections", opts.connections, "--size", size,
             "--warmup", opts.warmup, "--duration", opts.seconds, "--server-pid", pid,
             *(["--tls-ca", tls_ca] if tls_ca else [])],
            timeout=opts.warmup + opts.seconds + 60,
        )  # fmt: skip
    return json.loads(out)


def measure_limit(family, size, opts):
    """The reference server's figures for an echo row's (family, size)."""
    return measure_echo([ECHO_LIMIT, "--listen"], family, size, opts)


def _python_server(loop, server, tls):
    command = [sys.executable, str(HERE / "net_servers.py"), loop, server]
    if tls:
        command += ["--tls", certificate().cert, certificate().key]
    return command


@dataclasses.dataclass(frozen=True)
class EchoRow:
    name: str
    server: str
    family: str
    size: int
    tls: bool = False
    kind = "network"

    @property
    def limit(self):
        # echo-limit speaks no TLS; a TLS row has no reference server to be compared with.
        return None if self.tls else (self.family, self.size)

    def measure(self, loop, opts):
        server = _python_server(loop, self.server, self.tls)
        tls_ca = certificate().cert if self.tls else None
        return measure_echo(server, self.family, self.size, opts, tls_ca)


@dataclasses.dataclass(frozen=True)
class HttpRow:
    """wrk against HttpProtocol; `script` is a wrk Lua script that shapes the requests.

    With `tls` the server speaks HTTPS; wrk does not verify certificates, so it takes the
    self-signed one as it is.
    """

    name: str
    script: str | None
    tls: bool = False
    kind = "network"
    limit = None

    def measure(self, loop, opts):
        script = HERE / self.script if self.script else None
        scheme = "https" if self.tls else "http"
        server = _python_server(loop, "http", self.tls)
        with running_server(server, "tcp") as (pid, address):
            url = f"{scheme}://{address.removeprefix('tcp:')}/"
            if opts.wrk_warmup:
                wrk(url, pid, opts.connections, opts.wrk_warmup, script)
            return wrk(url, pid, opts.connections, opts.wrk_seconds, script)


def wrk(url, server_pid, connections, seconds, script=None):
    """One thread of wrk against `url` for whole `seconds`, with the server's CPU seconds.

    Returns {"ops", "wall", "cpu", "client_cpu"} like loadgen: requests, the seconds wrk
    measured, the CPU time of `server_pid` meanwhile, and wrk's own.
    """
    if shutil.which("wrk") is None:
        raise Unavailable("wrk is not installed (make bench-deps installs it)")
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    command += ["-s", script] if script else []
    cpu = cpu_seconds(server_pid)
    out, client_cpu = _run_client([*command, url], seconds + 60)
    cpu = cpu_seconds(server_pid) - cpu
    requests = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    errors = re.search(r"(Socket errors|Non-2xx or 3xx responses):.*", out)
    if errors or not requests or not rate or int(requests[1]) == 0:
        raise Unavailable(f"wrk: {errors[0] if errors else _tail(out)}")
    ops = int(requests[1])
    return {"ops": ops, "wall": ops / float(rate[1]), "cpu": cpu, "client_cpu": client_cpu}


# net_servers.py server name: how the rows call the API it echoes through.
ECHO_APIS = {
    "sock": "sock_*",
    "protocol": "Protocol",
    "buffered": "BufferedProtocol",
    "streams": "streams",
}

ROWS = [
    *(
        EchoRow(f"TCP {label} echo {size} KiB", server, "tcp", size * KIB)
        for server, label in ECHO_APIS.items()
        for size in (1, 10, 100)
    ),
    *(
        EchoRow(f"Unix Protocol echo {size} KiB", "protocol", "unix", size * KIB)
        for size in (1, 10, 100)
    ),
    *(
        EchoRow(f"TLS Protocol echo {size} KiB", "protocol", "tcp", size * KIB, tls=True)
        for size in (1, 10, 100)
    ),
    HttpRow("HTTP/1.1 keep-alive", None),
    HttpRow("HTTP/1.1 pipelined x16", "http_pipeline.lua"),
    HttpRow("HTTPS keep-alive", None, tls=True),
]
