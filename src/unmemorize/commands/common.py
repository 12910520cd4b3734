"""What the commands share: the consoles, the invocation options, progress and tables for a terminal."""

from __future__ import annotations

import contextlib
import datetime as _dt
from pathlib import Path

from rich.console import Console

from unmemorize.commands.flags import extra_option

console = Console()
err_console = Console(stderr=True)

OUT = extra_option("out", Path | None, None, "--out", "-o", help="Run directory (default: runs/<command>-<time>).")
OVERWRITE = extra_option("overwrite", bool, False, "--overwrite", help="Replace an existing run directory.")


def default_out(command: str) -> Path:
    return Path("runs") / f"{command}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def quiet_other_ranks() -> None:
    """Under accelerate launch only rank 0 talks."""
    from unmemorize import distributed

    if distributed.launched() and not distributed.is_main():
        console.quiet = err_console.quiet = True


@contextlib.contextmanager
def progress_bar():
    """One live progress display for the whole command (on stderr): rich bars on a terminal, a plain
    line every few seconds otherwise (CI, nohup, a pipe)."""
    from unmemorize.progress import make_progress

    quiet_other_ranks()
    with make_progress(err_console) as p:
        yield p


def log(message: str) -> None:
    err_console.print(f"[cyan]{message}[/]")
