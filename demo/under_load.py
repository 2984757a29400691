"""Part one of `make demo`: demo/app.py served on each loop in turn, under the same wrk load.

Each loop's server is a fresh process pinned to one CPU and wrk (one thread, native) drives it
from the other, as in the HTTP rows of `make bench` (benches/netbench.py does both): a Python
client would run out of CPU before the server does. The loops take turns over a few rounds, in
a rotating order, and each figure is the median of a loop's rounds: this machine's speed drifts
by a quarter within seconds, and one sample per loop compared the drift more than the loops.
"""

import dataclasses
import pathlib
import statistics
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


def describe(warmup, seconds, rounds):
    """One sentence on how the servers are loaded and measured."""
    if netbench.SERVER_CPU is None:
        where = "The server and wrk share the only CPU"
    else:
        where = f"The server runs on CPU {netbench.SERVER_CPU}, wrk on CPU {netbench.CLIENT_CPU}"
    return (
        f"{where}; wrk -t1 -c{CONNECTIONS} keeps {CONNECTIONS} requests in flight: "
        f"{warmup} s of warm-up, then {seconds} s measured, {rounds} rounds in a rotating "
        "order; medians."
    )


def run_loop(loop, warmup, seconds, label):
    """Serves the app on `loop`: `warmup` seconds of load, then `seconds` measured."""
    command = [sys.executable, str(HERE / "app.py"), loop]
    with netbench.running_server(command, "tcp") as (pid, address):
        url = f"http://{address.removeprefix('tcp:')}/items/42"
        with progress_bar(label, warmup + seconds):
            netbench.wrk(url, pid, CONNECTIONS, warmup)
            sample = netbench.wrk(url, pid, CONNECTIONS, seconds)
    return Result(
        loop,
        sample["ops"] / sample["wall"],
        sample["ops"] / sample["cpu"],
        sample["client_cpu"] / sample["wall"],
    )


def median_of(samples):
    """One Result from a loop's samples: the median rates, and the busiest the client was."""
    return Result(
        samples[0].loop,
        statistics.median(s.requests_per_second for s in samples),
        statistics.median(s.requests_per_cpu_second for s in samples),
        max(s.client_busy for s in samples),
    )


def run_all(loops, warmup, seconds, rounds):
    """A Result per loop that ran, in the order of `loops`; a loop that failed is reported and
    left out of the rounds after."""
    samples = {loop: [] for loop in loops}
    for round_ in range(rounds):
        turn = round_ % len(loops)
        for loop in loops[turn:] + loops[:turn]:
            if loop not in samples:
                continue
            try:
                sample = run_loop(loop, warmup, seconds, f"{loop} {round_ + 1}/{rounds}")
            except Unavailable as exc:
                overwrite(f"  {loop:<8} failed: {exc}")
                del samples[loop]
                continue
            samples[loop].append(sample)
    results = [median_of(samples[loop]) for loop in loops if samples.get(loop)]
    for result in results:
        rate = f"{result.requests_per_second:,.0f} requests/s"
        overwrite(f"  {result.loop:<8} {full_bar()} {rate:>20}")
    return results
