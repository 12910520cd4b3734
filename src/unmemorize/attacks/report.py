"""The attacks' part of a report: one ROC figure with every attack, tables, and HTML sections."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from unmemorize.attacks.registry import MEMBERS, NONMEMBERS
from unmemorize.report.html import Section
from unmemorize.report.plots import plt


def roc_plot(path: str | Path, results, title: str = "") -> Path:
    """ROC curves of every attack: linear axes, and log-log axes for the low-FPR regime."""
    fig, (lin, log) = plt.subplots(1, 2, figsize=(11, 4.6), dpi=110)
    for name, r in results.attacks.items():
        ev = r.evaluation
        label = f"{name} (AUC {ev.auc.value:.3f})" if not math.isnan(ev.auc.value) else f"{name} (n/a)"
        lin.plot(ev.fpr_curve, ev.tpr_curve, lw=1.4, label=label)
        log.plot(np.clip(ev.fpr_curve, 1e-4, 1), np.clip(ev.tpr_curve, 1e-4, 1), lw=1.4, label=label)
    lin.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")
    log.plot([1e-4, 1], [1e-4, 1], color="grey", ls=":", lw=1)
    lin.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate (unseen text flagged)",
            ylabel="true-positive rate (forget set flagged)", title="ROC")
    log.set(xscale="log", yscale="log", xlim=(1e-3 if not results.fprs else min(results.fprs) / 2, 1), ylim=(1e-3, 1.05),
            xlabel="false-positive rate (log)", ylabel="true-positive rate (log)", title="ROC, low-FPR regime")
    for a in results.fprs:
        log.axvline(a, color="black", ls="--", lw=0.7)
    lin.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def comparison_table(runs: dict[str, object]) -> pd.DataFrame:
    """AUC and TPR at the first FPR of each run side by side, e.g. {"original": r0, "unlearned": r1}."""
    names = list(dict.fromkeys(n for r in runs.values() for n in r.attacks))
    rows = []
    for name in names:
        row = {"attack": name}
        for label, r in runs.items():
            res = r.attacks.get(name)
            ev = None if res is None else res.evaluation
            row[f"AUC {label}"] = math.nan if ev is None else ev.auc.value
            if r.fprs:
                a = r.fprs[0]
                row[f"TPR@{100 * a:g}% {label}"] = ev.tpr[a].value if ev is not None and a in ev.tpr else math.nan
            row[f"below chance {label}"] = "" if ev is None else ("yes" if ev.below_chance else "no")
        rows.append(row)
    return pd.DataFrame(rows)


def _threshold_table(summary: dict) -> pd.DataFrame:
    rows = []
    for part, role in ((MEMBERS, "forget (members)"), (NONMEMBERS, "reference (unseen)")):
        s = summary.get(part, {})
        rows.append({"set": role, "measured": s.get("measured"), "c_low (g ≤ lo)": s.get("c_low"),
                     "c_high (g ≥ hi)": s.get("c_high"), "flagged": s.get("c"), "flagged rate": s.get("flagged_rate")})
    return pd.DataFrame(rows)


def _sampling_table(summary: dict) -> pd.DataFrame:
    rows = []
    for part, role in ((MEMBERS, "forget (members)"), (NONMEMBERS, "reference (unseen)")):
        s = summary.get(part, {})
        rows.append({"set": role, "sequences": s.get("sequences"),
                     "greedy: suffix out": s.get("greedy_extracted"),
                     "≥1 sample: suffix out": s.get("suffix_extracted_any"),
                     f"≥1 sample: first {summary.get('first_tokens')} out": s.get("first_extracted_any"),
                     "P(suffix) mean": s.get("expected_suffix_rate"),
                     f"P(first {summary.get('first_tokens')}) mean": s.get("expected_first_rate")})
    return pd.DataFrame(rows)


def report_sections(results, roc_png: str | Path | None = None, heading: str = "Privacy attacks") -> list[Section]:
    """HTML report sections for one attack run (pass the ROC written by ``write_results``)."""
    inp = results.inputs
    n_m, n_n = inp[MEMBERS]["sequences"], inp[NONMEMBERS]["sequences"]
    flagged = [n for n, r in results.attacks.items() if r.evaluation.below_chance]
    strong = [n for n, r in results.attacks.items() if r.evaluation.auc.low > 0.5]
    text = [f"Can an attacker tell the {n_m} forget-set sequences (members) from {n_n} unseen sequences of the same "
            "form (non-members)? Every attack gives each sequence a score, higher meaning \"member\"; AUC 0.5 is "
            "chance. Intervals are 95% bootstrap intervals."]
    if strong:
        text.append(f"Attacks that separate the sets (AUC interval above 0.5): {', '.join(strong)}.")
    if flagged:
        text.append(f"Far below chance: {', '.join(flagged)}. The forget set now looks *less* memorized than unseen "
                    "text — a sign of over-unlearning, and just as visible: an attacker flips the score "
                    "(AUC 1 − AUC).")
    text += results.notes
    main = Section(heading, "\n\n".join(text), tables=[("", results.table())])
    if roc_png is not None:
        main.images.append(("ROC curves of every attack (right: log-log, low-FPR regime)", Path(roc_png)))
    sections = [main]
    details = Section(f"{heading}: details")
    if "threshold" in results.attacks:
        r = results.attacks["threshold"]
        c = r.calibration
        details.tables.append((
            f"Threshold attack on g(x): flags g ≥ {c['hi']:.2f} (still extractable) or g ≤ {c['lo']:.2f} "
            f"(visibly unlearned); on the forget set the flags are c(D_f). ROC score |g − τ|, τ = {c['tau']:.3f} "
            f"({c['tau_source']}).", _threshold_table(r.summary)))
    if "sampling" in results.attacks:
        s = results.attacks["sampling"].summary
        details.tables.append((
            f"Sampling extraction: {s['samples']} samples per prefix (top-k {s['top_k']}, temperature "
            f"{s['temperature']}); P(·) are the exact probabilities that one sample reproduces the true suffix.",
            _sampling_table(s)))
    if "miau" in results.attacks:
        s = results.attacks["miau"].summary
        cfg = s["perturber"]
        details.preformatted = (
            f"MIAU neighbours: K = {s['neighbours']}, seed {s['seed']}, perturber {cfg['perturber']} "
            f"({', '.join(f'{k}={v}' for k, v in cfg.items() if k != 'perturber')}); "
            f"{s['cache_hits']} texts from the neighbour cache, {s['spans_filled_this_run']} spans filled in this run"
            + (f", {s['spans_kept_original']} kept their original words" if s["spans_kept_original"] else "") + ".")
    if details.tables or details.preformatted:
        sections.append(details)
    if results.oracle is not None:
        o = results.oracle
        sections.append(Section(
            f"{heading}: judged against the retrain oracle",
            "The retrain oracle never saw the members: the same attacks on it, with the same members, non-members, "
            "neighbours and τ, are what \"forgotten\" looks like. Each attack's gap is AUC − AUC on the oracle with a "
            f"paired 95% bootstrap interval (oracle: {o.path}).\n\n" + "\n\n".join(o.verdicts()),
            tables=[("each attack on the model and on the oracle", o.table())]))
    return sections
