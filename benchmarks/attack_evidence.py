"""Can an attacker tell? Every attack before unlearning and after GA, SGA, TA and TAU (issue 4).

    .venv/bin/python benchmarks/attack_evidence.py [--splits 0,1,2] [--members 32] [--exposures 1,2,4,8,16]
        [--methods ga,sga,ta,tau] [--stops mean,per-sequence] [--max-steps 150] [--nonmembers 100]
        [--attacks miau,threshold,…] [--neighbours 25] [--perturber lm] [--bootstrap 1000]

Setup as in the paper-claims benchmark (``paper_claims.py``, whose planting and its cache are reused):
for split k the first ``--members`` sequences of Jang's ``lm_extraction_32_k`` are planted into the
default model at different exposures; they are the members (the forget set). The non-members are
unplanted Jang sequences of the same form: ``lm_extraction_128_k`` minus ``32_k`` first, then the
other splits' 128-sets (minus every sequence planted here) until ``--nonmembers`` are reached —
100 is the fewest that can resolve TPR at 1 % FPR. τ for the unlearning stop rules is the planted
model's mean MA on those non-members.

Before unlearning, every attack runs on the planted model; its reference attack compares with the
*unplanted* default model (a model that never saw the members: the classic reference attack).
After each method × stop rule, every attack runs on the unlearned model, and the reference attack
compares with the planted model (the original, pre-unlearning model: the owner's strongest audit).
The before stage compares every non-member (``match_by: none``, as its first records did); the unlearning
runs compare non-members matched to the members' kinds of text (``unlearn``'s default), so the two
stages' attacks do not see the same non-members (each row records how many).
MIAU's neighbours are refilled by the planted model in every run (``--refill planted``, the default of
``unmemorize attack``: the original model refills), so all runs of a split share them (cached on disk);
``--refill base`` refills with the unplanted default model instead — a model that never saw the
members, as Mattern et al.'s separate mask filler — and records its runs under their own settings and
their own RESULTS.md section. Each finished run is appended to ``benchmarks/results/attack_evidence_runs.jsonl``
and skipped when the script is run again with the same settings; the ``## Attack evidence (issue 4)``
section of ``benchmarks/RESULTS.md`` is rewritten from every run recorded with the current settings.
Those sections hold MIAU at K = 5 (the runs recorded first); a rerun at another ``--neighbours`` (the paper's
25) writes a section of its own beside them, each stage set beside the same stage at K = 5.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from benchmarks.common import (RESULTS_DIR, RUNS, RunStore, data, fmt, paired_caveat, pairs_at_k, paper_method,
                               planted_lab, t_interval, run_splits, unlearning_run, unplanted_jang, write_section)
from unmemorize.stats import leakage, paired_difference

STORE = RunStore(RESULTS_DIR / "attack_evidence_runs.jsonl")
TITLE = "Attack evidence (issue 4)"
BEFORE = "before"
NEIGHBOURS = 5  # MIAU's K in the runs of the main sections; a rerun at another K writes beside them
REFILL = {"planted": "planted model (the original, pre-unlearning model)",
          "base": "unplanted default model (never saw the members)"}


def settings_key(args) -> dict:
    return {"members": args.members, "exposures": args.exposures, "max_steps": args.max_steps,
            "nonmembers": args.nonmembers, "lr": args.lr, "micro_batch": args.micro_batch,
            "band": [args.band_lo, args.band_hi], "seed": args.seed, "attacks": args.attacks,
            "neighbours": args.neighbours, "perturber": args.perturber, "bootstrap": args.bootstrap,
            **({"refill": args.refill} if args.refill != "planted" else {})}  # the first runs' key stays valid


def record(split: int, stage: str, stop: str, key: dict, folder: Path, extra: dict) -> dict:
    """The benchmark's row of one stage, from the attacks.json of its run folder."""
    found = json.loads((folder / "attacks.json").read_text())
    attacks = {}
    for name, a in found["attacks"].items():
        attacks[name] = {"auc": _num(a["auc"]["value"]), "auc_ci": [_num(a["auc"]["ci_low"]), _num(a["auc"]["ci_high"])],
                         "below_chance": a["below_chance"],
                         "tpr": {f: [_num(v["value"]), _num(v["ci_low"]), _num(v["ci_high"])]
                                 for f, v in a["tpr_at_fpr"].items()}}
    thr = found["attacks"].get("threshold")
    row = {"split": split, "stage": stage, "stop": stop, "settings": key, "attacks": attacks,
           "threshold": None if thr is None else {"tau": thr["calibration"]["tau"], **thr["summary"]},
           "sampling": None if "sampling" not in found["attacks"] else found["attacks"]["sampling"]["summary"],
           "perturber": None if "miau" not in found["attacks"] else found["attacks"]["miau"]["summary"]["perturber"],
           "nonmembers": found["inputs"]["reference"]["sequences"], "notes": found["notes"], **extra}
    STORE.append(row)
    aucs = " ".join(f"{n} {a['auc']:.2f}" for n, a in attacks.items())
    print(f"split {split} {stage:>4} {stop:>12}: {aucs}", flush=True)
    return row


def _num(v) -> float:
    return math.nan if v is None else float(v)


def run_split(split: int, args, done: list[dict], progress=None) -> None:
    from unmemorize.attacks.run import attack_run
    from unmemorize.recipe import Resources
    from unmemorize.spec import AttackRunSpec

    key = settings_key(args)
    stages = [(BEFORE, "-")] + [(m, s) for m in args.methods for s in args.stops]
    todo = [(m, s) for m, s in stages
            if not any(r["split"] == split and r["stage"] == m and r["stop"] == s and r["settings"] == key for r in done)]
    if not todo:
        print(f"split {split}: every run already recorded", flush=True)
        return
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    planted, members_file, manifest = planted_lab(split, args.members, args.exposures, args.seed, log,
                                                  progress)
    nonmembers = unplanted_jang(split, set(pd.read_csv(members_file, dtype=str)["doc_id"]), args.nonmembers, "attack-evidence")
    # one model refills every stage's neighbours (cached on disk): the planted one, or the unplanted default
    attacks = {"names": args.attacks or None, "neighbours": args.neighbours, "perturber": args.perturber,
               "bootstrap": args.bootstrap, "batch_size": args.micro_batch,
               "refill_model": "default" if args.refill == "base" else None}
    # the planted model and τ on the non-members, shared by the split's runs
    resources = Resources(log=log, progress=progress)
    out = RUNS / "attack_evidence" / f"split{split}" / ("refill-base" if args.refill == "base" else "refill-planted")
    for stage, stop in todo:
        t = time.perf_counter()
        if stage == BEFORE:
            # the planted model attacked, with the unplanted default model as the reference attack's reference
            spec = AttackRunSpec(model=str(planted), original="default", forget=members_file, reference=nonmembers,
                                 seed=args.seed, band={"lo": args.band_lo, "hi": args.band_hi},
                                 # every non-member, unmatched, as the stages recorded before `attack` matched
                                 attacks={k: v for k, v in attacks.items() if k != "refill_model"}
                                         | {"refill_model": "default" if args.refill == "base" else str(planted),
                                            "match_by": None})
            _, folder = attack_run(spec, out / "before", overwrite=True, progress=progress, log=log)
            tau = json.loads((folder / "attacks.json").read_text())["attacks"].get("threshold", {}).get(
                "calibration", {}).get("tau")
            extra = {"reference_model": "unplanted default model", "tau": tau}
        else:
            r, folder = unlearning_run(resources, planted, members_file, nonmembers, out / f"{stage}-{stop}",
                                       method=paper_method(stage), stop=stop, seed=args.seed, lr=args.lr,
                                       max_steps=args.max_steps,
                                       micro_batch=args.micro_batch, band=(args.band_lo, args.band_hi),
                                       attacks={**attacks, "before": False})
            u = r.unlearning
            extra = {"reference_model": "planted (pre-unlearning) model", "tau": r.tau, "steps": u.steps,
                     "converged": u.converged, "stop_reason": u.stop_reason, "c_low": u.after.c_low,
                     "c_high": u.after.c_high, "mean_ma": u.after.mean}
        record(split, stage, stop, key, folder, {**extra, "seconds": time.perf_counter() - t})


# ---------------------------------------------------------------- the RESULTS.md section


def _cell(values: list[float], digits: int = 2) -> str:
    return fmt(*t_interval(values), digits)


def tables(df: pd.DataFrame, attacks: list[str]) -> list[str]:
    out = []
    for title, get in (("AUC (0.5 = chance; † = below chance in at least one split: over-unlearned, the flipped "
                        "score separates)", lambda a: a["auc"]),
                       ("TPR at 1 % FPR", lambda a: a["tpr"].get("0.01", [math.nan])[0])):
        lines = [f"{title}:", "", "| model | stop | splits | " + " | ".join(attacks) + " |",
                 "|---|---|---|" + "---|" * len(attacks)]
        for (stage, stop), g in df.groupby(["stage", "stop"], sort=False):
            cells = []
            for name in attacks:
                vals = [get(row[name]) for row in g["attacks"] if name in row]
                flag = any(row[name]["below_chance"] for row in g["attacks"] if name in row)
                cells.append(_cell(vals) + (" †" if flag and "AUC" in title else ""))
            lines.append(f"| {stage} | {stop} | {len(g)} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return out


def _leak_by_split(sub: pd.DataFrame, method: str, attack: str) -> dict[int, float]:
    g = sub[sub["stage"] == method]
    return {int(r.split): leakage(r.attacks[attack]["auc"]) for r in g.itertuples() if attack in r.attacks}


def _compare(sub: pd.DataFrame, attack: str, stop: str, comparisons: int = 1):
    """GA against SGA and TAU on one attack: (the sentence — the means, the paired GA − SGA interval, the
    splits side by side — and the paired difference), or None when no split has all three."""
    v = {m: _leak_by_split(sub, m, attack) for m in ("ga", "sga", "tau")}
    both = sorted(set.intersection(*(set(x) for x in v.values())))  # only splits where all three ran: paired
    if not both:
        return None
    mean = {m: float(np.mean([x[s] for s in both])) for m, x in v.items()}
    holds = mean["ga"] > max(mean["sga"], mean["tau"])
    diff = paired_difference([v["ga"][s] - v["sga"][s] for s in both], comparisons)
    paired = ", ".join(f"split {s} {v['ga'][s]:.2f} vs {v['sga'][s]:.2f}" for s in both)
    return (f"{stop} stop rule, {attack}: leakage max(AUC, 1 − AUC) GA {mean['ga']:.3f}, SGA {mean['sga']:.3f}, "
            f"TAU {mean['tau']:.3f} — GA leaks {'more' if holds else 'not more'} than SGA and TAU in the means, so the "
            f"paper's claim {'holds' if holds else 'does not hold'} on this attack in the means"
            f"{paired_caveat(diff, 'GA − SGA', digits=3)}; split by split (GA vs SGA): {paired}."), diff


def claims(df: pd.DataFrame, attacks: list[str]) -> list[str]:
    """Plain statements: does GA leak more than SGA and TAU (higher leakage, more band outliers)?"""
    out = []
    before = df[df["stage"] == BEFORE]
    if len(before):
        auc = {a: float(np.mean([row[a]["auc"] for row in before["attacks"] if a in row])) for a in attacks}
        weak = [f"{a} ({auc[a]:.2f})" for a in attacks if auc[a] < 0.6]
        out.append("Before unlearning (planted model): "
                   + ", ".join(f"{a} {auc[a]:.2f}" for a in sorted(attacks, key=lambda a: -auc[a]))
                   + (f"; barely above chance: {', '.join(weak)} — an attack that cannot see the planted members "
                      "says little about what unlearning leaves" if weak else "") + ".")
    subs = {}
    for stop in ("mean", "per-sequence"):
        sub = df[df["stop"] == stop]
        full = [k for k, g in sub.groupby("split") if {"ga", "sga", "tau"} <= set(g["stage"])]
        sub = sub[sub["split"].isin(full)]  # compare on the splits where GA, SGA and TAU all ran
        if {"ga", "sga", "tau"} <= set(sub["stage"]):
            subs[stop] = sub
    compared = [a for a in ("miau", "threshold", "loss", "reference") if a in attacks]
    first, sure = len(out), {}  # comparisons whose paired interval survives the Bonferroni correction
    for stop, sub in subs.items():
        for a in compared:
            found = _compare(sub, a, stop, comparisons=len(compared) * len(subs))
            if found:
                out.append(found[0])
                if found[1].survives_correction:
                    sure[f"{stop} stop rule, {a}"] = found[1].mean
        leak = {m: {a: np.nanmean([leakage(row[a]["auc"]) for row in g["attacks"] if a in row]) for a in attacks}
                for m, g in sub.groupby("stage")}
        more = [a for a in attacks if leak["ga"][a] > max(leak["sga"][a], leak["tau"][a])]
        out.append(f"{stop} stop rule: GA leaks more than both SGA and TAU on {len(more)} of {len(attacks)} "
                   f"attacks in the means ({', '.join(more) or 'none'}).")
        same = [int(s) for s, g in sub.groupby("split")
                if {"sga", "tau"} <= set(g["stage"])
                and g[g["stage"] == "sga"]["attacks"].iloc[0] == g[g["stage"] == "tau"]["attacks"].iloc[0]]
        if same:
            out.append(f"{stop} stop rule: TAU gave exactly SGA's results in split {', '.join(map(str, same))} — its "
                       "stop rule held no later than the step at which the mean MA fell under the hand-over level 0.5, so "
                       "its task-arithmetic phase made no update (as in most paper-claims runs).")
        c = {m: np.mean([t["forget"]["c"] for t in g["threshold"] if t]) for m, g in sub.groupby("stage")
             if g["threshold"].notna().all()}
        if {"ga", "sga", "tau"} <= set(c):
            out.append(f"{stop} stop rule: band outliers c(D_f) GA {c['ga']:.1f}, SGA {c['sga']:.1f}, TAU {c['tau']:.1f}.")
        below = sorted({f"{r.stage}" for r in sub.itertuples() if r.attacks.get("miau", {}).get("below_chance")})
        if below:
            out.append(f"{stop} stop rule: MIAU's AUC fell below chance after {', '.join(below)} in at least one split: "
                       "the unlearned members' likelihood now sits closer to that of their own perturbed neighbours than "
                       "unseen text's does (unseen text is clearly more likely than its perturbations) — a trace of "
                       "unlearning that an attacker reads by flipping the score (what leakage counts).")
    if subs and compared:
        strong = [name for name, d in sure.items() if d > 0]
        against = [name for name, d in sure.items() if d < 0]
        n_splits = int(df["split"].nunique())
        verdict = ("holds where it is measurable here" if strong and not against else
                   "is contradicted here" if against and not strong else
                   "gets mixed evidence here" if strong else "is not tested by these runs")
        out.insert(first, f"Plainly: of the {len(compared) * len(subs)} paired GA-vs-SGA comparisons "
                          f"({', '.join(compared)} × {' and '.join(subs)} rule), GA leaks more beyond chance and after "
                          f"a Bonferroni correction in {len(strong)}" + (f" ({'; '.join(strong)})" if strong else "")
                   + f", SGA in {len(against)}" + (f" ({'; '.join(against)})" if against else "")
                   + f"; the others are not evidence either way. The paper's claim {verdict}, at "
                     f"{n_splits} split{'s' if n_splits > 1 else ''}"
                   + (f" of {df['settings'].iloc[0]['members']} members" if "settings" in df else "") + ".")
    return out


def refill_comparison(df: pd.DataFrame, key: dict, recorded: list[dict]) -> list[str]:
    """MIAU with the unplanted model refilling against the planted model refilling, run by run (same
    members, non-members, masks and seed; only the refills differ)."""
    same = {k: v for k, v in key.items() if k not in ("refill", "attacks")}
    planted = [r for r in recorded if "refill" not in r["settings"] and "miau" in r["attacks"]
               and {k: v for k, v in r["settings"].items() if k != "attacks"} == same]
    out = []
    for r in df.itertuples():
        o = next((x for x in planted if (x["split"], x["stage"], x["stop"]) == (r.split, r.stage, r.stop)), None)
        if o is not None and "miau" in r.attacks:
            out.append(f"Split {r.split}, {r.stage} ({r.stop}): MIAU AUC {r.attacks['miau']['auc']:.2f} with the "
                       f"unplanted model refilling vs {o['attacks']['miau']['auc']:.2f} with the planted model "
                       "refilling (same members, non-members, masks and seed; only the refills differ).")
    return out


def _seconds(df: pd.DataFrame, rows) -> str:
    return f"{df.loc[rows, 'seconds'].mean():.0f} s" if rows.any() else "no run"


def section_title(args) -> str:
    """The main sections hold the runs at K = NEIGHBOURS; a rerun at another K writes beside them, never over them."""
    title = TITLE if args.refill == "planted" else f"{TITLE}: MIAU neighbours refilled by the unplanted model"
    return title if args.neighbours == NEIGHBOURS else f"{title}, MIAU K = {args.neighbours}"


def _nonmembers(row: dict) -> int | None:
    """How many non-members a stage's attacks compared: recorded since the K = 25 reruns, before them as the
    stage's notes say (None: they do not)."""
    if _value(row, "nonmembers") is not None:
        return int(row["nonmembers"])
    found = (re.search(r"the reference set has (\d+) sequences", n) for n in row.get("notes") or [])
    return next((int(m.group(1)) for m in found if m), None)


def _value(row: dict, field: str):
    """A recorded field, None where the stage has none (a frame gives NaN for a field only other rows have)."""
    v = row.get(field)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _stage(stage: str, stop: str) -> str:
    return stage if stop == "-" else f"{stage} ({stop})"


def k_comparison(df: pd.DataFrame, key: dict, recorded: list[dict]) -> list[str]:
    """MIAU at this K beside K = NEIGHBOURS, stage by stage, and over the stages whether what K cannot change
    (the unlearning and the attacks without neighbours) came out the same: that says the rerun repeated the run,
    so a moved MIAU reading is the neighbours' doing."""
    pairs = pairs_at_k(df.to_dict("records"), key, recorded, ("split", "stage", "stop"), NEIGHBOURS)
    if not pairs:
        return []
    k = key["neighbours"]
    out, auc_moved, ma_moved, steps_differ = [], 0.0, 0.0, 0
    for r, o in pairs:
        rest = [n for n in r["attacks"] if n != "miau" and n in o["attacks"]]
        auc_moved = max([auc_moved] + [abs(r["attacks"][n]["auc"] - o["attacks"][n]["auc"]) for n in rest])
        if _value(r, "mean_ma") is not None and _value(o, "mean_ma") is not None:
            ma_moved = max(ma_moved, abs(r["mean_ma"] - o["mean_ma"]))
        steps_differ += _value(r, "steps") != _value(o, "steps")
        a, b = r["attacks"]["miau"], o["attacks"]["miau"]
        n_r, n_o = _nonmembers(r), _nonmembers(o)
        out.append(f"Split {r['split']}, {_stage(r['stage'], r['stop'])}: MIAU AUC {a['auc']:.3f} "
                   f"[{a['auc_ci'][0]:.3f}, {a['auc_ci'][1]:.3f}] at K = {k} vs {b['auc']:.3f} "
                   f"[{b['auc_ci'][0]:.3f}, {b['auc_ci'][1]:.3f}] at K = {NEIGHBOURS}; leakage {leakage(a['auc']):.3f} "
                   f"vs {leakage(b['auc']):.3f}"
                   + (f"; the attacks compared {n_r} non-members at K = {k} against {n_o} at K = {NEIGHBOURS}, so the "
                      "readings differ in more than K" if n_r != n_o and None not in (n_r, n_o) else "") + ".")
    by_stage: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r, o in pairs:
        by_stage.setdefault((r["stage"], r["stop"]), []).append((r["attacks"]["miau"]["auc"], o["attacks"]["miau"]["auc"]))
    head = [f"MIAU AUC, mean over the splits run at both K, at K = {k} vs K = {NEIGHBOURS}: "
            + ", ".join(f"{_stage(st, sp)} {np.mean([a for a, _ in v]):.3f} vs "
                        f"{np.mean([b for _, b in v]):.3f} ({len(v)} split{'s' if len(v) > 1 else ''})"
                        for (st, sp), v in by_stage.items()) + ".",
            (f"The unlearning and every attack without neighbours came out the same at both K in all {len(pairs)} "
             "paired stages: only MIAU's neighbours differ between the readings."
             if max(auc_moved, ma_moved) < 1e-9 and not steps_differ else
             f"Between the K = {k} and the K = {NEIGHBOURS} run of a stage, the unlearning took other steps in "
             f"{steps_differ} of {len(pairs)} stages and the forget set's mean MA after it moved by up to {ma_moved:.3g}; "
             f"the attacks without neighbours moved by up to {auc_moved:.3f} in AUC (the rerun did not exactly repeat "
             "the run).")]
    return head + out


def write_results(args) -> None:
    key = settings_key(args)
    rows = STORE.rows(key)
    if not rows:
        return
    df = pd.DataFrame(rows)
    attacks = list(dict.fromkeys(a for row in df["attacks"] for a in row))
    splits = sorted(df["split"].unique())
    pert = next((p for p in df["perturber"] if p), None)
    cmd = (f"benchmarks/attack_evidence.py --splits {','.join(map(str, splits))} --members {args.members} "
           f"--exposures {args.exposures} --methods {shlex.quote(','.join(args.methods))} --stops {','.join(args.stops)} "
           f"--max-steps {args.max_steps} --nonmembers {args.nonmembers} --neighbours {args.neighbours} "
           f"--perturber {args.perturber} --bootstrap {args.bootstrap}"
           + (f" --refill {args.refill}" if args.refill != "planted" else "")
           + (f" --attacks {','.join(args.attacks)}" if args.attacks else ""))
    stages = df.groupby("split")["stage"].apply(lambda s: len(set(s))).to_dict()
    every = STORE.rows()  # read once: the partners of the refill and the K readings
    lines = claims(df, attacks) + (refill_comparison(df, key, every) if args.refill != "planted" else [])
    k_lines = k_comparison(df, key, every) if args.neighbours != NEIGHBOURS else []
    body = f"""Command: `.venv/bin/python {cmd}` (CPU, {os.cpu_count()} cores shared with other work).

Setup: SmolLM2-135M-Instruct with the first {args.members} sequences of Jang's `lm_extraction_32_k` planted at
exposures {args.exposures} (the paper-claims benchmark's planting); members = those sequences, non-members =
{args.nonmembers} unplanted Jang sequences of the same form; τ = the planted model's mean MA on the non-members;
unlearning with the paper's harness (lr {args.lr:g}, at most {args.max_steps} steps). MIAU: K = {args.neighbours}
neighbours per sequence from the `{args.perturber}` perturber, refilled by the {REFILL[args.refill]}
({json.dumps(pert) if pert else 'not run'}).
The reference attack's reference is the unplanted default model before unlearning and the planted model after.
Splits run: {', '.join(map(str, splits))} (stages per split: {stages}). Cells: mean ± 95 % t-interval over the
splits (one split: no interval). TPR at 0.1 % FPR needs 1,000 non-members and is not reported.
Time per stage here: {_seconds(df, df['stage'] == BEFORE)} before unlearning (MIAU's neighbours made
and cached then), {_seconds(df, df['stage'] != BEFORE)} per unlearning run with its attacks (mean).

{chr(10).join(chr(10) + t + chr(10) for t in tables(df, attacks))}
What these runs say about the paper's claim (GA leaks more than SGA/TAU), computed by the script:

{chr(10).join('- ' + c for c in lines) or '- not enough runs yet (needs GA, SGA and TAU under one stop rule).'}
"""
    if k_lines:
        body += (f"\nMIAU at K = {args.neighbours} beside the same runs at K = {NEIGHBOURS} (the main section), "
                 "computed by the script:\n\n" + "\n".join("- " + c for c in k_lines) + "\n")
    write_section(section_title(args), body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="0,1,2")
    ap.add_argument("--members", type=int, default=32)
    ap.add_argument("--exposures", default="1,2,4,8,16")
    ap.add_argument("--methods", default="ga,sga,ta,tau")
    ap.add_argument("--stops", default="mean,per-sequence")
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--nonmembers", type=int, default=100)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--band-lo", type=float, default=0.15)
    ap.add_argument("--band-hi", type=float, default=0.60)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--attacks", default="", help="comma-separated; default: all")
    ap.add_argument("--neighbours", type=int, default=25)
    ap.add_argument("--perturber", default="lm")
    ap.add_argument("--refill", choices=list(REFILL), default="planted",
                    help="the model that refills MIAU's masked spans (lm perturber)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from the recorded runs")
    args = ap.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.stops = [s.strip() for s in args.stops.split(",") if s.strip()]
    args.attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    data("forget")
    run_splits(args, run_split, write_results, STORE.rows)


if __name__ == "__main__":
    main()
