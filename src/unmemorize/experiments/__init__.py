"""Experiment grids: models × forget sets × methods × stop rules × seeds, run, cached and reported.

Library entry points (what ``unmemorize run`` and ``unmemorize report`` call)::

    from unmemorize.experiments import load_config, plan, run_experiment
    from unmemorize.report.experiments import write_experiment_report

    cfg = load_config("configs/default.yaml")        # UserError naming file, key, allowed values
    folders = run_experiment(cfg, "runs/default", progress=p)   # skips finished runs; one folder per run
    html = write_experiment_report(folders, "runs/default/report")  # report.html, results.md, results.csv

The config schema is :class:`unmemorize.spec.ExperimentConfig`; :mod:`.grid` expands it into
:class:`~unmemorize.spec.RunSpec` s with their run keys; :mod:`.runner` runs each through the one
recipe, :func:`unmemorize.recipe.execute`, skipping finished runs.
"""

from unmemorize.experiments.grid import GridRun, expand, run_key
from unmemorize.experiments.runner import PlannedRun, plan, run_experiment
from unmemorize.spec import ExperimentConfig, config_from_dict, load_config, missing_inputs

__all__ = ["ExperimentConfig", "GridRun", "PlannedRun", "config_from_dict", "expand", "load_config",
           "missing_inputs", "plan", "run_experiment", "run_key"]
