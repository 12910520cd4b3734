"""`unmemorize scan`: which windows of a corpus does the model give back?

Recipe: the flags are a :class:`~unmemorize.scan.ScanSpec`; the work is
:func:`unmemorize.scan.scan_run`; the ranked table and the summary are printed.
"""

from __future__ import annotations

import typer

from unmemorize.commands import flags
from unmemorize.commands.common import OUT, OVERWRITE, console, default_out, err_console, log, progress_bar
from unmemorize.scan import ScanSpec

SHOW = flags.extra_option("show", int, 20, "--show", help="Rows of the ranked table to print.")
RENAME = {"profile.batch_size": ("--batch-size",), "profile.metrics": ("--metrics",)}


def scan_command(spec: ScanSpec, out=None, overwrite: bool = False, show: int = 20) -> None:
    """Find what a model memorized in a corpus: MA of every window, the most memorized ranked against τ."""
    from unmemorize.report.console import print_frame
    from unmemorize.scan import scan_run
    from unmemorize.scan.output import console_tables

    out = out or default_out("scan")
    try:
        with progress_bar() as p:
            result, path = scan_run(spec, out, overwrite=overwrite, progress=p, log=log)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/]: the chunks measured so far are kept; run again with --out {out} "
                          "to continue")
        raise
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    for title, frame in console_tables(result, show):
        print_frame(console, frame, title)
    console.print(f"Run directory: [bold]{path}[/]  (report: {path / 'report.html'}; forget file for "
                  f"`unmemorize unlearn --forget`: {path / 'forget.jsonl'})")


def register(app: typer.Typer) -> None:
    cmd = flags.command(scan_command, ScanSpec, exclude=("profile.parity",), rename=RENAME,
                        extra=(OUT, OVERWRITE, SHOW))
    app.command("scan", help=scan_command.__doc__)(cmd)
