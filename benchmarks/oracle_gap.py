"""How far is each method from a model that never saw the forget set? (the retrain oracle)

    .venv/bin/python benchmarks/oracle_gap.py [--splits 0,1,2] [--members 32] [--forget 16]
        [--exposures 1,2,4,8,16]
        [--runs ga:mean,sga:mean,sga:per-sequence,tau:mean,npo:per-sequence,target,target-ref,target-retain]
        [--band tau-0.15,tau+0.3] [--max-steps 150] [--nonmembers 100] [--neighbours 5]
        [--attacks miau,threshold,loss,zlib,min-k,min-k++,reference] [--utility-tasks classification --utility-limit 32]

For split k the first ``--members`` sequences of Jang's ``lm_extraction_32_k`` are planted into the
default model at exposures spread over them; ``--forget`` of them (spread over the exposures) are the
forget set F, the others the retain members R. The lab plants the retrain oracle beside (same base,
seed, stream and steps, F's rows replaced by ordinary text). Non-members: unplanted Jang sequences of
the same form (matched to the members' kinds of text by the attacks). τ = the planted model's mean MA
on them. Then every listed run (method:stop; ``target`` stops by its own rule, and ``target-ref`` is
``target`` with each sequence's level from the model before planting, ``--target-rule reference-model``;
``target-retain`` is ``target`` whose retain term reads the retain members R instead of model samples,
``target-ref-retain`` both; ``-mix`` in place of ``-retain`` reads R and as many rows of unseen Pile text
(``eval/pile.csv``, never planted, not the non-members); ``-mem`` appended ascends only the tokens the model before planting does not
predict (``--tokens memorized``, with ``-ref``); any of them with ``-npo`` appended moves a sequence down by NPO instead of gradient ascent, and with
``-rW`` appended, e.g. ``target-ref-r4`` or ``target-ref-npo-r4``, weighs its retain term W instead of 1)
unlearns F from the planted model through the library's recipe, with the constants relative to τ
(docs/method.md §4.13) and the oracle given (it judges; no method sees it): each run records, against the oracle, the per-sequence |MA − MA_oracle|,
the KS forget quality, each attack's AUC gap (paired bootstrap), the retain members' MA and the
unseen text's MA, and with ``--utility-tasks`` the paper's average accuracy beside the planted model's and the
oracle's. Each finished run is appended to ``benchmarks/results/oracle_gap_runs.jsonl`` (and
skipped when the script runs again with the same settings); the RESULTS.md section is rewritten from
every run recorded with the current settings, its sentences computed from them. A run at another MIAU K
(``--neighbours 25``, the paper's) writes a section of its own beside the main one (K = 5), each of its runs set
beside the same run at K = 5.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
import torch

from benchmarks.common import (RESULTS_DIR, RUNS, RunStore, data, fmt, paired_caveat, pairs_at_k, split_list,
                               t_interval, run_splits, unlearning_run, unplanted_jang, write_section)
from unmemorize.stats import paired_difference

STORE = RunStore(RESULTS_DIR / "oracle_gap_runs.jsonl")
TITLE = "Oracle gap: each method against the model that never saw the forget set"
NEIGHBOURS = 5  # MIAU's K of the main section; runs at another K (the paper's 25) get a section of their own


def section_title(args) -> str:
    """The main section holds the runs at K = NEIGHBOURS; a rerun at another K writes beside it, never over it."""
    return TITLE if args.neighbours == NEIGHBOURS else f"{TITLE}, MIAU K = {args.neighbours}"


def settings_key(args) -> dict:
    return {"members": args.members, "forget": args.forget, "exposures": args.exposures, "max_steps": args.max_steps,
            "nonmembers": args.nonmembers, "lr": args.lr, "micro_batch": args.micro_batch, "seed": args.seed,
            "attacks": args.attacks, "neighbours": args.neighbours, "bootstrap": args.bootstrap, "band": args.band}


def lab(split: int, args, log, progress=None):
    """The planted model and its oracle for one split (cached by every input): (folder, forget file, manifest)."""
    from unmemorize.lab.plant import plant_into, spread_forget
    from unmemorize.models import cache_dir, load_model

    src = pd.read_csv(data("forget", f"lm_extraction_32_{split}.csv"), dtype=str, keep_default_na=False)
    members = src.head(args.members)
    folder = cache_dir() / "labs" / f"oracle-gap-32_{split}-m{args.members}-e{args.exposures.replace(',', '_')}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    members_file = folder.parent / f"{folder.name}.members.csv"
    members.to_csv(members_file, index=False)
    exposures = tuple(split_list(args.exposures, int))
    forget = spread_forget(list(members["doc_id"]), exposures, args.forget, args.seed)
    forget_file = folder.parent / f"{folder.name}.forget{args.forget}.csv"
    members[members["doc_id"].isin(forget)].to_csv(forget_file, index=False)
    # R = M \ F: the members the user keeps (a method may train on them; only the oracle is off limits)
    retain = members[~members["doc_id"].isin(forget)]
    retain.to_csv(retain_file(folder, args), index=False)
    # R plus as many rows of unseen Pile text (never planted, not the non-members the runs are judged on): the
    # retain text of the -mix variants, ordinary text beside the members the user keeps
    pile = pd.read_csv(data("eval", "pile.csv"), dtype=str, keep_default_na=False).head(len(retain))
    pile = pile.assign(doc_id="pile-" + pile["doc_id"])[list(retain.columns)]
    pd.concat([retain, pile], ignore_index=True).to_csv(mix_file(folder, args), index=False)
    lm = load_model("default", log=log)
    folder, manifest = plant_into(lm, members_file, exposures, folder, forget=forget, seed=args.seed, log=log,
                                  progress=progress)
    return folder, forget_file, manifest


def utility_settings(args) -> dict | None:
    """The utility tasks every run of this invocation measures (None: none), as the run spec takes them."""
    return {"tasks": list(args.utility_tasks), "limit": args.utility_limit} if args.utility_tasks else None


def utility_delta(row: dict, settings: dict | None, of: str = "after", against: str = "before",
                  name: str = "average_acc") -> float:
    """``of`` − ``against`` of one utility aggregate, in points; each is "before" (the planted model), "after"
    (the unlearned one) or "oracle". NaN where the row was not measured under ``settings``."""
    u = row.get("utility")
    if not settings or not isinstance(u, dict) or u.get("settings") != settings:
        return float("nan")
    value, base = u[of].get(name), u[against].get(name)
    return float("nan") if value is None or base is None else 100 * (value - base)


def target_variant(method: str) -> tuple[str, dict | None]:
    """``target-ref-npo-r4`` → (``target-ref``, {"loss": "npo", "retain_weight": 4.0}): a target run with NPO as the
    loss that moves a sequence down and its retain term weighed 4; (method, None) for any other method. The base
    keeps where the levels come from (``-ref``) and what the retain term reads (``-retain``: the retain members;
    ``-mix``: those and as many rows of unseen Pile text), in that order."""
    m = re.fullmatch(r"(target(?:-ref)?(?:-retain|-mix)?)(-mem)?(-npo)?(?:-r(\d+(?:\.\d+)?))?", method)
    if not m:
        return method, None
    overrides = {**({"tokens": "memorized"} if m.group(2) else {}), **({"loss": "npo"} if m.group(3) else {}),
                 **({"retain_weight": float(m.group(4))} if m.group(4) else {})}
    return m.group(1), overrides


def target_inputs(base: str, folder: Path, args) -> dict:
    """What a target base adds to the run: each sequence's level from the model before planting (``-ref``), the
    retain members R as the retain term's text (``-retain``), R and unseen Pile text (``-mix``); levels and retain
    text both for ``target-ref-retain``."""
    parts = base.split("-")[1:] if base.startswith("target") else []
    text = retain_file(folder, args) if "retain" in parts else mix_file(folder, args) if "mix" in parts else None
    return {**({"target_rule": "reference-model", "target_model": "default"} if "ref" in parts else {}),
            **({"retain": str(text)} if text else {})}


def retain_file(folder: Path, args) -> Path:
    return folder.parent / f"{folder.name}.retain{args.forget}.csv"


def mix_file(folder: Path, args) -> Path:
    return folder.parent / f"{folder.name}.mix{args.forget}.csv"


def row_of(r, split: int, key: dict, wall: float, utility: dict | None = None) -> dict:
    """The benchmark's row of one run, from its typed record."""
    o, u = r.oracle, r.unlearning
    return {"split": split, "method": r.labels.method, "stop": r.labels.stop, "settings": key, "tau": r.tau,
            "steps": u.steps, "converged": u.converged, "stop_reason": u.stop_reason, "seconds": u.seconds,
            "c": u.after.c, "c_low": u.after.c_low, "c_high": u.after.c_high, "oracle_c": o.oracle_c,
            "mean_ma": u.after.mean,
            "mean_ma_before": u.before.mean, "oracle_ma": o.ma_oracle_mean, "ma_gap": o.ma_gap.value,
            "ma_gap_max": o.ma_gap_max, "within": o.within_tolerance, "ks_p": o.forget_quality_p,
            "attacks": {n: {"auc": a.auc, "oracle_auc": a.oracle_auc, "gap": a.gap.value, "low": a.gap.low,
                            "high": a.gap.high, "indistinguishable": a.indistinguishable}
                        for n, a in o.attacks.items()},
            "retain_before": o.retain_ma_before, "retain_after": o.retain_ma_after, "retain_oracle": o.retain_ma_oracle,
            "unseen_before": r.reference_ma_before, "unseen_after": r.reference_ma_after,
            "unseen_oracle": o.reference_ma_oracle, "verdicts": o.verdicts, "wall_seconds": wall,
            **({"utility": utility_of(r, utility)} if utility else {})}


def utility_of(r, settings: dict) -> dict:
    """The paper's utility aggregates of the planted model, the unlearned model and the oracle (same tasks and
    examples), with the settings they ran under: rows of other settings never share a column."""
    u, o = r.utility, r.oracle.utility
    return {"settings": settings, "before": u.before.aggregates if u.before else {},
            "after": u.after.aggregates if u.after else {}, "oracle": o.aggregates if o else {}}


def run_split(split: int, args, done: list[dict], progress=None) -> None:
    from unmemorize.recipe import Resources

    key = settings_key(args)
    todo = [(m, s) for m, s in args.runs
            if not any(r["split"] == split and r["method"] == m and r["stop"] == s for r in done)]
    if not todo:
        print(f"split {split}: every run already recorded", flush=True)
        return
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    folder, forget_file, manifest = lab(split, args, log, progress)
    nonmembers = unplanted_jang(split, set(manifest["exposure"]), args.nonmembers, "oracle-gap")
    # the planted model, its oracle and what they show, shared by the split's runs
    resources = Resources(log=log, progress=progress)
    # MIAU's neighbours as every recorded run made them (the sequential lm refill; the library's default is now
    # lm-independent): runs added later stay comparable with the recorded ones
    attacks = {"names": args.attacks, "neighbours": args.neighbours, "perturber": "lm", "bootstrap": args.bootstrap,
               "batch_size": args.micro_batch}
    utility = utility_settings(args)
    for method, stop in todo:
        t = time.perf_counter()
        base, overrides = target_variant(method)
        extra = target_inputs(base, folder, args)
        spec = method if overrides is None else {"name": "target", **overrides} if overrides else "target"
        r, _ = unlearning_run(resources, folder, forget_file, nonmembers, RUNS / "oracle_gap" / f"split{split}" /
                              f"{method}-{stop}", method=spec,
                              stop=stop, seed=args.seed, lr=args.lr, max_steps=args.max_steps,
                              micro_batch=args.micro_batch, band=tuple(args.band), **extra,
                              attacks={**attacks, "before": False}, oracle=str(folder / "oracle"),
                              **({"utility": {**utility, "data_dir": str(data("eval"))}} if utility else {}))
        STORE.append({**row_of(r, split, key, time.perf_counter() - t, utility), "method": method, "stop": stop})
        print(f"split {split} {method:>4} {stop:>12}: |MA − oracle| {r.oracle.ma_gap.value:.3f}, KS p "
              f"{r.oracle.forget_quality_p:.3g}, c {r.unlearning.after.c}, {r.unlearning.steps} steps", flush=True)


# ---------------------------------------------------------------- the RESULTS.md section


def _cell(values, digits: int = 3) -> str:
    return fmt(*t_interval(values), digits)


def table(df: pd.DataFrame, attacks: list[str], utility: dict | None = None) -> str:
    """One row per (method, stop) (a pipe inside a header is escaped, or Markdown splits the cell); the utility
    columns (average accuracy after − before and after − oracle, points) only when ``utility`` settings are given,
    a cell over the runs measured under them."""
    head = ["method", "stop", "splits", "c(D_f)", "oracle's c(D_f)", r"mean \|MA − oracle\|", r"max \|MA − oracle\|",
            "MA − oracle's", "KS p",
            *[f"{a} AUC gap" for a in attacks], "retain MA drop", "unseen MA drop",
            *(["acc Δ (runs)", "acc − oracle's"] if utility else []), "steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (method, stop), g in df.groupby(["method", "stop"], sort=False):
        cells = [method, stop, str(len(g)), _cell(g["c"], 1), _cell(g.get("oracle_c", [np.nan]), 1), _cell(g["ma_gap"]),
                 _cell(g["ma_gap_max"]), _cell(signed_gap(g)), _cell(g["ks_p"])]
        cells += [_cell([a.get(n, {}).get("gap", np.nan) for a in g["attacks"]]) for n in attacks]
        cells += [_cell(g["retain_before"] - g["retain_after"]), _cell(g["unseen_before"] - g["unseen_after"])]
        if utility:
            delta = [utility_delta(row, utility) for row in g.to_dict("records")]
            measured = int(np.isfinite(delta).sum())
            cells += [_cell(delta, 1) + (f" ({measured})" if measured else ""),
                      _cell([utility_delta(row, utility, against="oracle") for row in g.to_dict("records")], 1)]
        cells += [_cell(g["steps"], 1) + ("" if g["converged"].all() else f" ({int((~g['converged']).sum())} at the cap)")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def utility_reading(df: pd.DataFrame, utility: dict | None) -> list[str]:
    """Average accuracy after − before per method, beside how far the oracle itself lies from the planted model
    (a model trained on the same stream without F: the size of a difference that means nothing)."""
    if not utility:
        return []
    rows = [r for r in df.to_dict("records") if np.isfinite(utility_delta(r, utility))]
    if not rows:
        return [f"Utility ({', '.join(utility['tasks'])}, first {utility['limit']} examples): no run recorded it yet."]
    per = {}
    for r in rows:
        per.setdefault((r["method"], r["stop"]), []).append(utility_delta(r, utility))
    oracle = {r["split"]: utility_delta(r, utility, "oracle") for r in rows}  # oracle − planted, points
    scale = max(abs(v) for v in oracle.values())
    within = [f"{m} ({s})" for (m, s), v in per.items() if abs(np.mean(v)) <= scale]
    return ["Utility, average accuracy after − before (points; "
            f"{', '.join(utility['tasks'])}, first {utility['limit']} examples each, the same examples on every model): "
            + ", ".join(f"{m} ({s}) {np.mean(v):+.1f} over {len(v)} run{'s' * (len(v) > 1)}" for (m, s), v in per.items())
            + "; the oracle, trained on the same stream without the forget set, against the planted model: "
            + ", ".join(f"{v:+.1f} (split {k})" for k, v in sorted(oracle.items()))
            + f". Within that distance (|Δ| ≤ {scale:.1f}): " + (", ".join(within) if within else "none") + "."]


def signed_gap(df: pd.DataFrame) -> pd.Series:
    """Each run's forget-set mean MA minus the oracle's on the same sequences: above 0 the run forgot too little,
    below 0 too much (the absolute per-sequence gap cannot tell which)."""
    if "mean_ma" not in df or "oracle_ma" not in df:
        return pd.Series(np.nan, index=df.index)
    return df["mean_ma"] - df["oracle_ma"]


def direction(df: pd.DataFrame) -> str:
    """Which methods end above the oracle's level on average (forgot too little) and which below (too much)."""
    by = signed_gap(df).groupby([df["method"], df["stop"]], sort=False).mean().dropna()
    if by.empty:
        return ""
    above = [f"{m} ({s}) {v:+.3f}" for (m, s), v in by.sort_values(ascending=False).items() if v > 0]
    below = [f"{m} ({s}) {v:+.3f}" for (m, s), v in by.sort_values().items() if v <= 0]
    return ("Forget-set mean MA − the oracle's, averaged over splits: above it (forgot too little) "
            + (", ".join(above) if above else "none") + "; at or below it (forgot as much or more) "
            + (", ".join(below) if below else "none") + ".")


def reading(df: pd.DataFrame, attacks: list[str]) -> list[str]:
    """What the runs say, computed from them: who lands closest to the oracle, paired over splits."""
    out = []
    by = df.groupby(["method", "stop"], sort=False)
    # ranked among the methods run on the most splits: a one-split mean is not comparable with a three-split one
    # (and could not be paired with the others below)
    n = by["split"].nunique()
    gap = by["ma_gap"].mean()[n == n.max()].sort_values()
    (best_m, best_s), best = gap.index[0], gap.iloc[0]
    out.append(f"Closest to the oracle per sequence, among the runs on {n.max()} split{'s' if n.max() > 1 else ''}: "
               f"{best_m} ({best_s} rule), mean |MA − MA_oracle| {best:.3f}; "
               "farthest: " + f"{gap.index[-1][0]} ({gap.index[-1][1]}) {gap.iloc[-1]:.3f}.")
    if fewer := [f"{m} ({s}) {v:.3f} ({n[(m, s)]} split{'s' if n[(m, s)] > 1 else ''})"
                 for (m, s), v in by["ma_gap"].mean()[n < n.max()].items()]:
        out.append("On fewer splits, not ranked: " + ", ".join(fewer) + ".")
    if line := direction(df):
        out.append(line)
    for (m, s), g in by:
        if len(g) < 1:
            continue
        splits = sorted(g["split"])
        other = df[(df["method"] == best_m) & (df["stop"] == best_s)].set_index("split")["ma_gap"]
        mine = g.set_index("split")["ma_gap"]
        both = [k for k in splits if k in other.index]
        if (m, s) != (best_m, best_s) and len(both) >= 2:
            d = paired_difference([float(mine[k] - other[k]) for k in both])
            out.append(f"{m} ({s}) − {best_m} ({best_s}), mean |MA − oracle|: {d.mean:+.3f}" + paired_caveat(d, "gap", 3)
                       + ".")
    ks = df.groupby(["method", "stop"], sort=False)["ks_p"].apply(lambda v: int((v >= 0.05).sum()))
    out.append("Losses on the forget set indistinguishable from the oracle's (KS p ≥ 0.05): "
               + ", ".join(f"{m} ({s}) in {n} of {len(df[(df['method'] == m) & (df['stop'] == s)])}"
                           for (m, s), n in ks.items()) + ".")
    for a in attacks:
        indist = df.groupby(["method", "stop"], sort=False)["attacks"].apply(
            lambda col: sum(bool(x.get(a, {}).get("indistinguishable")) for x in col))
        out.append(f"{a}: AUC interval of the gap to the oracle holds 0 in "
                   + ", ".join(f"{m} ({s}) {n}/{len(df[(df['method'] == m) & (df['stop'] == s)])}"
                               for (m, s), n in indist.items()) + " runs.")
    if "oracle_c" in df and df["oracle_c"].notna().any():
        oc = df.dropna(subset=["oracle_c"]).drop_duplicates("split").sort_values("split")
        zero = df.groupby(["method", "stop"], sort=False)["c"].apply(lambda v: int((v == 0).sum()))
        each = ", ".join(f"{int(c)} (split {k})" for k, c in zip(oc["split"], oc["oracle_c"]))
        out.append(f"The oracle itself leaves {each}"
                   + " of the forget set outside the band: a never-seen sequence can sit there, so c(D_f) = 0 and the "
                   "oracle's level are different aims. c(D_f) = 0 in "
                   + ", ".join(f"{m} ({s}) {n}/{len(df[(df['method'] == m) & (df['stop'] == s)])}" for (m, s), n in zero.items())
                   + " runs.")
    drop = (df["retain_before"] - df["retain_after"]).groupby([df["method"], df["stop"]], sort=False).mean()
    out.append("Retain members' MA drop (points): " + ", ".join(f"{m} ({s}) {100 * v:.1f}" for (m, s), v in drop.items())
               + f"; the oracle's retain MA is {100 * df['retain_oracle'].mean():.1f} vs the planted model's "
                 f"{100 * df['retain_before'].mean():.1f}.")
    return out


def k_comparison(df: pd.DataFrame, key: dict, recorded: list[dict]) -> list[str]:
    """Each run at another MIAU K beside the run of the same split and method at K = NEIGHBOURS: MIAU's AUC gap to
    the oracle at both K, and whether what K cannot change (the unlearning, so |MA − oracle|, and the attacks
    without neighbours) came out the same, which says the rerun repeated the run."""
    out = []
    for r, o in pairs_at_k(df.to_dict("records"), key, recorded, ("split", "method", "stop"), NEIGHBOURS):
        a, b = r["attacks"]["miau"], o["attacks"]["miau"]
        rest = [n for n in r["attacks"] if n != "miau" and n in o["attacks"]]
        moved = max([abs(r["attacks"][n]["auc"] - o["attacks"][n]["auc"]) for n in rest]
                    + [abs(r["ma_gap"] - o["ma_gap"])], default=0.0)
        same_run = (f"the unlearning and the attacks without neighbours came out the same as at K = {NEIGHBOURS}"
                    if moved < 1e-9 else
                    f"|MA − oracle| and the attacks without neighbours came out within {moved:.1g} of the K = "
                    f"{NEIGHBOURS} run" if moved < 5e-3 else
                    f"|MA − oracle| and the attacks without neighbours moved by up to {moved:.3f} from the K = "
                    f"{NEIGHBOURS} run (the unlearning did not repeat)")
        out.append(f"Split {r['split']}, {r['method']} ({r['stop']}): MIAU AUC {a['auc']:.3f} vs the oracle's "
                   f"{a['oracle_auc']:.3f}, gap {a['gap']:+.3f} [{a['low']:+.3f}, {a['high']:+.3f}] at K = "
                   f"{r['settings']['neighbours']}; at K = {NEIGHBOURS} {b['auc']:.3f} vs {b['oracle_auc']:.3f}, gap "
                   f"{b['gap']:+.3f} [{b['low']:+.3f}, {b['high']:+.3f}]; {same_run}.")
    return out


def k_summary(df: pd.DataFrame, key: dict, recorded: list[dict]) -> list[str]:
    """Over the splits run at both K: the oracle's MIAU AUC at each K, and for each method MIAU's mean gap to the
    oracle at each K with the number of splits whose bootstrap interval of the gap holds 0, so that a verdict
    (forgot like the oracle or not, by MIAU) can be read across splits, not one split at a time."""
    pairs = pairs_at_k(df.to_dict("records"), key, recorded, ("split", "method", "stop"), NEIGHBOURS)
    if not pairs:
        return []
    k = key["neighbours"]

    def holds(a: dict) -> bool:  # the flag recorded with the gap (its interval holds 0), as reading() counts it
        return bool(a.get("indistinguishable"))

    oracle = {r["split"]: (r["attacks"]["miau"]["oracle_auc"], o["attacks"]["miau"]["oracle_auc"]) for r, o in pairs}
    out = [f"The oracle's MIAU AUC at K = {k} vs K = {NEIGHBOURS}: "
           + ", ".join(f"split {s} {a:.3f} vs {b:.3f}" for s, (a, b) in sorted(oracle.items())) + "."]
    runs: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    for r, o in pairs:
        runs.setdefault((r["method"], r["stop"]), []).append((r["attacks"]["miau"], o["attacks"]["miau"]))
    out.append(f"MIAU's gap to the oracle, mean over the splits run at both K, at K = {k} vs K = {NEIGHBOURS} (splits "
               "whose interval holds 0): "
               + ", ".join(f"{m} ({s}) {np.mean([a['gap'] for a, _ in v]):+.3f} ({sum(map(holds, (a for a, _ in v)))}"
                           f"/{len(v)}) vs {np.mean([b['gap'] for _, b in v]):+.3f} "
                           f"({sum(map(holds, (b for _, b in v)))}/{len(v)})" for (m, s), v in runs.items()) + ".")
    return out


def recorded_utility(rows: list[dict]) -> dict | None:
    """The utility settings of the runs recorded last with utility (the table's columns; None: no run had it)."""
    return next((r["utility"]["settings"] for r in reversed(rows) if isinstance(r.get("utility"), dict)), None)


def utility_setup(utility: dict | None) -> str:
    if not utility:
        return ""
    return ("\nUtility: the paper's average accuracy over the tasks " + ", ".join(utility["tasks"]) + f" (first "
            f"{utility['limit']} examples each, full mode) on the planted model, each unlearned model and the oracle; "
            "acc Δ = after − before, acc − oracle's = after − oracle, in points; runs recorded without it show –.")


def write_results(args) -> None:
    rows = STORE.rows(settings_key(args))
    if not rows:
        return
    df = pd.DataFrame(rows)
    splits = sorted(df["split"].unique())
    recorded = list(dict.fromkeys(zip(df["method"], df["stop"])))  # every run in the table, whichever --runs ran last
    utility = recorded_utility(rows)
    cmd = (f"benchmarks/oracle_gap.py --splits {','.join(map(str, splits))} --members {args.members} --forget "
           f"{args.forget} --exposures {args.exposures} --runs {','.join(f'{m}:{s}' for m, s in recorded)} "
           f"--band {','.join(args.band)} --max-steps {args.max_steps} --nonmembers {args.nonmembers} --neighbours "
           f"{args.neighbours} --attacks {','.join(args.attacks)}"
           + (f" --utility-tasks {','.join(utility['tasks'])} --utility-limit {utility['limit']}" if utility else ""))
    start = df.drop_duplicates("split")
    k_lines = []
    if args.neighbours != NEIGHBOURS:
        every = STORE.rows()  # read once: the K = 5 partners of both readings
        k_lines = k_summary(df, settings_key(args), every) + k_comparison(df, settings_key(args), every)
    body = f"""Command: `.venv/bin/python {cmd}` (CPU, {torch.get_num_threads()} threads).

Setup: SmolLM2-135M-Instruct with the first {args.members} sequences of Jang's `lm_extraction_32_k` planted at
exposures {args.exposures}; {args.forget} of them (spread over the exposures) are the forget set, the others the
retain members; the retrain oracle is planted beside without the forget set (same base, seed, stream, steps).
Non-members: {args.nonmembers} unplanted Jang sequences, matched to the members' kinds of text by the attacks.
Harness: lr {args.lr:g}, at most {args.max_steps} steps, micro-batch {args.micro_batch}; MIAU K = {args.neighbours},
refilled by the oracle. Splits run: {', '.join(map(str, splits))}. Cells: mean ± 95 % t-interval over the splits
(one split: no interval); AUC gap = AUC on the unlearned model − AUC on the oracle (same members, non-members,
neighbours); MA − oracle's = the forget set's mean MA after − the oracle's (above 0: forgot too little,
below: too much); drops are before − after, MA fractions.{utility_setup(utility)}

Where each split started: planted forget-set MA {', '.join(f'{v:.3f}' for v in start['mean_ma_before'])}, the
oracle's on the same sequences {', '.join(f'{v:.3f}' for v in start['oracle_ma'])}; τ {', '.join(f'{v:.3f}' for v in start['tau'])}.

{table(df, args.attacks, utility)}

What the runs say (computed by the script):

{chr(10).join('- ' + line for line in reading(df, args.attacks) + utility_reading(df, utility) + k_lines)}
"""
    write_section(section_title(args), body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="0,1,2")
    ap.add_argument("--members", type=int, default=32)
    ap.add_argument("--forget", type=int, default=16)
    ap.add_argument("--exposures", default="1,2,4,8,16")
    ap.add_argument("--runs", default="ga:mean,sga:mean,sga:per-sequence,tau:mean,npo:per-sequence,"
                                      "target,target-ref,target-retain",
                    help="method:stop pairs; target, target-ref and target-retain stop by their own rule")
    ap.add_argument("--band", default="tau-0.15,tau+0.3", help="the band's ends, numbers or relative to τ")
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--nonmembers", type=int, default=100)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--attacks", default="miau,threshold,loss,zlib,min-k,min-k++,reference")
    ap.add_argument("--neighbours", type=int, default=NEIGHBOURS)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--utility-tasks", default="", help="utility tasks or groups measured on the planted model, "
                    "each unlearned model and the oracle (e.g. classification; none by default: minutes per model)")
    ap.add_argument("--utility-limit", type=int, default=32, help="first N examples of each utility task")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from the recorded runs")
    args = ap.parse_args()
    args.attacks, args.band, args.utility_tasks = split_list(args.attacks), split_list(args.band), split_list(
        args.utility_tasks)
    args.runs = [(r.split(":")[0], "target" if r.startswith("target") else (r.split(":") + ["mean"])[1])
                 for r in split_list(args.runs)]
    data("forget")
    run_splits(args, run_split, write_results, lambda: STORE.rows(settings_key(args)))


if __name__ == "__main__":
    main()
