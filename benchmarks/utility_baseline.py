"""Utility baseline: SmolLM2-135M (the embedded default) on every utility task, full mode.

Prints, per task, the number of examples scored, the metrics, the chance level and the seconds,
then the §2.8 aggregates, as a Markdown table for benchmarks/RESULTS.md. A classification task whose
accuracy is not above chance by more than two standard errors is flagged.

On 2 shared CPU cores whole splits take hours (HellaSwag alone is 10,042 × 4 choices), so every task
is cut to its first ``--limit`` examples (per-task defaults below, about 15 minutes in all);
``--limit 0`` means whole splits. Optionally, ``--check-reference N`` times the slow per-choice
reference (one forward pass per choice, as the original code) on the first N HellaSwag questions
and checks that its predictions equal the batched engine's.

    .venv/bin/python benchmarks/utility_baseline.py                # defaults
    .venv/bin/python benchmarks/utility_baseline.py --limit 0      # whole splits (hours on CPU)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from unmemorize.models import load_model
from unmemorize.utility import TASKS, evaluate_utility, resolve_tasks
from unmemorize.utility.suite import AGGREGATES, aggregate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"

# First-N examples per task for a ~15-minute CPU run (chosen from measured seconds per example).
DEFAULT_LIMITS = {
    "piqa": 300, "hellaswag": 200, "arc_easy": 300, "arc_challenge": 299, "copa": 100, "winogrande": 300,
    "mathqa": 200, "pubmed_qa": 200, "lambada": 300, "wizard_of_wikipedia": 64, "empathetic_dialogues": 64,
    "blended_skill_talk": 64, "wizard_of_internet": 64, "wikitext": 64, "pile": 128,
}


def above_chance(acc: float, chance: float | None, n: int) -> str:
    """'yes' when acc − chance > 2 standard errors of a binomial proportion at chance level."""
    if chance is None or acc != acc:
        return ""
    se = math.sqrt(chance * (1 - chance) / n)
    return "yes" if acc - chance > 2 * se else "NO"


def fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}" if isinstance(v, float) else str(v)


def check_reference(model, tokenizer, n: int) -> dict:
    """Batched engine vs one forward pass per choice on the first n HellaSwag questions."""
    from unmemorize.utility.reference import choice_scores_reference
    from unmemorize.utility.scoring import predict_choice
    from unmemorize.utility.suite import EvalOptions, encode_contexts, encode_continuations
    from unmemorize.utility.tasks import load_task

    items = load_task(TASKS["hellaswag"], DATA, "full", n).items
    start = time.perf_counter()
    fast = evaluate_utility(model, tokenizer, "hellaswag", DATA, limit=n)["tasks"]["hellaswag"]["examples"]
    fast_s = time.perf_counter() - start
    opts = EvalOptions()
    start = time.perf_counter()
    slow_pred, max_diff = [], 0.0
    for it, fast_scores in zip(items, fast["scores"]):
        ctx = encode_contexts(tokenizer, [it.example.context], opts)[0]
        conts = encode_continuations(tokenizer, list(it.example.choices), opts)
        scores = choice_scores_reference(model, ctx, conts)
        slow_pred.append(predict_choice(scores))
        max_diff = max(max_diff, max(abs(a - float(b)) for a, b in zip(scores, fast_scores.split(";"))))
    slow_s = time.perf_counter() - start
    return {"questions": n, "batched_seconds": round(fast_s, 1), "reference_seconds": round(slow_s, 1),
            "same_predictions": int(sum(a == b for a, b in zip(fast["pred"], slow_pred))),
            "max_score_difference": max_diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--limit", type=int, default=None, help="examples per task for every task (0 = whole splits); "
                                                           "default: the per-task DEFAULT_LIMITS")
    ap.add_argument("--mode", default="full", choices=("full", "parity"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check-reference", type=int, default=0, metavar="N")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"needs {args.data} (../shared/data/eval is not present on this machine)")
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, log=print)
    rows, metrics = [], {}
    total = time.perf_counter()
    for name in resolve_tasks(args.tasks):
        limit = DEFAULT_LIMITS.get(name) if args.limit is None else (args.limit or None)
        res = evaluate_utility(lm.model, lm.tokenizer, name, args.data, mode=args.mode, limit=limit)
        r = res["tasks"][name]
        metrics[name] = r["metrics"]
        m = r["metrics"]
        rows.append({"task": name, "split": r["split"], "n": r["n"], **m, "chance": r["chance"],
                     "above_chance": above_chance(m.get("acc", float("nan")), r["chance"], r["n"]) if r["kind"] == "choice" else "",
                     "seconds": r["seconds"], "s_per_example": r["seconds"] / r["n"]})
        print(json.dumps(rows[-1]), flush=True)
    total = time.perf_counter() - total
    aggs = aggregate(metrics)
    print(f"\nmodel {lm.name}, mode {args.mode}, torch threads {args.threads}, total {total:.0f} s\n")
    print("| task | split | n | acc | f1 | loss | ppl | chance | above chance | seconds | s/example |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['split']} | {r['n']} | {fmt(r.get('acc'))} | {fmt(r.get('f1'))} | "
              f"{fmt(r.get('loss'))} | {fmt(r.get('ppl'))} | {fmt(r['chance'])} | {r['above_chance']} | "
              f"{r['seconds']:.1f} | {r['s_per_example']:.3f} |")
    print()
    for name in AGGREGATES:
        if name in aggs:
            print(f"- {name} = {aggs[name]['value']:.4f} ({len(aggs[name]['tasks'])} tasks)")
    ref = check_reference(lm.model, lm.tokenizer, args.check_reference) if args.check_reference else None
    if ref:
        print(f"\nreference check: {json.dumps(ref)}")
    if args.json:
        args.json.write_text(json.dumps({"model": lm.name, "mode": args.mode, "threads": args.threads,
                                         "total_seconds": total, "tasks": rows, "aggregates": aggs,
                                         "reference_check": ref}, indent=2, default=str))


if __name__ == "__main__":
    main()
