"""The `unmemorize` command line: each command is a short recipe in ``unmemorize.commands``.

A command's options are generated from the typed spec it builds, which lives beside torch and
transformers; so a command module is imported only when that command runs (or its own ``--help``
is asked for), and ``unmemorize --help`` lists the commands from the one-line summaries below.

Errors in the user's input (:class:`UserError`) are printed as one line and exit with code 2,
without a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console
from typer.core import TyperGroup

from unmemorize.errors import UserError

# name → one line for `unmemorize --help` (each module's register() gives the full help)
COMMANDS = {
    "audit": "Measure per-sequence memorization (MA, EL_n, exact extraction) against τ from unseen text.",
    "scan": "Find what a model memorized in a corpus: every window's MA, the most memorized ranked against τ.",
    "unlearn": "Unlearn the sequences of a forget file, each down to the level of unseen text; attack before and after.",
    "attack": "Membership attacks: can an attacker tell the forget set from unseen text?",
    "probe": "Does it come back? Relearning, quantization and reworded prompts on an unlearned model, against the oracle.",
    "evaluate": "Utility on the paper's tasks (classification, LAMBADA, dialogue, perplexity).",
    "run": "Run an experiment grid from a YAML config (models × forget sets × methods × stop rules × seeds).",
    "report": "Aggregate experiment runs into the paper's tables (Markdown, CSV, HTML with plots).",
    "plant": "The memorization lab: fine-tune a copy so each member is memorized to its own degree.",
    "demo": "The whole story on the embedded default model, with its own ground truth.",
}


def load_command(name: str):
    """The click command of ``unmemorize.commands.<name>`` (its module imported now)."""
    sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    importlib.import_module(f"unmemorize.commands.{name}").register(sub)
    command = typer.main.get_command(sub)
    command.name = name
    return command


class Commands(TyperGroup):
    """The command group: light stand-ins for the listing, the real command when one is run."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, summary in COMMANDS.items():
            stub = typer.core.TyperCommand(name, help=summary, short_help=summary)
            stub.stub = True
            self.add_command(stub, name)

    def resolve_command(self, ctx, args):
        if args and getattr(self.commands.get(args[0]), "stub", False):
            self.commands[args[0]] = load_command(args[0])
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="unmemorize",
    cls=Commands,
    help="Find which sequences a language model has memorized and make it forget them, one sequence at a time.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Find which sequences a language model has memorized and make it forget them, one sequence at a time."""


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
