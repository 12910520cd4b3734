"""Tables for a terminal: readable at 80 columns, not cut into "pla…" and "0.8…".

A table wider than the terminal is split into several tables of whole columns, each repeating the
first (key) column, instead of letting rich shorten every cell.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table


def _cell(v) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def frame_tables(df: pd.DataFrame, title: str, width: int = 80) -> list[Table]:
    """``df`` as rich tables no wider than ``width``: floats to 3 decimals, NaN as —."""
    cells = {c: [_cell(v) for v in df[c].tolist()] for c in df.columns}
    need = {c: max([len(str(c)), *map(len, cells[c])]) + 3 for c in df.columns}  # padding and a border
    cols = list(df.columns)
    if not cols:
        return []
    key, rest = cols[0], cols[1:]
    chunks: list[list] = [[]]
    used = need[key] + 1
    for c in rest:
        if chunks[-1] and used + need[c] > width:
            chunks.append([])
            used = need[key] + 1
        chunks[-1].append(c)
        used += need[c]
    tables = []
    for i, chunk in enumerate(chunks):
        t = Table(title=title if i == 0 else None, title_justify="left")
        for c in [key, *chunk]:
            t.add_column(str(c), justify="left" if c == key else "right", no_wrap=True)
        for r in range(len(df)):
            t.add_row(*[cells[c][r] for c in [key, *chunk]])
        tables.append(t)
    return tables


def print_frame(console: Console, df: pd.DataFrame, title: str) -> None:
    for t in frame_tables(df, title, console.width):
        console.print(t)


def print_run(console: Console, record, out: str | Path) -> None:
    """What `unmemorize unlearn` says at the end: the stop reason, the forget set before → after, the
    unseen reference, the attacks, where it wrote."""
    u = record.unlearning
    b, a = u.before, u.after
    console.print(f"[bold]{u.method}[/] ({u.stop_rule} stop): {u.stop_reason}")
    console.print(f"  mean MA {_cell(b.mean)} → {_cell(a.mean)} (τ = {record.tau:.3f}, distance "
                  f"{_cell(a.distance_to_tau)} points); outside the band: {b.c_low}+{b.c_high} → {a.c_low}+{a.c_high} "
                  f"(low+high); {u.steps} steps, {u.seconds:.1f} s")
    if record.reference_ma_before is not None:
        console.print(f"  unseen reference mean MA {_cell(record.reference_ma_before)} → {_cell(record.reference_ma_after)}")
    attacks = attack_frame(record)
    if attacks is not None:
        print_frame(console, attacks, "Can an attacker tell? (AUC 0.5 = chance)")
    if record.oracle is not None:
        console.print("[bold]Against the retrain oracle[/] (the model that never saw the forget set):")
        for line in record.oracle.verdicts:
            console.print(f"  {line}", highlight=False)
    for note in record.attacks.notes + record.notes:
        console.print(f"[yellow]note[/]: {note}")
    console.print(f"  wrote {out}" + (" (model in model/)" if record.spec.get("save") else ""))


def attack_frame(record) -> pd.DataFrame | None:
    """AUC before and after per attack, and TPR at the first FPR after."""
    before, after = record.attacks.before or {}, record.attacks.after or {}
    names = list(dict.fromkeys([*before, *after]))
    if not names:
        return None
    fpr = record.attacks.fprs[0] if record.attacks.fprs else None
    rows = []
    for n in names:
        row = {"attack": n, "AUC before": _auc(before.get(n)), "AUC after": _auc(after.get(n))}
        if fpr is not None:
            got = after.get(n).tpr.get(f"{fpr:g}") if n in after else None
            row[f"TPR@{100 * fpr:g}% after"] = got.value if got else None
        row["below chance"] = "yes" if n in after and after[n].below_chance else ""
        rows.append(row)
    return pd.DataFrame(rows)


def _auc(summary) -> float | None:
    return None if summary is None else summary.auc.value
