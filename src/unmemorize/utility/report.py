"""Utility results as files, tables, report sections, and before/after comparisons.

``utility.json`` holds everything but the per-example frames, which go to
``utility_examples.parquet`` (one row per task example, a ``task`` column); :func:`load_utility`
puts them back together (another ``name`` gives e.g. ``utility_before.json``). :func:`compare_utility` gives paired bootstrap intervals for the change
of every metric and aggregate between two results on the same examples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from unmemorize.report.html import Section
from unmemorize.runs import write_frame, write_json
from unmemorize.stats import percentile_interval
from unmemorize.utility.suite import AGGREGATES, KIND_REGISTRY

METRIC_COLUMNS = ("acc", "f1", "loss", "ppl")


def utility_json(result: dict) -> dict:
    """The result without its per-example frames (what goes into ``utility.json``)."""
    out = {k: v for k, v in result.items() if k != "tasks"}
    out["tasks"] = {name: {k: v for k, v in r.items() if k != "examples"} for name, r in result["tasks"].items()}
    return out


def save_utility(result: dict, folder: str | Path, name: str = "utility") -> None:
    """Write ``<name>.json`` and ``<name>_examples.parquet`` (+ .csv) into ``folder``
    (e.g. ``name="utility_before"`` for the evaluation before unlearning)."""
    folder = Path(folder)
    write_json(folder / f"{name}.json", utility_json(result))
    frames = [r["examples"].assign(task=task) for task, r in result["tasks"].items() if "examples" in r]
    if frames:
        df = pd.concat(frames, ignore_index=True)
        write_frame(folder / f"{name}_examples", df[["task", *[c for c in df.columns if c != "task"]]])


def load_utility(folder: str | Path, name: str = "utility") -> dict:
    """Read back what :func:`save_utility` wrote, per-example frames included when present."""
    folder = Path(folder)
    result = json.loads((folder / f"{name}.json").read_text())
    parquet = folder / f"{name}_examples.parquet"
    if parquet.is_file():
        df = pd.read_parquet(parquet)
        for task, frame in df.groupby("task", sort=False):
            if task in result["tasks"]:
                result["tasks"][task]["examples"] = (frame.drop(columns="task").dropna(axis=1, how="all")
                                                     .reset_index(drop=True))
    return result


def summary_frame(result: dict) -> pd.DataFrame:
    """One row per task: n, its metrics (acc, f1, loss, ppl where defined), chance level, seconds."""
    rows = []
    for name, r in result["tasks"].items():
        row = {"task": name, "kind": r["kind"], "split": r["split"], "n": r["n"]}
        row.update({m: r["metrics"].get(m, np.nan) for m in METRIC_COLUMNS})
        row["chance"] = np.nan if r.get("chance") is None else r["chance"]
        row["seconds"] = r["seconds"]
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.dropna(axis=1, how="all") if len(df) else df


def sources_frame(result: dict) -> pd.DataFrame:
    """One row per task: where its rows came from (local: the data folder's file; hub: the dataset
    through ``datasets``), the split and the number of examples scored."""
    return pd.DataFrame(result.get("sources") or [], columns=["task", "source", "data", "split", "n"])


def aggregates_frame(result: dict) -> pd.DataFrame:
    return pd.DataFrame([{"aggregate": name, "value": a["value"], "metric": a["metric"], "tasks": len(a["tasks"]),
                          "complete": "yes" if a["complete"] else "no"} for name, a in result["aggregates"].items()])


def utility_tables(result: dict | None, harness: dict | None = None) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) pairs for a terminal: tasks, aggregates, lm-eval tasks."""
    out = []
    if result is not None:
        df = summary_frame(result)
        out.append((f"Utility — {result['mode']} mode", df.drop(columns=[c for c in ("kind", "split") if c in df])))
        agg = aggregates_frame(result)
        if len(agg):
            out.append(("Aggregates (docs/method.md §2.8)", agg))
        sources = sources_frame(result)
        if len(sources):
            out.append(("Data sources", sources))
    if harness is not None:
        out.append((f"lm-evaluation-harness {harness['lm_eval']}",
                     pd.DataFrame([{"task": t, "n": h["n"], "metric": m, "value": v}
                                   for t, h in harness["tasks"].items() for m, v in h["metrics"].items()])))
    return out


# ---------------------------------------------------------------- paired bootstrap

def _replicates(num: np.ndarray, den: np.ndarray | None, idx: np.ndarray) -> np.ndarray:
    """The ratio of sums on each bootstrap resample (rows of ``idx``)."""
    top = num[idx].sum(1)
    bottom = den[idx].sum(1) if den is not None else np.full(len(idx), idx.shape[1], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return top / bottom


def _column(frame: pd.DataFrame, name: str | None) -> np.ndarray | None:
    return None if name is None else frame[name].to_numpy(dtype=np.float64)


def _task_deltas(kind: str, before: pd.DataFrame, after: pd.DataFrame, n_boot: int,
                 rng: np.random.Generator) -> tuple[dict[str, np.ndarray], int]:
    """Bootstrap replicates of after − before for every metric of one task, resampling the examples
    both results share (paired by id)."""
    b, a = before.set_index("id"), after.set_index("id")
    common = b.index[b.index.isin(a.index)]
    if len(common) == 0:
        return {}, 0
    b, a = b.loc[common], a.loc[common]
    spec = KIND_REGISTRY[kind]
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {m: [] for m in spec.ratios}
    for start in range(0, n_boot, 200):  # 200 resamples at a time bounds the index matrix
        idx = rng.integers(0, len(common), size=(min(200, n_boot - start), len(common)))
        for metric, (num, den) in spec.ratios.items():
            parts[metric].append((_replicates(_column(b, num), _column(b, den), idx),
                                  _replicates(_column(a, num), _column(a, den), idx)))
    before_reps = {m: np.concatenate([p[0] for p in v]) for m, v in parts.items()}
    after_reps = {m: np.concatenate([p[1] for p in v]) for m, v in parts.items()}
    for metric, fn in spec.derived.items():
        before_reps[metric], after_reps[metric] = fn(before_reps), fn(after_reps)
    return {m: after_reps[m] - before_reps[m] for m in before_reps}, len(common)


def compare_utility(before: dict, after: dict, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Change of every task metric and §2.8 aggregate from ``before`` to ``after``, with a paired
    percentile-bootstrap interval: examples are resampled with replacement (the same resample for
    both results, matched by id) and each metric recomputed as its ratio of sums. Aggregates
    resample every task independently and average the per-task changes. Intervals need the
    per-example frames; without them they are NaN. In parity mode the point values are
    rank-averaged token means, the intervals plain token means."""
    rng = np.random.default_rng(seed)
    rows, deltas = [], {}
    for name, rb in before["tasks"].items():
        ra = after["tasks"].get(name)
        if ra is None:
            continue
        reps, n = ({}, 0)
        if "examples" in rb and "examples" in ra:
            reps, n = _task_deltas(rb["kind"], rb["examples"], ra["examples"], n_boot, rng)
        deltas[name] = reps
        for metric, vb in rb["metrics"].items():
            va = ra["metrics"].get(metric, np.nan)
            r = reps.get(metric)
            lo, hi = percentile_interval(r, level, omit_nan=True) if r is not None else (np.nan, np.nan)
            rows.append({"task": name, "metric": metric, "before": vb, "after": va, "change": va - vb,
                         "ci_low": lo, "ci_high": hi, "paired": n})
    for agg, (members, metric) in AGGREGATES.items():
        if agg not in before.get("aggregates", {}) or agg not in after.get("aggregates", {}):
            continue
        vb, va = before["aggregates"][agg]["value"], after["aggregates"][agg]["value"]
        present = [t for t in members if t in deltas]
        reps = [deltas[t].get(metric) for t in present]
        ci = (np.nan, np.nan)
        if present and all(r is not None for r in reps):
            mean = np.mean(np.stack(reps), axis=0)
            ci = percentile_interval(mean, level, omit_nan=True)
        rows.append({"task": agg, "metric": metric, "before": vb, "after": va, "change": va - vb,
                     "ci_low": ci[0], "ci_high": ci[1], "paired": len(present)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- report sections

def utility_sections(result: dict, before: dict | None = None, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> list[Section]:
    """Report sections for a utility result; with ``before``, also the before → after changes."""
    notes = [f"{name}: {note}" for name, r in result["tasks"].items() for note in r.get("notes", [])]
    text = (f"Mode — {result['mode_description']}.\n\n"
            "Classification accuracy: the choice with the smallest summed negative log-likelihood wins "
            "(docs/method.md §6.1). LAMBADA loss is the summed NLL of the last word; dialogue and perplexity "
            "losses are token-mean cross-entropies in nats; ppl = exp(loss). average_perplexity is the "
            "paper's name for the mean dialogue CE (nats), not exp(CE) (§2.8).")
    if notes:
        text += "\n\nNotes: " + "; ".join(notes) + "."
    tables = [("Per task", summary_frame(result)), ("Aggregates (docs/method.md §2.8)", aggregates_frame(result))]
    sources = sources_frame(result)
    if len(sources):
        tables.append(("Data sources (local: the data folder; hub: the datasets library's cache or a download)",
                       sources))
    sections = [Section(f"Utility ({result['mode']} mode)", text, tables=tables)]
    if before is not None:
        sections.append(Section(
            "Utility before and after",
            f"change = after − before; {100 * level:g}% paired percentile-bootstrap interval over the examples "
            f"both runs scored ({n_boot} resamples, seed {seed}).",
            tables=[("", compare_utility(before, result, n_boot=n_boot, seed=seed, level=level))]))
    return sections
