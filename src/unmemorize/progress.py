"""Progress bars for long work, without global state in the library.

Library functions take an optional ``progress`` (a :class:`rich.progress.Progress`) and report
into it when given; the CLI owns the one live display. Tests pass nothing and see nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def make_progress(console: Console | None = None) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=False,
    )


class _Task:
    def __init__(self, progress: Progress | None, description: str, total: float | None):
        self._progress = progress
        self._id = progress.add_task(description, total=total) if progress is not None else None

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._id, n)

    def update(self, **kwargs) -> None:
        if self._progress is not None:
            self._progress.update(self._id, **kwargs)


@contextlib.contextmanager
def task(progress: Progress | None, description: str, total: float | None) -> Iterator[_Task]:
    """A progress task that disappears from nowhere when ``progress`` is None."""
    yield _Task(progress, description, total)
