"""`make bench`: oxio, stdlib asyncio, uvloop, rloop, rsloop and veloxloop side by side, interleaved
round by round.

Every measurement is a fresh process. Rounds rotate the loop order (A B C, B C A, ...) so drift
in machine load hits every loop alike. Two kinds of rows: in-process workloads (workloads.py),
where the loop drives itself, and network servers (netbench.py), where the loop serves a native
load generator pinned to another CPU and the echo rows are compared with a native reference
server. Reported by report.py: medians with min-max, operations per CPU-second of the process
running the loop, ratios against asyncio, uvloop and the best other loop, and the share of the
limit. Writes benches/results/latest.json, latest.png and benches/README.md; a run of some rows
(--only) writes benches/results/partial.json only.

    python benches/run.py [--rounds N] [--only ROW ...] [--net-seconds S] [--net-warmup S]
                          [--workload-scale F]
"""

import argparse
import dataclasses
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import netbench  # noqa: E402
import report  # noqa: E402
from netbench import NetOptions, Unavailable  # noqa: E402
from workloads import MIN_SECONDS, OTHER_LOOPS, WORKLOADS  # noqa: E402

LOOPS = ["asyncio", *OTHER_LOOPS]


def available_loops():
    loops = []
    for name in LOOPS:
        module = "asyncio" if name == "asyncio" else name
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
        if probe.returncode == 0:
            loops.append(name)
        else:
            print(f"note: {name} is not importable; it is left out of this run")
    return loops


@dataclasses.dataclass(frozen=True)
class InProcessRow:
    """A workload of workloads.py: the loop drives itself; `cpu` is that process's CPU time."""

    name: str
    scale: float
    kind = "in-process"
    limit = None

    def measure(self, loop, opts):
        out = subprocess.run(
            [sys.executable, str(HERE / "workloads.py"), loop, self.name, str(self.scale)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if out.returncode != 0:
            lines = out.stderr.strip().splitlines() or ["no output"]
            raise Unavailable(f"workload failed: {lines[-1]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def attempt(measure, *args):
    """One sample, or the reason there is none: one loop failing a row must not end the run."""
    try:
        return measure(*args)
    except Unavailable as exc:
        return {"missing": str(exc)}


def summarize(samples):
    missing = [s["missing"] for s in samples if "missing" in s]
    if missing:
        # A loop that fails any round is reported as failing, not as the median of the others.
        return {"missing": missing[0], "samples": samples}
    rates = [s["ops"] / s["wall"] for s in samples]
    cpu_rates = [s["ops"] / s["cpu"] for s in samples if s.get("cpu")]
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "cpu_median": statistics.median(cpu_rates) if cpu_rates else None,
        "samples": samples,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="*", metavar="ROW")
    parser.add_argument("--net-seconds", type=float, default=1.5, help="measured window")
    # 0.3 s is tens of thousands of round trips, enough for steady state (TLS handshakes happen
    # before it), and keeps the full run under a quarter of an hour.
    parser.add_argument("--net-warmup", type=float, default=0.3, help="load before the window")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--workload-scale", type=float, default=1.0, help="share of each in-process workload's size"
    )
    opts = parser.parse_args()
    net = NetOptions(opts.connections, opts.net_warmup, opts.net_seconds)

    loops = available_loops()
    rows = [InProcessRow(name, opts.workload_scale) for name in WORKLOADS] + netbench.ROWS
    unknown = set(opts.only or ()) - {row.name for row in rows}
    if unknown:
        parser.error(f"no such row: {', '.join(sorted(unknown))}")
    rows = [row for row in rows if not opts.only or row.name in opts.only]
    # Echo rows of the same family and size share one reference measurement per round.
    limits = list(dict.fromkeys(row.limit for row in rows if row.limit))
    samples = {}
    started, load_before = time.monotonic(), os.getloadavg()
    for round_no in range(opts.rounds):
        order = loops[round_no % len(loops) :] + loops[: round_no % len(loops)]
        for key in limits:
            samples.setdefault(key, []).append(attempt(netbench.measure_limit, *key, net))
        for row in rows:
            for loop in order:
                samples.setdefault((row.name, loop), []).append(attempt(row.measure, loop, net))
        elapsed = time.monotonic() - started
        print(f"round {round_no + 1}/{opts.rounds} done ({elapsed:.0f} s)", flush=True)

    results = {
        row.name: {
            "kind": row.kind,
            "loops": {loop: summarize(samples[(row.name, loop)]) for loop in loops},
            "limit": summarize(samples[row.limit]) if row.limit else None,
        }
        for row in rows
    }
    meta = {
        "command": shlex.join(["python", "benches/run.py", *sys.argv[1:]]),
        "rounds": opts.rounds,
        "workload_scale": opts.workload_scale,
        "workload_seconds": MIN_SECONDS * opts.workload_scale,
        "net": {
            **dataclasses.asdict(net),
            "wrk_warmup": net.wrk_warmup,
            "wrk_seconds": net.wrk_seconds,
        },
        "cpus": {"server": netbench.SERVER_CPU, "client": netbench.CLIENT_CPU},
        "loadavg": {"before": load_before, "after": os.getloadavg()},
        "seconds": round(time.monotonic() - started),
    }
    report.write(results, loops, meta, publish=not opts.only)


if __name__ == "__main__":
    main()
