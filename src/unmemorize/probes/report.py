"""The probes in the HTML report: a summary table, then a table and a plot per probe."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from unmemorize.report.html import Section

_COLOURS = {"resurfaced": "tab:red", "not forgotten": "tab:orange", "forgotten": "tab:blue", "unmeasured": "grey"}


def probe_plot(path: str | Path, frame: pd.DataFrame, summary) -> Path:
    """Each sequence's measure before (hollow) and after the probe (filled, coloured by its verdict),
    against the oracle's before and after the same probe; without an oracle, after against before. Above
    the dashed line a sequence is more than the margin above its baseline."""
    m, margin = summary.measure, summary.margin
    fig, ax = plt.subplots(figsize=(5.4, 5.0), dpi=110)
    xs = np.linspace(0, 1, 2)
    ax.plot(xs, xs, color="black", lw=0.8)
    ax.plot(xs, xs + margin, color="tab:red", ls="--", lw=0.9, label=f"baseline + margin {margin:g}")
    status = frame["status"].astype(str).to_numpy()
    if summary.baseline == "oracle":
        xb, xa = frame[f"{m}_oracle_before"].to_numpy(float), frame[f"{m}_oracle_after"].to_numpy(float)
        xlabel = f"{m} of the retrain oracle (before ○, after ● the same probe)"
    else:
        xb = xa = frame[f"{m}_before"].to_numpy(float)
        xlabel = f"{m} before the probe"
    yb, ya = frame[f"{m}_before"].to_numpy(float), frame[f"{m}_after"].to_numpy(float)
    if summary.baseline == "oracle":
        ax.scatter(xb, yb, s=22, facecolors="none", edgecolors="grey", label="before the probe")
        for x0, y0, x1, y1 in zip(xb, yb, xa, ya):
            ax.plot([x0, x1], [y0, y1], color="grey", lw=0.5, alpha=0.5)
    for st, colour in _COLOURS.items():
        sel = status == st
        if sel.any():
            ax.scatter(xa[sel], ya[sel], s=24, color=colour, label=f"after: {st} ({int(sel.sum())})")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel=xlabel, ylabel=f"{m} of the unlearned model")
    ax.set_title(f"{summary.name}\n{summary.title}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def measures_table(summary) -> pd.DataFrame:
    """One row per measure: its mean before, after and the mean rise; the oracle's and the original's."""
    rows = []
    for m in summary.before:
        row = {"measure": m, "before": summary.before.get(m), "after": summary.after.get(m),
               "rise": summary.rise.get(m)}
        if summary.oracle_after is not None:
            row["oracle before"] = (summary.oracle_before or {}).get(m)
            row["oracle after"] = summary.oracle_after.get(m)
        if summary.original is not None:
            row["original"] = summary.original.get(m)
        rows.append(row)
    return pd.DataFrame(rows).astype({c: float for c in rows[0] if c != "measure"}) if rows else pd.DataFrame()


def sequence_table(frame: pd.DataFrame, summary) -> pd.DataFrame:
    """The verdict's measure per sequence, most resurfaced first."""
    m = summary.measure
    cols = ["id", f"{m}_before", f"{m}_after", f"{m}_rise"]
    if summary.baseline == "oracle":
        cols += [f"{m}_oracle_before", f"{m}_oracle_after", "excess"]
    if f"{m}_original" in frame.columns:
        cols.append(f"{m}_original")
    out = frame[cols + ["status"]].copy()
    key = "excess" if "excess" in out.columns else f"{m}_rise"
    return out.sort_values(key, ascending=False, na_position="last").reset_index(drop=True)


def report_sections(results, images: dict[str, Path]) -> list[Section]:
    """The probes' sections: what they are, the summary table, then each probe's table and plot."""
    r = results.record
    intro = ("Does the forgotten text come back? Each probe pushes the unlearned model the way published attacks do "
             "— a few steps of benign fine-tuning (relearning), weight quantization, a reworded prompt, sampling — "
             "and measures the forget set again (docs/method.md §3.8). Resurfacing = the measure after the probe − "
             "before it, per sequence. "
             + ("The same probes on the retrain oracle are the baseline: a sequence has resurfaced when the probe "
                "lifts it more than the margin above where it lifts a model that never saw it."
                if r.oracle else "No oracle was given: a sequence has resurfaced when the probe lifts it more than "
                                 "the margin above its own level before the probe."))
    text = intro + "\n\n" + "\n\n".join(r.verdicts)
    if r.skipped:
        text += "\n\n" + "\n\n".join(f"not run: {n} ({why})" for n, why in r.skipped.items())
    if r.notes:
        text += "\n\n" + "\n\n".join(r.notes)
    out = [Section("Robustness probes: does it come back?", text,
                   tables=[("one row per probe (seconds: the unlearned model's and the oracle's together)",
                            results.table())] if r.probes else [])]
    for name, p in r.probes.items():
        frame = results.frame[results.frame["probe"] == name]
        details = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in p.details.items())
        sec = Section(f"Probe {name}: {p.title}",
                      f"{p.verdict}\n\nMeasured on the {p.measured_on} ({p.sequences} sequences); {details}; "
                      f"{p.seconds:g} s on the unlearned model" + (f", {p.oracle_seconds:g} s on the oracle"
                                                                    if p.oracle_seconds is not None else "") + ".",
                      tables=[("mean of each measure", measures_table(p)),
                              (f"{p.measure} per sequence", sequence_table(frame, p))])
        if name in images:
            sec.images.append((f"{name}: each forget sequence before and after the probe", images[name]))
        out.append(sec)
    return out
