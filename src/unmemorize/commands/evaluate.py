"""`unmemorize evaluate`: the paper's utility suite on one model, plus optional lm-eval tasks.

Recipe: the flags are an :class:`~unmemorize.utility.run.EvaluateSpec`; the work is
:func:`unmemorize.utility.run.evaluate_run`; the tables are printed.
"""

from __future__ import annotations

import typer

from unmemorize.commands import flags
from unmemorize.commands.common import OUT, OVERWRITE, console, default_out, log, progress_bar
from unmemorize.utility.run import EvaluateSpec, evaluate_run


def evaluate_command(spec: EvaluateSpec, out=None, overwrite: bool = False) -> None:
    """Measure utility on the paper's tasks (docs/method.md §6): 8 classification tasks, LAMBADA, 4 dialogue
    tasks, perplexity. Writes utility.json, utility_examples.parquet and report.html."""
    from unmemorize.report.console import print_frame
    from unmemorize.utility.report import utility_tables

    with progress_bar() as p:
        result, harness, folder = evaluate_run(spec, out or default_out("evaluate"), overwrite=overwrite,
                                               progress=p, log=log)
    for title, table in utility_tables(result, harness):
        print_frame(console, table, title)
    for note in (result or {}).get("notes", []):
        console.print(f"[yellow]note[/]: {note}")
    console.print(f"wrote [bold]{folder}[/] (utility.json, report.html)")


def register(app: typer.Typer) -> None:
    app.command("evaluate", help=evaluate_command.__doc__)(
        flags.command(evaluate_command, EvaluateSpec, extra=(OUT, OVERWRITE)))
