"""`unmemorize unlearn`: make a model forget a set of sequences, each down to the level of unseen text.

Recipe: the flags are a :class:`~unmemorize.spec.RunSpec` (one flag per field); the run is
:func:`unmemorize.recipe.execute`; what is printed is the run record.
"""

from __future__ import annotations

import typer

from unmemorize.commands import flags
from unmemorize.commands.common import OUT, OVERWRITE, console, default_out, err_console, progress_bar
from unmemorize.spec import UTILITY_FLAGS, RunSpec

FRESH = flags.extra_option("fresh", bool, False, "--fresh", help="Ignore a checkpoint of an interrupted run and start over.")
NO_ATTACKS = flags.Switch("--no-attacks", "attacks.names", [], "Do not run the privacy attacks.")
# the utility section's flags carry its name (`evaluate` has the bare ones)
RENAME = {f"utility.{k}": (v,) for k, v in UTILITY_FLAGS.items() if k not in ("tasks", "data_dir")}


def unlearn_command(spec: RunSpec, out=None, overwrite: bool = False, fresh: bool = False) -> None:
    """Unlearn the sequences of a forget file, each down to the level of unseen text (GA, SGA, TA, TAU, NPO,
    GA+Mismatch, DPD); then attack the original and the unlearned model and report."""
    from unmemorize import recipe
    from unmemorize.report.console import print_run

    out = out or default_out("unlearn")
    with progress_bar() as p:
        record = recipe.execute(spec, out, resources=recipe.Resources(progress=p, log=_log, keep_original=False),
                                overwrite=overwrite, fresh=fresh)
    print_run(console, record, out)


def _log(message: str) -> None:
    err_console.print(f"[cyan]{message}[/]")


def register(app: typer.Typer) -> None:
    cmd = flags.command(unlearn_command, RunSpec, rename=RENAME, switches=(NO_ATTACKS,), extra=(OUT, OVERWRITE, FRESH))
    app.command("unlearn", help=unlearn_command.__doc__)(cmd)
