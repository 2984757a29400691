"""`make bench`: oxio, stdlib asyncio, uvloop and rloop side by side, interleaved round by round.

Every measurement is a fresh process. Rounds rotate the loop order (A B C, B C A, ...) so drift
in machine load hits every loop alike. Reported: median operations per wall second (min-max),
operations per CPU-second of the measured process, and ratios against asyncio, uvloop and the
best other loop. Writes benches/results/latest.json, latest.png and benches/README.md.

    python benches/run.py [--rounds N] [--only WORKLOAD ...]
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workloads import WORKLOADS  # noqa: E402

LOOPS = ["asyncio", "uvloop", "rloop", "oxio"]


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


def measure(loop, workload):
    out = subprocess.run(
        [sys.executable, str(HERE / "workloads.py"), loop, workload],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(samples):
    rates = [s["ops"] / s["wall"] for s in samples]
    cpu_rates = [s["ops"] / s["cpu"] for s in samples if s["cpu"] > 0]
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "cpu_median": statistics.median(cpu_rates) if cpu_rates else None,
        "samples": samples,
    }


def fmt_rate(value):
    return f"{value / 1e3:,.0f}k" if value >= 1e4 else f"{value:,.0f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="*")
    opts = parser.parse_args()

    loops = available_loops()
    workloads = [w for w in WORKLOADS if not opts.only or w in opts.only]
    samples = {(w, loop): [] for w in workloads for loop in loops}
    for round_no in range(opts.rounds):
        order = loops[round_no % len(loops) :] + loops[: round_no % len(loops)]
        for workload in workloads:
            for loop in order:
                samples[(workload, loop)].append(measure(loop, workload))
        print(f"round {round_no + 1}/{opts.rounds} done", flush=True)

    results = {w: {loop: summarize(samples[(w, loop)]) for loop in loops} for w in workloads}
    print_table(results, loops)
    write_outputs(results, loops, opts)


def print_table(results, loops):
    print()
    for line in table_lines(results, loops):
        print(line)


def table_lines(results, loops):
    yield (
        "| workload | "
        + " | ".join(f"{loop} ops/s (min-max)" for loop in loops)
        + " | oxio ops/CPU-s | oxio/asyncio | oxio/uvloop | oxio/best other |"
    )
    yield "|---" * (len(loops) + 5) + "|"
    for workload, row in results.items():
        cells = [
            f"{fmt_rate(r['median'])} ({fmt_rate(r['min'])}-{fmt_rate(r['max'])})"
            for r in (row[loop] for loop in loops)
        ]
        oxio = row.get("oxio")
        ratios = []
        for other in ("asyncio", "uvloop"):
            if oxio and other in row:
                ratios.append(f"{oxio['median'] / row[other]['median']:.2f}x")
            else:
                ratios.append("n/a")
        others = [r["median"] for loop, r in row.items() if loop != "oxio"]
        if oxio and others:
            ratios.append(f"{oxio['median'] / max(others):.2f}x")
        else:
            ratios.append("n/a")
        cpu = fmt_rate(oxio["cpu_median"]) if oxio and oxio["cpu_median"] else "n/a"
        yield f"| {workload} | " + " | ".join(cells) + f" | {cpu} | " + " | ".join(ratios) + " |"


def write_outputs(results, loops, opts):
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {cpu_model()}",
        "rounds": opts.rounds,
        "command": "make bench",
    }
    (out_dir / "latest.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib missing, no chart written")
        return
    workloads = list(results)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(loops)
    for i, loop in enumerate(loops):
        ratios = [
            results[w][loop]["median"] / results[w]["uvloop"]["median"]
            if "uvloop" in results[w]
            else 0
            for w in workloads
        ]
        ax.bar([x + i * width for x in range(len(workloads))], ratios, width, label=loop)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks([x + width * (len(loops) - 1) / 2 for x in range(len(workloads))])
    ax.set_xticklabels(workloads, rotation=15)
    ax.set_ylabel("throughput relative to uvloop (higher is better)")
    ax.set_title(f"event loops relative to uvloop, median of {opts.rounds} rounds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "latest.png", dpi=110)
    print(f"chart: {out_dir / 'latest.png'}")
    write_readme(results, loops, meta)


def write_readme(results, loops, meta):
    lines = [
        "# oxio benchmarks",
        "",
        "Generated by `make bench` (`benches/run.py`); do not edit by hand.",
        "",
        "## Method",
        "",
        f"- Date: {meta['date']}; Python {meta['python']}; {meta['machine']}; "
        f"{os.cpu_count()} cores.",
        f"- Loops: {', '.join(f'{name} {version(name)}' for name in loops)}.",
        "- Every measurement is a fresh process running one workload once after a warm-up; the "
        f"loops are interleaved round by round (rotating order), {meta['rounds']} rounds.",
        "- Figures are medians of operations per wall-clock second, with min-max; `ops/CPU-s` "
        "counts operations per CPU-second of the measuring process itself.",
        "- Ratios compare medians. The machines are shared and noisy: trust ratios, not "
        "absolute rates.",
        "",
        "## Results",
        "",
        *table_lines(results, loops),
        "",
        "![throughput relative to uvloop](results/latest.png)",
        "",
    ]
    (HERE / "README.md").write_text("\n".join(lines))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def version(name):
    if name == "asyncio":
        return platform.python_version()
    try:
        from importlib.metadata import version as dist_version

        return dist_version(name)
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
