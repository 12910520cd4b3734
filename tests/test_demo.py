"""The main job end to end on a tiny model: plant → audit → GA/SGA through the experiment runner →
attacks → offline utility → one report. The default model runs the same code in `make demo`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from unmemorize.models import save_model
from unmemorize.tiny import tiny_model


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_demo_runs_the_whole_story_on_a_tiny_model(tmp_path, tokenizer, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from unmemorize.commands import demo

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(tmp_path / "cache"))
    model = tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64)
    folder = save_model(model, tokenizer, tmp_path / "tiny")
    app = typer.Typer()
    demo.register(app)
    app.command("noop", hidden=True)(lambda: None)
    out = tmp_path / "demo"
    args = ["demo", "--model", str(folder), "--out", str(out), "--members", "4", "--forget", "2", "--nonmembers", "4",
            "--exposures", "1,32", "--lr", "3e-3", "--methods", "ga,sga,target", "--max-steps", "3", "--neighbours", "2",
            "--unlearn-lr", "1e-3"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "Report:" in res.output
    # the audit: members planted 32 times are more memorized than the unseen records
    by_exposure = pd.read_csv(out / "by_exposure.csv").set_index("exposure")
    assert list(by_exposure.index) == [0, 1, 32]
    assert by_exposure.loc[32, "MA"] > by_exposure.loc[0, "MA"]
    # one experiment run per method, and the comparison: the planted model first, then each method
    table = pd.read_parquet(out / "comparison.parquet")
    assert list(table["model"]) == ["planted (before)", "ga", "sga", "target", "oracle (never saw them)"]
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["method"]) == ["ga", "sga", "target"] and (runs["steps"] <= 3).all()
    assert set(runs.loc[runs["method"] == "target", "stop"]) == {"target"}  # its own rule; the others the demo's
    assert set(runs.loc[runs["method"] != "target", "stop"]) == {"per-sequence"}
    for _, r in runs.iterrows():  # the table is read from the runs, not recomputed
        row = table.set_index("model").loc[r["method"]]
        assert row["mean MA"] == pytest.approx(r["mean_ma"]) and row["c(D_f)"] == r["c"]
        assert 0.0 <= row["miau AUC"] <= 1.0 and 0.0 <= row["reference AUC"] <= 1.0
        assert 0.0 <= row["series acc"] <= 1.0 and row["docs loss"] > 0
    assert table.set_index("model").loc["planted (before)", "c(D_f)"] == runs["c_before"].iloc[0]
    # judged against the retrain oracle: its row holds its own MA and AUCs, each method its gap to it
    oracle = table.set_index("model").loc["oracle (never saw them)"]
    assert 0.0 <= oracle["mean MA"] <= 1.0 and 0.0 <= oracle["loss AUC"] <= 1.0
    for method in ("ga", "sga", "target"):
        row = table.set_index("model").loc[method]
        assert 0.0 <= row["|MA − oracle|"] <= 1.0 and 0.0 <= row["KS p"] <= 1.0 and 0.0 <= row["retain MA"] <= 1.0
    assert (out / "data" / "forget.jsonl").read_text().count("\n") == 2  # the records to forget
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"plant", "audit", "unlearn + attacks + utility"}
    html = (out / "report.html").read_text()
    for heading in ("The lab", "Audit before unlearning", "Unlearning, attacks and utility", "Runs"):
        assert heading in html
    # the config it ran is kept beside the results, and validates on its own
    from unmemorize.experiments import load_config, missing_inputs, plan

    cfg = load_config(out / "demo.yaml")
    assert [m.name for m in cfg.methods] == ["ga", "sga", "target"] and missing_inputs(cfg) == []
    assert cfg.target_rule == "reference-model"  # target's levels come from the model before planting
    # target's retain term reads the records the user keeps; GA and SGA read no retain data
    keep = (out / "data" / "keep.jsonl").read_text().splitlines()
    assert len(keep) == 2 and not set(keep) & set((out / "data" / "forget.jsonl").read_text().splitlines())
    from unmemorize.experiments.grid import expand

    retains = {r.spec.method.name: r.spec.retain for r in expand(cfg)}
    assert retains["target"] is not None and Path(retains["target"]).name == "keep.jsonl"
    assert retains["ga"] is None and retains["sga"] is None
    assert all(p.done for p in plan(cfg, out / "runs"))  # `unmemorize run demo.yaml` finds them finished


def test_exposure_table_is_the_group_means_by_hand():
    """The demo's by-exposure table: non-members as exposure 0, each cell the plain mean of its group."""
    from unmemorize.lab.demo import exposure_table

    forget = pd.DataFrame({"exposure": [1, 1, 64], "ma": [0.5, 0.7, 1.0], "el_10": [0.0, 0.2, 0.9],
                           "extraction_exact": [False, False, True], "extraction_matched": [10, 30, 80],
                           "extraction_suffix": [80, 80, 80]})
    reference = pd.DataFrame({"ma": [0.4, 0.6], "extraction_exact": [False, False],
                              "extraction_matched": [0, 8], "extraction_suffix": [80, 80]})
    t = exposure_table(forget, reference, "el_10").set_index("exposure")
    assert list(t.index) == [0, 1, 64] and list(t["sequences"]) == [2, 2, 1]
    assert t.loc[0, "who"] == "non-members" and t.loc[1, "who"] == "members"
    assert t.loc[0, "MA"] == pytest.approx(0.5) and t.loc[1, "MA"] == pytest.approx(0.6)
    assert t.loc[1, "el_10"] == pytest.approx(0.1) and pd.isna(t.loc[0, "el_10"])
    assert list(t["exact extraction"]) == [0.0, 0.0, 1.0]
    assert t.loc[0, "suffix tokens matched"] == pytest.approx(0.05)  # (0/80 + 8/80) / 2
    assert t.loc[1, "suffix tokens matched"] == pytest.approx(0.25)  # (10/80 + 30/80) / 2
