"""Several processes give the numbers of one (issue 7): `accelerate launch` with 2 CPU processes (gloo).

The unlearning trajectories (per-step per-sequence MA, selections, phases, stop step) of a 2-process
run must equal those of the same run in this process, with the same seed and the same global
micro-batches; and `unmemorize audit` under 2 processes must write one run folder whose profile is
the 1-process one. Tolerance: MA and selections identical (MA is a count of argmax hits; a rounding
difference would have to flip an argmax), per-sequence loss within 1e-4 nats (the gradient is the
same mean summed in another order; Adam's first steps are ≈ lr·sign(g), so weights whose gradient
is at rounding level may differ by up to 2·lr per step, which is why weights are not compared).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from unmemorize.audit import audit
from unmemorize.record import read_record
from unmemorize.data import load_sequences
from unmemorize.memorization import ProfileOptions, profile
from unmemorize.thresholds import Band, acceptable_level
from unmemorize.unlearning import UnlearnOptions, unlearn
from unmemorize.unlearning.methods import MethodSpec

from unlearning_fixtures import LENGTH, make_set, one_thread, records, small_lab

HERE = Path(__file__).resolve().parent
ACCELERATE = Path(sys.executable).parent / "accelerate"
CONFIGS = HERE.parent / "configs" / "accelerate"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], cwd: Path, timeout: int = 240, config: str = "ddp.yaml") -> subprocess.CompletedProcess:
    # the shipped DDP configuration; on a GPU-less machine it runs torchrun with gloo (accelerate's
    # --cpu multi-process mode would need mpirun instead)
    cmd = [str(ACCELERATE), "launch", "--config_file", str(CONFIGS / config), "--num_processes", "2",
           "--main_process_port", str(_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _configs(tau: float) -> dict:
    common = dict(tau=tau, lr=2e-3, micro_batch=3)  # 8 sequences → 3 micro-batches: rank 0 runs 2, rank 1 one + padding
    return {
        "sga": dict(method="sga", max_steps=10, **common),
        "sga_per_sequence": dict(method="sga", stop="per-sequence", max_steps=10, **common),
        "tau": dict(method={"name": "tau", "switch_below": 0.6}, max_steps=6, **common),  # TA phase: the edited model is measured
        "ga_lora": dict(method="ga", max_steps=6, lora_rank=4, **{**common, "lr": 5e-3}),
        "npo": dict(method="npo", max_steps=4, **common),  # its reference log-likelihoods are measured on every rank
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with one_thread():
        tok, model, forget, unseen = small_lab()
        tau = acceptable_level(profile(model, unseen, ProfileOptions(metrics=("ma",)))["ma"])
    folder = tmp_path_factory.mktemp("scale")
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    return folder, tau


@pytest.fixture(scope="module")
def two_process_runs(lab):
    folder, tau = lab
    out = folder / "two"
    out.mkdir()
    _launch([str(HERE / "scale_worker.py"), str(folder / "model"), str(out), json.dumps(_configs(tau))], folder)
    return out


def _one_process(folder: Path, cfg: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = dict(cfg)
    method, stop, tau = cfg.pop("method"), cfg.pop("stop", "mean"), cfg.pop("tau")
    tok = AutoTokenizer.from_pretrained(folder / "model")
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32).eval()
    with one_thread():
        return unlearn(model, make_set(tok, records(8, seed=7)), tau=tau, method=MethodSpec.model_validate(method), stop=stop,
                       band=Band(0.15, 0.6), options=UnlearnOptions(**cfg))


@pytest.mark.parametrize("name", ["sga", "sga_per_sequence", "tau", "ga_lora", "npo"])
def test_two_processes_follow_the_one_process_trajectory(lab, two_process_runs, name):
    folder, tau = lab
    info = json.loads((two_process_runs / f"{name}.json").read_text())
    assert info["world_size"] == 2  # it really ran distributed
    two = pd.read_parquet(two_process_runs / f"{name}.parquet")
    one = _one_process(folder, _configs(tau)[name]).trajectory
    assert info["steps"] == int(one["step"].max()) and info["steps"] >= 2
    assert list(two["step"]) == list(one["step"]) and list(two["id"]) == list(one["id"])
    assert list(two["phase"]) == list(one["phase"])
    np.testing.assert_array_equal(two["selected"].to_numpy(), one["selected"].to_numpy())
    np.testing.assert_array_equal(two["ma"].to_numpy(), one["ma"].to_numpy())
    np.testing.assert_allclose(two["loss"].to_numpy(), one["loss"].to_numpy(), rtol=1e-4, atol=1e-6)
    if name == "tau":
        assert "ta" in set(one["phase"])  # the task-arithmetic phase (edited model) was exercised


def test_audit_under_two_processes_writes_one_folder_with_the_one_process_profile(lab):
    folder, tau = lab
    with one_thread():
        tok, model, forget, unseen = small_lab()
    # 7 forget sequences: the two ranks get shards of 4 and 3
    for name, texts in (("forget.jsonl", records(7, seed=7)), ("unseen.jsonl", records(8, seed=8))):
        with open(folder / name, "w") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": f"{name[0]}{i}", "text": t}) + "\n")
    out = folder / "audit2"
    proc = _launch(["-m", "unmemorize.cli", "audit", "--model", str(folder / "model"), "--forget", "forget.jsonl",
                    "--reference", "unseen.jsonl", "--out", str(out), "--length", str(LENGTH),
                    "--metrics", "ma,el,extraction", "--prefix", "10", "--suffix", "20"], folder)
    assert proc.stdout.count("Run directory") == 1  # only rank 0 talks
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".audit2")) == []  # nothing half-written
    got = pd.read_parquet(out / "profile.parquet")
    forget_set = load_sequences(folder / "forget.jsonl", tok, LENGTH)
    with one_thread():
        want = audit(model, forget_set, load_sequences(folder / "unseen.jsonl", tok, LENGTH),
                     ProfileOptions(metrics=("ma", "el", "extraction"), extraction_prefix=10, extraction_suffix=20),
                     Band(0.15, 0.6)).forget
    assert list(got["id"]) == list(want["id"]) == forget_set.ids
    for col in ("ma", "el_10", "extraction_matched", "tau"):
        np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=0, atol=1e-9, err_msg=col)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "audit"


def test_unlearn_command_under_two_processes_writes_once_and_follows_one_process(lab):
    folder, tau = lab
    with open(folder / "forget8.jsonl", "w") as f:
        for i, t in enumerate(records(8, seed=7)):
            f.write(json.dumps({"id": f"s{i}", "text": t}) + "\n")
    out = folder / "unlearn2"
    proc = _launch(["-m", "unmemorize.cli", "unlearn", "--model", str(folder / "model"), "--forget", "forget8.jsonl",
                    "--tau", repr(tau), "--method", "sga", "--lr", "0.002", "--micro-batch", "3", "--max-steps", "10",
                    "--length", str(LENGTH), "--checkpoint-every", "2", "--save", "--no-attacks", "--out", str(out)],
                   folder)
    assert proc.stdout.count("wrote ") == 1  # only rank 0 talks
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".unlearn2")]
    assert leftovers == []  # no temporary run folder, no checkpoint left behind
    assert (out / "model" / "model.safetensors").is_file()
    summary = read_record(out).unlearning
    assert summary.world_size == 2
    got = pd.read_parquet(out / "trajectory.parquet")
    want = _one_process(folder, _configs(tau)["sga"]).trajectory
    np.testing.assert_array_equal(got["ma"].to_numpy(), want["ma"].to_numpy())
    np.testing.assert_array_equal(got["selected"].to_numpy(), want["selected"].to_numpy())


def _write_sets(folder: Path) -> tuple[Path, Path]:
    """7 member and 9 non-member records (odd sizes: the ranks' shards differ in size)."""
    paths = []
    for name, texts, prefix in (("members.jsonl", records(8, seed=7)[1:], "m"), ("others.jsonl", records(9, seed=8), "o")):
        with open(folder / name, "w") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": f"{prefix}{i}", "text": t}) + "\n")
        paths.append(folder / name)
    return paths[0], paths[1]


def test_attack_command_under_two_processes_scores_every_sequence_once(lab):
    """Each rank scores a shard (token statistics, MIAU neighbours and their likelihoods, the original
    model's likelihoods); the one folder rank 0 writes holds the scores a single process computes."""
    from unmemorize.attacks import AttackOptions, run_attacks
    from unmemorize.models import load_model

    folder, _ = lab
    members, others = _write_sets(folder)
    out = folder / "attack2"
    names = "miau,loss,min-k++,reference,threshold,sampling"
    proc = _launch(["-m", "unmemorize.cli", "attack", "--model", str(folder / "model"), "--original",
                    str(folder / "model"), "--forget", str(members), "--reference", str(others), "--attacks", names,
                    "--perturber", "words", "--neighbours", "3", "--no-neighbour-cache", "--bootstrap", "50",
                    "--length", str(LENGTH), "--prefix-tokens", "10", "--first-tokens", "5", "--out", str(out)], folder)
    assert proc.stdout.count("wrote") == 1  # only rank 0 talks
    assert [p.name for p in folder.iterdir() if p.name.startswith(".attack2")] == []
    got = pd.read_parquet(out / "attack_scores.parquet")
    lm = load_model(str(folder / "model"))
    with one_thread():
        want = run_attacks(lm.model, lm.tokenizer, load_sequences(members, lm.tokenizer, LENGTH),
                           load_sequences(others, lm.tokenizer, LENGTH), original=lm.model,
                           original_tokenizer=lm.tokenizer,
                           options=AttackOptions(names=tuple(names.split(",")), perturber="words", neighbours=3,
                                                 neighbour_cache=False, bootstrap=50, extraction_prefix=10,
                                                 first_tokens=5))
    assert list(got["id"]) == list(want.scores["id"]) and len(got) == 16
    for col in want.scores.columns:
        if col in ("set", "id", "member"):
            continue
        if not pd.api.types.is_numeric_dtype(want.scores[col]):  # e.g. the threshold attack's verdicts
            assert got[col].tolist() == want.scores[col].tolist(), col
            continue
        np.testing.assert_allclose(got[col].to_numpy(float), want.scores[col].to_numpy(float), rtol=0, atol=1e-5,
                                   err_msg=col)
    report = json.loads((out / "attacks.json").read_text())
    for name, r in want.attacks.items():
        assert report["attacks"][name]["auc"]["value"] == pytest.approx(r.evaluation.auc.value, abs=1e-9), name
    # the neighbours of all ranks are counted once each
    assert report["attacks"]["miau"]["summary"]["spans_filled_this_run"] == want.attacks["miau"].summary["spans_filled_this_run"]


def test_evaluate_command_under_two_processes_gives_the_one_process_metrics(lab):
    from unmemorize.lab.utility_tasks import write_lab_tasks
    from unmemorize.models import load_model
    from unmemorize.utility import evaluate_utility

    folder, _ = lab
    data = write_lab_tasks(folder / "labdata", docs=5)
    out = folder / "evaluate2"
    proc = _launch(["-m", "unmemorize.cli", "evaluate", "--model", str(folder / "model"), "--tasks", "lab",
                    "--data", str(data), "--max-length", "64", "--out", str(out)], folder)
    assert proc.stdout.count("wrote") == 1
    got = json.loads((out / "utility.json").read_text())
    lm = load_model(str(folder / "model"))
    with one_thread():
        want = evaluate_utility(lm.model, lm.tokenizer, "lab", data, max_length=64)
    for task, w in want["tasks"].items():
        g = got["tasks"][task]
        assert g["n"] == w["n"] > 2
        for metric, value in w["metrics"].items():
            assert g["metrics"][metric] == pytest.approx(value, rel=1e-6, abs=1e-6), (task, metric)


def test_run_command_under_two_processes_commits_the_one_process_run(lab, tmp_path):
    """The experiment runner under 2 processes: one committed run folder whose metrics row equals the
    row of the same run in one process (unlearning, attacks and utility all split over the ranks)."""
    from test_experiments import tiny_experiment

    from unmemorize.experiments import run_experiment

    config = tiny_experiment(tmp_path / "exp", forget=[{"path": "data/forget_{split}.jsonl", "name": "records",
                                                        "splits": [0]}], methods=["sga"])
    proc = _launch(["-m", "unmemorize.cli", "run", str(config), "--out", str(tmp_path / "two"), "--no-report"],
                   tmp_path / "exp", timeout=400)
    assert proc.stdout.count("1 runs in ") == 1  # only rank 0 talks
    two = [p for p in (tmp_path / "two").iterdir()]
    assert len(two) == 1 and not two[0].name.startswith("."), [p.name for p in two]
    with one_thread():
        one = run_experiment(config, tmp_path / "one")
    assert [p.name for p in one] == [two[0].name]  # the same run key
    got = read_record(two[0]).row()
    want = read_record(one[0]).row()
    assert got.keys() == want.keys()
    for k, v in want.items():
        if k == "seconds":
            continue
        if isinstance(v, str):  # the labels
            assert got[k] == v, k
            continue
        if v is None or got[k] is None:  # NaN is written as null
            assert got[k] is v is None, k
            continue
        assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-5, nan_ok=True), k


def test_fsdp_configuration_without_gpus_is_a_clear_error(lab):
    """accelerate builds FSDP for accelerators only: on CPUs the launch stops with our message (exit 2),
    naming the configuration to use instead, before anything is written."""
    folder, _ = lab
    members, others = _write_sets(folder)
    out = folder / "audit_fsdp"
    cmd = [str(ACCELERATE), "launch", "--config_file", str(CONFIGS / "fsdp.yaml"), "--num_processes", "2",
           "--main_process_port", str(_port()), "-m", "unmemorize.cli", "audit", "--model", str(folder / "model"),
           "--forget", str(members), "--reference", str(others), "--out", str(out), "--length", str(LENGTH),
           "--metrics", "ma"]
    proc = subprocess.run(cmd, cwd=folder, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode != 0
    said = " ".join(proc.stderr.split())  # rich wraps long lines
    assert "asks for FSDP, which accelerate runs on GPUs only" in said and "ddp.yaml" in said
    # our message, not a traceback of ours; the launcher then reports the failed child with its own
    assert proc.stderr.index("asks for FSDP") < proc.stderr.find("Traceback") or "Traceback" not in proc.stderr
    assert not out.exists() and not [p for p in folder.iterdir() if p.name.startswith(".audit_fsdp")]


def test_single_process_commands_refuse_a_launch(lab):
    folder, _ = lab
    members, _ = _write_sets(folder)
    cmd = [str(ACCELERATE), "launch", "--config_file", str(CONFIGS / "ddp.yaml"), "--num_processes", "2",
           "--main_process_port", str(_port()), "-m", "unmemorize.cli", "plant", "--members", str(members),
           "--out", str(folder / "planted"), "--model", str(folder / "model")]
    proc = subprocess.run(cmd, cwd=folder, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode != 0
    assert "runs in one process" in " ".join((proc.stdout + proc.stderr).split())
    assert not (folder / "planted").exists()
