"""`unmemorize run CONFIG.yaml`: run an experiment grid, skipping finished runs, then report it.

Recipe: validate the config (file, key, allowed values) → list the grid with each run's status →
run the missing runs one after another under one progress bar → aggregate every run of the grid
into ``<out>/report`` (tables as Markdown/CSV/HTML, plots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unmemorize.commands.common import console, err_console, progress_bar


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
    from rich.table import Table

    from unmemorize import distributed
    from unmemorize.experiments import load_config, missing_inputs, plan, run_experiment

    if distributed.launched() and not distributed.is_main():  # under accelerate launch only rank 0 talks
        console.quiet = err_console.quiet = True
    cfg = load_config(config)
    out_dir = out or Path("runs") / (cfg.name or config.stem)
    planned = plan(cfg, out_dir)
    problems = missing_inputs(cfg)
    table = Table(title=f"{cfg.name or config.stem}: {len(planned)} runs → {out_dir}")
    for col in ("model", "forget", "split", "method", "stop", "seed", "key", "status"):
        table.add_column(col)
    for r in planned:
        lab = r.spec.labels
        status = "done" if r.done else ("inputs missing" if r.key is None else "to run")
        table.add_row(*(str(lab[c]) for c in ("model", "forget", "split", "method", "stop", "seed")),
                      r.key[:12] if r.key else "—", status)
    console.print(table)
    for p in problems:
        err_console.print(f"[yellow]missing input[/]: {p}", highlight=False)
    if check:
        console.print("[green]config is valid[/]" + (" (the inputs above must be supplied before `run`)" if problems else ""))
        return
    with progress_bar() as p:
        folders = run_experiment(cfg, out_dir, progress=p, log=lambda m: err_console.print(f"[cyan]{m}[/]"))
    console.print(f"[green]{len(folders)} runs[/] in {out_dir}")
    if report and distributed.is_main():
        from unmemorize.report.experiments import write_experiment_report

        html = write_experiment_report(folders, out_dir / "report", title=f"Experiment {cfg.name or config.stem}")
        console.print((out_dir / "report" / "results.md").read_text(), markup=False, highlight=False)
        console.print(f"report: {html} (results.md, results.csv beside it)")
