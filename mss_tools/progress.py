"""Logging and progress bars, both on stderr; bars only when stderr is a terminal."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("mss")


def setup_logging(verbosity: int) -> None:
    """``verbosity``: -1 quiet (warnings), 0 info, 1 debug."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def bars_enabled() -> bool:
    return sys.stderr.isatty() and log.getEffectiveLevel() <= logging.INFO


class _NoBar:
    def advance(self, n: float = 1) -> None:
        pass

    def update(self, **kwargs) -> None:
        pass


class _RichBar:
    def __init__(self, progress, task):
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._task, n)

    def update(self, **kwargs) -> None:
        self._progress.update(self._task, **kwargs)


@contextmanager
def progress_bar(total: float | None, description: str) -> Iterator[_NoBar | _RichBar]:
    """A rich progress bar on stderr, or a no-op when stderr is not a terminal."""
    if not bars_enabled():
        yield _NoBar()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        yield _RichBar(progress, progress.add_task(description, total=total, status=""))
