"""`unmemorize audit`: which sequences does the model memorize, compared with unseen text?

Recipe: the flags are an :class:`~unmemorize.audit.AuditSpec`; the work is
:func:`unmemorize.audit.audit_run`; the tables are printed.
"""

from __future__ import annotations

import typer

from unmemorize.audit import AuditSpec
from unmemorize.commands import flags
from unmemorize.commands.common import OUT, OVERWRITE, console, default_out, err_console, log, progress_bar

SHOW = flags.extra_option("show", int, 40, "--show", help="Rows of the table to print.")
RENAME = {"profile.batch_size": ("--batch-size",), "profile.metrics": ("--metrics",)}


def audit_command(spec: AuditSpec, out=None, overwrite: bool = False, show: int = 40) -> None:
    """Measure per-sequence memorization (MA, EL_n, exact extraction) against τ from unseen text."""
    from unmemorize.audit import audit_run
    from unmemorize.report.audit import sequence_table, summary_table

    with progress_bar() as p:
        result, path, ref_desc = audit_run(spec, out or default_out("audit"), overwrite=overwrite, progress=p, log=log)
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    console.print(sequence_table(result, show))
    console.print(f"τ = {result.tau:.3f} from {ref_desc}" + ("; padding counted (parity mode)" if spec.profile.parity else ""))
    console.print(summary_table(result))
    console.print(f"Run directory: [bold]{path}[/]  (report: {path / 'report.html'})")


def register(app: typer.Typer) -> None:
    cmd = flags.command(audit_command, AuditSpec, rename=RENAME, extra=(OUT, OVERWRITE, SHOW))
    app.command("audit", help=audit_command.__doc__)(cmd)
