"""Part one of `make demo`: demo/app.py served on each loop in turn, under the same wrk load.

Each loop's server is a fresh process pinned to one CPU and wrk (one thread, native) drives it
from the other, as in the HTTP rows of `make bench` (benches/netbench.py does both): a Python
client would run out of CPU before the server does.
"""

import dataclasses
import pathlib
import sys

from terminal import full_bar, overwrite, progress_bar

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "benches"))
import netbench  # noqa: E402
from netbench import Unavailable  # noqa: E402

CONNECTIONS = 32


@dataclasses.dataclass(frozen=True)
class Result:
    loop: str
    requests_per_second: float
    # Requests per CPU-second of the server process: what the loop costs, whatever else runs.
    requests_per_cpu_second: float
    # The share of its CPU wrk used; near 1 it, not the server, may have set the pace.
    client_busy: float


def describe(warmup, seconds):
    """One sentence on how the servers are loaded and measured."""
    if netbench.SERVER_CPU is None:
        where = "The server and wrk share the only CPU"
    else:
        where = f"The server runs on CPU {netbench.SERVER_CPU}, wrk on CPU {netbench.CLIENT_CPU}"
    return (
        f"{where}; wrk -t1 -c{CONNECTIONS} keeps {CONNECTIONS} requests in flight: "
        f"{warmup} s of warm-up, then {seconds} s measured."
    )


def run_loop(loop, warmup, seconds):
    """Serves the app on `loop`: `warmup` seconds of load, then `seconds` measured."""
    command = [sys.executable, str(HERE / "app.py"), loop]
    with netbench.running_server(command, "tcp") as (pid, address):
        url = f"http://{address.removeprefix('tcp:')}/items/42"
        with progress_bar(loop, warmup + seconds):
            netbench.wrk(url, pid, CONNECTIONS, warmup)
            sample = netbench.wrk(url, pid, CONNECTIONS, seconds)
    return Result(
        loop,
        sample["ops"] / sample["wall"],
        sample["ops"] / sample["cpu"],
        sample["client_cpu"] / sample["wall"],
    )


def run_all(loops, warmup, seconds):
    """A Result per loop that ran; a loop that failed is reported on its line and left out."""
    results = []
    for loop in loops:
        try:
            result = run_loop(loop, warmup, seconds)
        except Unavailable as exc:
            overwrite(f"  {loop:<8} failed: {exc}")
            continue
        rate = f"{result.requests_per_second:,.0f} requests/s"
        overwrite(f"  {loop:<8} {full_bar()} {rate:>20}")
        results.append(result)
    return results
