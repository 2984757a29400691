"""The report of `make bench`: tables, benches/results/latest.{json,png}, benches/README.md."""

import datetime
import json
import os
import platform
import statistics
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path

HERE = Path(__file__).resolve().parent
WALL, CPU = "median", "cpu_median"
# A load generator busier than this share of its CPU may be what limits the rate.
BUSY = 0.9
# What a reader of a loop's figures must know about how that loop takes part.
LOOP_NOTES = {
    "rsloop": "rsloop replaces `asyncio.start_server`, `asyncio.open_connection` and "
    "`asyncio.create_subprocess_exec`/`_shell` with functions of its own when it is imported: "
    "its TCP streams rows measure its own stream classes (its reader is no `asyncio.StreamReader`)"
    " and its subprocess rows its own process objects, where every other loop runs asyncio's.",
}
# The `limit` row's slowest sample below 1/BIMODAL of its fastest marks a row where the machine
# itself changed pace (the 100 KiB echo rows on the shared 2-core VM).
BIMODAL = 2.0


def fmt_rate(value):
    return f"{value / 1e3:,.0f}k" if value >= 1e4 else f"{value:,.0f}"


def figure(summary, metric):
    """The summary's figure for `metric`, or None if there is no summary or it failed."""
    if not summary or "missing" in summary:
        return None
    return summary[metric]


def cell(summary, metric):
    if summary is None:
        return "n/a"
    if "missing" in summary:
        return "missing"
    if metric == WALL:
        return f"{fmt_rate(summary[WALL])} ({fmt_rate(summary['min'])}-{fmt_rate(summary['max'])})"
    return fmt_rate(summary[CPU]) if summary[CPU] else "n/a"


def ratio(numerator, denominator, percent=False):
    if not numerator or not denominator:
        return "n/a"
    return f"{100 * numerator / denominator:.0f}%" if percent else f"{numerator / denominator:.2f}x"


def client_shares(summaries):
    """The load generator's share of its CPU in each sample of `summaries` that has one."""
    return [
        s["client_cpu"] / s["wall"]
        for summary in summaries
        if summary and "missing" not in summary
        for s in summary["samples"]
        if "client_cpu" in s
    ]


def client_busy(result):
    """The load generator's largest share of its CPU in any sample of a row, or None."""
    return max(client_shares([*result["loops"].values(), result["limit"]]), default=None)


def table_lines(results, loops, names, metric):
    """One Markdown table of `names`; ratios and the share of the limit are taken on `metric`.

    Network rows in wall-clock terms end with `client busy`, so a row whose rates the load
    generator may have capped shows it where its figures are.
    """
    with_limit = any(results[name]["limit"] for name in names)
    with_client = metric == WALL and any(client_busy(results[name]) for name in names)
    unit = "ops/s (min-max)" if metric == WALL else "ops/CPU-s"
    header = ["workload", *(f"{loop} {unit}" for loop in loops)]
    header += [f"limit {unit}"] if with_limit else []
    header += ["oxio ops/CPU-s"] if metric == WALL else []
    header += ["oxio/asyncio", "oxio/uvloop", "oxio/best other"]
    header += ["oxio % of limit"] if with_limit else []
    header += ["client busy"] if with_client else []
    yield "| " + " | ".join(header) + " |"
    yield "|---" * len(header) + "|"
    for name in names:
        row, limit = results[name]["loops"], results[name]["limit"]
        oxio = figure(row.get("oxio"), metric)
        others = {loop: figure(row[loop], metric) for loop in loops if loop != "oxio"}
        best_loop = max((loop for loop, v in others.items() if v), key=others.get, default=None)
        cells = [name, *(cell(row[loop], metric) for loop in loops)]
        cells += [cell(limit, metric)] if with_limit else []
        cells += [cell(row.get("oxio"), CPU)] if metric == WALL else []
        cells += [ratio(oxio, figure(row.get(other), metric)) for other in ("asyncio", "uvloop")]
        best = ratio(oxio, others.get(best_loop))
        cells += [f"{best} ({best_loop})" if best_loop and oxio else best]
        cells += [ratio(oxio, figure(limit, metric), percent=True)] if with_limit else []
        cells += [ratio(client_busy(results[name]), 1, percent=True)] if with_client else []
        yield "| " + " | ".join(cells) + " |"


def sections(results, loops):
    """(heading, table lines) for each table of the report."""
    in_process = [name for name, r in results.items() if r["kind"] == "in-process"]
    network = [name for name, r in results.items() if r["kind"] == "network"]
    if in_process:
        yield "In-process workloads", list(table_lines(results, loops, in_process, WALL))
        # Equal to the wall-clock rates except where the loop's process waits, as it does for
        # its children in the subprocess rows.
        yield (
            "In-process workloads, per CPU-second",
            list(table_lines(results, loops, in_process, CPU)),
        )
    if network:
        yield "Network servers, wall clock", list(table_lines(results, loops, network, WALL))
        yield (
            "Network servers, per server CPU-second",
            list(table_lines(results, loops, network, CPU)),
        )


def missing_lines(results):
    for name, r in results.items():
        for loop, summary in [*r["loops"].items(), ("limit", r["limit"])]:
            if summary and "missing" in summary:
                yield f"- {loop} on {name}: {summary['missing']}"


def generator_load(results):
    """The load generator's (busiest, median) share of its CPU, against the loops and the limit."""
    shares = {
        "loops": client_shares(s for r in results.values() for s in r["loops"].values()),
        "limit": client_shares(r["limit"] for r in results.values()),
    }
    return {key: (max(v), statistics.median(v)) if v else None for key, v in shares.items()}


def write(results, loops, meta, publish=True):
    """Prints the tables; with `publish`, replaces the published JSON, chart and README.

    A run of a few rows (`--only`) does not publish: it would replace a whole run's figures.
    Its JSON goes to results/partial.json.
    """
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {cpu_model()}",
        **meta,
    }
    for heading, lines in sections(results, loops):
        print(f"\n{heading}\n" + "\n".join(lines))
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    if not publish:
        (out_dir / "partial.json").write_text(
            json.dumps({"meta": meta, "results": results}, indent=2)
        )
        print(f"\nresults: {out_dir / 'partial.json'} (a partial run; README.md is unchanged)")
        return
    (out_dir / "latest.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    write_chart(results, loops, meta, out_dir / "latest.png")
    write_readme(results, loops, meta)


def write_chart(results, loops, meta, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib missing, no chart written")
        return
    names = list(results)
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.45 * len(names)))
    height = 0.8 / len(loops)
    for i, loop in enumerate(loops):
        ratios = []
        for name in names:
            value = figure(results[name]["loops"][loop], WALL)
            uvloop = figure(results[name]["loops"].get("uvloop"), WALL)
            ratios.append(value / uvloop if value and uvloop else 0)
        ax.barh([y + i * height for y in range(len(names))], ratios, height, label=loop)
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_yticks([y + height * (len(loops) - 1) / 2 for y in range(len(names))])
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("throughput relative to uvloop (higher is better; missing = 0)")
    ax.set_title(f"event loops relative to uvloop, median of {meta['rounds']} rounds")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


def write_readme(results, loops, meta):
    net, cpus, load = meta["net"], meta["cpus"], meta["loadavg"]
    http_warmup = f"{net['wrk_warmup']} s of warm-up, then " if net["wrk_warmup"] else ""
    pinning = (
        f"the server is pinned to CPU {cpus['server']} and the load generator to CPU "
        f"{cpus['client']}"
        if cpus["server"] is not None
        else "nothing is pinned (a single CPU)"
    )
    busy = generator_load(results)
    scale = meta["workload_scale"]
    scaled = "" if scale == 1 else f", at {scale:g} of their full size (all but `gather 100k`)"
    seconds = meta.get("workload_seconds")
    repeated = f"repeated until a sample has lasted {seconds:g} s" if seconds else "once"
    lines = [
        "# oxio benchmarks",
        "",
        "Generated by `benches/run.py` (`make bench`); do not edit by hand.",
        "",
        "## Method",
        "",
        f"- Date: {meta['date']}; Python {meta['python']}; {meta['machine']}; "
        f"{os.cpu_count()} cores; the run took {meta['seconds']} s.",
        f"- Command: `{meta['command']}`.",
        f"- Loops: {', '.join(f'{name} {version(name)}' for name in loops)}.",
        "- Every measurement is a fresh process; the loops are interleaved round by round "
        f"(rotating order), {meta['rounds']} rounds. Figures are medians of operations per "
        "wall-clock second, with min-max; ratios compare medians.",
        f"- In-process workloads (`workloads.py`) run after a warm-up{scaled}, {repeated}; "
        "`ops/CPU-s` counts operations per CPU-second of that process.",
        f"- Network servers (`net_servers.py`) run on the loop under test; {pinning}. The echo "
        f"rows are driven by `loadgen` (Rust, mio, one thread): {net['connections']} "
        "connections, each sending a message and waiting for its whole echo before the next; "
        f"{net['warmup']} s of warm-up, then {net['seconds']} s measured. The HTTP rows are "
        f"driven by `wrk -t1 -c{net['connections']}`: {http_warmup}{net['wrk_seconds']} s "
        "measured, pipelined 16 deep through `http_pipeline.lua` in the pipelined row. "
        "`ops/CPU-s` there is per CPU-second of the server process over the measured window "
        "(all its threads, from /proc schedstat).",
        "- `limit` is `echo-limit`, a single-threaded Rust echo server (mio), driven the same "
        "way: what one core does when the event loop costs nothing.",
        "- The TLS and HTTPS rows serve through the loop's own `ssl=` (the server's "
        "`SSLContext`, a throwaway self-signed P-256 certificate made per run); `loadgen` speaks "
        "TLS with rustls (ring) and handshakes before the window, wrk with OpenSSL. `echo-limit` "
        "speaks no TLS, so those rows have no `limit`.",
        "- `client busy` is the load generator's largest share of its own CPU in any sample of "
        "the row (its CPU time over the measured window; wrk's from its process usage): near "
        "100% the client, not the server, may have set the pace.",
        f"- Load average (1, 5, 15 min) {fmt_load(load['before'])} before the run and "
        f"{fmt_load(load['after'])} after. The machines are shared and noisy: trust ratios, and "
        "the per-CPU-second table over the wall-clock one, not absolute rates.",
    ]
    lines += [f"- {LOOP_NOTES[loop]}" for loop in loops if loop in LOOP_NOTES]
    for key, against in (("loops", "the loops"), ("limit", "`limit`")):
        if busy[key]:
            lines.append(generator_note(against, *busy[key]))
    bimodal = list(bimodal_rows(results))
    if bimodal:
        spans = "; ".join(f"{name} ({fmt_rate(lo)}-{fmt_rate(hi)})" for name, lo, hi in bimodal)
        lines.append(
            f"- The `limit` server's own samples spread more than {BIMODAL:g}x on: {spans}. There "
            "the machine alternated between a fast and a slow mode under every server, so those "
            "medians depend on how many samples fell in each mode more than on the loop."
        )
    lines += ["", "## Results", ""]
    for heading, table in sections(results, loops):
        lines += [f"### {heading}", "", *table, ""]
    missing = list(missing_lines(results))
    if missing:
        lines += ["### Missing", "", *missing, ""]
    lines += ["![throughput relative to uvloop](results/latest.png)", ""]
    (HERE / "README.md").write_text("\n".join(lines))


def bimodal_rows(results):
    """Rows where the pure-Rust limit server's samples alone spread more than `BIMODAL` times:
    the machine, not the loop under test, changed pace there."""
    for name, result in results.items():
        limit = result["limit"]
        if limit and limit["min"] > 0 and limit["max"] / limit["min"] > BIMODAL:
            yield name, limit["min"], limit["max"]


def generator_note(against, most, median):
    verdict = (
        "so it was not the bottleneck"
        if most < BUSY
        else "so it may have set the pace: read those rates as floors"
    )
    return (
        f"- Against {against} the load generator was busy at most {most:.0%} of its CPU "
        f"(median {median:.0%}), {verdict}."
    )


def fmt_load(loadavg):
    return ", ".join(f"{x:.2f}" for x in loadavg)


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
        return dist_version(name)
    except PackageNotFoundError:
        return "?"
