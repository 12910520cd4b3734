"""The paper's comparison on real text: GA, SGA, TA and TAU under the mean and the per-sequence stop rule.

    .venv/bin/python benchmarks/paper_claims.py [--splits 0,1,2] [--members 32] [--exposures 1,2,4,8,16]
        [--methods ga,sga,ta,tau] [--stops mean,per-sequence] [--max-steps 150] [--reference-rows 96]

SmolLM2-135M memorizes Jang et al.'s Pile sequences only weakly and its MA depends on the kind of
text, so for each split k the first ``--members`` sequences of ``lm_extraction_32_k`` are first
*planted* into the default model with the memorization lab, at exposures that differ from sequence
to sequence (the paper's "to each its own" premise). The other Jang sequences of the same split
(``lm_extraction_128_k`` minus ``32_k``: same source, same form, never planted) are the unseen
reference: τ = the planted model's mean MA on them. Then every method × stop rule unlearns a copy of
the planted model with the paper's harness (whole forget set per step, Adam(0.9, 0.98), lr 5e-5,
at most ``--max-steps`` steps), and we record c_low, c_high, the distance to τ, steps, seconds and
the reference's MA afterwards (collateral forgetting). Over the splits: mean ± 95 % t-interval.

Each finished run is appended to ``benchmarks/results/paper_claims_runs.jsonl``; a rerun with the
same settings skips it, so the script can be stopped and continued. Planted models are cached in
the unmemorize cache (``labs/paper-claims-*``). The section of ``benchmarks/RESULTS.md`` is
rewritten from every run recorded with the current settings.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

from benchmarks.common import (RESULTS_DIR, RUNS, RunStore, data, fmt, paired_caveat, paper_method, planted_lab, t_interval,
                               run_splits, unlearning_run, write_section)
from unmemorize.stats import paired_difference
from unmemorize.thresholds import Band, outlier_count

STORE = RunStore(RESULTS_DIR / "paper_claims_runs.jsonl")
METRICS = ("c_low", "c_high", "c", "distance_to_tau", "mean_ma", "std_ma", "max_ma", "steps", "seconds",
           "reference_ma_after")


def settings_key(args) -> dict:
    return {"members": args.members, "exposures": args.exposures, "max_steps": args.max_steps,
            "reference_rows": args.reference_rows, "lr": args.lr, "micro_batch": args.micro_batch,
            "band": [args.band_lo, args.band_hi], "seed": args.seed}


def reference_file(split: int, args) -> Path:
    """Unplanted Jang sequences of the split: ``lm_extraction_128_k`` minus ``32_k``."""
    from unmemorize.models import cache_dir

    big = pd.read_csv(data("forget", f"lm_extraction_128_{split}.csv"), dtype=str, keep_default_na=False)
    small = pd.read_csv(data("forget", f"lm_extraction_32_{split}.csv"), dtype=str, keep_default_na=False)
    ref = big[~big["doc_id"].isin(small["doc_id"])].head(args.reference_rows)
    path = cache_dir() / "labs" / f"paper-claims-reference-{split}-{args.reference_rows}.csv"
    ref.to_csv(path, index=False)
    return path


def run_split(split: int, args, done: list[dict], progress=None) -> None:
    from unmemorize.recipe import Resources

    key = settings_key(args)
    todo = [(m, s) for m in args.methods for s in args.stops
            if not any(r["split"] == split and r["method"] == m and r["stop"] == s and r["settings"] == key for r in done)]
    if not todo:
        print(f"split {split}: every run already recorded", flush=True)
        return
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    planted, members_file, manifest = planted_lab(split, args.members, args.exposures, args.seed, log,
                                                  progress)
    print(f"split {split}: planted in {time.perf_counter() - t0:.0f} s (or reused)", flush=True)
    resources = Resources(log=log, progress=progress)  # the planted model and τ on the reference, shared by the split's runs
    exposure = manifest["exposure"]
    for method, stop in todo:
        t = time.perf_counter()
        r, folder = unlearning_run(resources, planted, members_file, reference_file(split, args),
                                   RUNS / "paper_claims" / f"split{split}" / f"{method}-{stop}", method=paper_method(method),
                                   stop=stop, seed=args.seed, lr=args.lr, max_steps=args.max_steps,
                                   micro_batch=args.micro_batch, band=(args.band_lo, args.band_hi))
        STORE.append(record_row(r, folder, split, key, exposure, time.perf_counter() - t))
        u = r.unlearning
        print(f"split {split} {method:>4} {stop:>12}: c_low {u.after.c_low} c_high {u.after.c_high} mean "
              f"{u.after.mean:.3f} dist {u.after.distance_to_tau:.1f} steps {u.steps} {u.seconds:.0f} s ref "
              f"{r.reference_ma_before:.3f}→{r.reference_ma_after:.3f} — {u.stop_reason}", flush=True)


def record_row(r, folder: Path, split: int, key: dict, exposure: dict, wall: float) -> dict:
    """The benchmark's row of one run, from its record and its per-sequence frames."""
    before = pd.read_parquet(folder / "profile_before.parquet").set_index("id")["ma"]
    after = pd.read_parquet(folder / "profile_after.parquet").set_index("id")["ma"]
    band = Band(*r.band)
    u = r.unlearning
    return {"split": split, "method": r.labels.method, "stop": r.labels.stop, "settings": key, "tau": r.tau,
            "c_low": u.after.c_low, "c_high": u.after.c_high, "c": u.after.c,
            "distance_to_tau": u.after.distance_to_tau, "mean_ma": u.after.mean, "std_ma": u.after.std,
            "steps": u.steps, "seconds": u.seconds, "converged": u.converged, "stop_reason": u.stop_reason,
            "events": u.events, "reference_ma_before": r.reference_ma_before, "reference_ma_after": r.reference_ma_after,
            "reference_c_low_before": r.reference_before.c_low, "reference_c_high_before": r.reference_before.c_high,
            "forget_ma_before": float(before.mean()), "forget_c_before": list(outlier_count(before.to_numpy(), band)),
            "per_sequence": {sid: {"exposure": exposure.get(sid), "before": float(before[sid]),
                                   "after": float(after[sid])} for sid in before.index},
            "wall_seconds": wall}


def _noise(df: pd.DataFrame, a: str, b: str) -> str:
    """The paired interval of the two methods' mean-rule c(D_f) difference (a − b) over the splits where both ran."""
    c = df[df["stop"] == "mean"].set_index(["split", "method"])["c"]
    splits = sorted(s for s in df["split"].unique() if (s, a) in c.index and (s, b) in c.index)
    diffs = [float(c[(s, a)] - c[(s, b)]) for s in splits]
    return paired_caveat(paired_difference(diffs, comparisons=2), f"{a.upper()} − {b.upper()}")  # SGA/GA, TAU/TA


def _paired(df: pd.DataFrame, a: str, b: str) -> str:
    """c(D_f) of two methods side by side in each split (mean rule): the same planted model, the same τ."""
    mean = df[df["stop"] == "mean"].set_index(["split", "method"])["c"]
    return ", ".join(f"split {s} {mean[(s, a)]:.0f} vs {mean[(s, b)]:.0f}" for s in sorted(df["split"].unique())
                     if (s, a) in mean.index and (s, b) in mean.index)


def _per_sequence_price(df: pd.DataFrame) -> str:
    """What the per-sequence rule buys (no band outliers) and what it costs (overshoot, collateral forgetting)."""
    by = df.assign(drop=100 * (df["reference_ma_before"] - df["reference_ma_after"])).groupby(["stop", "method"])
    c, dist, drop = by["c"].mean(), by["distance_to_tau"].mean(), by["drop"].mean()
    runs = df[df["stop"] == "per-sequence"]
    span = lambda s, stop: f"{s.loc[stop].min():.1f}–{s.loc[stop].max():.1f}"  # noqa: E731
    per = dist.loc["per-sequence"]
    order = ", ".join(f"{m} {v:.1f}" for m, v in per.sort_values().items())
    selective = [m for m in ("sga", "tau") if m in per.index]
    less = "ga" in per.index and selective and all(per[m] < per["ga"] for m in selective)
    return (f"The per-sequence stop rule (ours) left {int(runs['c'].sum())} sequences outside the band over all "
            f"{len(runs)} of its runs (the mean rule: c = {span(c, 'mean')} on average per method). Its price: the "
            f"forget set ends {span(dist, 'per-sequence')} MA points below τ on average (the mean rule: "
            f"{span(dist, 'mean')}), and unseen text loses {span(drop, 'per-sequence')} MA points (the mean rule: "
            f"{span(drop, 'mean')}). Under it the selective methods overshoot τ {'less than' if less else 'no less than'} GA "
            f"(distance to τ: {order}).")


def _fewer(df: pd.DataFrame, ours: str, base: str, claim: str) -> str:
    """Does ``ours`` leave fewer band outliers than ``base`` under the mean rule: in the means, per split, with noise."""
    c = df[df["stop"] == "mean"].groupby("method")["c"].mean()
    hold = c[ours] < c[base]
    return (f"{ours.upper()} leaves {'fewer' if hold else 'no fewer'} outliers than {base.upper()} under the mean rule on "
            f"average (c = {c[ours]:.1f} vs {c[base]:.1f}): {claim}{'holds' if hold else 'does not hold'} in the "
            f"means{_noise(df, ours, base)}; split by split ({base.upper()} vs {ours.upper()}): {_paired(df, base, ours)}.")


def claims(df: pd.DataFrame) -> list[str]:
    """Plain statements of where the paper's claims hold on these runs."""
    out = []
    mean = df[df["stop"] == "mean"].groupby("method")
    if {"ga", "sga"} <= set(mean.groups):
        out.append(_fewer(df, "sga", "ga", "the paper's claim "))
        mx, sd = mean["max_ma"].mean(), mean["std_ma"].mean()
        out.append(f"Spread after the mean rule: max MA SGA {mx['sga']:.3f} vs GA {mx['ga']:.3f}, std {sd['sga']:.3f} vs "
                   f"{sd['ga']:.3f} — SGA {'does' if mx['sga'] < mx['ga'] else 'does not'} pull the high tail down further "
                   "than GA (the paper's 'standardising' effect).")
    if {"ta", "tau"} <= set(mean.groups):
        out.append(_fewer(df, "tau", "ta", ""))
    for r in df[df["method"] == "tau"].itertuples():
        switch = [int(e.split(":")[0].split()[1]) for e in r.events if "sga → ta" in e]
        ta_updates = r.steps - switch[0] if switch else 0
        if ta_updates == 0:
            out.append(f"TAU ({r.stop} rule, split {r.split}) made no task-arithmetic update: "
                       + (f"it reached TAU's hand-over level 0.5 only at step {switch[0]}, where the stop rule held too"
                          if switch else f"its stop rule held (τ = {r.tau:.3f}) before the mean fell under the hand-over "
                                         "level 0.5")
                       + ", so it ran as SGA throughout.")
        else:
            out.append(f"TAU ({r.stop} rule, split {r.split}) handed over to task arithmetic at step {switch[0]} "
                       f"(mean MA under 0.5) and made {ta_updates} task-arithmetic updates before its stop rule held.")
    if {"mean", "per-sequence"} <= set(df["stop"]):
        by = df.groupby(["method", "stop"])["c_high"].mean().unstack()
        for m in by.index:
            if not by.loc[m].isna().any():
                out.append(f"{m}: c_high {by.loc[m, 'mean']:.1f} with the mean rule, {by.loc[m, 'per-sequence']:.1f} "
                           "with the per-sequence rule.")
    if {"mean", "per-sequence"} <= set(df["stop"]):
        out.append(_per_sequence_price(df))
    mean_runs = df[df["stop"] == "mean"]
    dist = mean_runs.groupby("method")["distance_to_tau"].mean()
    if len(dist):
        out.append("Distance to τ under the mean rule (MA points): "
                   + ", ".join(f"{m} {v:.1f}" for m, v in dist.sort_values().items())
                   + ("; every mean-rule run stopped at its first step below τ, so this is the overshoot of that "
                      "last step" if mean_runs["converged"].all() else "") + ".")
    hi = float(df["settings"].iloc[0]["band"][1])
    tau = float(df["tau"].mean())
    if tau > hi - 0.1:
        out.append(f"Context: τ = {tau:.3f} (unseen text of this kind, for this model) lies just under the band's top "
                   f"{hi:g}, and SGA's γ = 0.7 lies above it (the paper's constants were set for GPT-Neo, τ ≈ 0.30–0.34). "
                   "SGA ascends a sequence between the band's top and γ only when it is the most memorized of its "
                   "micro-batch, so under the mean rule such sequences can stop the run still counted in c_high.")
    coll = (df["reference_ma_before"] - df["reference_ma_after"]).groupby([df["stop"], df["method"]]).mean()
    for stop in coll.index.get_level_values(0).unique():
        c = coll.loc[stop].sort_values()
        out.append(f"Collateral forgetting under the {stop} rule (drop of the unseen reference's mean MA, points): "
                   + ", ".join(f"{m} {100 * v:.1f}" for m, v in c.items()) + ".")
    return out


def write_results(args) -> None:
    key = settings_key(args)
    rows = STORE.rows(key)
    if not rows:
        return
    df = pd.DataFrame(rows)
    df["max_ma"] = [max(v["after"] for v in ps.values()) for ps in df["per_sequence"]]
    splits = sorted(df["split"].unique())
    lines = ["| method | stop | splits | c_low | c_high | c(D_f) | distance to τ | std of MA | max MA | steps | seconds | "
             "reference MA after (before) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (method, stop), g in df.groupby(["method", "stop"], sort=False):
        cells = {m: t_interval(g[m].tolist()) for m in METRICS}
        lines.append(f"| {method} | {stop} | {len(g)} | {fmt(*cells['c_low'])} | {fmt(*cells['c_high'])} | "
                     f"{fmt(*cells['c'])} | {fmt(*cells['distance_to_tau'])} | {fmt(*cells['std_ma'], 3)} | "
                     f"{fmt(*cells['max_ma'], 3)} | {fmt(*cells['steps'])} | "
                     f"{fmt(*cells['seconds'], 0)} | {fmt(*cells['reference_ma_after'], 3)} "
                     f"({g['reference_ma_before'].mean():.3f}) |")
    setup = []
    for s in splits:
        g = df[df["split"] == s].iloc[0]
        setup.append(f"split {s}: τ = {g['tau']:.3f}; planted forget MA {g['forget_ma_before']:.3f}, outside the band "
                     f"before unlearning {g['forget_c_before'][0]} low + {g['forget_c_before'][1]} high; the unseen "
                     f"reference itself has {g['reference_c_low_before']} low + {g['reference_c_high_before']} high")
    not_converged = df[~df["converged"]]
    cmd = ("benchmarks/paper_claims.py --splits " + ",".join(map(str, splits)) + f" --members {args.members} "
           f"--exposures {args.exposures} --max-steps {args.max_steps} --reference-rows {args.reference_rows} "
           f"--micro-batch {args.micro_batch}")
    body = f"""Command: `.venv/bin/python {cmd}` (CPU, {os.cpu_count()} cores shared with other work).

Setup: SmolLM2-135M-Instruct with the first {args.members} sequences of Jang's `lm_extraction_32_k` planted at
exposures {args.exposures} (spread over the members), τ = the planted model's mean MA on up to
{args.reference_rows} unplanted sequences of `lm_extraction_128_k` (same source and form), band
[{args.band_lo}, {args.band_hi}], the paper's harness (whole set per step, Adam(0.9, 0.98), lr {args.lr:g},
at most {args.max_steps} steps, seed {args.seed}). Splits run: {', '.join(map(str, splits))}
({len(splits)} of 3). Cells: mean ± 95 % t-interval over the splits (a single split has no interval).

{chr(10).join('- ' + s for s in setup)}

{chr(10).join(lines)}

{"Runs that hit the step cap instead of their stop rule: " + ", ".join(f"{r.method}/{r.stop} (split {r.split})" for r in not_converged.itertuples()) if len(not_converged) else "Every run ended by its stop rule."}

What these runs say about the paper's claims (computed by the script):

{chr(10).join('- ' + c for c in claims(df))}
"""
    write_section("Paper claims (issue 3)", body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="0,1,2")
    ap.add_argument("--members", type=int, default=32)
    ap.add_argument("--exposures", default="1,2,4,8,16")
    ap.add_argument("--methods", default="ga,sga,ta,tau")
    ap.add_argument("--stops", default="mean,per-sequence")
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--reference-rows", type=int, default=96)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--band-lo", type=float, default=0.15)
    ap.add_argument("--band-hi", type=float, default=0.60)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from the recorded runs")
    args = ap.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.stops = [s.strip() for s in args.stops.split(",") if s.strip()]
    data("forget")
    run_splits(args, run_split, write_results, STORE.rows)


if __name__ == "__main__":
    main()
