"""Experiment grids: config validation, grid expansion, run keys, caching, resumption, the commands.

Runs use the tiny memorizing model of ``unlearning_fixtures`` (2 layers, d = 64, 40-token records),
saved to a folder so the runner loads it like any user model; a handful of steps per run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from unlearning_fixtures import one_thread, records, small_lab
from unmemorize.errors import UserError
from unmemorize import recipe
from unmemorize.experiments import expand, load_config, plan, run_experiment, run_key
from unmemorize.experiments.grid import InputHashes, resolved_settings
from unmemorize.record import read_record

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("single_thread")


def write_jsonl(path: Path, texts, prefix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def tiny_experiment(root: Path, utility: bool = True, **overrides) -> Path:
    """Write a tiny model, two forget splits of 4 records, a reference set, a utility data folder and
    a config (GA and SGA, 3 steps); return the config path. ``overrides`` replace top-level keys."""
    from unmemorize.models import save_model

    root.mkdir(parents=True, exist_ok=True)
    if not (root / "model").exists():
        tok, model, _, _ = small_lab()
        save_model(model, tok, root / "model")
    texts = records(8, seed=7)  # the lab's forget records: the last ones are memorized most
    write_jsonl(root / "data" / "forget_0.jsonl", texts[4:], "a")
    write_jsonl(root / "data" / "forget_1.jsonl", texts[:2] + texts[6:], "b")
    write_jsonl(root / "data" / "unseen.jsonl", records(10, seed=8), "u")
    if utility:
        eval_dir = root / "data" / "eval"
        write_jsonl(eval_dir / "piqa" / "validation.jsonl", [], "")
        (eval_dir / "piqa" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
            {"goal": "Keep a kite", "sol1": "in a city", "sol2": "in a lamp", "label": 0},
            {"goal": "Record the code", "sol1": "Name: Ada", "sol2": "City: Hollins", "label": 1},
        ]))
        (eval_dir / "empathetic_dialogues.json").write_text(json.dumps({"text": {
            "0": ["i keep a kite.", "and a lamp?", "a compass too."], "1": ["hello", "hi, what is your code?"]}}))
    cfg = {
        "name": "tiny",
        "model": {"path": "model", "name": "tiny-gpt2"},
        "forget": [{"path": "data/forget_{split}.jsonl", "name": "records", "splits": [0, 1]}],
        "methods": ["ga", {"name": "sga", "label": "SGA"}],
        "reference": "data/unseen.jsonl",
        "length": 40,
        "training": {"max_steps": 3, "micro_batch": 2, "checkpoint_every": 1},
        "attacks": {"names": ["miau", "loss", "reference"], "neighbours": 2, "perturber": "words",
                    "bootstrap": 0, "neighbour_cache": False, "batch_size": 4},
        "utility": ({"tasks": ["piqa", "empathetic_dialogues"], "data_dir": "data/eval", "max_length": 64}
                    if utility else {"tasks": []}),
    }
    cfg.update(overrides)
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ---------------------------------------------------------------- validation


def _error(tmp_path, text: str) -> str:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(p)
    return str(e.value)


BASE = """
model: {path: default, tau: 0.3}
forget: {path: FORGET, splits: [0]}
methods: [ga]
reference: FORGET
"""


@pytest.fixture(scope="module")
def forget8(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("f") / "f.jsonl", records(8, seed=1), "r")


@pytest.mark.parametrize("extra, key, words", [
    ("colour: red\n", "'colour'", ["allowed keys here", "models", "forget", "methods", "attacks"]),
    ("training: {lr: fast}\n", "'training.lr'", ["expected a number", "'fast'"]),
    ("training: {max_step: 3}\n", "'training.max_step'", ["unknown key", "max_steps"]),
    ("band: {lo: 0.6, hi: 0.2}\n", "'band'", ["lo < hi", "lo=0.6"]),
    ("stop: [mean, median]\n", "'stop[1]'", ["'median'", "mean, per-sequence"]),
    ("training: {micro_batch: 3}\n", "'training.micro_batch'", ["does not divide the 8 sequences", "allowed: 1, 2, 4, 8"]),
    ("seeds: [1.5]\n", "'seeds[0]'", ["expected an integer"]),
    ("attacks: {names: [miau, lira]}\n", "'attacks.names'", ["'lira'", "threshold", "min-k"]),
    ("utility: {tasks: [piqa]}\n", "'utility.data_dir'", ["data folder"]),
    ("utility: {tasks: [chess], data_dir: .}\n", "'utility.tasks'", ["unknown task chess", "piqa"]),
    ("length: 1\n", "'length'", ["allowed: an integer ≥ 2"]),
])
def test_bad_values_name_file_key_and_allowed(tmp_path, forget8, extra, key, words):
    msg = _error(tmp_path, (BASE + extra).replace("FORGET", str(forget8)))
    assert str(tmp_path / "bad.yaml") in msg and key in msg, msg
    for w in words:
        assert w in msg, msg


def test_method_level_checks(tmp_path, forget8):
    base = f"model: {{path: default, tau: 0.3}}\nforget: {{path: {forget8}}}\n"
    msg = _error(tmp_path, base + "methods: [{name: gradient}]\n")
    assert "'methods[0].name'" in msg and "ga, sga, ta, tau" in msg
    msg = _error(tmp_path, base + "methods: [{name: ga, switch_below: 0.5}]\n")
    assert "'methods[0]'" in msg and "switch_below applies to ta and tau" in msg
    msg = _error(tmp_path, base + "methods: [ga, {name: sga, micro_batch: 3}]\n")
    assert "'methods[1].micro_batch'" in msg and "does not divide" in msg
    msg = _error(tmp_path, base + "methods: [ga, ga]\n")
    assert "'methods[1]'" in msg and "used twice" in msg
    msg = _error(tmp_path, f"model: default\nforget: {forget8}\nmethods: [ga]\n")
    assert "'models[0]'" in msg and "τ is unknown" in msg
    msg = _error(tmp_path, f"model: {{path: default, tau: 0.3}}\nforget: {{path: {forget8}, splits: [0, 1]}}\nmethods: [ga]\n")
    assert "'forget[0].path'" in msg and "{split}" in msg
    msg = _error(tmp_path, f"model: {{path: default, tau: 0.3}}\nforget: {forget8}\nmethods: [ga]\nattacks: {{names: [loss]}}\n")
    assert "'attacks.names'" in msg and "reference" in msg
    msg = _error(tmp_path, "model: [default\n")
    assert "line" in msg and "not valid YAML" in msg


def test_missing_model_is_listed_not_fatal_for_check(tmp_path, forget8, monkeypatch):
    monkeypatch.delenv("NO_SUCH_MODEL_VAR", raising=False)
    p = tmp_path / "c.yaml"
    p.write_text(f"model: {{path: '${{NO_SUCH_MODEL_VAR}}', tau: 0.3}}\nforget: {forget8}\nmethods: [ga, sga]\nattacks: {{names: []}}\n")
    cfg = load_config(p)
    from unmemorize.experiments import missing_inputs

    problems = missing_inputs(cfg)
    assert len(problems) == 1 and "NO_SUCH_MODEL_VAR is not set" in problems[0] and "'models[0].path'" in problems[0]
    planned = plan(cfg, tmp_path / "out")
    assert len(planned) == 2 and all(r.key is None for r in planned)
    with pytest.raises(UserError, match="NO_SUCH_MODEL_VAR"):
        run_experiment(cfg, tmp_path / "out")


# ---------------------------------------------------------------- grid and keys


def test_grid_expansion_and_keys(tmp_path):
    path = tiny_experiment(tmp_path, utility=False, stop=["mean", "per-sequence"], seeds=[1, 2])
    cfg = load_config(path)
    runs = expand(cfg)
    assert len(runs) == 1 * 2 * 2 * 2 * 2  # models × splits × methods × stops × seeds
    assert [(r.split, r.spec.method.name, r.spec.stop, r.spec.seed) for r in runs[:5]] == [
        ("0", "ga", "mean", 1), ("0", "ga", "mean", 2), ("0", "ga", "per-sequence", 1),
        ("0", "ga", "per-sequence", 2), ("0", "sga", "mean", 1)]
    keys = [run_key(r.spec) for r in runs]
    assert len(set(keys)) == len(keys)
    assert keys == [run_key(r.spec, InputHashes()) for r in runs]  # deterministic
    settings = resolved_settings(runs[0].spec)
    assert settings["training"]["micro_batch"] == 2 and settings["tau"] is None  # τ: from the reference
    # a label does not change a key; a setting or an input file does
    relabel = load_config(tiny_experiment(tmp_path, utility=False, stop=["mean", "per-sequence"], seeds=[1, 2],
                                          name="other", methods=[{"name": "ga", "label": "GA!"}, {"name": "sga", "label": "SGA"}]))
    assert run_key(expand(relabel)[0].spec) == keys[0]
    steps = load_config(tiny_experiment(tmp_path, utility=False, stop=["mean", "per-sequence"], seeds=[1, 2],
                                        training={"max_steps": 4, "micro_batch": 2}))
    assert run_key(expand(steps)[0].spec) != keys[0]
    f0 = tmp_path / "data" / "forget_0.jsonl"
    f0.write_text(f0.read_text().replace("Record", "Rekord", 1))
    assert run_key(runs[0].spec) != keys[0]
    assert run_key(runs[-1].spec) == keys[-1]  # split 1 untouched


# ---------------------------------------------------------------- running, caching, resumption


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """The tiny grid run once: (config path, out dir, folders)."""
    root = tmp_path_factory.mktemp("exp")
    path = tiny_experiment(root)
    out = root / "out"
    with one_thread():
        folders = run_experiment(load_config(path), out)
    return path, out, folders


def test_runs_write_complete_folders(experiment):
    path, out, folders = experiment
    assert len(folders) == 4 and all(f.parent == out for f in folders)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary or checkpoint left
    for f in folders:
        s = read_record(f)
        assert f.name.endswith(s.key[:12])
        for name in ("profile_before.parquet", "profile_after.parquet", "trajectory.parquet", "steps.parquet",
                     "attacks.json", "attack_scores.parquet", "roc.png", "before_attacks.json", "utility_before.json",
                     "utility_after.json", "manifest.json", "trajectory.png", "record.json", "report.html"):
            assert (f / name).is_file(), (f, name)
        m = s.row()
        after = pd.read_parquet(f / "profile_after.parquet")
        assert m["mean_ma"] == pytest.approx(after["ma"].mean())
        assert m["c_high"] == int((after["ma"] >= 0.6).sum()) and m["c_low"] == int((after["ma"] <= 0.15).sum())
        assert m["distance_to_tau"] == pytest.approx(abs(100 * after["ma"].mean() - 100 * s.tau))
        attacks = json.loads((f / "attacks.json").read_text())["attacks"]
        assert set(attacks) == {"miau", "loss", "reference"}
        assert m["miau_auc"] == pytest.approx(attacks["miau"]["auc"]["value"])
        assert math.isnan(m["miau_tpr@1%"])  # 10 non-members cannot resolve 1% FPR: NaN, not a number
        assert set(s.attacks.before) == {"miau", "loss"}  # the original model, before unlearning (no reference attack)
        ub, ua = (json.loads((f / f"utility_{w}.json").read_text()) for w in ("before", "after"))
        assert m["average_acc"] == pytest.approx(ua["aggregates"]["average_acc"]["value"])
        assert m["average_perplexity_delta"] == pytest.approx(ua["aggregates"]["average_perplexity"]["value"]
                                                              - ub["aggregates"]["average_perplexity"]["value"])
        assert m["steps"] <= 3
    # τ came from the reference and is the same for every run of the model
    assert len({read_record(f).tau for f in folders}) == 1


def test_finished_runs_are_skipped(experiment, monkeypatch):
    path, out, folders = experiment
    stamps = {f: (f / "record.json").stat().st_mtime_ns for f in folders}

    def must_not_run(*a, **k):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(recipe, "execute", must_not_run)
    monkeypatch.setattr(recipe.Resources, "model", must_not_run)
    assert run_experiment(load_config(path), out) == folders
    assert {f: (f / "record.json").stat().st_mtime_ns for f in folders} == stamps
    assert all(r.done for r in plan(load_config(path), out))


def test_a_stop_loses_only_the_run_in_progress(tmp_path, monkeypatch):
    path = tiny_experiment(tmp_path, utility=False, attacks={"names": []},
                           methods=["ga"], training={"max_steps": 2, "micro_batch": 2, "checkpoint_every": 1})
    cfg = load_config(path)
    out = tmp_path / "out"
    real = recipe.execute
    calls = []

    def interrupted(spec, out, **kwargs):
        calls.append(kwargs["labels"]["split"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the machine stops during the second run
        return real(spec, out, **kwargs)

    monkeypatch.setattr(recipe, "execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, out)
    done = [r for r in plan(cfg, out) if r.done]
    assert [r.run.split for r in done] == ["0"]
    assert [p for p in out.iterdir() if not p.name.startswith(".")] == [done[0].folder]
    first = (done[0].folder / "record.json").read_bytes()
    calls.clear()
    folders = run_experiment(cfg, out)
    assert calls == ["1"]  # only the unfinished run
    assert (done[0].folder / "record.json").read_bytes() == first
    assert all((f / "record.json").is_file() for f in folders)


def test_a_run_stopped_mid_way_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    import unmemorize.unlearning as unlearning

    path = tiny_experiment(tmp_path, utility=False, attacks={"names": []}, tau=0.2, methods=["ga"],
                           forget=[{"path": "data/forget_{split}.jsonl", "splits": [0]}],
                           training={"max_steps": 4, "micro_batch": 2, "checkpoint_every": 1})
    cfg = load_config(path)
    real = unlearning.unlearn

    def stopped_at_step_2(*args, **kwargs):
        def on_step(info):
            if info.step == 2:
                raise KeyboardInterrupt
        return real(*args, **kwargs, on_step=on_step)

    monkeypatch.setattr(unlearning, "unlearn", stopped_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "out")
    (planned,) = plan(cfg, tmp_path / "out")
    assert not planned.done and (planned.folder.parent / f".{planned.folder.name}.checkpoint").is_dir()
    monkeypatch.setattr(unlearning, "unlearn", real)
    (folder,) = run_experiment(cfg, tmp_path / "out")
    resumed = read_record(folder)
    assert resumed.unlearning.resumed_from == 2 and resumed.unlearning.steps == 4
    assert not (folder.parent / f".{folder.name}.checkpoint").exists()
    # the same numbers as a run that was never stopped
    (fresh,) = run_experiment(cfg, tmp_path / "fresh")
    a, b = (pd.read_parquet(f / "trajectory.parquet") for f in (folder, fresh))
    pd.testing.assert_frame_equal(a, b)


def test_every_kind_of_method_runs(tmp_path):
    """Task arithmetic (edited model measured and reported) and DPD (no training) go through the pipeline."""
    path = tiny_experiment(tmp_path, utility=False, attacks={"names": ["loss"], "bootstrap": 0}, tau=0.4,
                           methods=["ta", "tau", "dpd", {"name": "sga", "label": "SGA-0.5", "selector": "threshold:0.5"}],
                           stop=["mean", "per-sequence"], training={"max_steps": 2, "micro_batch": 2, "lr": "5e-5"})
    cfg = load_config(path)
    assert cfg.training.lr == 5e-5  # YAML 1.1 reads 5e-5 as a string; the config takes it as the number
    folders = run_experiment(cfg, tmp_path / "out")
    assert len(folders) == 2 * 4 * 2
    for f in folders:
        s = read_record(f)
        assert s.tau == 0.4 and s.tau_from == "given"
        assert s.unlearning.method == s.spec["method"]["name"]
        if s.labels.method == "dpd":
            assert s.unlearning.steps == 0 and any("mixed next-token distribution" in n for n in s.notes)
        if s.labels.method == "SGA-0.5":
            assert s.spec["method"]["selector"] == "threshold:0.5"


def test_sampled_forget_set_is_seeded(tmp_path):
    path = tiny_experiment(tmp_path, utility=False, attacks={"names": []}, tau=0.4,
                           forget=[{"path": "data/forget_{split}.jsonl", "splits": [0], "sample": 2, "sample_seed": 3}],
                           training={"max_steps": 1, "micro_batch": 2})
    cfg = load_config(path)
    run = expand(cfg)[0]
    tok = small_lab()[0]
    a, b = recipe.load_forget(run.spec, tok), recipe.load_forget(run.spec, tok)
    assert len(a) == 2 and a.ids == b.ids and set(a.ids) <= {f"a{i}" for i in range(4)}
    bad = tiny_experiment(tmp_path, utility=False, attacks={"names": []}, tau=0.4,
                          forget=[{"path": "data/forget_{split}.jsonl", "splits": [0], "sample": 5}])
    with pytest.raises(UserError, match=r"forget\[0\].sample.*holds 4"):
        load_config(bad)


# ---------------------------------------------------------------- the commands


def _cli(args):
    from typer.testing import CliRunner

    from unmemorize.cli import app

    return CliRunner().invoke(app, args)


def test_cli_run_check_and_report(experiment, tmp_path):
    path, out, folders = experiment
    res = _cli(["run", str(path), "--out", str(out), "--check"])
    assert res.exit_code == 0, res.output
    assert res.output.count("done") >= 4 and "config is valid" in res.output
    res = _cli(["run", str(path), "--out", str(out)])  # everything cached: only the report is written
    assert res.exit_code == 0, res.output
    assert (out / "report" / "report.html").is_file() and (out / "report" / "results.md").is_file()
    res = _cli(["report", str(out), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "tiny-gpt2 · records (|D_f| = 4)" in md and "| ga |" in md and "| SGA |" in md
    csv = pd.read_csv(tmp_path / "rep" / "results.csv")
    assert list(csv["method"]) == ["ga", "SGA"] and (csv["runs"] == 2).all()


def test_presets_validate(tmp_path):
    presets = sorted((ROOT / "configs").glob("*.yaml"))
    names = {p.stem for p in presets}
    assert {"default", "paper_ga", "paper_sga", "paper_ta", "paper_tau", "paper_dpd"} <= names
    for p in presets:
        cfg = load_config(p)  # schema and values are valid whether or not the data is on this machine
        assert len(expand(cfg)) >= 1
        res = _cli(["run", str(p), "--check", "--out", str(tmp_path / p.stem)])
        assert res.exit_code == 0, (p, res.output)


def test_presets_attacks_can_report_the_fprs_they_ask_for(tokenizer, monkeypatch):
    """Each preset's attacks, on the real forget and reference files, keep enough non-members for the TPR at
    the FPRs it asks for: the check ``unlearn`` makes before any work (recipe._attack_sets), run on every
    forget set and split of every preset. Matching Jang's mostly-code sets to Pile text (mostly prose) keeps
    only 14-23 of 100-200 non-members, too few for TPR at 1% FPR, so a preset that asks for it must compare
    them all, as the paper did (no model is loaded: the kinds of text and the counts are in the files)."""
    from types import SimpleNamespace

    from conftest import shared_data

    # the presets read ${UNMEMORIZE_DATA}; the tests' one setting defaults to the folder beside the checkout
    monkeypatch.setenv("UNMEMORIZE_DATA", str(shared_data("forget").parent))
    seen = set()
    for p in sorted((ROOT / "configs").glob("*.yaml")):
        for run in expand(load_config(p)):
            spec = run.spec
            key = (str(spec.forget.path), str(spec.reference), spec.reference_limit, spec.attacks.match_by,
                   tuple(spec.attacks.fprs or ()))
            if spec.reference is None or not spec.attacks.fprs or key in seen:
                continue
            seen.add(key)
            inputs = SimpleNamespace(forget=recipe.load_forget(spec, tokenizer),
                                     reference=recipe._reference_set(spec, tokenizer), notes=[])
            recipe._attack_sets(spec, inputs)  # raises a UserError when the matching leaves too few
            assert len(inputs.attack_nonmembers) >= 1 / min(spec.attacks.fprs) - 1e-9, (p.name, key)
    assert len(seen) >= 6  # default (8-sets, splits 0-2) and the 128-sets of the paper presets were checked


def test_cli_bad_config_exits_2(tmp_path, forget8):
    p = tmp_path / "bad.yaml"
    p.write_text(f"model: {{path: default, tau: 0.3}}\nforget: {forget8}\nmethods: [ga]\ntraining: {{lr: -1}}\n")
    from unmemorize.cli import main
    import sys

    old = sys.argv
    sys.argv = ["unmemorize", "run", str(p), "--check"]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = old
    assert e.value.code == 2
