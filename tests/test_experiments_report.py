"""The experiment report's aggregation, checked against hand-computed means and t-intervals."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from unmemorize.errors import UserError
from unmemorize.report.experiments import (
    aggregate,
    collect_run_dirs,
    format_cell,
    markdown_tables,
    table_cells,
)
from unmemorize.stats import t_interval

# t quantiles t_{0.975, df} from a printed table: df = 1, 2, 4
T1, T2, T4 = 12.7062047, 4.3026527, 2.7764451


def test_t_interval_by_hand():
    # [0.2, 0.4, 0.9]: mean 0.5; squared deviations 0.09 + 0.01 + 0.16 = 0.26; s² = 0.26 / 2 = 0.13
    mean, half, n = t_interval([0.2, 0.4, 0.9])
    assert (mean, n) == (pytest.approx(0.5), 3)
    assert half == pytest.approx(T2 * math.sqrt(0.13) / math.sqrt(3), rel=1e-6)
    # five splits, the analysis script's case: t = 2.776, s² = 2.5
    mean, half, n = t_interval([1, 2, 3, 4, 5])
    assert (mean, n) == (3.0, 5) and half == pytest.approx(T4 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    # NaN is left out of n; one value: no interval; nothing: nothing
    mean, half, n = t_interval([3.0, float("nan"), 5.0])
    assert (mean, n) == (4.0, 2) and half == pytest.approx(T1 * math.sqrt(2) / math.sqrt(2), rel=1e-6)
    mean, half, n = t_interval([0.7])
    assert mean == 0.7 and math.isnan(half) and n == 1
    mean, half, n = t_interval([float("nan")])
    assert math.isnan(mean) and math.isnan(half) and n == 0
    # no spread: zero half-width
    assert t_interval([2.0, 2.0, 2.0])[1] == 0.0


def runs_frame() -> pd.DataFrame:
    rows = []
    for method, cs, aucs in (("SGA", [2, 4, 9], [0.6, 0.7, float("nan")]), ("GA", [5, 5, 5], [0.9, 0.8, 0.7])):
        for split, c, auc in zip((0, 1, 2), cs, aucs):
            rows.append({"model": "m", "forget": "jang", "size": 8, "method": method, "stop": "mean", "split": split,
                         "seed": 42, "c": c, "miau_auc": auc, "steps": 10 * (split + 1)})
    rows.append({"model": "m", "forget": "jang", "size": 32, "method": "SGA", "stop": "mean", "split": 0, "seed": 42,
                 "c": 7, "miau_auc": 0.5, "steps": 3})
    return pd.DataFrame(rows)


def test_aggregate_by_hand():
    agg = aggregate(runs_frame(), metrics=["c", "miau_auc", "steps"])
    assert list(zip(agg["size"], agg["method"])) == [(8, "SGA"), (8, "GA"), (32, "SGA")]  # first-seen order
    sga, ga, big = (agg.iloc[i] for i in range(3))
    # SGA, c = 2, 4, 9: mean 5, deviations −3, −1, 4 → s² = 26 / 2 = 13
    assert sga["c"] == 5 and sga["c_n"] == 3 and sga["c_ci"] == pytest.approx(T2 * math.sqrt(13) / math.sqrt(3), rel=1e-6)
    # SGA MIAU AUC: the NaN run is left out: 0.6, 0.7 → mean 0.65, s² = 0.005
    assert sga["miau_auc"] == pytest.approx(0.65) and sga["miau_auc_n"] == 2
    assert sga["miau_auc_ci"] == pytest.approx(T1 * math.sqrt(0.005) / math.sqrt(2), rel=1e-6)
    # steps 10, 20, 30: mean 20, s² = 100
    assert sga["steps"] == 20 and sga["steps_ci"] == pytest.approx(T2 * 10 / math.sqrt(3), rel=1e-6)
    assert ga["c"] == 5 and ga["c_ci"] == 0.0 and ga["miau_auc"] == pytest.approx(0.8)
    assert ga["miau_auc_ci"] == pytest.approx(T2 * 0.1 / math.sqrt(3), rel=1e-6)  # s² = (0.01 + 0 + 0.01) / 2
    assert big["runs"] == 1 and big["c"] == 7 and math.isnan(big["c_ci"]) and big["splits"] == "0"
    assert sga["runs"] == 3 and sga["splits"] == "0,1,2"


def test_cells_and_markdown():
    assert format_cell(0.5, 0.89567, 3) == "0.500 ± 0.896"
    assert format_cell(7.0, float("nan"), 1) == "7.0"
    assert format_cell(float("nan"), float("nan"), 3) == "n/a"
    agg = aggregate(runs_frame(), metrics=["c", "miau_auc", "miau_tpr@1%", "average_acc"])
    frame = runs_frame().assign(**{"miau_tpr@1%": float("nan"), "average_acc": float("nan")})
    agg = aggregate(frame, metrics=["c", "miau_auc", "miau_tpr@1%", "average_acc"])
    cells = table_cells(agg)
    # a part no run measured gets no column; a TPR the reference set could not resolve stays, as n/a
    assert "avg accuracy" not in cells and list(cells["MIAU TPR@1%FPR"]) == ["n/a"] * 3
    assert cells.loc[0, "c(D_f)"] == f"5.0 ± {T2 * math.sqrt(13) / math.sqrt(3):.1f}"
    assert cells.loc[2, "c(D_f)"] == "7.0"
    md = markdown_tables(agg)
    assert md.count("### m · jang") == 2 and "(|D_f| = 8)" in md and "(|D_f| = 32)" in md
    assert "| SGA | 3 | 5.0 ± 9.0 |" in md  # 4.3026527·√13/√3 = 8.96


def test_collect_run_dirs_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        collect_run_dirs([tmp_path / "nope"])
    (tmp_path / "empty" / "x").mkdir(parents=True)
    (tmp_path / "empty" / "x" / "summary.json").write_text('{"kind": "something else"}')
    with pytest.raises(UserError, match="neither a run folder nor a folder of them"):
        collect_run_dirs([tmp_path / "empty"])
