"""Adapter to lm-evaluation-harness: run its tasks on a model held in memory.

For users who have the hub datasets (or local task YAMLs, ``dataset_path: json`` + ``data_files``)
and want lm-eval's own task definitions and metrics on the very model object being unlearned —
no save/reload. ``lm_eval`` is an optional extra (``pip install 'unmemorize[harness]'``, ≈0.9 GB):
it is imported only when this adapter runs.

Its numbers are lm-eval's, not the paper's: lm-eval's prompts, few-shot settings and
normalisations differ from docs/method.md §6 (e.g. COPA's "because/therefore" connector). Use
:func:`unmemorize.utility.evaluate_utility` for the paper's suite.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from unmemorize.errors import UserError

INSTALL_HINT = "pip install 'unmemorize[harness]' (lm_eval==0.4.13, about 0.9 GB)"


def harness_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _metric_name(key: str) -> str:
    """lm-eval reports "acc,none" (metric, filter); keep the filter only when it is not "none"."""
    metric, _, filt = key.partition(",")
    return metric if filt in ("", "none") else f"{metric}[{filt}]"


def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def run_harness(model, tokenizer, tasks: str | Sequence[str], *, include_path: str | Path | None = None,
                include_defaults: bool = True, limit: int | None = None, num_fewshot: int | None = None,
                batch_size: int = 8, max_length: int | None = None, log_samples: bool = True) -> dict:
    """Run lm-eval ``tasks`` on ``model`` (a transformers causal LM) and ``tokenizer``.

    ``include_path``: a folder of extra task YAMLs; ``include_defaults=False`` skips indexing
    lm-eval's thousands of built-in tasks (faster when only local tasks are used).
    Returns ``{"tasks": {task: {"metrics": {...}, "n": int, "examples": DataFrame}}, "lm_eval": version}``;
    with ``log_samples`` each task's per-document metrics come as a frame keyed by ``id`` = doc_id,
    the format :func:`unmemorize.utility.report.compare_utility` pairs on.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError(f"the lm-evaluation-harness adapter needs lm_eval; {INSTALL_HINT}") from None
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise UserError("no lm-eval tasks given")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number of examples, got {limit}")
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"lm-eval task folder {include_path} does not exist")
    manager = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=include_defaults)
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = {n: difflib.get_close_matches(n, sorted(known), n=3) for n in unknown}
        raise UserError("unknown lm-eval task " + "; ".join(
            f"{n}" + (f" (did you mean {', '.join(h)}?)" if h else "") for n, h in hints.items())
            + ("" if include_path else "; local task YAMLs need --harness-include FOLDER"))
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                  device=str(next(model.parameters()).device))
        out = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, bootstrap_iters=0, log_samples=log_samples)
    finally:
        model.train(was_training)
    result: dict = {"tasks": {}, "lm_eval": getattr(lm_eval, "__version__", "unknown")}
    for task_name, values in out["results"].items():
        metrics = {_metric_name(k): _number(v) for k, v in values.items()
                   if "," in k and not k.split(",")[0].endswith("_stderr")}
        entry = {"metrics": {k: v for k, v in metrics.items() if v is not None},
                 "n": int(out.get("n-samples", {}).get(task_name, {}).get("effective", 0))}
        samples = (out.get("samples") or {}).get(task_name)
        if samples:
            keys = [m for m in entry["metrics"] if m in samples[0]]
            entry["examples"] = pd.DataFrame({"id": [str(s["doc_id"]) for s in samples],
                                              **{m: [float(s[m]) for s in samples] for m in keys}})
        result["tasks"][task_name] = entry
    return result
