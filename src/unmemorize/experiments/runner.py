"""Run a grid one run after another, skipping the runs whose results exist.

A run counts as done only once its folder was committed (renamed into place complete, with its
summary), so stopping the runner — Ctrl-C, a crash, a lost machine — loses at most the run in
progress, and even that one resumes from its last unlearning checkpoint. Runs are ordered model by
model so each model is loaded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unmemorize.experiments.config import ExperimentConfig, load_config, missing_inputs
from unmemorize.experiments.grid import InputHashes, RunSpec, expand, is_done, run_key
from unmemorize.progress import task


@dataclass
class PlannedRun:
    spec: RunSpec
    key: str | None  # None when an input is missing on this machine (cannot be hashed)
    folder: Path | None

    @property
    def done(self) -> bool:
        return self.folder is not None and is_done(self.folder)


def plan(config: ExperimentConfig, out_dir: str | Path) -> list[PlannedRun]:
    """The grid with each run's key and folder under ``out_dir`` (key None where inputs are missing)."""
    out_dir = Path(out_dir)
    hashes = InputHashes()
    missing = bool(missing_inputs(config))
    planned = []
    for spec in expand(config):
        try:
            key = run_key(config, spec, hashes)
        except Exception:  # noqa: BLE001 - an absent model or unset ${VAR} (listed by missing_inputs)
            if not missing:
                raise
            key = None
        planned.append(PlannedRun(spec, key, None if key is None else out_dir / spec.folder_name(key)))
    return planned


def run_experiment(config: ExperimentConfig | str | Path, out_dir: str | Path, progress=None,
                   log=None) -> list[Path]:
    """Run every run of the grid not already in ``out_dir``; return the folders of all the grid's runs.

    ``config``: an :class:`ExperimentConfig` or a YAML path (validated first). ``progress``: a
    rich Progress for one overall bar (and the inner bars of each run). ``log``: a callable for
    one-line messages (skips, model loads). Raises :class:`UserError` before any work if an input is
    missing.
    """
    from unmemorize.errors import UserError
    from unmemorize.experiments.pipeline import load_context, run_one

    cfg = config if isinstance(config, ExperimentConfig) else load_config(config)
    problems = missing_inputs(cfg)
    if problems:
        raise UserError("cannot run the grid:\n  " + "\n  ".join(problems))
    say = log or (lambda m: None)
    runs = plan(cfg, out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if not r.done]
    from unmemorize import distributed

    d = distributed.current()
    if d is not None:  # every rank has listed the same finished runs before rank 0 commits a new one
        d.barrier()
    say(f"{len(runs)} runs in the grid: {len(runs) - len(todo)} already done, {len(todo)} to run")
    ctx, ctx_model = None, None
    with task(progress, f"experiment {cfg.name or Path(cfg.source).stem}", len(runs)) as bar:
        bar.advance(len(runs) - len(todo))
        for r in todo:
            location = (r.spec.model.path, r.spec.model.dtype)
            if ctx_model != location:
                ctx = None  # drop the previous model before loading the next
                say(f"loading model {r.spec.model.name or r.spec.model.path}")
                ctx, ctx_model = load_context(cfg, r.spec, log=say), location
            lab = r.spec.labels
            bar.update(description=f"{lab['model']} · {lab['forget']}-{lab['split']} · {lab['method']} · "
                                   f"{lab['stop']} · seed {lab['seed']}")
            inner_before = set(progress.task_ids) if progress is not None else set()
            run_one(cfg, r.spec, r.key, r.folder, ctx, progress)
            if progress is not None:  # keep the display to the overall bar and the current run
                for tid in set(progress.task_ids) - inner_before:
                    progress.remove_task(tid)
            bar.advance(1)
            say(f"done: {r.folder.name}")
    return [r.folder for r in runs]
