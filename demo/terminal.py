"""What `make demo` draws while it works: a progress bar and status lines, redrawn in place.

Transient output is drawn only on a terminal; in a log, only the lines that stay are written.
"""

import contextlib
import sys
import threading
import time

BAR_WIDTH = 30
# Wide enough that a line covers any transient line it replaces.
LINE_WIDTH = 64


def on_terminal():
    return sys.stdout.isatty()


def overwrite(line):
    """Writes `line` in place of whatever transient line is on screen, and keeps it."""
    print("\r" + line.ljust(LINE_WIDTH) if on_terminal() else line, flush=True)


def status(line):
    """Draws `line` until the next status or `overwrite` replaces it."""
    if on_terminal():
        print("\r" + line.ljust(LINE_WIDTH), end="", flush=True)


def full_bar():
    return f"[{'#' * BAR_WIDTH}]"


@contextlib.contextmanager
def progress_bar(label, seconds):
    """Redraws `label [####....] t/seconds s` while the block runs, from a thread."""
    if not on_terminal():
        yield
        return
    stop = threading.Event()
    start = time.monotonic()

    def draw():
        while not stop.wait(0.1):
            elapsed = min(time.monotonic() - start, seconds)
            filled = round(BAR_WIDTH * elapsed / seconds)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            status(f"  {label:<8} [{bar}] {elapsed:4.1f}/{seconds} s")

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
