"""Progress for long commands: a live bar on a terminal, plain throttled lines on stderr otherwise
(pipes, files, TERM=dumb).

`with progress_reporter("train plt", total) as report: report(done, "loss 0.31")`. When stderr is
not a terminal (piped, logged, CI), a line is printed at most every `every` seconds and at the
end, so a long run shows it is alive in a log file.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


def console(stderr: bool = False, width: int | None = None):
    """The one rich Console every command prints with.

    - A table never has a number cut: one wider than the terminal is printed in a narrow layout,
      one line per row (`column: value; ...`, wrapped at the separators) under its title.
    - Files and pipes get 200 columns (nothing to fit), a terminal its width (COLUMNS if set).
    - A closed pipe (`| head`) reaches the CLI as BrokenPipeError (exit 141), where rich itself
      would exit 1, the code of a failed check.
    - TERM=dumb or NO_COLOR: plain text, no colours or cursor moves (rich's own rules).
    """
    from rich.console import Console

    class FittingConsole(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        def print(self, *objects, **kwargs) -> None:
            super().print(*(fit_table(self, o) for o in objects), **kwargs)

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return FittingConsole(file=stream, width=width or (None if tty else 200), soft_wrap=not tty and width is None)


def fit_table(console, renderable):
    """`renderable` itself, or for a rich Table too wide for `console` (rich would cut its cells with
    '…'), its title, one `column: value; ...` line per row, and its caption."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if not isinstance(renderable, Table):
        return renderable
    def text(cell) -> Text:
        return cell if isinstance(cell, Text) else Text.from_markup(str(cell))

    columns = renderable.columns
    # rich wraps cells at spaces, and cuts a word wider than its column: the table fits when every
    # column can be as wide as its longest word (plus padding and a border each)
    words = [max((len(w) for cell in (c.header, *c.cells) for w in text(cell).plain.split()), default=0)
             for c in columns]
    if sum(words) + 3 * len(columns) + 1 <= console.width:
        return renderable

    lines = [text(renderable.title)] if renderable.title else []
    for cells in zip(*(list(c.cells) for c in columns)):
        pairs = [Text.assemble(text(c.header), ": ", text(v)) for c, v in zip(columns, cells)]
        lines.append(Text("- ").append(Text("; ").join(pairs)))
    if renderable.caption:
        lines.append(text(renderable.caption))
    return Group(*lines)


class _Reporter:
    """report(done, detail), advance(detail), set_total(n): one display, two looks (see the module)."""

    def __init__(self, description: str, total: int | None, every: float, bar=None, task=None):
        self.description, self.total, self.every = description, total, every
        self.bar, self.task = bar, task
        self.done, self.detail = 0, ""
        self.start = self.last = time.monotonic()

    def __call__(self, done: int, detail: str = "") -> None:
        self.done, self.detail = done, detail
        if self.bar is not None:
            self.bar.update(self.task, completed=done, detail=detail)
            return
        now = time.monotonic()
        if now - self.last >= self.every or (self.total is not None and done >= self.total):
            self.last = now
            self.line()

    def advance(self, detail: str = "") -> None:
        self(self.done + 1, detail)

    def set_total(self, total: int) -> None:
        self.total = total
        if self.bar is not None:
            self.bar.update(self.task, total=total)

    def line(self) -> None:
        detail = f" {self.detail}" if self.detail else ""
        total = "?" if self.total is None else self.total
        print(f"{self.description}: {self.done}/{total}{detail} ({time.monotonic() - self.start:.0f} s)",
              file=sys.stderr, flush=True)


class _Silent(_Reporter):
    def __init__(self, total: int | None):
        super().__init__("", total, 0.0)

    def __call__(self, done: int, detail: str = "") -> None:
        self.done, self.detail = done, detail


@contextmanager
def progress_reporter(description: str, total: int | None, every: float = 10.0, enabled: bool = True,
                      transient: bool = True, detail: str = ""):
    """Yields report: `report(done, detail="")`, `report.advance(detail="")`, `report.set_total(n)`
    for `total` units of work (None: not known yet). Plain lines come at most every `every`
    seconds (0: on every call) and at the end; `detail` is shown until the first report."""
    if not enabled:
        yield _Silent(total)
        return
    err = console(stderr=True)
    if err.is_terminal and not err.is_dumb_terminal:  # TERM=dumb: no live display, plain lines as for pipes
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=err,
                      transient=transient) as bar:
            yield _Reporter(description, total, every, bar, bar.add_task(description, total=total, detail=detail))
        return
    report = _Reporter(description, total, every)
    report.detail = detail
    report.line()
    yield report
    if report.total is None or report.done < report.total:
        report.line()
