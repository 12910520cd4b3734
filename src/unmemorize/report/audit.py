"""How an audit is shown: a rich table for the terminal, files and HTML sections for the run directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from unmemorize.audit import AuditResult, profile_table, summary_rows
from unmemorize.report.html import Section
from unmemorize.report.plots import histogram
from unmemorize.runs import RunDir, write_frame, write_json
from unmemorize.thresholds import EXTRACTABLE, IN_BAND, OVER_FORGOTTEN, Band

_STYLE = {EXTRACTABLE: "bold red", OVER_FORGOTTEN: "bold blue", IN_BAND: "green"}


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def sequence_table(result: AuditResult, max_rows: int = 40, title: str = "Per-sequence memorization") -> Table:
    df = result.forget.sort_values("ma", ascending=False, na_position="last")
    el_col = f"el_{result.options.el_n}"
    t = Table(title=title, title_justify="left")
    t.add_column("id", overflow="fold")
    t.add_column("MA", justify="right")
    if el_col in df:
        t.add_column(f"EL_{result.options.el_n}", justify="right")
    if "extraction_matched" in df:
        t.add_column("extraction", justify="right")
    if "exposure" in df:
        t.add_column("exposure", justify="right")
    t.add_column("τ", justify="right")
    t.add_column("verdict")
    for _, r in df.head(max_rows).iterrows():
        cells = [str(r["id"]), _fmt(r["ma"])]
        if el_col in df:
            cells.append(_fmt(r[el_col]))
        if "extraction_matched" in df:
            mark = " ✓" if r["extraction_exact"] else ""
            cells.append(f"{int(r['extraction_matched'])}/{int(r['extraction_suffix'])}{mark}")
        if "exposure" in df:
            cells.append(str(int(r["exposure"])))
        cells += [_fmt(r["tau"]), f"[{_STYLE.get(r['verdict'], '')}]{r['verdict']}[/]"]
        t.add_row(*cells)
    if len(df) > max_rows:
        t.caption = f"{len(df) - max_rows} more rows in profile.csv"
    return t


def summary_table(result: AuditResult, title: str = "Summary") -> Table:
    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    for k, v in summary_rows(result):
        t.add_row(k, v)
    return t


def write_audit(run: RunDir, result: AuditResult, tokenizer, band: Band, label: str = "forget set",
                reference_label: str = "reference (unseen)") -> dict[str, Path]:
    """profile.parquet/csv, reference_profile.parquet/csv, summary.json, histogram.png."""
    table = profile_table(result, tokenizer)
    write_frame(run.path("profile"), table)
    if len(result.reference):
        write_frame(run.path("reference_profile"), result.reference)
    write_json(run.path("summary.json"), {
        **result.summary.as_dict(), "tau_global": result.tau, "tau_by_group": result.tau_by_group,
        "tau_el": result.tau_el, "warnings": result.warnings,
        "verdicts": table["verdict"].value_counts().to_dict()})
    groups = {label: result.forget["ma"].to_numpy()}
    if len(result.reference):
        groups[reference_label] = result.reference["ma"].to_numpy()
    hist = histogram(run.path("histogram.png"), groups, result.tau, band,
                     title="Per-sequence memorization accuracy")
    return {"histogram": hist}


def audit_sections(result: AuditResult, tokenizer, images: dict[str, Path], reference_desc: str) -> list[Section]:
    s = result.summary
    table = profile_table(result, tokenizer)
    cols = [c for c in ("id", "length", "exposure", "ma", f"el_{result.options.el_n}", "loss", "extraction_matched",
                        "extraction_suffix", "extraction_exact", "tau", "tau_source", "verdict", "extraction_text")
            if c in table.columns]
    text = (f"τ = {result.tau:.3f}, the mean memorization accuracy of the model on {reference_desc}. "
            f"A sequence is extractable when g(x) ≥ {s.hi:.2f} and over-forgotten (detectably unlearned) "
            f"when g(x) ≤ {s.lo:.2f}. c(D_f) = {s.c} (c_high = {s.c_high}, c_low = {s.c_low}) of {s.sequences}; "
            f"distance to τ = {s.distance_to_tau:.2f} MA points.")
    if result.warnings:
        text += "\n\nWarnings: " + " | ".join(result.warnings)
    return [
        Section("Summary", text, tables=[("", pd.DataFrame(summary_rows(result), columns=["what", "value"]))],
                images=[(f"MA of the forget set and of unseen reference text; τ and the band [{s.lo:.2f}, {s.hi:.2f}]",
                         images["histogram"])]),
        Section("Per-sequence profile", "Sorted by MA. Extraction: greedy continuation of the prefix, "
                "matched tokens of the true suffix.",
                tables=[("", table[cols].sort_values("ma", ascending=False))]),
    ]
