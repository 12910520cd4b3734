"""The `unmemorize` command line: each command is a short recipe in ``unmemorize.commands``.

Errors in the user's input (:class:`UserError`) are printed as one line and exit with code 2,
without a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from unmemorize.errors import UserError

app = typer.Typer(
    name="unmemorize",
    help="Find which sequences a language model has memorized and make it forget them, one sequence at a time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines register(app). Heavy imports (torch, transformers) happen inside the commands,
# so `unmemorize --help` stays fast.
COMMAND_MODULES = ("audit", "plant", "demo", "evaluate", "attack", "unlearn", "run", "report")

for _name in COMMAND_MODULES:
    importlib.import_module(f"unmemorize.commands.{_name}").register(app)


def main() -> None:
    try:
        app()
    except UserError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]: nothing partial was written under the output name")
        sys.exit(130)


if __name__ == "__main__":
    main()
