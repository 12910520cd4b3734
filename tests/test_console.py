"""What a person sees: progress lines when the output is not a terminal, tables readable at 80 columns."""

from __future__ import annotations

import io
import time

import pandas as pd
from rich.console import Console

from unmemorize.progress import PlainProgress, make_progress, task
from unmemorize.report.console import frame_tables


def test_without_a_terminal_progress_is_plain_lines_that_keep_coming():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    progress = make_progress(console, interval=0.05)
    assert isinstance(progress, PlainProgress)
    with progress:
        with task(progress, "teacher-forced pass", 4) as bar:
            bar.advance(1)
            time.sleep(0.3)  # one long step: the heartbeat still writes
            bar.advance(3)
    lines = out.getvalue().splitlines()
    assert lines[0] == "teacher-forced pass … (0/4)"
    assert any(line.startswith("teacher-forced pass: 1/4") for line in lines)  # written during the long step
    assert lines[-1].startswith("teacher-forced pass: 4/4") and lines[-1].endswith("· done")
    assert all("/s" in line for line in lines[1:])  # each line gives the rate


def test_a_terminal_gets_rich_bars():
    from rich.progress import Progress

    assert isinstance(make_progress(Console(file=io.StringIO(), force_terminal=True)), Progress)


def test_wide_tables_are_split_at_80_columns_not_cut():
    df = pd.DataFrame({"model": ["planted (before)", "GA", "SGA"], **{f"column {i} with a long name": [0.123456, 1.5, float("nan")]
                                                                       for i in range(9)}})
    console = Console(file=io.StringIO(), width=80, record=True)
    tables = frame_tables(df, "Before and after unlearning", width=80)
    assert len(tables) > 1
    for t in tables:
        console.print(t)
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    assert text.count("planted (before)") == len(tables)  # the key column repeats in every part
    for i in range(9):
        assert f"column {i} with a long name" in text
    assert "0.123" in text and "—" in text  # 3 decimals, NaN as a dash
