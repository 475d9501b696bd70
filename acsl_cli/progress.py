"""Rich progress bars (loss, lr, ETA) that stay silent off rank 0 or when disabled."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()  # results: stdout
if not console.is_terminal:  # piped or captured: do not wrap tables at 80 columns
    console = Console(width=160)
status = Console(stderr=True)  # progress bars: stderr, so stdout stays parseable


class Bar:
    """One task's bar; ``advance(**fields)`` updates the step and the shown metrics."""

    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields: float | str) -> None:
        if self._progress is None:
            return
        info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in fields.items())
        self._progress.update(self._task, advance=n, info=info)


def bar_is_live(enabled: bool = True) -> bool:
    """Whether a bar redraws on stderr as work goes (a terminal and ``progress=true``); when
    not, training prints its log lines to stderr instead (``engine.iter_log``)."""
    return enabled and status.is_terminal


def _columns() -> tuple:
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Bar]:
    """A bar with step count, elapsed time, ETA and a free-text metrics field."""
    if not enabled:
        yield Bar(None, None)
        return
    with Progress(*_columns(), console=status, transient=False) as p:
        yield Bar(p, p.add_task(description, total=total, info=""))


@contextmanager
def progress_callback(description: str, enabled: bool = True):
    """A ``(done, total)`` callback whose bar appears only if the callee reports work."""
    state: dict = {}

    def tick(done: int, total: int) -> None:
        if not enabled:
            return
        if "p" not in state:
            p = Progress(*_columns(), console=status)
            p.start()
            state["p"], state["task"] = p, p.add_task(description, total=total, info="")
        state["p"].update(state["task"], completed=done, total=total)

    try:
        yield tick
    finally:
        if "p" in state:
            state["p"].stop()
