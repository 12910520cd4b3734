"""Run the utility tasks on a model: tokenization per mode, one runner per task kind, §2.8 aggregates.

A task kind (classification, completion, dialogue, perplexity) is data: how its examples become
model requests and per-example values (``run``), and which metrics are ratios of which per-example
columns (``ratios``). The per-example frames are the one result format; every metric and every
bootstrap interval is computed from them (:mod:`unmemorize.utility.report`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from unmemorize.errors import UserError
from unmemorize.models import max_positions
from unmemorize.options import Options, option
from unmemorize.utility.dialogue import cut_at_next_turn
from unmemorize.utility.engine import greedy_generate, score_continuations, stop_token_ids, window
from unmemorize.utility.scoring import (
    choice_score,
    clean_up_tokenization,
    lambada_correct,
    mean_of,
    predict_choice,
    rank_mean_ratio,
    ratio_of_sums,
    unigram_f1,
)
from unmemorize.utility.tasks import (
    CLASSIFICATION,
    DIALOGUE,
    TASKS,
    DataSource,
    Item,
    LoadedTask,
    Mode,
    load_task,
    resolve_tasks,
)

MODE_DESCRIPTIONS = {
    "full": "full: every example of each split (or the first --limit), attention masks, left-padded generation",
    "parity": "parity: the original code's view (docs/method.md §6.0) — rows with empty fields and non-4-choice ARC "
              "items dropped, the first N examples only (the first validation batch of each DDP rank), contexts "
              "cut to their first max_length (512) tokens, right-padded 512-token generation prompts, rank-averaged token means",
}


class EvalOptions(Options):
    """How to evaluate (``evaluate``'s flags; under ``utility:`` in run configs). ``limit``: full mode,
    the first ``limit`` examples (None = all); parity mode, the N of "first N examples" (default
    ``parity_ranks × parity_batch_size`` = 16, the SGA/TA/TAU configs; 32 for GA/DPD). ``max_length`` is
    the original's ``input_length`` window (512)."""

    mode: Mode = option("full", "full: whole splits, masks, left-padded generation. parity: the original code's "
                                "first-N examples and quirks, for comparing with published numbers.")
    limit: int | None = option(None, "full: score the first N examples of each task. parity: N (default 16 = 8 per "
                                     "GPU × 2 GPUs, as SGA/TA/TAU; 32 for GA/DPD).", ge=1,
                               allowed="a positive number of examples")
    max_length: int = option(512, "Token window per example (the paper: 512).", ge=2, allowed="an integer ≥ 2")
    batch_tokens: int = option(4096, "Tokens per forward pass; lower it if memory runs out.", ge=1)
    max_new_tokens: int = option(32, "Dialogue: tokens generated per reply.", ge=1)
    generate_batch_size: int = option(16, "Dialogue: replies generated together.", ge=1)
    parity_ranks: int = option(2, "parity: GPUs of the original run (examples are dealt out over them).", ge=1)
    parity_batch_size: int = option(8, "parity: the original's eval batch size per GPU.", ge=1)
    data_source: DataSource = option("local", "Where the tasks' rows come from. local: the data folder. hub: the "
                                              "tasks the paper took from the Hugging Face hub, and LAMBADA, through "
                                              "the datasets library (its cache, offline; a download where allowed), "
                                              "the others from the data folder. auto: the data folder's file where "
                                              "it has one, else the hub.")

    @property
    def parity(self) -> bool:
        return self.mode == "parity"

    @property
    def count(self) -> int | None:
        """How many examples to take from each task."""
        if self.parity:
            return self.limit or self.parity_ranks * self.parity_batch_size
        return self.limit


# ---------------------------------------------------------------- tokenization per mode

def _strip_pads(ids: list[int], pad_id: int | None) -> list[int]:
    """The original's ``get_rid_of_pad``: drop trailing pad tokens (pad = eos for GPT-2 models)."""
    while ids and pad_id is not None and ids[-1] == pad_id:
        ids = ids[:-1]
    return ids


def encode_contexts(tokenizer, texts: Sequence[str], opts: EvalOptions) -> list[list[int]]:
    """Context token ids, with the tokenizer's special tokens (the original's source encoding).

    parity: cut to the first ``max_length`` tokens (right truncation, as the original's
    ``tokenizer(..., max_length=512, truncation=True)``), trailing pads stripped.
    full: no cut here; the window rule later keeps the *last* tokens. An empty context becomes the
    end-of-text token, lm-evaluation-harness's rule (the original asserted it never happens).
    """
    if not texts:
        return []
    if opts.parity:
        enc = tokenizer(list(texts), truncation=True, max_length=opts.max_length)["input_ids"]
        enc = [_strip_pads(list(ids), tokenizer.pad_token_id) for ids in enc]
    else:
        enc = [list(ids) for ids in tokenizer(list(texts))["input_ids"]]
    fallback = [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0]
    return [ids or fallback for ids in enc]


def encode_continuations(tokenizer, texts: Sequence[str], opts: EvalOptions) -> list[list[int]]:
    """Continuation token ids, without special tokens; parity: first ``max_length``, pads stripped."""
    if not texts:
        return []
    enc = [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    if opts.parity:
        enc = [_strip_pads(ids[:opts.max_length], tokenizer.pad_token_id) for ids in enc]
    return enc


def decode(tokenizer, ids: Sequence[int]) -> str:
    """Decoded text as the original saw it: special tokens skipped, the old clean-up applied."""
    return clean_up_tokenization(tokenizer.decode(list(ids), skip_special_tokens=True,
                                                  clean_up_tokenization_spaces=False))


# ---------------------------------------------------------------- runners, one per kind

def run_choice(model, tokenizer, items: list[Item], opts: EvalOptions, progress, name: str) -> pd.DataFrame:
    """§6.1: score = −Σ log p(choice | context) per choice, prediction = argmin, correct = [pred = gold]."""
    examples = [it.example for it in items]
    contexts = encode_contexts(tokenizer, [ex.context for ex in examples], opts)
    flat = [(q, c) for q, ex in enumerate(examples) for c in ex.choices]
    conts = encode_continuations(tokenizer, [c for _, c in flat], opts)
    for (q, c), ids in zip(flat, conts):
        if not ids:
            raise UserError(f"{items[q].where}: choice {c!r} has no tokens; every choice must be non-empty "
                            f"(task {name})")
    scored = score_continuations(model, [(contexts[q], ids) for (q, _), ids in zip(flat, conts)],
                                 max_length=opts.max_length, batch_tokens=opts.batch_tokens, progress=progress,
                                 description=f"{name}: scoring choices")
    scores: list[list[float]] = [[] for _ in examples]
    for (q, _), s in zip(flat, scored):
        scores[q].append(choice_score(s.logprobs))
    pred = [predict_choice(s) for s in scores]
    gold = [ex.gold for ex in examples]
    return pd.DataFrame({
        "id": [it.id for it in items], "gold": gold, "pred": pred,
        "correct": [int(p == g) for p, g in zip(pred, gold)],
        "n_choices": [len(ex.choices) for ex in examples],
        "scores": [";".join(f"{v:.6f}" for v in s) for s in scores],
    })


def run_completion(model, tokenizer, items: list[Item], opts: EvalOptions, progress, name: str) -> pd.DataFrame:
    """§6.2: greedy tokens at the target positions; correct if all match or the decoded strings
    match after SQuAD normalisation; nll = −Σ log p(target); f1 = unigram F1 of the decoded strings."""
    examples = [it.example for it in items]
    contexts = encode_contexts(tokenizer, [ex.context for ex in examples], opts)
    targets = encode_continuations(tokenizer, [ex.target for ex in examples], opts)
    scored = score_continuations(model, list(zip(contexts, targets)), max_length=opts.max_length,
                                 batch_tokens=opts.batch_tokens, progress=progress, description=f"{name}: scoring")
    rows = []
    for it, s in zip(items, scored):
        predicted, gold = decode(tokenizer, s.greedy).strip(), decode(tokenizer, s.target).strip()
        rows.append({"id": it.id, "nll": s.nll, "tokens": len(s.target),
                     "correct": int(bool(len(s.target)) and lambada_correct(s.greedy, s.target, predicted, gold)),
                     "f1": unigram_f1(predicted, gold), "predicted": predicted, "target": gold})
    return pd.DataFrame(rows)


def run_dialogue(model, tokenizer, items: list[Item], opts: EvalOptions, progress, name: str) -> pd.DataFrame:
    """§6.3: nll and token count of the reply given the prompt (for the token-mean CE), and the
    unigram F1 of a greedy 32-token reply (cut at ``"\nUser "``) against the reply.

    full: the reply is generated from the left-padded prompt (its last tokens, so that prompt and
    reply fit the model), in the same pass that scores the reference reply whenever that pass saw
    exactly this prompt. parity: from the original's right-padded 512-token prompt.
    """
    examples = [it.example for it in items]
    prompts = encode_contexts(tokenizer, [ex.prompt for ex in examples], opts)
    targets = encode_continuations(tokenizer, [ex.target for ex in examples], opts)
    positions = max_positions(model) or opts.max_length + opts.max_new_tokens
    width = max(1, min(opts.max_length, positions - opts.max_new_tokens))  # prompt + reply must fit
    stop = stop_token_ids(model, tokenizer)
    requests = list(zip(prompts, targets))
    scored = score_continuations(model, requests, max_length=opts.max_length, batch_tokens=opts.batch_tokens,
                                 generate=0 if opts.parity else opts.max_new_tokens, stop_ids=stop,
                                 progress=progress, description=f"{name}: loss" + ("" if opts.parity else " + reply"))
    if opts.parity:
        generated = greedy_generate(model, [p[:width] for p in prompts], opts.max_new_tokens, stop_ids=stop,
                                    batch_size=opts.generate_batch_size, right_pad_to=width,
                                    pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                                    progress=progress, description=f"{name}: generating")
    else:
        # the scoring window may have cut the prompt differently (long dialogues): generate those again
        redo = [i for i, ((p, t), s) in enumerate(zip(requests, scored))
                if s.generated is None or window(p, t, opts.max_length)[0] != p[-width:]]
        generated = [s.generated for s in scored]
        again = greedy_generate(model, [prompts[i][-width:] for i in redo], opts.max_new_tokens, stop_ids=stop,
                                batch_size=opts.generate_batch_size, progress=progress,
                                description=f"{name}: generating") if redo else []
        for i, g in zip(redo, again):
            generated[i] = g
    rows = []
    for i, (it, s, gen, tgt) in enumerate(zip(items, scored, generated, targets)):
        reply, gold = cut_at_next_turn(decode(tokenizer, gen)), decode(tokenizer, tgt)
        rows.append({"id": it.id, "nll": s.nll, "tokens": len(s.target), "f1": unigram_f1(reply, gold),
                     "rank": i % opts.parity_ranks if opts.parity else 0, "generated": reply, "target": gold})
    return pd.DataFrame(rows)


def run_perplexity(model, tokenizer, items: list[Item], opts: EvalOptions, progress, name: str) -> pd.DataFrame:
    """§6.4: nll and count of tokens 2..W of each text (its first ``max_length`` tokens, the first
    one given), for the token-mean CE over the whole set."""
    texts = encode_contexts(tokenizer, [it.example.text for it in items], opts)
    texts = [ids[:opts.max_length] for ids in texts]
    scored = score_continuations(model, [(ids[:1], ids[1:]) for ids in texts], max_length=opts.max_length,
                                 batch_tokens=opts.batch_tokens, progress=progress, description=f"{name}: scoring")
    return pd.DataFrame({"id": [it.id for it in items], "nll": [s.nll for s in scored],
                         "tokens": [len(s.target) for s in scored],
                         "rank": [i % opts.parity_ranks if opts.parity else 0 for i in range(len(items))]})


@dataclass(frozen=True)
class Kind:
    """A task kind: its runner and its metrics as ratios of sums of per-example columns."""

    run: Callable[..., pd.DataFrame]
    ratios: dict[str, tuple[str, str | None]]  # metric -> (numerator column, denominator column or None = mean)
    derived: dict[str, Callable[[dict], float]] = field(default_factory=dict)


KIND_REGISTRY: dict[str, Kind] = {
    "choice": Kind(run_choice, {"acc": ("correct", None)}),
    "completion": Kind(run_completion, {"acc": ("correct", None), "loss": ("nll", None), "f1": ("f1", None)}),
    "dialogue": Kind(run_dialogue, {"loss": ("nll", "tokens"), "f1": ("f1", None)}),
    "perplexity": Kind(run_perplexity, {"loss": ("nll", "tokens")}, {"ppl": lambda m: np.exp(m["loss"])}),
}


def kind_metrics(kind: str, examples: pd.DataFrame, mode: str = "full") -> dict[str, float]:
    """A task's metrics from its per-example frame. Token means are rank-averaged in parity mode."""
    spec = KIND_REGISTRY[kind]
    out: dict[str, float] = {}
    for metric, (num, den) in spec.ratios.items():
        if den is not None and mode == "parity" and "rank" in examples:
            out[metric] = rank_mean_ratio(examples[num].to_numpy(), examples[den].to_numpy(), examples["rank"].to_numpy())
        else:
            out[metric] = ratio_of_sums(examples[num].to_numpy(), None if den is None else examples[den].to_numpy())
    for metric, fn in spec.derived.items():
        out[metric] = float(fn(out))
    return out


# ---------------------------------------------------------------- aggregates (§2.8)

AGGREGATES: dict[str, tuple[tuple[str, ...], str]] = {
    "average_acc": (CLASSIFICATION, "acc"),  # lambada is left out, as in the paper's scripts
    "average_f1": (DIALOGUE, "f1"),
    "average_perplexity": (DIALOGUE, "loss"),  # mean dialogue CE in nats, not exp(CE) (§2.8, §8.9)
}


def aggregate(metrics_by_task: dict[str, dict[str, float]]) -> dict[str, dict]:
    """docs/method.md §2.8: average_acc = mean acc of the 8 classification tasks; average_f1 and
    average_perplexity = mean F1 and mean CE (nats) of the 4 dialogue tasks. Computed over the tasks
    present; ``complete`` says whether all of them were."""
    out = {}
    for name, (members, metric) in AGGREGATES.items():
        present = [t for t in members if t in metrics_by_task]
        if present:
            out[name] = {"value": mean_of([metrics_by_task[t][metric] for t in present]), "metric": metric,
                         "tasks": present, "complete": len(present) == len(members)}
    return out


# ---------------------------------------------------------------- the library entry point

def evaluate_utility(model, tokenizer, tasks: str | Sequence[str], data_dir: str | Path | None, mode: str = "full",
                     limit: int | None = None, progress=None, **options) -> dict:
    """Evaluate ``model`` on the utility tasks; see :mod:`unmemorize.utility` for the result format.

    ``tasks``: names or groups ("paper", "classification", "dialogue", "perplexity", "all"), as a list
    or a comma-separated string. ``data_dir``: a folder laid out as docs/data.md describes (None:
    every task from the hub, with ``data_source="hub"``).
    ``options``: the other fields of :class:`EvalOptions` (max_length, batch_tokens, …).
    Every task's data is read and checked before the model runs, so bad input fails fast.
    """
    opts = EvalOptions(mode=mode, limit=limit, **options)
    notes = []
    positions = max_positions(model)
    if positions is not None and opts.max_length > positions:
        notes.append(f"max_length {opts.max_length} cut to the model's {positions} positions")
        opts = opts.replace(max_length=positions)
    names = resolve_tasks(tasks)
    loaded: list[LoadedTask] = [load_task(TASKS[n], data_dir, opts.mode, opts.count, opts.data_source) for n in names]
    was_training = model.training
    model.eval()
    results: dict[str, dict] = {}
    try:
        for lt in loaded:
            t = lt.task
            start = time.perf_counter()
            frame = _run_sharded(KIND_REGISTRY[t.kind].run, model, tokenizer, lt.items, opts, progress, t.name)
            seconds = time.perf_counter() - start
            results[t.name] = {
                "kind": t.kind, "paper_key": t.paper_key, "file": lt.source.where, "split": lt.split,
                "source": lt.source.kind,
                "n": len(frame), "seconds": round(seconds, 3), "metrics": kind_metrics(t.kind, frame, opts.mode),
                "chance": t.chance, "notes": list(lt.notes), "examples": frame,
            }
    finally:
        model.train(was_training)
    return {
        "mode": opts.mode,
        "mode_description": MODE_DESCRIPTIONS[opts.mode] + (f" (N = {opts.count})" if opts.parity else ""),
        "options": opts.model_dump(mode="json"),
        "notes": notes,
        "sources": [{"task": lt.task.name, "source": lt.source.kind, "data": lt.source.where, "split": lt.split,
                     "n": len(lt.items)} for lt in loaded],
        "tasks": results,
        "aggregates": aggregate({n: r["metrics"] for n, r in results.items()}),
        "logged": logged_keys(results),
    }


def _run_sharded(run, model, tokenizer, items: list[Item], opts: EvalOptions, progress, name: str) -> pd.DataFrame:
    """A task's per-example frame; under ``accelerate launch`` each rank runs its shard of the examples.

    The examples are independent, so the frames are put back in order. The parity mode's simulated
    rank of each example (its index modulo the original's number of GPUs) is set afterwards, from
    its index in the whole task, so it does not depend on the number of processes.
    """
    from unmemorize import distributed

    parts = distributed.map_shards(len(items), lambda rows: run(model, tokenizer, [items[i] for i in rows], opts,
                                                                progress, name))
    if len(parts) == 1:
        return parts[0]
    frame = pd.concat(parts, ignore_index=True)
    if "rank" in frame:
        frame["rank"] = np.arange(len(frame)) % opts.parity_ranks if opts.parity else 0
    return frame


def logged_keys(results: dict[str, dict]) -> dict[str, float]:
    """The metrics under the keys the original code logs to W&B, e.g. ``ai2_arc_ARC-Easy/acc``."""
    return {f"{r['paper_key']}/{m}": v for r in results.values() for m, v in r["metrics"].items()
            if not (isinstance(v, float) and math.isnan(v))}
