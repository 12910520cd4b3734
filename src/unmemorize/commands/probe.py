"""`unmemorize probe`: does the forgotten text come back? Robustness probes of an unlearned model (docs/method.md §3.8)

Recipe: the flags are a :class:`~unmemorize.probes.options.ProbeSpec`; the work is
:func:`unmemorize.probes.run.probe_run`; the table and the verdicts are printed.
"""

from __future__ import annotations

import typer

from unmemorize.commands import flags
from unmemorize.commands.common import (
    OUT,
    OVERWRITE,
    console,
    default_out,
    log,
    progress_bar,
)
from unmemorize.probes.options import ProbeSpec


def probe_command(spec: ProbeSpec, out=None, overwrite: bool = False) -> None:
    """Probe an unlearned model the way published attacks bring unlearned text back — relearning (a few steps of
    benign fine-tuning), 8/4-bit weight quantization, reworded prompts (case, whitespace, truncated, chat template),
    sampling — and measure MA, EL_10 and extraction on the forget set after each; the same probes on the retrain
    oracle (--oracle) are the baseline. Writes probes.json, probes.parquet, a plot per probe and report.html."""
    from unmemorize.probes.run import probe_run
    from unmemorize.report.console import print_frame

    with progress_bar() as p:
        results, folder = probe_run(spec, out or default_out("probe"), overwrite=overwrite, progress=p, log=log)
    print_frame(console, results.table(), "Robustness probes: does it come back?")
    for line in results.record.verdicts:
        console.print(line, highlight=False)
    for name, why in results.record.skipped.items():
        console.print(f"[yellow]not run[/]: {name} ({why})", highlight=False)
    for note in results.record.notes:
        console.print(f"[yellow]note[/]: {note}", highlight=False)
    console.print(f"[green]wrote[/] {folder}/probes.json, probes.parquet, probe_*.png, report.html")


def register(app: typer.Typer) -> None:
    cmd = flags.command(probe_command, ProbeSpec, extra=(OUT, OVERWRITE))
    app.command("probe", help=probe_command.__doc__)(cmd)
