"""The paper's tables and plots from experiment run folders (docs/method.md §2.8, §7).

One table per (model, forget set, size): rows = methods (× stop rule), columns = the paper's
aggregates, each as mean ± the half-width of a 95% Student-t interval over the runs of the cell
(the splits, and seeds if several):

    mean = Σ v / n,   half = t_{0.975, n−1} · s / √n,   s = sample std (ddof = 1)

— the analysis script's interval (it hard-codes n = 5, t = 2.776); with one run there is no interval.
NaN values (a part that was not run, a TPR the reference set cannot resolve) are left out of n.

Pure parts: :func:`aggregate`, :func:`table_cells` (the interval is :func:`unmemorize.stats.t_interval`).
Readers and writers: :func:`collect_run_dirs`, :func:`load_runs`, :func:`write_experiment_report`
(results.md, results.csv, report.html with its PNG plots).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from unmemorize.errors import UserError
from unmemorize.report.html import Section, write_report
from unmemorize.report.plots import plt
from unmemorize.runs import atomic_write_text
from unmemorize.stats import t_interval
from unmemorize.thresholds import Band

GROUP = ("model", "forget", "size", "method", "stop")
PAPER_TASKS = frozenset(("piqa", "hellaswag", "arc_easy", "arc_challenge", "copa", "winogrande", "mathqa", "pubmed_qa",
                         "lambada", "wizard_of_wikipedia", "empathetic_dialogues", "blended_skill_talk",
                         "wizard_of_internet"))  # summarised by the aggregates; the per-task plot is for the others
TABLE_GROUP = ("model", "forget", "size")

# (metrics-row column, table header, digits). The paper's columns (§7) plus the attacks.
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("average_acc", "avg accuracy", 3),
    ("average_f1", "avg F1", 3),
    ("average_perplexity", "dialogue CE (nats)", 3),
    ("c", "c(D_f)", 1),
    ("c_low", "c_low", 1),
    ("c_high", "c_high", 1),
    ("mean_ma", "mean MA", 3),
    ("distance_to_tau", "distance to τ (points)", 2),
    ("steps", "steps", 1),
    ("seconds", "seconds", 1),
    ("miau_auc", "MIAU AUC", 3),
    ("miau_tpr@1%", "MIAU TPR@1%FPR", 3),
)

HTML_TABLES = (("Forgetting and privacy", ("c", "c_low", "c_high", "mean_ma", "distance_to_tau", "miau_auc", "miau_tpr@1%")),
               ("Utility and cost", ("average_acc", "average_f1", "average_perplexity", "steps", "seconds")))


# ---------------------------------------------------------------- pure aggregation


def aggregate(frame: pd.DataFrame, group: Sequence[str] = GROUP, metrics: Sequence[str] | None = None,
              confidence: float = 0.95) -> pd.DataFrame:
    """One row per group: for each metric ``m`` the columns ``m`` (mean), ``m_ci`` (half-width) and
    ``m_n`` (runs with a value), plus ``runs`` and ``splits``. Groups keep their first-seen order."""
    metrics = [m for m in (metrics or [c for c, _, _ in COLUMNS]) if m in frame.columns]
    group = [g for g in group if g in frame.columns]
    rows = []
    for keys, grp in frame.groupby(group, sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row = dict(zip(group, keys))
        row["runs"] = len(grp)
        if "split" in grp:
            row["splits"] = ",".join(sorted(map(str, grp["split"].unique())))
        for m in metrics:
            mean, half, n = t_interval(grp[m], confidence)
            row[m], row[f"{m}_ci"], row[f"{m}_n"] = mean, half, n
        rows.append(row)
    return pd.DataFrame(rows)


def format_cell(mean: float, half: float, digits: int, sep: str = " ± ") -> str:
    """'mean ± half' ('mean' alone without an interval; 'n/a' without a value)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if half is None or (isinstance(half, float) and math.isnan(half)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}{sep}{half:.{digits}f}"


def table_cells(agg: pd.DataFrame, columns: Sequence[tuple[str, str, int]] = COLUMNS, sep: str = " ± ") -> pd.DataFrame:
    """The aggregated rows of one table as display strings: method (and stop rule), then each column
    (``sep`` between mean and half-width; the HTML uses non-breaking spaces so a cell never wraps)."""
    show_stop = "stop" in agg and agg["stop"].nunique() > 1
    out = pd.DataFrame({"method": [f"{m} ({s})" if show_stop else str(m)
                                   for m, s in zip(agg["method"], agg.get("stop", [""] * len(agg)))]})
    out["runs"] = agg["runs"].astype(int).to_numpy()
    for col, header, digits in columns:
        if col not in agg:
            continue
        if agg[f"{col}_n"].sum() == 0 and not _measured_elsewhere(agg, col):
            continue  # a part that no run measured (e.g. no utility tasks) gets no column
        out[header] = [format_cell(m, h, digits, sep) for m, h in zip(agg[col], agg[f"{col}_ci"])]
    return out


def _measured_elsewhere(agg: pd.DataFrame, col: str) -> bool:
    """A TPR column stays (as n/a) when its attack ran: the reference set was too small to resolve it."""
    if "_tpr@" not in col:
        return False
    auc = col.split("_tpr@")[0] + "_auc"
    return f"{auc}_n" in agg and agg[f"{auc}_n"].sum() > 0


# ---------------------------------------------------------------- reading run folders


def collect_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders from the arguments: a run folder itself, or a folder holding run folders (an
    experiment's output), searched two levels deep. Raises :class:`UserError` when none is found."""
    from unmemorize.record import RECORD, is_record

    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p} does not exist")
        if is_record(p):
            found.append(p)
            continue
        inner = sorted({s.parent for pattern in (f"*/{RECORD}", f"*/*/{RECORD}") for s in p.glob(pattern)
                        if is_record(s.parent)})
        if not inner:
            raise UserError(f"{p} is neither a run folder nor a folder of them (no {RECORD} written by "
                            "`unmemorize unlearn` or `unmemorize run`)")
        found.extend(inner)
    return list(dict.fromkeys(found))


def load_runs(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run (:meth:`unmemorize.record.RunRecord.row`) plus its folder, in the config's order
    (models, forget sets, splits, methods, stops, seeds)."""
    from unmemorize.record import read_record

    records = [(Path(d), read_record(d)) for d in run_dirs]
    if not records:
        raise UserError("no runs to report")
    records.sort(key=lambda fr: tuple(fr[1].order))
    return pd.DataFrame([{**r.row(), "folder": str(f)} for f, r in records])


# ---------------------------------------------------------------- plots

_COLOURS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _colour(methods: list[str], m: str) -> str:
    return _COLOURS[methods.index(m) % len(_COLOURS)]


def _panels(n: int, width: float = 3.6, height: float = 3.3):
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), dpi=100, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _finish(fig, path: Path, suptitle: str) -> Path:
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def before_after_plot(path: Path, runs: pd.DataFrame, title: str) -> Path:
    """Per-sequence MA before (x) against after (y), one panel per method, every run of the cell
    pooled; τ and the acceptable band drawn on the after axis."""
    methods = list(dict.fromkeys(runs["method"]))
    fig, axes = _panels(len(methods))
    for ax, m in zip(axes, methods):
        sub = runs[runs["method"] == m]
        band = Band(float(sub["band_lo"].iloc[0]), float(sub["band_hi"].iloc[0]))
        ax.axhspan(band.lo, band.hi, color="tab:green", alpha=0.08)
        ax.axhline(band.lo, color="tab:blue", ls=":", lw=1)
        ax.axhline(band.hi, color="tab:red", ls=":", lw=1)
        ax.axhline(float(sub["tau"].mean()), color="black", ls="--", lw=1.1, label=f"τ = {sub['tau'].mean():.3f}")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.7, ls="-", alpha=0.5)
        for folder in sub["folder"]:
            b = pd.read_parquet(Path(folder) / "profile_before.parquet")
            a = pd.read_parquet(Path(folder) / "profile_after.parquet")
            j = b[["id", "ma"]].merge(a[["id", "ma"]], on="id", suffixes=("_before", "_after"))
            ax.scatter(j["ma_before"], j["ma_after"], s=12, alpha=0.7, color=_colour(methods, m))
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="MA before", ylabel="MA after", title=m)
        ax.legend(fontsize=7, loc="upper left")
    return _finish(fig, path, f"{title}: per-sequence MA before and after unlearning")


def trajectory_panels(path: Path, runs: pd.DataFrame, title: str) -> Path:
    """Mean MA (solid) and the share of sequences at or above the band's top (dotted) per step, one
    line per run, one panel per method; τ dashed."""
    methods = list(dict.fromkeys(runs["method"]))
    fig, axes = _panels(len(methods))
    for ax, m in zip(axes, methods):
        sub = runs[runs["method"] == m]
        ax.axhline(float(sub["tau"].mean()), color="black", ls="--", lw=1.1, label="τ")
        for _, r in sub.iterrows():
            steps = pd.read_parquet(Path(r["folder"]) / "steps.parquet")
            ax.plot(steps["step"], steps["mean_ma"], color=_colour(methods, m), lw=1.3, alpha=0.8)
            ax.plot(steps["step"], steps["c_high"] / max(int(r["size"]), 1), color=_colour(methods, m), lw=0.9,
                    ls=":", alpha=0.8)
        ax.set(ylim=(-0.02, 1.02), xlabel="optimizer step", ylabel="mean MA (—), share ≥ hi (···)", title=m)
        ax.legend(fontsize=7, loc="upper right")
    return _finish(fig, path, f"{title}: trajectories (one line per run)")


def roc_panels(path: Path, runs: pd.DataFrame, title: str) -> Path | None:
    """ROC of each attack after unlearning, one panel per attack, one curve per run coloured by method."""
    from unmemorize.attacks.scoring import roc

    frames = {}
    for folder in runs["folder"]:
        f = Path(folder) / "attack_scores.parquet"
        if f.is_file():
            frames[folder] = pd.read_parquet(f)
    if not frames:
        return None
    attacks = [c for c in next(iter(frames.values())).columns
               if c not in ("set", "id", "member") and "." not in c]
    if not attacks:
        return None
    methods = list(dict.fromkeys(runs["method"]))
    fig, axes = _panels(len(attacks))
    for ax, name in zip(axes, attacks):
        seen = set()
        for _, r in runs.iterrows():
            df = frames.get(r["folder"])
            if df is None or name not in df:
                continue
            ok = df[name].notna()
            labels, scores = df.loc[ok, "member"].astype(int).to_numpy(), df.loc[ok, name].to_numpy(float)
            if labels.min() == labels.max():
                continue
            fpr, tpr = roc(labels, scores)
            m = r["method"]
            ax.plot(fpr, tpr, color=_colour(methods, m), lw=1.2, alpha=0.75, label=None if m in seen else m)
            seen.add(m)
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="true-positive rate",
               title=f"{name} after unlearning")
        ax.legend(fontsize=7, loc="lower right")
    return _finish(fig, path, f"{title}: ROC curves (members = forget set, non-members = reference)")


def utility_delta_plot(path: Path, agg: pd.DataFrame, title: str) -> Path | None:
    """Change of each utility aggregate (after − before), mean ± 95% t-interval per method."""
    names = [(c, h) for c, h in (("average_acc_delta", "Δ avg accuracy"), ("average_f1_delta", "Δ avg F1"),
                                 ("average_perplexity_delta", "Δ dialogue CE (nats)"))
             if c in agg and agg[f"{c}_n"].sum() > 0]
    # per-task metrics of tasks outside the paper's aggregates (metrics_row's "task/metric_delta")
    names += [(c, "Δ " + c[: -len("_delta")]) for c in agg.columns
              if "/" in c and c.endswith("_delta") and agg[f"{c}_n"].sum() > 0
              and c.split("/")[0] not in PAPER_TASKS]
    if not names:
        return None
    fig, axes = _panels(len(names), width=3.8)
    labels = [str(m) for m in agg["method"]]
    for ax, (col, header) in zip(axes, names):
        xs = np.arange(len(agg))
        err = np.nan_to_num(agg[f"{col}_ci"].to_numpy(float))
        ax.bar(xs, agg[col].to_numpy(float), yerr=err, color=[_colour(labels, m) for m in labels], capsize=3)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(header, fontsize=9)
    return _finish(fig, path, f"{title}: utility change after unlearning (mean ± 95% t-interval)")


# ---------------------------------------------------------------- writers


def _slug(*parts) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(map(str, parts))).strip("-")


def _title(keys: dict) -> str:
    return f"{keys['model']} · {keys['forget']} (|D_f| = {keys['size']})"


def markdown_tables(agg: pd.DataFrame) -> str:
    """One Markdown table per (model, forget set, size), cells 'mean ± 95% t half-width'."""
    out = []
    for keys, grp in agg.groupby(list(TABLE_GROUP), sort=False):
        k = dict(zip(TABLE_GROUP, keys))
        cells = table_cells(grp)
        splits = ", ".join(sorted(set(",".join(grp.get("splits", pd.Series([""]))).split(","))))
        out.append(f"### {_title(k)}\n\nruns per row over splits {splits}; mean ± half-width of the 95% Student-t "
                   "interval (none with one run)\n")
        out.append(_markdown(cells))
    return "\n\n".join(out) + "\n"


def _markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


@dataclass
class ExperimentReport:
    """What :func:`write_experiment_report` wrote, for callers that keep or quote parts of it."""

    html: Path
    markdown: str  # the tables, one per (model, forget set, size)
    runs: pd.DataFrame  # one row per run
    aggregated: pd.DataFrame  # one row per (model, forget set, size, method, stop)
    plots: dict[tuple, dict[str, Path]]  # (model, forget, size) → {"before_after": …, "trajectories": …, …}


def write_experiment_report(run_dirs: Iterable[str | Path], out_dir: str | Path, title: str = "Experiment report",
                            lead: Sequence[Section] = (), subtitle: str | None = None) -> ExperimentReport:
    """Aggregate the runs and write ``results.md``, ``results.csv`` (every aggregate with its ``_ci``
    and ``_n``), ``runs.csv`` (one row per run) and ``report.html`` (tables and plots, self-contained)
    into ``out_dir``. ``run_dirs`` may also name folders of run folders. ``lead``: sections placed
    before the summary (the demo's lab and audit)."""
    folders = collect_run_dirs(run_dirs)
    runs = load_runs(folders)
    metrics = [c for c, _, _ in COLUMNS] + [c for c in runs.columns if c.endswith("_delta")]
    agg = aggregate(runs, GROUP, metrics)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = out / "images"
    images.mkdir(exist_ok=True)
    atomic_write_text(out / "results.csv", agg.to_csv(index=False))
    atomic_write_text(out / "runs.csv", runs.to_csv(index=False))
    md = markdown_tables(agg)
    atomic_write_text(out / "results.md", f"# {title}\n\n{len(runs)} runs.\n\n{md}")

    sections = [*lead, Section("Summary", text=(
        f"{len(runs)} runs: models {', '.join(map(str, runs['model'].unique()))}; forget sets "
        f"{', '.join(map(str, runs['forget'].unique()))}; methods {', '.join(map(str, runs['method'].unique()))}.\n\n"
        "Each cell is the mean over the runs of a row (splits, and seeds if several) ± the half-width of the "
        "95% Student-t interval, t_{0.975, n−1}·s/√n (docs/method.md §2.8); one run gives no interval. "
        "avg accuracy and avg F1 and dialogue CE are the paper's average_acc, average_f1 and average_perplexity "
        "(mean dialogue cross-entropy in nats) after unlearning; c(D_f) = c_low + c_high counts the sequences "
        "outside the acceptable band; distance to τ = |100·mean MA − 100·τ|; seconds = the unlearning loop's "
        "wall-clock including its measurements."))]
    plots: dict[tuple, dict[str, Path]] = {}
    for keys, grp in agg.groupby(list(TABLE_GROUP), sort=False):
        k = dict(zip(TABLE_GROUP, keys))
        cell_runs = runs[(runs["model"] == k["model"]) & (runs["forget"] == k["forget"]) & (runs["size"] == k["size"])]
        title_k = _title(k)
        slug = _slug(k["model"], k["forget"], k["size"])
        cell = plots.setdefault(tuple(keys), {})
        cell["before_after"] = before_after_plot(images / f"{slug}_before_after.png", cell_runs, title_k)
        cell["trajectories"] = trajectory_panels(images / f"{slug}_trajectories.png", cell_runs, title_k)
        imgs = [("Per-sequence MA before (x) and after (y) unlearning, one panel per method; τ dashed, the "
                 "acceptable band shaded", cell["before_after"]),
                ("Trajectories: mean MA and share of extractable sequences per step", cell["trajectories"])]
        roc_path = roc_panels(images / f"{slug}_roc.png", cell_runs, title_k)
        if roc_path is not None:
            cell["roc"] = roc_path
            imgs.append(("ROC curves of the attacks after unlearning", roc_path))
        util_path = utility_delta_plot(images / f"{slug}_utility.png", grp.reset_index(drop=True), title_k)
        if util_path is not None:
            cell["utility"] = util_path
            imgs.append(("Utility change (after − before unlearning)", util_path))
        tables = []
        for caption, cols in HTML_TABLES:  # the paper's one table, in two halves that fit the page
            chosen = tuple(c for c in COLUMNS if c[0] in cols)
            tables.append((f"{caption} — rows = methods; mean ± 95% t half-width over the runs",
                           table_cells(grp, chosen, sep="\u00a0±\u00a0")))
        sections.append(Section(title_k, tables=tables, images=imgs))
    per_run = runs[["model", "forget", "split", "method", "stop", "seed", "size", "tau",
                    *[c for c in ("mean_ma", "c_low", "c_high", "steps", "seconds", "miau_auc") if c in runs]]]
    sections.append(Section("Runs", tables=[("one row per run", per_run)]))
    html_path = out / "report.html"
    write_report(html_path, title, sections,
                 subtitle=subtitle or f"{len(runs)} runs from {len(set(Path(f).parent for f in folders))} folder(s)")
    return ExperimentReport(html_path, md, runs, agg, plots)
