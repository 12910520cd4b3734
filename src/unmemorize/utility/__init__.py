"""Utility: does the model still work? The paper's task suite, offline (docs/method.md §6, §2.8).

Tasks (``tasks.TASKS``; groups in ``tasks.GROUPS``):

* 8 classification tasks scored by the summed log-likelihood of each choice (§6.1): ``piqa``,
  ``hellaswag``, ``arc_easy``, ``arc_challenge``, ``copa``, ``winogrande``, ``mathqa``,
  ``pubmed_qa`` → ``acc``;
* ``lambada`` (§6.2) → ``acc``, ``loss`` (summed NLL of the last word), ``f1``;
* 4 dialogue tasks (§6.3): ``wizard_of_wikipedia``, ``empathetic_dialogues``,
  ``blended_skill_talk``, ``wizard_of_internet`` → ``loss`` (token-mean CE, nats), ``f1``;
* perplexity (§6.4): ``wikitext``, ``pile`` → ``loss`` (token-mean CE), ``ppl``.

Group ``paper`` = the 13 tasks of the paper's configs; also ``classification``, ``dialogue``,
``perplexity``, ``all``. Data: a folder laid out as docs/data.md says (the package ships no
dataset), or, for the tasks the paper took from the Hugging Face hub, the ``datasets`` cache by their
hub names (``data_source="hub"`` or ``"auto"``, offline first; ``tasks.locate_task``). Modes: ``full`` (whole splits) and ``parity`` (the original code's first-N view and
quirks, labelled in the result).

Library use (e.g. before and after unlearning)::

    from unmemorize.utility import evaluate_utility, utility_sections, compare_utility, save_utility

    before = evaluate_utility(model, tokenizer, "paper", data_dir, mode="full", limit=200, progress=p)
    ...  # unlearn
    after = evaluate_utility(model, tokenizer, "paper", data_dir, mode="full", limit=200, progress=p)
    save_utility(after, run.path("."))                  # utility.json + utility_examples.parquet
    sections = utility_sections(after, before=before)   # report.html sections, with paired bootstrap CIs
    changes = compare_utility(before, after)            # DataFrame: task, metric, before, after, change, ci_low, ci_high

The result is a dict::

    {"mode": "full", "mode_description": str, "options": {...},
     "tasks": {name: {"kind", "paper_key", "file", "split", "n", "seconds",
                      "metrics": {"acc": …} | {"loss": …, "f1": …} | …,
                      "chance", "notes": [str], "examples": DataFrame (one row per example, column "id")}},
     "aggregates": {"average_acc" | "average_f1" | "average_perplexity":
                    {"value", "metric", "tasks": [...], "complete": bool}},
     "logged": {"piqa/acc": …, "ai2_arc_ARC-Easy/acc": …}}     # the original code's W&B keys

``average_perplexity`` is the paper's name for the mean dialogue cross-entropy in nats (§2.8).
Per-example frames are keyed by the example's line in its file (or its dialogue key), so two
results on the same data pair up for :func:`compare_utility`.

lm-evaluation-harness tasks on the in-memory model: :func:`unmemorize.utility.harness.run_harness`
(optional dependency ``lm_eval``).
"""

from unmemorize.utility.report import compare_utility, load_utility, save_utility, summary_frame, utility_sections
from unmemorize.utility.suite import EvalOptions, evaluate_utility
from unmemorize.utility.tasks import GROUPS, TASKS, resolve_tasks

__all__ = [
    "EvalOptions", "GROUPS", "TASKS", "compare_utility", "evaluate_utility", "load_utility", "resolve_tasks",
    "save_utility", "summary_frame", "utility_sections",
]
