"""`unmemorize attack`: can an attacker tell the forget set from unseen text? (docs/method.md §3)

Recipe: the flags are an :class:`~unmemorize.spec.AttackRunSpec`; the work is
:func:`unmemorize.attacks.run.attack_run`; the table is printed.
"""

from __future__ import annotations

import typer

from unmemorize.commands import flags
from unmemorize.commands.common import OUT, OVERWRITE, console, default_out, log, progress_bar
from unmemorize.spec import AttackRunSpec

# `attack` attacks one model; attacking before and after unlearning is `unlearn`'s
EXCLUDE = ("attacks.before",)
RENAME = {"attacks.batch_size": ("--batch-size", "--attack-batch-size")}


def attack_command(spec: AttackRunSpec, out=None, overwrite: bool = False) -> None:
    """Run membership attacks (MIAU, threshold on g(x), loss, zlib, min-k%, min-k%++, reference, sampling
    extraction): members = the forget set, non-members = the reference set (matched to the members' kinds
    of text by --match-by). With --oracle the same attacks run on the retrain oracle and each attack is
    judged by its gap to it. Writes attacks.json, per-sequence scores, a ROC plot and report.html."""
    from unmemorize.attacks.run import attack_run
    from unmemorize.report.console import print_frame

    with progress_bar() as p:
        results, folder = attack_run(spec, out or default_out("attack"), overwrite=overwrite, progress=p, log=log)
    table = results.table()
    print_frame(console, table[[c for c in table.columns if "CI" not in c]], "Privacy attacks (AUC 0.5 = chance)")
    if results.oracle is not None:
        o = results.oracle.table()
        o["gap [95% CI]"] = [f"{g:+.3f} {ci}" for g, ci in zip(o["gap"], o["gap 95% CI"])]
        print_frame(console, o[["attack", "AUC", "AUC oracle", "gap [95% CI]", "indistinguishable"]],
                    "Against the retrain oracle (gap = AUC − AUC on the oracle; indistinguishable: its interval holds 0)")
    for note in results.notes:
        console.print(f"[yellow]note[/]: {note}")
    console.print(f"[green]wrote[/] {folder}/attacks.json, attack_scores.parquet, roc.png, report.html"
                  + (", oracle_attacks.json, oracle_attack_scores.parquet, oracle_roc.png" if results.oracle else ""))


def register(app: typer.Typer) -> None:
    cmd = flags.command(attack_command, AttackRunSpec, exclude=EXCLUDE, rename=RENAME, extra=(OUT, OVERWRITE))
    app.command("attack", help=attack_command.__doc__)(cmd)
