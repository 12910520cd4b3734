"""Progress for long work, without global state in the library.

Library functions take an optional ``progress`` and report into it when given (:func:`task`); the
command owns the one display. On a terminal that is a rich progress bar; anywhere else (CI, nohup,
a pipe into a file) rich would draw nothing until the end, so :class:`PlainProgress` writes a line
every few seconds instead — stage, done/total, rate — also while one step takes long, so a run is
never silent for minutes. Tests pass nothing and see nothing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

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

PLAIN_INTERVAL = 5.0  # seconds between the lines of a plain display


def make_progress(console: Console | None = None, interval: float = PLAIN_INTERVAL):
    """A rich progress display on a terminal, a :class:`PlainProgress` elsewhere."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        return PlainProgress(console, interval)
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@dataclass
class _PlainTask:
    description: str
    total: float | None
    completed: float = 0.0
    started: float = field(default_factory=time.monotonic)
    finished: bool = False


class PlainProgress:
    """The part of rich's :class:`~rich.progress.Progress` interface the library uses, as plain lines:
    one when a task starts, one every ``interval`` seconds for the busiest unfinished task (from a
    heartbeat thread, so a long step still shows), and one when a task completes."""

    def __init__(self, console: Console, interval: float = PLAIN_INTERVAL):
        self.console = console
        self.interval = interval
        self._tasks: dict[int, _PlainTask] = {}
        self._next = 0
        self._lock = threading.RLock()
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- rich's interface

    @property
    def task_ids(self) -> list[int]:
        return list(self._tasks)

    def add_task(self, description: str, total: float | None = None, **_) -> int:
        with self._lock:
            tid = self._next
            self._next += 1
            self._tasks[tid] = _PlainTask(description, total)
            self._say(f"{description} …" + (f" (0/{_count(total)})" if total else ""))
            return tid

    def advance(self, task_id: int, advance: float = 1) -> None:
        with self._lock:
            t = self._tasks.get(task_id)
            if t is None:
                return
            t.completed += advance
            self._maybe_finish(t)

    def update(self, task_id: int, *, description: str | None = None, completed: float | None = None,
               total: float | None = None, advance: float | None = None, **_) -> None:
        with self._lock:
            t = self._tasks.get(task_id)
            if t is None:
                return
            if description is not None:
                t.description = description
            if total is not None:
                t.total = total
            if completed is not None:
                t.completed = completed
            if advance:
                t.completed += advance
            self._maybe_finish(t)

    def remove_task(self, task_id: int) -> None:
        with self._lock:
            self._tasks.pop(task_id, None)

    def __enter__(self) -> "PlainProgress":
        self._thread = threading.Thread(target=self._heartbeat, name="unmemorize-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    # ---------------------------------------------------------------- lines

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)
        self._last = time.monotonic()

    def line(self, t: _PlainTask) -> str:
        elapsed = time.monotonic() - t.started
        rate = t.completed / elapsed if elapsed > 0 else 0.0
        done = f"{_count(t.completed)}/{_count(t.total)}" if t.total else f"{_count(t.completed)}"
        return f"{t.description}: {done} · {elapsed:.0f} s · {rate:.2f}/s"

    def _maybe_finish(self, t: _PlainTask) -> None:
        if t.total and t.completed >= t.total and not t.finished:
            t.finished = True
            self._say(self.line(t) + " · done")
        elif time.monotonic() - self._last >= self.interval:
            self._say(self.line(t))

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(1.0, self.interval)):
            with self._lock:
                if time.monotonic() - self._last < self.interval:
                    continue
                active = [t for t in self._tasks.values() if not t.finished]
                if active:
                    self._say(self.line(active[-1]))  # the innermost task is the one that moves


def _count(x: float | None) -> str:
    if x is None:
        return "?"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


class _Task:
    def __init__(self, progress, description: str, total: float | None):
        self._progress = progress
        self._id = progress.add_task(description, total=total) if progress is not None else None

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._id, n)

    def update(self, **kwargs) -> None:
        if self._progress is not None:
            self._progress.update(self._id, **kwargs)


@contextlib.contextmanager
def task(progress, description: str, total: float | None) -> Iterator[_Task]:
    """A progress task that disappears from nowhere when ``progress`` is None."""
    yield _Task(progress, description, total)
