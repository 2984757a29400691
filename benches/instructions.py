"""Instructions per operation of the in-process workloads, counted by callgrind.

Timings on a shared machine move by 10% from run to run; instruction counts do not, so this is
how a change to a hot path is judged before `make bench` confirms it in time. Needs valgrind.

    .venv/bin/python benches/instructions.py oxio rloop --only call_soon "sleep(0)"

Each count is a run of the workload `--runs` times minus a run that only starts up, divided by
the operations done (`call_later` counts each of its two timers).
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import workloads

RUNNER = """
import sys
sys.path.insert(0, {benches!r})
import workloads
loop = workloads.new_loop({loop!r})
workload = workloads.WORKLOADS[{name!r}]
for _ in range({runs}):
    loop.run_until_complete(workload.run(workload.size))
"""


def instructions(loop, name, runs):
    """Instructions callgrind counts for `runs` runs of workload `name` on `loop`."""
    code = RUNNER.format(benches=str(Path(__file__).parent), loop=loop, name=name, runs=runs)
    valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    done = subprocess.run(
        [*valgrind, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(re.search(r"Collected\s*:\s*(\d+)", done.stderr).group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loops", nargs="+", help="loops to count (oxio, asyncio, uvloop, rloop)")
    parser.add_argument("--only", nargs="+", default=None, help="workload names (default: all)")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    names = args.only or [n for n, w in workloads.WORKLOADS.items() if "subprocess" not in n]
    for name in names:
        ops = workloads.WORKLOADS[name].size * (2 if name == "call_later" else 1)
        counts = []
        for loop in args.loops:
            total = instructions(loop, name, args.runs) - instructions(loop, name, 0)
            counts.append(f"{loop} {total // (args.runs * ops):,}")
        print(f"{name}: " + ", ".join(counts) + " instructions per operation")


if __name__ == "__main__":
    main()
