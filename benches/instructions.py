"""Instructions per operation of the in-process workloads, counted by callgrind.

Timings on a shared machine move by 10% from run to run; instruction counts do not, so this is
how a change to a hot path is judged before `make bench` confirms it in time. Needs valgrind.

    .venv/bin/python benches/instructions.py oxio rloop --only call_soon "sleep(0)"

Each count is a run of the workload `--runs` times minus a run that only starts up, divided by
the operations done (`call_later` counts each of its two timers).

With `--own`, each count is followed by the part of it spent in the loop's own compiled code
(the shared objects of its package: oxio's `_oxio`, uvloop's `loop`, rloop's `_rloop`), counted
where it is executed and not where it is called from: the rest is the interpreter, asyncio's C
and Python code and the workload's coroutines. A loop that cost nothing would save that part,
and what it makes the interpreter do for it (objects it allocates, calls it makes), which the
rest includes. asyncio's loop is Python, so it has no such figure.
"""

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
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


def instructions(loop, name, runs, own=False):
    """Instructions callgrind counts for `runs` runs of workload `name` on `loop`, and with `own`
    those executed in the loop's own shared objects (None for asyncio)."""
    code = RUNNER.format(benches=str(Path(__file__).parent), loop=loop, name=name, runs=runs)
    with tempfile.TemporaryDirectory(prefix="oxio-callgrind-") as scratch:
        profile = Path(scratch) / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}"]
        done = subprocess.run(
            [*valgrind, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
        )
        total = int(re.search(r"Collected\s*:\s*(\d+)", done.stderr).group(1))
        package = own and loop != "asyncio" and package_dir(loop)
        return total, (in_objects_under(profile, package) if package else None)


def package_dir(loop):
    """The directory of the loop's package, where its compiled objects are."""
    return str(Path(importlib.util.find_spec(loop).origin).parent) + "/"


def in_objects_under(profile, directory):
    """Instructions a callgrind profile counts in functions of shared objects under `directory`
    (self cost: a function's own instructions, not those of what it calls)."""
    annotated = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(profile)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = re.compile(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+\S.*\[(.+)\]$")
    matches = (line.match(text) for text in annotated.splitlines())
    return sum(
        int(m.group(1).replace(",", "")) for m in matches if m and m.group(2).startswith(directory)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loops", nargs="+", help="loops to count (oxio, asyncio, uvloop, rloop)")
    parser.add_argument("--only", nargs="+", default=None, help="workload names (default: all)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--own", action="store_true", help="also count the loop's own code")
    args = parser.parse_args()
    names = args.only or [n for n, w in workloads.WORKLOADS.items() if "subprocess" not in n]
    for name in names:
        ops = workloads.WORKLOADS[name].size * (2 if name == "call_later" else 1)
        counts = []
        for loop in args.loops:
            (total, own), (base, base_own) = (
                instructions(loop, name, runs, args.own) for runs in (args.runs, 0)
            )
            count = f"{loop} {(total - base) // (args.runs * ops):,}"
            if own is not None:
                count += f" ({(own - base_own) // (args.runs * ops):,} own)"
            counts.append(count)
        print(f"{name}: " + ", ".join(counts) + " instructions per operation")


if __name__ == "__main__":
    main()
