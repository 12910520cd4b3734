"""Run a grid one run after another, skipping the runs whose results exist.

A run counts as done only once its folder was committed (renamed into place complete, with its
record), so stopping the runner — Ctrl-C, a crash, a lost machine — loses at most the run in
progress, and even that one resumes from its last unlearning checkpoint. Runs are ordered model by
model so each model is loaded once; what the runs of a model share (τ, the attacks and the utility
of the original model) is computed once (:class:`unmemorize.recipe.Resources`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unmemorize.experiments.grid import GridRun, InputHashes, expand, is_done, run_key
from unmemorize.progress import task
from unmemorize.spec import ExperimentConfig, load_config, missing_inputs


@dataclass
class PlannedRun:
    run: GridRun
    key: str | None  # None when an input is missing on this machine (cannot be hashed)
    folder: Path | None

    @property
    def spec(self):
        return self.run.spec

    @property
    def done(self) -> bool:
        return self.folder is not None and is_done(self.folder)


def plan(config: ExperimentConfig, out_dir: str | Path) -> list[PlannedRun]:
    """The grid with each run's key and folder under ``out_dir`` (key None where inputs are missing)."""
    out_dir = Path(out_dir)
    hashes = InputHashes()
    missing = bool(missing_inputs(config))
    planned = []
    for run in expand(config):
        try:
            key = run_key(run.spec, hashes)
        except Exception:  # noqa: BLE001 - an absent model or unset ${VAR} (listed by missing_inputs)
            if not missing:
                raise
            key = None
        planned.append(PlannedRun(run, key, None if key is None else out_dir / run.folder_name(key)))
    return planned


def run_experiment(config: ExperimentConfig | str | Path, out_dir: str | Path, progress=None,
                   log=None) -> list[Path]:
    """Run every run of the grid not already in ``out_dir``; return the folders of all the grid's runs.

    ``config``: an :class:`ExperimentConfig` or a YAML path (validated first). ``progress``: a
    rich Progress for one overall bar (and the inner bars of each run). ``log``: a callable for
    one-line messages (skips, model loads). Raises :class:`UserError` before any work if an input is
    missing.
    """
    from unmemorize import distributed, recipe
    from unmemorize.errors import UserError

    cfg = config if isinstance(config, ExperimentConfig) else load_config(config)
    problems = missing_inputs(cfg)
    if problems:
        raise UserError("cannot run the grid:\n  " + "\n  ".join(problems))
    say = log or (lambda m: None)
    runs = plan(cfg, out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if not r.done]
    d = distributed.current()
    if d is not None:  # every rank has listed the same finished runs before rank 0 commits a new one
        d.barrier()
    say(f"{len(runs)} runs in the grid: {len(runs) - len(todo)} already done, {len(todo)} to run")
    resources = recipe.Resources(progress=progress, log=say)
    current = None
    with task(progress, f"experiment {cfg.name or Path(cfg.source).stem}", len(runs)) as bar:
        bar.advance(len(runs) - len(todo))
        for r in todo:
            if current is not None and current != r.spec.model:
                resources.forget_model(current)  # drop the previous model before loading the next
            current = r.spec.model
            lab = r.run.labels
            bar.update(description=f"{lab['model']} · {lab['forget']}-{lab['split']} · {lab['method']} · "
                                   f"{lab['stop']} · seed {lab['seed']}")
            inner_before = set(progress.task_ids) if progress is not None else set()
            recipe.execute(r.spec, r.folder, resources=resources, key=r.key, labels=lab, order=r.run.order,
                           overwrite=True, command="run")
            if progress is not None:  # keep the display to the overall bar and the current run
                for tid in set(progress.task_ids) - inner_before:
                    progress.remove_task(tid)
            bar.advance(1)
            say(f"done: {r.folder.name}")
    return [r.folder for r in runs]
