"""`make demo`: oxio next to asyncio and uvloop, serving a web app under load, then running an
ordinary program.

    python demo/demo.py [--seconds S] [--warmup S] [--rounds N]

Part one serves demo/app.py (aiohttp) on each loop in turn under the same wrk load, over a few
rounds, and prints the median requests per second side by side, with a chart in
benches/results/demo.png. Part two times demo/program.py, a mix of tasks, timers, queues,
streams and subprocesses, on each loop.
"""

import argparse
import pathlib
import shutil
import textwrap
import time

import program
import under_load
from chart import write_chart
from loops import available
from terminal import overwrite, status

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "benches" / "results" / "demo.png"
BENCH_CHART = ROOT / "benches" / "results" / "latest.png"
# A load generator busier than this share of its CPU may be what limits the rate.
BUSY = 0.9
PROGRAM_RUNS = 3
WIDTH = 96


def ratio(value, base):
    return f"{value / base:.2f}x" if value and base else "n/a"


def serve_under_load(loops, warmup, seconds, rounds):
    print("Part 1: an aiohttp JSON API (demo/app.py), served on each loop in turn.")
    print(textwrap.fill(under_load.describe(warmup, seconds, rounds), WIDTH) + "\n")
    if shutil.which("wrk") is None:
        print("  skipped: wrk is not installed (`make demo` installs it with apt-get)\n")
        return
    results = under_load.run_all(loops, warmup, seconds, rounds)
    if not results:
        return
    base = {r.loop: r.requests_per_second for r in results}
    print(
        f"\n  {'loop':<8} {'requests/s':>11} {'per server CPU-s':>17} "
        f"{'vs asyncio':>11} {'vs uvloop':>10}"
    )
    for r in results:
        print(
            f"  {r.loop:<8} {r.requests_per_second:>11,.0f} {r.requests_per_cpu_second:>17,.0f} "
            f"{ratio(r.requests_per_second, base.get('asyncio')):>11} "
            f"{ratio(r.requests_per_second, base.get('uvloop')):>10}"
        )
    busiest = max(r.client_busy for r in results)
    verdict = "so the servers set the pace" if busiest < BUSY else "so it may have set the pace"
    print(f"\n  wrk used at most {busiest:.0%} of its CPU, {verdict}.")
    if write_chart(results, CHART):
        print(f"  Chart: {CHART.relative_to(ROOT)}")
    else:
        print("  No chart: matplotlib is not installed.")
    if BENCH_CHART.exists():
        print(f"  Every benchmark, from the last `make bench`: {BENCH_CHART.relative_to(ROOT)}")
    else:
        print("  `make bench` charts every benchmark in benches/results/latest.png.")
    print()


def run_program(loops):
    print(f"Part 2: one ordinary asyncio program, best of {PROGRAM_RUNS} runs on each loop.")
    print(textwrap.fill(f"It does {program.DESCRIPTION}.", WIDTH) + "\n")
    best = {}
    for run in range(1, PROGRAM_RUNS + 1):
        for loop in loops:
            status(f"  run {run}/{PROGRAM_RUNS} on {loop}...")
            best[loop] = min(best.get(loop, float("inf")), program.time_once(loop))
    overwrite(f"  {'loop':<8} {'best time':>10} {'vs asyncio':>11} {'vs uvloop':>10}")
    for loop, seconds in best.items():
        # The ratios are speed-ups: how many times faster than the other loop.
        print(
            f"  {loop:<8} {seconds * 1000:>7.0f} ms {ratio(best.get('asyncio'), seconds):>11} "
            f"{ratio(best.get('uvloop'), seconds):>10}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Whole seconds, because wrk takes no fractions.
    parser.add_argument("--seconds", type=int, default=2, help="measured seconds per sample")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of load before that")
    parser.add_argument("--rounds", type=int, default=3, help="samples per loop")
    args = parser.parse_args()
    started = time.monotonic()
    loops = available()
    serve_under_load(loops, args.warmup, args.seconds, args.rounds)
    run_program(loops)
    print(f"\nThe demo took {time.monotonic() - started:.0f} s; `make bench` has the full suite.")


if __name__ == "__main__":
    main()
