"""Progress for long commands: a live bar on a terminal, plain throttled lines on stderr otherwise.

`with progress_reporter("train plt", total) as report: report(done, "loss 0.31")`. When stderr is
not a terminal (piped, logged, CI), a line is printed at most every `every` seconds and at the
end, so a long run shows it is alive in a log file.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


def console(stderr: bool = False):
    """A rich Console that never cuts tables to 80 columns when the output is a file or a pipe."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 200, soft_wrap=not stream.isatty())


@contextmanager
def progress_reporter(description: str, total: int, every: float = 10.0):
    """Yields report(done, detail="") for `total` units of work."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console(stderr=True),
                      transient=True) as bar:
            task = bar.add_task(description, total=total, detail="")
            yield lambda done, detail="": bar.update(task, completed=done, detail=detail)
        return
    start = last = time.monotonic()
    state = {"done": 0, "detail": ""}

    def line():
        detail = f" {state['detail']}" if state["detail"] else ""
        print(f"{description}: {state['done']}/{total}{detail} ({time.monotonic() - start:.0f} s)",
              file=sys.stderr, flush=True)

    def report(done, detail=""):
        nonlocal last
        state.update(done=done, detail=detail)
        now = time.monotonic()
        if now - last >= every or done >= total:
            last = now
            line()

    print(f"{description}: 0/{total}", file=sys.stderr, flush=True)
    yield report
    if state["done"] < total:
        line()
