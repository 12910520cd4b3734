"""What a scan gives back: the ranked table, the documents, the forget file, the histogram, the report.

* ``top.csv``/``.parquet``: the most memorized windows (the top k by MA − τ, and every window at or
  above ``--above``), ranked, with document id, token and character offsets, MA, loss, τ, EL_n,
  exact extraction and the window's text;
* ``documents.csv``/``.parquet``: one row per document, ranked by its best window;
* ``forget.jsonl``: the ranked windows as ``{"id", "text", …}``, ready for ``unmemorize unlearn --forget``;
* ``windows/``: every window's row (a Parquet dataset: ``pandas.read_parquet(".../windows")``);
* ``histogram.png`` (the windows' MA against the reference's, τ and the band), ``summary.json``,
  ``reference_profile.parquet``, ``report.html``, ``manifest.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from unmemorize.scan.rank import candidates, rank_order

TOP_COLUMNS = ("rank", "id", "source", "doc", "token_offset", "char_offset", "length", "ma", "tau", "excess", "loss",
               "el", "el_status", "extraction_prefix", "extraction_suffix", "extraction_matched", "extraction_exact",
               "verdict", "group", "text")
EXTRACTABLE, ABOVE, AT_OR_BELOW = "extractable", "above τ", "at or below τ"


def verdict(ma: float, tau: float, hi: float) -> str:
    return EXTRACTABLE if ma >= hi else ABOVE if ma > tau else AT_OR_BELOW


# ---------------------------------------------------------------- reading the chunks back


def _documents(frame: pd.DataFrame, hi: float) -> pd.DataFrame:
    """Per (source, doc) of a frame of windows: counts, sums and the best window's row (mergeable)."""
    order = rank_order(frame["excess"], frame["loss"], frame["index"])
    best = frame.iloc[order].drop_duplicates(["source", "doc"])
    cols = ["source", "doc", "id", "index", "ma", "tau", "excess", "loss"] + (["group"] if "group" in frame else [])
    best = best[cols].rename(columns={"id": "best_window", "ma": "best_ma", "excess": "best_excess",
                                      "loss": "best_loss"})
    agg = frame.assign(extractable=frame["ma"] >= hi).groupby(["source", "doc"], sort=False).agg(
        windows=("ma", "size"), ma_sum=("ma", "sum"), extractable_windows=("extractable", "sum")).reset_index()
    return best.merge(agg, on=["source", "doc"])


def _merge_documents(parts: list[pd.DataFrame]) -> pd.DataFrame:
    docs = pd.concat(parts, ignore_index=True)
    sums = docs.groupby(["source", "doc"], sort=False)[["windows", "ma_sum", "extractable_windows"]].sum()
    best = docs.iloc[rank_order(docs["best_excess"], docs["best_loss"], docs["index"])]
    best = best.drop_duplicates(["source", "doc"]).drop(columns=["windows", "ma_sum", "extractable_windows"])
    out = best.merge(sums.reset_index(), on=["source", "doc"])
    out["mean_ma"] = out.pop("ma_sum") / out["windows"]
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out.drop(columns=["index"]).reset_index(drop=True)


def collect(store, spec, levels) -> dict:
    """From the chunks on disk: the candidates (with tokens), every window's MA, the documents. Read
    by the main process and handed to the others (the candidates' profile is a collective)."""
    from unmemorize import distributed

    bundle = None
    if distributed.is_main():
        cands, mas, docs = [], [], []
        for path in store.chunks():
            df = pd.read_parquet(path)
            mas.append(df["ma"].to_numpy())
            docs.append(_documents(df, spec.band.hi))
            cands.append(df[df["tokens"].notna()])
        bundle = {"candidates": pd.concat(cands, ignore_index=True), "ma": np.concatenate(mas),
                  "documents": _merge_documents(docs)}
    d = distributed.current()
    return d.gather_objects(bundle)[0] if d is not None else bundle


def unique_ids(frame: pd.DataFrame) -> list[str]:
    """Window ids made unique for a forget file: the file in front of an id that two files share
    (``doc@offset`` twice), and ``#2``, ``#3`` … after one that a file repeats (records with one id)."""
    dup = frame["id"].duplicated(keep=False)
    ids = [f"{s}:{i}" if d else i for i, s, d in zip(frame["id"], frame["source"], dup, strict=True)]
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}#{seen[i]}")
    return out


def rank_table(model, tokenizer, cands: pd.DataFrame, spec, levels, progress=None) -> pd.DataFrame:
    """The ranked windows: the global top k and those at or above the level, with EL_n and extraction."""
    from unmemorize.data import SequenceSet
    from unmemorize.memorization import profile
    from unmemorize.scan.measure import pad

    level = cands["level"].to_numpy() if spec.above is not None else None
    keep = candidates(cands["excess"], cands["loss"], cands["index"], cands["ma"], level, spec.top)
    table = cands[keep]
    table = table.iloc[rank_order(table["excess"], table["loss"], table["index"])].reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table["id"] = unique_ids(table)
    tokens = [list(t) for t in table["tokens"]]
    table["text"] = tokenizer.batch_decode(tokens) if tokens else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if tokens:
        ids, lengths = pad(tokens, pad_id)
        seqs = SequenceSet(list(table["id"]), ids, lengths, list(table["text"]), pd.DataFrame(index=range(len(table))),
                           "scan candidates", "", int(pad_id))
        metrics = tuple(m for m in spec.profile.metrics if m in ("el", "extraction"))
        if metrics:
            prof = profile(model, seqs, spec.profile.replace(metrics=metrics), progress, spec.band)
            n = spec.profile.el_n
            for col in (f"el_{n}", "el_status", "extraction_prefix", "extraction_suffix", "extraction_matched",
                        "extraction_exact"):
                if col in prof:
                    table["el" if col == f"el_{n}" else col] = prof[col].to_numpy()
    table["verdict"] = [verdict(g, t, spec.band.hi) for g, t in zip(table["ma"], table["tau"])]
    first = [c for c in TOP_COLUMNS if c in table]
    return table[first + [c for c in table if c not in first and c != "tokens"]]


# ---------------------------------------------------------------- files


def forget_records(result) -> list[dict]:
    """forget.jsonl's rows: id and text (what ``unlearn`` reads), where they came from, MA at scan time."""
    out = []
    for _, r in result.top.iterrows():
        row = {"id": r["id"], "text": r["text"], "source": r["source"], "doc": r["doc"],
               "token_offset": int(r["token_offset"]), "char_offset": int(r["char_offset"]),
               "scan_ma": float(r["ma"])}
        if result.group_field and r.get("group") is not None:
            row[result.group_field] = r["group"]
        out.append(row)
    return out


def summary(result) -> dict:
    top = result.top
    exact = int(top["extraction_exact"].sum()) if "extraction_exact" in top else None
    return {"tau": result.levels.tau, "tau_source": result.levels.source, "tau_by_group": result.levels.by_group,
            "windows": int(len(result.ma)), "extractable_windows": int((result.ma >= result.band.hi).sum()),
            "mean_ma": float(np.nanmean(result.ma)), "ranked": int(len(top)), "exact_extractions_ranked": exact,
            "documents": int(len(result.documents)), **result.counts, **result.timings,
            "band": [result.band.lo, result.band.hi], "warnings": result.warnings}


def histogram(path: Path, result) -> Path:
    """Share of windows per MA bin (log scale: the memorized tail shows), the reference's beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unmemorize.report.plots import draw_band

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    bins = np.linspace(0, 1, 41)
    groups = {"corpus windows": result.ma}
    if len(result.levels.reference):
        groups["reference (unseen)"] = result.levels.reference["ma"].to_numpy()
    for name, values in groups.items():
        v = np.asarray(values, dtype=float)
        v = v[~np.isnan(v)]
        if len(v):
            ax.hist(v, bins=bins, weights=np.full(len(v), 1 / len(v)), alpha=0.55, label=f"{name} (n={len(v):,})",
                    histtype="stepfilled" if name == "corpus windows" else "step", lw=1.5)
    draw_band(ax, result.levels.tau, result.band)
    ax.set_yscale("log")
    sizes = [np.isfinite(np.asarray(v, dtype=float)).sum() for v in groups.values()]
    ax.set_ylim(0.5 / max(max(sizes), 1), 1.5)  # one window of the largest set still shows
    ax.set_xlim(0, 1)
    ax.set_xlabel("memorization accuracy g(x) of a window")
    ax.set_ylabel("share of windows")
    ax.set_title("Windows of the corpus against unseen text")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _link(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def write_scan(run, result, spec, lm, store) -> None:
    """Every file of the run folder (see the module docstring)."""
    from unmemorize.report.html import write_report
    from unmemorize.runs import atomic_write_text, build_manifest, write_frame, write_json

    write_frame(run.path("top"), result.top)
    write_frame(run.path("documents"), result.documents)
    atomic_write_text(run.path("forget.jsonl"),
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in forget_records(result)))
    folder = run.path("windows")
    folder.mkdir(exist_ok=True)
    for p in store.chunks():
        _link(p, folder / p.name)
    if len(result.levels.reference):
        write_frame(run.path("reference_profile"), result.levels.reference)
    facts = summary(result)
    write_json(run.path("summary.json"), facts)
    image = histogram(run.path("histogram.png"), result)
    options = spec.model_dump(mode="json", exclude={"model", "corpus", "reference"})
    write_json(run.path("manifest.json"), build_manifest(
        "scan", options, {"model": lm.describe(), "corpus": [str(p) for p in spec.corpus],
                          "reference": result.levels.source}, device=spec.model.device))
    corpus = ", ".join(map(str, spec.corpus))
    write_report(run.path("report.html"), "unmemorize scan", sections(result, image),
                 subtitle=f"model {lm.name} · corpus {corpus} · τ from {result.levels.source}")


# ---------------------------------------------------------------- words and tables


def summary_rows(result) -> list[tuple[str, str]]:
    s, t = summary(result), result.timings
    rows = [("documents (files read, skipped)", f"{s['documents']:,} ({s['files_read']}, {s['files_skipped']})"),
            ("windows measured", f"{s['windows']:,}"),
            ("windows dropped: short, exact dup, near dup",
             f"{s['too_short']:,}, {s['exact_duplicates']:,}, {s['near_duplicates']:,}"),
            ("τ (unseen reference)", f"{s['tau']:.3f}"),
            ("mean MA of the windows", f"{s['mean_ma']:.3f}"),
            (f"extractable windows (MA ≥ {result.band.hi:.2f})", f"{s['extractable_windows']:,}"),
            ("ranked windows (top, --above)", str(s["ranked"]))]
    if s["exact_extractions_ranked"] is not None:
        rows.append(("exact extractions among the ranked", str(s["exact_extractions_ranked"])))
    if t["windows_measured"]:
        rows.append(("speed (this run)", f"{t['windows_per_s']:,.1f} windows/s, {t['tokens_per_s']:,.0f} tokens/s"))
    if t["chunks_resumed"]:
        rows.append(("chunks from an interrupted run", str(t["chunks_resumed"])))
    for g, v in sorted(result.levels.by_group.items()):
        rows.append((f"τ[{g}]", f"{v:.3f}"))
    return rows


def table_view(result, rows: int, text: int = 60) -> pd.DataFrame:
    """The ranked table for a person: the columns that fit, the text shortened."""
    cols = [c for c in ("rank", "id", "char_offset", "ma", "tau", "el", "extraction_matched", "verdict", "text")
            if c in result.top]
    view = result.top[cols].head(rows).copy()
    if "text" in view:
        view["text"] = [" ".join(t.split())[:text] for t in view["text"]]
    return view.rename(columns={"char_offset": "char", "el": f"EL_{result.el_n}", "extraction_matched": "extr."})


def console_tables(result, show: int) -> list[tuple[str, pd.DataFrame]]:
    out = [(f"The most memorized windows (MA − τ{' of the group' if result.group_field else ''})",
            table_view(result, show, text=40).drop(columns=["text"], errors="ignore"))]
    out.append(("Summary", pd.DataFrame(summary_rows(result), columns=["what", "value"])))
    return out


def sections(result, image: Path) -> list:
    from unmemorize.report.html import Section

    lv = result.levels
    text = (f"Every window of T tokens of the corpus was measured; τ = {lv.tau:.3f} is the model's mean MA on "
            f"{lv.source}. A window is extractable when its MA ≥ {result.band.hi:.2f}. The table ranks windows by "
            f"MA − τ{' of their group' if result.group_field else ''}; forget.jsonl holds them, ready for "
            "`unmemorize unlearn --forget`.")
    if result.warnings:
        text += "\n\nWarnings: " + " | ".join(result.warnings)
    top = result.top.drop(columns=[c for c in ("index", "level", "excess") if c in result.top])
    return [
        Section("Summary", text, tables=[("", pd.DataFrame(summary_rows(result), columns=["what", "value"]))],
                images=[("MA of the corpus windows and of unseen reference text; τ and the band", image)]),
        Section("The most memorized windows", "Offsets: the window's first token in its document (tokens, "
                "characters). Extraction: greedy continuation of the window's prefix, matched tokens of its suffix.",
                tables=[("", top)]),
        Section("Documents", "Each document's best window; the first 50.",
                tables=[("", result.documents.head(50))]),
    ]
