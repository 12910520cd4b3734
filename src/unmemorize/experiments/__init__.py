"""Experiment grids: models × forget sets × methods × stop rules × seeds, run, cached and reported.

Library entry points (what ``unmemorize run`` and ``unmemorize report`` call)::

    from unmemorize.experiments import load_config, plan, run_experiment
    from unmemorize.report.experiments import write_experiment_report

    cfg = load_config("configs/default.yaml")        # UserError naming file, key, allowed values
    folders = run_experiment(cfg, "runs/default", progress=p)   # skips finished runs; one folder per run
    html = write_experiment_report(folders, "runs/default/report")  # report.html, results.md, results.csv

Modules: :mod:`.config` (typed YAML configs and their checks), :mod:`.grid` (expansion and run keys),
:mod:`.pipeline` (one run: τ → unlearn → attacks → utility → run folder), :mod:`.runner` (the loop
over the grid, with resumption).
"""

from unmemorize.experiments.config import ExperimentConfig, config_from_dict, load_config, missing_inputs
from unmemorize.experiments.grid import RunSpec, expand, run_key
from unmemorize.experiments.runner import PlannedRun, plan, run_experiment

__all__ = ["ExperimentConfig", "PlannedRun", "RunSpec", "config_from_dict", "expand", "load_config",
           "missing_inputs", "plan", "run_experiment", "run_key"]
