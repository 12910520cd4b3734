"""One utility evaluation (``unmemorize evaluate``): load a model, score the tasks, write a run folder."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from unmemorize.errors import UserError
from unmemorize.models import ModelSource
from unmemorize.options import Options, option
from unmemorize.utility.suite import EvalOptions


class EvaluateSpec(Options):
    """What to evaluate, on which model, how."""

    model: ModelSource = option(ModelSource(), "The model to evaluate.")
    tasks: str = option("paper", "Comma-separated tasks or groups: paper (the 13 of the paper), classification, "
                                 "dialogue, perplexity, lab, all, or task names (piqa, hellaswag, arc_easy, …); 'none' "
                                 "to run only --harness-tasks.", "--tasks", "-t")
    data: Path | None = option(None, "Folder of the tasks' data, laid out as docs/data.md says (not needed for the "
                                     "hub tasks with --data-source hub).", "--data", "-d")
    eval: EvalOptions = option(EvalOptions(), "How to evaluate.")
    harness_tasks: str | None = option(None, "lm-evaluation-harness tasks to run as well, on the same in-memory model "
                                             "(needs: pip install 'unmemorize[harness]').")
    harness_include: Path | None = option(None, "Folder of extra lm-eval task YAMLs (e.g. dataset_path: json with "
                                                "local data_files).")

    @model_validator(mode="after")
    def _something(self):
        if not self.task_names() and not self.harness_tasks:
            raise ValueError("nothing to evaluate: --tasks none and no --harness-tasks")
        return self

    def task_names(self) -> tuple[str, ...]:
        from unmemorize.utility.tasks import resolve_tasks

        if self.tasks.strip().lower() == "none":
            return ()
        try:
            return tuple(resolve_tasks(self.tasks))
        except UserError as e:
            raise ValueError(str(e)) from None


def evaluate_run(spec: EvaluateSpec, out: str | Path, *, overwrite: bool = False, progress=None, log=print):
    """Check every input, then load the model, score, and write ``out`` (utility.json, per-example
    frames, report.html, manifest.json). Returns (result or None, harness summary or None, folder)."""
    import pandas as pd

    from unmemorize import distributed
    from unmemorize.report.html import Section, write_report
    from unmemorize.runs import RunDir, build_manifest, write_json
    from unmemorize.utility import evaluate_utility, save_utility, utility_sections
    from unmemorize.utility.harness import run_harness
    from unmemorize.utility.tasks import TASKS, locate_task, needs_folder

    names = spec.task_names()
    e = spec.eval
    sources = {}
    if names:
        if spec.data is None and needs_folder(names, e.data_source):
            hub = [n for n in names if TASKS[n].hub is not None]
            raise UserError("--data is required for the paper's tasks: a folder laid out as docs/data.md says"
                            + (f" (or --data-source hub for {', '.join(hub)})" if hub and e.data_source == "local"
                               else ""))
        # every task's data is found (a hub dataset: read from the datasets cache, or downloaded) before the model loads
        sources = {n: locate_task(TASKS[n], spec.data, e.data_source) for n in names}
    if spec.harness_tasks and distributed.launched():
        raise UserError("--harness-tasks runs lm-evaluation-harness in one process; run it without "
                        "accelerate launch (the paper's tasks, --tasks, are split over the processes)")
    # under accelerate launch every rank scores its shard of each task's examples; rank 0 writes `out`
    with RunDir(distributed.output_dir(out), overwrite=overwrite) as run:
        lm = spec.model.load(log=log)
        result = harness = None
        if names:
            options = {k: getattr(e, k) for k in type(e).model_fields if k not in ("mode", "limit")}
            result = evaluate_utility(lm.model, lm.tokenizer, names, spec.data, mode=e.mode, limit=e.limit,
                                      progress=progress, **options)
        if spec.harness_tasks:
            harness = run_harness(lm.model, lm.tokenizer, spec.harness_tasks, include_path=spec.harness_include,
                                  limit=e.limit)
        harness_summary = None if harness is None else {
            "lm_eval": harness["lm_eval"],
            "tasks": {t: {"metrics": h["metrics"], "n": h["n"]} for t, h in harness["tasks"].items()}}
        write_json(run.path("manifest.json"), build_manifest(
            "evaluate", {**spec.model_dump(mode="json", exclude={"model", "data"}), "tasks": list(names)},
            {"model": lm.describe(), "data": {n: src.describe() for n, src in sources.items()}},
            device=spec.model.device))
        sections = []
        if result is not None:
            if harness_summary is not None:
                result["harness"] = harness_summary
            save_utility(result, run.tmp)
            sections += utility_sections(result)
        else:
            write_json(run.path("utility.json"), {"harness": harness_summary})
        if harness_summary is not None:
            rows = [{"task": t, "n": h["n"], "metric": m, "value": v}
                    for t, h in harness_summary["tasks"].items() for m, v in h["metrics"].items()]
            sections.append(Section("lm-evaluation-harness tasks", "lm-eval's own prompts and metrics on the same "
                                    "in-memory model; not the paper's scoring.", tables=[("", pd.DataFrame(rows))]))
        write_report(run.path("report.html"), "unmemorize evaluate", sections, subtitle=f"model {lm.name}")
        return result, harness_summary, run.commit()
