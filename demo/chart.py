"""The chart of `make demo`: requests per second of each loop, one bar each."""


def write_chart(results, path):
    """Writes a PNG of `results` (under_load.Result) to `path`; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    loops = [r.loop for r in results]
    rates = [r.requests_per_second for r in results]
    asyncio_rate = next((r.requests_per_second for r in results if r.loop == "asyncio"), None)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.6 * len(results)))
    bars = ax.barh(
        loops, rates, color=["#e07b39" if loop == "oxio" else "#7a8a99" for loop in loops]
    )
    if asyncio_rate:
        labels = [f"{rate:,.0f}/s  ({rate / asyncio_rate:.2f}x asyncio)" for rate in rates]
    else:
        labels = [f"{rate:,.0f}/s" for rate in rates]
    ax.bar_label(bars, labels, padding=4)
    ax.invert_yaxis()
    ax.set_xlim(0, max(rates) * 1.45)
    ax.set_xlabel("requests per second (higher is better)")
    ax.set_title("aiohttp JSON API under wrk, server on one CPU")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
