"""Plots and report sections for an unlearning run (reused by the experiment and attack reports)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from unmemorize.report.html import Section  # noqa: E402
from unmemorize.report.plots import draw_band, histogram  # noqa: E402
from unmemorize.thresholds import EXTRACTABLE, IN_BAND, OVER_FORGOTTEN, verdict  # noqa: E402
from unmemorize.unlearning.loop import UnlearningResult  # noqa: E402

_COLOURS = {EXTRACTABLE: "tab:red", IN_BAND: "tab:green", OVER_FORGOTTEN: "tab:blue"}


def trajectory_plot(path: str | Path, result: UnlearningResult) -> Path:
    """Per-sequence MA against the step (coloured by the final verdict), the mean, τ and the band."""
    traj = result.trajectory
    wide = traj.pivot(index="step", columns="id", values="ma").sort_index()
    final = wide.iloc[-1]
    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=110)
    draw_band(ax, result.tau, result.band, vertical=False)
    for sid in wide.columns:
        ax.plot(wide.index, wide[sid], lw=0.8, alpha=0.55, color=_COLOURS.get(verdict(float(final[sid]), result.band), "grey"))
    ax.plot(wide.index, wide.mean(axis=1), lw=2.2, color="black", label="mean MA")
    phases = traj.groupby("step")["phase"].first()
    for step, (prev, cur) in zip(phases.index[1:], zip(phases.values[:-1], phases.values[1:])):
        if prev != cur and prev != "before":
            ax.axvline(step - 0.5, color="tab:purple", ls="-.", lw=1)
            ax.text(step - 0.5, 1.0, f" {cur}", color="tab:purple", fontsize=8, va="top")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("memorization accuracy g(x)")
    ax.set_title(f"{result.method.name}, stop rule: {result.stop_rule} — {len(wide.columns)} sequences")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def before_after_histogram(path: str | Path, result: UnlearningResult) -> Path:
    return histogram(path, {"before": result.before["ma"].to_numpy(), "after": result.after["ma"].to_numpy()},
                     result.tau, result.band, title=f"{result.method.name}: g(x) before and after")


def per_sequence_table(result: UnlearningResult) -> pd.DataFrame:
    before, after = result.before.set_index("id"), result.after.set_index("id")
    got = result.trajectory.groupby("id")["selected"].sum()
    df = pd.DataFrame({"id": after.index, "ma_before": before.loc[after.index, "ma"].to_numpy(),
                       "ma_after": after["ma"].to_numpy(), "loss_before": before.loc[after.index, "loss"].to_numpy(),
                       "loss_after": after["loss"].to_numpy(), "steps_with_gradient": got.loc[after.index].to_numpy()})
    df["verdict"] = [verdict(float(g), result.band) for g in df["ma_after"]]
    return df.sort_values("ma_before", ascending=False).reset_index(drop=True)


def summary_table(result: UnlearningResult, reference: tuple[float, float] | None = None) -> pd.DataFrame:
    """Before/after: mean, std, c_low, c_high, c, distance to τ (+ the unseen reference's mean MA)."""
    rows = []
    for label, step in (("before", int(result.trajectory["step"].min())), ("after", int(result.trajectory["step"].max()))):
        s = result.summary(step).as_dict()
        row = {"": label, "mean MA": s["mean"], "std": s["std"], "c_low": s["c_low"], "c_high": s["c_high"],
               "c(D_f)": s["c"], "distance to τ": s["distance_to_tau"]}
        if reference is not None:
            row["reference mean MA"] = reference[0 if label == "before" else 1]
        rows.append(row)
    return pd.DataFrame(rows)


def sections(result: UnlearningResult, images: dict[str, Path], reference: tuple[float, float] | None = None) -> list[Section]:
    m = result.method
    o = result.options
    text = (f"Method {m.title} ({m.name}, docs/method.md {m.paper}): {m.description}. "
            f"Stop rule: {result.stop_rule} "
            + ("(the paper's: stop when mean MA < τ)" if result.stop_rule == "mean" else
               "(per sequence: stop when no sequence is at or above the band's top; sequences inside the band "
               "receive no more gradient)")
            + f". τ = {result.tau:.4f}; band [{result.band.lo:g}, {result.band.hi:g}].\n\n"
            f"{result.stop_reason}. {result.steps} optimizer steps in {result.seconds:.1f} s"
            + (f" (resumed at step {result.resumed_from})" if result.resumed_from is not None else "") + ".\n\n"
            f"Harness: the whole forget set per step in micro-batches of {o.micro_batch}, Adam(β = {o.betas[0]}, "
            f"{o.betas[1]}), lr {o.lr:g}, no schedule, dropout off, at most {o.max_steps} steps, seed {result.seed}.")
    if result.rolled_back:
        text += "\n\nA non-finite loss or output stopped the run; the reported model is the last good one."
    if result.events:
        text += "\n\nEvents: " + "; ".join(result.events) + "."
    out = [Section("Unlearning", text, tables=[("Forget set before and after", summary_table(result, reference))],
                   images=[(cap, p) for cap, p in images.items()])]
    out.append(Section("Per step", tables=[("", result.steps_table())]))
    out.append(Section("Per sequence", tables=[("sorted by MA before unlearning", per_sequence_table(result))]))
    return out
