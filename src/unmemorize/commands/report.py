"""`unmemorize report RUN_DIR…`: the paper's tables and plots from run folders.

Recipe: find the run folders (a run folder, or a folder of them) → one row per run → mean ± 95%
Student-t interval per (model, forget set, method, stop rule) → results.md, results.csv, report.html.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Annotated

import typer

from unmemorize.commands.common import console


def register(app: typer.Typer) -> None:
    app.command("report", help="Aggregate experiment runs into the paper's tables (Markdown, CSV, HTML with plots).")(report_command)


def report_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders written by `unmemorize run` or `unlearn`, or folders holding them.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report folder (default: <the one folder given>/report, else runs/report-<time>).")] = None,
    title: Annotated[str, typer.Option("--title", help="Report title.")] = "Experiment report",
) -> None:
    from unmemorize import distributed
    from unmemorize.record import is_record
    from unmemorize.report.experiments import collect_run_dirs, write_experiment_report

    if not distributed.is_main():  # reading files needs no second process: under a launch rank 0 writes it
        return
    folders = collect_run_dirs(run_dirs)
    if out is None:
        single = len(run_dirs) == 1 and not is_record(run_dirs[0])
        out = run_dirs[0] / "report" if single else Path("runs") / f"report-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    written = write_experiment_report(folders, out, title=title)
    console.print(written.markdown, markup=False, highlight=False)
    console.print(f"[green]wrote[/] {written.html}, {out / 'results.md'}, {out / 'results.csv'} ({len(folders)} runs)")
