"""`unmemorize demo`: the whole story on the embedded default model, with its own ground truth.

Recipe: the flags are a :class:`~unmemorize.lab.demo.DemoSpec`; the story is
:func:`unmemorize.lab.demo.run_demo`; its tables are printed.
"""

from __future__ import annotations

import typer

from unmemorize.commands import flags
from unmemorize.commands.common import console, log, progress_bar
from unmemorize.lab.demo import DemoSpec


def demo_command(spec: DemoSpec) -> None:
    """The whole story on the embedded default: plant private records, audit, unlearn them with GA, SGA
    and TAU, attack, check utility, and write one HTML report (about 10 minutes on 2 CPU cores)."""
    from unmemorize.lab.demo import run_demo
    from unmemorize.report.audit import sequence_table, summary_table
    from unmemorize.report.console import print_frame

    with progress_bar() as p:
        done = run_demo(spec, progress=p, log=log, say=lambda headline, detail="": _say(headline, detail))
    print_frame(console, done.by_exposure, "Memorization by exposure (0 = non-members, the unseen reference)")
    console.print(sequence_table(done.audit, 6, title="Most memorized members before unlearning"))
    console.print(summary_table(done.audit))
    print_frame(console, done.comparison, "Before and after unlearning (AUC 0.5 = an attacker cannot tell)")
    console.print(f"Stages (s): {', '.join(f'{k} {v:.0f}' for k, v in done.stages.items())}")
    console.print(f"Finished in {done.seconds:.0f} s. Report: [bold]{done.report}[/]")


def _say(headline: str, detail: str) -> None:
    console.rule(headline, align="left")
    if detail:
        console.print(detail, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("demo", help=demo_command.__doc__)(flags.command(demo_command, DemoSpec))
