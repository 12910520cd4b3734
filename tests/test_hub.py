"""Hugging Face hub ids and caches, offline: models by ``ORG/NAME[@REVISION]``, utility tasks from the
``datasets`` cache. Every test runs with HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 on a fake cache in a
temporary HF_HOME, so a bug cannot reach the network."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from unmemorize.errors import UserError
from unmemorize.lab.records import generate_records, write_jsonl
from unmemorize.models import check_model, load_model, resolve_model, save_model, weights_fingerprint
from unmemorize.tiny import tiny_model
from unmemorize.utility.tasks import TASKS, load_task, locate_task

REPO = "tiny-org/tiny-neo"
MAIN = "a" * 40  # the commit refs/main points to
OLD = "b" * 40  # an older commit, reachable only as REPO@OLD


# ---------------------------------------------------------------- a fake Hugging Face home

def _snapshot(storage: Path, commit: str, files: Path) -> Path:
    """The hub cache layout: blobs/<sha256> and snapshots/<commit>/<name> → ../../blobs/<sha256>."""
    snap = storage / "snapshots" / commit
    snap.mkdir(parents=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for f in sorted(files.iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        blob = storage / "blobs" / digest
        if not blob.exists():
            blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / digest)
    return snap


PIQA = [{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0},
        {"goal": "Dry wet hands", "sol1": "pour water on them", "sol2": "rub them with a towel", "label": 1},
        {"goal": "Cool a drink", "sol1": "put it in the fridge", "sol2": "put it in the oven", "label": 0}]
ARC = [{"id": "q1", "question": "What colour is a clear daytime sky?",
        "choices": {"text": ["blue", "green", "red", "black"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
       {"id": "q2", "question": "Which one is a mammal?",
        "choices": {"text": ["trout", "whale", "eagle"], "label": ["1", "2", "3"]}, "answerKey": "2"}]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _datasets_cache(home: Path, work: Path) -> None:
    """piqa (validation) and ai2_arc ARC-Easy (validation) prepared in the ``datasets`` cache, as a
    ``load_dataset`` of the hub datasets leaves them; built offline from local folders that are
    deleted afterwards."""
    import shutil

    import datasets

    src = work / "sources"
    _write_jsonl(src / "piqa" / "validation.jsonl", PIQA)
    _write_jsonl(src / "ai2_arc" / "ARC-Easy" / "validation.jsonl", ARC)
    (src / "ai2_arc" / "README.md").write_text(
        "---\nconfigs:\n- config_name: ARC-Easy\n  data_files:\n  - split: validation\n"
        "    path: ARC-Easy/validation.jsonl\n---\n")
    cache = str(home / "datasets")
    datasets.load_dataset(str(src / "piqa"), split="validation", cache_dir=cache)
    datasets.load_dataset(str(src / "ai2_arc"), "ARC-Easy", split="validation", cache_dir=cache)
    shutil.rmtree(src)


@pytest.fixture(scope="module")
def hf(tmp_path_factory, tokenizer):
    """A Hugging Face home with REPO at two commits (different weights) and two cached datasets."""
    root = tmp_path_factory.mktemp("hf")
    home = root / "hf"
    storage = home / "hub" / f"models--{REPO.replace('/', '--')}"
    for commit, seed in ((MAIN, 0), (OLD, 1)):
        model = tiny_model("gpt_neo", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2,
                           d_model=64, seed=seed)
        save_model(model, tokenizer, root / f"saved-{seed}")
        _snapshot(storage, commit, root / f"saved-{seed}")
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(MAIN)
    (storage / "refs" / "v1").write_text(OLD)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        _datasets_cache(home, root)
    return home


@pytest.fixture(autouse=True)
def offline(hf, tmp_path, monkeypatch):
    """Offline, on the fake home, from an empty working folder (no local folder shadows an id)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what the libraries read at import
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _snap(hf: Path, commit: str) -> Path:
    return hf / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / commit


# ---------------------------------------------------------------- models by hub id

def test_load_by_id_from_the_cache(hf):
    lm = load_model(REPO, log=lambda m: None)
    assert lm.hub is not None and lm.hub.commit == MAIN and lm.name == REPO
    assert Path(lm.path) == _snap(hf, MAIN)
    assert lm.fingerprint == weights_fingerprint(_snap(hf, MAIN))
    d = lm.describe()
    assert (d["hub_id"], d["revision"], d["commit"], d["snapshot"]) == (REPO, "main", MAIN, str(_snap(hf, MAIN)))
    assert d["source"] == "hub cache" and d["model_type"] == "gpt_neo"
    assert resolve_model(REPO) == (_snap(hf, MAIN), lm.hub)


def test_a_revision_selects_its_snapshot(hf):
    main = load_model(REPO, log=lambda m: None)
    for rev in (OLD, "v1"):  # a commit, or a branch/tag in refs/
        old = load_model(f"{REPO}@{rev}", log=lambda m: None)
        assert old.hub.commit == OLD and old.hub.revision == rev and old.name == f"{REPO}@{rev}"
        assert old.describe()["commit"] == OLD and old.fingerprint != main.fingerprint
        assert not torch.equal(next(old.model.parameters()), next(main.model.parameters()))


def test_a_local_folder_wins_over_the_same_spelling(hf, tmp_path, tokenizer):
    model = tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=1, d_model=32)
    save_model(model, tokenizer, tmp_path / REPO)  # ./tiny-org/tiny-neo in the working folder
    lm = load_model(REPO, log=lambda m: None)
    assert lm.hub is None and lm.model.config.model_type == "gpt2" and "hub_id" not in lm.describe()


@pytest.mark.parametrize("spec, fetch", [
    ("nobody/nothing", "hf download nobody/nothing`"),
    (f"{REPO}@{'c' * 40}", f"hf download {REPO} --revision {'c' * 40}`"),
])
def test_an_id_neither_cached_nor_reachable_is_one_clear_line(hf, spec, fetch):
    for call in (lambda: load_model(spec, log=lambda m: None), lambda: check_model(spec)):
        with pytest.raises(UserError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and spec in msg and fetch in msg, msg
        assert str(hf / "hub" / f"models--{spec.split('@')[0].replace('/', '--')}") in msg
        assert "HF_HUB_OFFLINE" in msg


def test_pickle_only_snapshots_are_refused(hf, tmp_path):
    storage = hf / "hub" / "models--pickle-org--only"
    if not storage.exists():
        (tmp_path / "p").mkdir()
        (tmp_path / "p" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        (tmp_path / "p" / "pytorch_model.bin").write_bytes(b"not really")
        _snapshot(storage, MAIN, tmp_path / "p")
        (storage / "refs").mkdir()
        (storage / "refs" / "main").write_text(MAIN)
    with pytest.raises(UserError, match="pickle weights"):
        load_model("pickle-org/only", log=lambda m: None)


def run_cli(*args: str, cwd: Path, hf: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "UNMEMORIZE_CACHE": str(cwd / "cache"), "COLUMNS": "200", "HF_HOME": str(hf),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "unmemorize.cli", *args], check=False, cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=600)


def test_audit_by_id_through_the_cli(hf, tmp_path):
    recs = generate_records(8, seed=5)
    write_jsonl(tmp_path / "forget.jsonl", recs[:4])
    write_jsonl(tmp_path / "reference.jsonl", recs[4:])
    r = run_cli("audit", "--model", f"{REPO}@v1", "--forget", "forget.jsonl", "--reference", "reference.jsonl",
                "--metrics", "ma", "--out", "runs/a", cwd=tmp_path, hf=hf)
    assert r.returncode == 0, r.stderr
    model = json.loads((tmp_path / "runs/a/manifest.json").read_text())["inputs"]["model"]
    assert (model["hub_id"], model["revision"], model["commit"]) == (REPO, "v1", OLD)
    assert model["path"] == str(_snap(hf, OLD)) and model["fingerprint"] == weights_fingerprint(_snap(hf, OLD))
    r = run_cli("audit", "--model", "nobody/nothing", "--forget", "forget.jsonl", "--reference", "reference.jsonl",
                "--out", "runs/b", cwd=tmp_path, hf=hf)
    assert r.returncode == 2 and "hf download nobody/nothing" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs/b").exists()


# ---------------------------------------------------------------- configs: presets, missing inputs, run keys

def _config(tmp_path: Path, model_path: str):
    from unmemorize.spec import load_config

    write_jsonl(tmp_path / "forget.jsonl", generate_records(8, seed=3))
    p = tmp_path / "c.yaml"
    p.write_text(f"model: {{path: '{model_path}', tau: 0.3}}\nforget: forget.jsonl\nmethods: [ga]\n"
                 "attacks: {names: []}\n")
    return load_config(p)


def test_configs_name_models_by_id_with_an_override(hf, tmp_path, monkeypatch, tokenizer):
    from unmemorize.experiments import expand, missing_inputs, run_key
    from unmemorize.experiments.grid import InputHashes
    from unmemorize.spec import model_location

    monkeypatch.delenv("TINY_NEO", raising=False)
    cfg = _config(tmp_path, "${TINY_NEO:-" + REPO + "}")
    assert model_location(cfg, cfg.models[0]) == REPO and missing_inputs(cfg) == []
    assert InputHashes().model(REPO) == weights_fingerprint(_snap(hf, MAIN))
    key = run_key(expand(cfg)[0].spec)
    monkeypatch.setenv("TINY_NEO", f"{REPO}@{OLD}")  # the variable, when set, wins
    assert model_location(cfg, cfg.models[0]) == f"{REPO}@{OLD}" and missing_inputs(cfg) == []
    assert run_key(expand(cfg)[0].spec) != key  # other weights, another run
    save_model(tiny_model("gpt2", vocab_size=len(tokenizer), n_layer=1, d_model=32), tokenizer, tmp_path / "mine")
    monkeypatch.setenv("TINY_NEO", str(tmp_path / "mine"))
    assert model_location(cfg, cfg.models[0]) == str(tmp_path / "mine") and missing_inputs(cfg) == []


def test_an_uncached_id_is_a_missing_input(hf, tmp_path):
    from unmemorize.experiments import missing_inputs, plan

    cfg = _config(tmp_path, "nobody/nothing")
    problems = missing_inputs(cfg)
    assert len(problems) == 1 and "'models[0].path'" in problems[0] and "hf download nobody/nothing" in problems[0]
    assert [r.key for r in plan(cfg, tmp_path / "out")] == [None]


def test_presets_name_the_papers_models_by_id(monkeypatch):
    from unmemorize.spec import load_config, model_location

    root = Path(__file__).resolve().parents[1] / "configs"
    monkeypatch.delenv("GPT_NEO_2_7B", raising=False)
    monkeypatch.delenv("GPT_NEO_1_3B", raising=False)
    for name, model in (("paper_ga", "EleutherAI/gpt-neo-2.7B"), ("paper_dpd", "EleutherAI/gpt-neo-1.3B")):
        cfg = load_config(root / f"{name}.yaml")
        assert model_location(cfg, cfg.models[0]) == model


def test_expand_vars_defaults(monkeypatch):
    from unmemorize.spec import expand_vars

    monkeypatch.delenv("UNSET_X", raising=False)
    monkeypatch.setenv("SET_X", "mine")
    monkeypatch.setenv("EMPTY_X", "")
    assert expand_vars("${UNSET_X:-a/b}|${SET_X:-a/b}|${EMPTY_X:-c}|${UNSET_X}") == "a/b|mine|c|${UNSET_X}"


# ---------------------------------------------------------------- utility tasks from the datasets cache

def test_tasks_from_the_datasets_cache_build_the_same_examples(hf, tmp_path):
    _write_jsonl(tmp_path / "eval" / "piqa" / "validation.jsonl", PIQA)  # the export docs/data.md describes
    _write_jsonl(tmp_path / "eval" / "arc_easy" / "validation.jsonl", ARC)
    for name in ("piqa", "arc_easy"):
        hub = load_task(TASKS[name], None, "full", None, source="hub")
        local = load_task(TASKS[name], tmp_path / "eval", "full", None)
        assert hub.source.kind == "hub" and local.source.kind == "local"
        assert [(it.id, it.example) for it in hub.items] == [(it.id, it.example) for it in local.items]
        assert hub.split == "validation" and not hub.notes
        assert all(f.is_file() and str(f).startswith(str(hf / "datasets")) for f in hub.source.files)
    assert load_task(TASKS["piqa"], None, "full", None, source="hub").source.where == "hub piqa / validation"
    parity = load_task(TASKS["arc_easy"], None, "parity", None, source="hub")  # the 3-choice item is dropped
    assert [it.id for it in parity.items] == ["1"] and "not exactly 4 choices" in parity.notes[0]


def test_auto_prefers_the_data_folder(tmp_path):
    _write_jsonl(tmp_path / "eval" / "piqa" / "validation.jsonl", PIQA[:1])
    assert locate_task(TASKS["piqa"], tmp_path / "eval", "auto").kind == "local"
    assert locate_task(TASKS["arc_easy"], tmp_path / "eval", "auto").kind == "hub"
    with pytest.raises(UserError, match="has no file for task arc_easy.*--data-source hub"):
        locate_task(TASKS["arc_easy"], tmp_path / "eval", "local")
    with pytest.raises(UserError, match="pubmed_qa reads its data from a folder"):
        locate_task(TASKS["pubmed_qa"], None, "hub")  # no hub dataset: the folder it is


def test_a_dataset_not_in_the_cache_is_one_clear_line(hf):
    with pytest.raises(UserError) as e:
        load_task(TASKS["hellaswag"], None, "full", None, source="hub")
    msg = str(e.value)
    assert "\n" not in msg and "hellaswag / validation" in msg and str(hf / "datasets") in msg
    assert "load_dataset('hellaswag', split='validation')" in msg and "HF_DATASETS_OFFLINE" in msg
    with pytest.raises(UserError, match=r"load_dataset\('ai2_arc', 'ARC-Challenge', split='validation'\)"):
        load_task(TASKS["arc_challenge"], None, "full", None, source="hub")


def test_evaluate_by_id_with_hub_tasks_through_the_cli(hf, tmp_path):
    from unmemorize.commands import evaluate as evaluate_command
    from unmemorize.lab.utility_tasks import write_lab_tasks

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Only the evaluate command."""

    evaluate_command.register(app)
    write_lab_tasks(tmp_path / "eval")
    out = tmp_path / "runs" / "e"
    result = CliRunner().invoke(app, ["evaluate", "--model", REPO, "--tasks", "piqa,arc_easy,lab_series",
                                      "--data-source", "hub", "--data", str(tmp_path / "eval"), "--limit", "2",
                                      "--max-length", "64", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads((out / "utility.json").read_text())
    sources = {s["task"]: (s["source"], s["data"], s["split"], s["n"]) for s in summary["sources"]}
    assert sources["piqa"] == ("hub", "hub piqa / validation", "validation", 2)
    assert sources["arc_easy"] == ("hub", "hub ai2_arc ARC-Easy / validation", "validation", 2)
    assert sources["lab_series"][0] == "local"
    assert summary["options"]["data_source"] == "hub" and summary["tasks"]["piqa"]["source"] == "hub"
    manifest = json.loads((out / "manifest.json").read_text())
    data = manifest["inputs"]["data"]
    assert data["piqa"]["source"] == "hub" and len(data["piqa"]["sha256"]) == 64 and data["piqa"]["dataset"] == "piqa"
    assert data["lab_series"]["source"] == "local"
    assert manifest["inputs"]["model"]["hub_id"] == REPO and manifest["inputs"]["model"]["commit"] == MAIN
    assert "Data sources" in (out / "report.html").read_text()
    # without the folder, only the hub tasks can run; the message says so
    result = CliRunner().invoke(app, ["evaluate", "--model", REPO, "--tasks", "piqa", "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, UserError) and "--data-source hub" in str(result.exception)


def test_a_grid_keys_hub_tasks_by_their_cached_files(tmp_path):
    from unmemorize.experiments import expand
    from unmemorize.experiments.grid import input_files
    from unmemorize.spec import config_from_dict

    write_jsonl(tmp_path / "forget.jsonl", generate_records(8, seed=3))
    cfg = config_from_dict({"model": {"path": REPO, "tau": 0.3}, "forget": "forget.jsonl", "methods": ["ga"],
                            "attacks": {"names": []}, "utility": {"tasks": ["piqa"], "data_source": "hub"}},
                           source=str(tmp_path / "c.yaml"))
    files = input_files(expand(cfg)[0].spec)
    assert files["utility:piqa"].suffix == ".arrow" and files["utility:piqa"].is_file()
