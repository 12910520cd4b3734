"""`unmemorize run CONFIG.yaml`: run an experiment grid, skipping finished runs, then report it.

Recipe: validate the config (file, key, allowed values) → list the grid with each run's status →
run the missing runs one after another through the one recipe → aggregate every run of the grid
into ``<out>/report``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from unmemorize.commands.common import console, err_console, log, progress_bar, quiet_other_ranks


def register(app: typer.Typer) -> None:
    app.command("run", help="Run an experiment grid from a YAML config (models × forget sets × methods × stop rules × seeds).")(run_command)


def run_command(
    config: Annotated[Path, typer.Argument(help="Experiment config (YAML); see configs/.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the run folders (default: runs/<config name>).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate the config and list the grid; run nothing.")] = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the aggregated report into <out>/report afterwards.")] = True,
) -> None:
    """Finished runs (same settings, same input files) are found by key and skipped; stopping loses
    only the run in progress, which resumes from its last checkpoint."""
    from unmemorize import distributed
    from unmemorize.experiments import load_config, missing_inputs, plan, run_experiment
    from unmemorize.report.console import print_frame

    quiet_other_ranks()
    cfg = load_config(config)
    out_dir = out or Path("runs") / (cfg.name or config.stem)
    planned = plan(cfg, out_dir)
    rows = [{**{c: str(r.run.labels[c]) for c in ("model", "forget", "split", "method", "stop", "seed")},
             "key": r.key[:12] if r.key else "—",
             "status": "done" if r.done else ("inputs missing" if r.key is None else "to run")} for r in planned]
    print_frame(console, pd.DataFrame(rows), f"{cfg.name or config.stem}: {len(planned)} runs → {out_dir}")
    for p in missing_inputs(cfg):
        err_console.print(f"[yellow]missing input[/]: {p}", highlight=False)
    if check:
        console.print("[green]config is valid[/]" + (" (the inputs above must be supplied before `run`)"
                                                    if missing_inputs(cfg) else ""))
        return
    with progress_bar() as p:
        folders = run_experiment(cfg, out_dir, progress=p, log=log)
    console.print(f"[green]{len(folders)} runs[/] in {out_dir}")
    if report and distributed.is_main():
        from unmemorize.report.experiments import write_experiment_report

        written = write_experiment_report(folders, out_dir / "report", title=f"Experiment {cfg.name or config.stem}")
        console.print(written.markdown, markup=False, highlight=False)
        console.print(f"report: {written.html} (results.md, results.csv beside it)")
