"""`unmemorize audit` and `unmemorize plant` end to end on a tiny model folder, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from unmemorize.lab.records import generate_records, write_jsonl
from unmemorize.models import save_model
from unmemorize.runs import sha256_path
from unmemorize.tiny import tiny_model


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "UNMEMORIZE_CACHE": str(cwd / "cache"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "unmemorize.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("cli")
    model = tiny_model("gpt_neo", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, n_layer=2, d_model=64)
    save_model(model, tokenizer, d / "model")
    recs = generate_records(10, seed=5)
    for i, r in enumerate(recs):  # spelled as Jang's forget sets and as the Pile's own files spell them
        r["corpus"] = ("pile-cc" if i % 2 else "github") if i < 6 else ("Pile-CC" if i % 2 else "Github")
    write_jsonl(d / "forget.jsonl", recs[:6])
    write_jsonl(d / "reference.jsonl", recs[6:])
    return d


def test_audit_writes_a_complete_run(workdir):
    before = sha256_path(workdir / "model")
    r = run_cli("audit", "--model", "model", "--forget", "forget.jsonl", "--reference", "reference.jsonl",
                "--out", "runs/a1", "--el-n", "4", "--tau-by", "corpus", cwd=workdir)
    assert r.returncode == 0, r.stderr
    out = workdir / "runs/a1"
    for name in ("profile.parquet", "profile.csv", "reference_profile.parquet", "manifest.json",
                 "summary.json", "histogram.png", "report.html"):
        assert (out / name).is_file(), name
    prof = pd.read_parquet(out / "profile.parquet")
    assert len(prof) == 6 and {"ma", "el_4", "extraction_matched", "verdict", "tau", "corpus"} <= set(prof.columns)
    assert set(prof["tau_source"]) == {"corpus=Pile-CC", "corpus=Github"}  # matched across spellings
    ref = pd.read_parquet(out / "reference_profile.parquet")
    for mine, theirs in (("pile-cc", "Pile-CC"), ("github", "Github")):
        want = ref.loc[ref["corpus"] == theirs, "ma"].mean()
        assert prof.loc[prof["corpus"] == mine, "tau"].tolist() == pytest.approx([want] * 3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["forget"]["sequences"] == 6 and manifest["options"]["tau_by"] == "corpus"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["c"] == summary["c_low"] + summary["c_high"]
    assert "Per-sequence memorization" in r.stdout and "c(D_f)" in r.stdout
    assert "teacher-forced pass" in r.stderr  # not a terminal: progress as plain lines, not silence
    assert sha256_path(workdir / "model") == before, "the input model must not change"
    assert "data:image/png;base64" in (out / "report.html").read_text()
    assert not [p for p in (workdir / "runs").iterdir() if p.name.startswith(".")], "no temporary folders left"


def test_audit_refuses_to_overwrite_then_overwrites(workdir):
    args = ("audit", "--model", "model", "--forget", "forget.jsonl", "--reference", "reference.jsonl",
            "--metrics", "ma", "--out", "runs/a2")
    assert run_cli(*args, cwd=workdir).returncode == 0
    r = run_cli(*args, cwd=workdir)
    assert r.returncode == 2 and "already holds files" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(*args, "--overwrite", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "el_10" not in pd.read_csv(workdir / "runs/a2/profile.csv").columns


def _bad_model_dirs(workdir: Path) -> dict[str, Path]:
    empty = workdir / "empty_model"
    empty.mkdir(exist_ok=True)
    (empty / "config.json").write_text((workdir / "model" / "config.json").read_text())
    pickled = workdir / "pickled"
    pickled.mkdir(exist_ok=True)
    (pickled / "config.json").write_text((workdir / "model" / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not really")
    weird = workdir / "weird"
    weird.mkdir(exist_ok=True)
    (weird / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    (weird / "model.safetensors").write_bytes(b"")
    return {"no weights": empty, "pickle": pickled, "cannot load model": weird}


@pytest.mark.parametrize("extra,message", [
    (("--forget", "missing.csv", "--reference", "reference.jsonl"), "missing.csv does not exist"),
    (("--forget", "forget.jsonl"), "--reference"),
    (("--forget", "forget.jsonl", "--reference", "reference.jsonl", "--metrics", "ma,bogus"), "unknown metric bogus"),
    (("--forget", "forget.jsonl", "--reference", "reference.jsonl", "--band-lo", "0.7"), "lo < hi"),
])
def test_bad_options_exit_2_with_a_message(workdir, extra, message):
    r = run_cli("audit", "--model", "model", "--out", "runs/bad", *extra, cwd=workdir)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (workdir / "runs/bad").exists()


def test_bad_model_folders(workdir):
    for message, folder in _bad_model_dirs(workdir).items():
        r = run_cli("audit", "--model", str(folder), "--forget", "forget.jsonl", "--reference",
                    "reference.jsonl", "--out", "runs/badmodel", cwd=workdir)
        assert r.returncode == 2, (message, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_short_sequences_warn_but_measure(workdir):
    write_jsonl(workdir / "short.jsonl", [{"id": "tiny", "text": "Hi"}, {"id": "ok", "text": "Customer file 1. Name: Ada."}])
    r = run_cli("audit", "--model", "model", "--forget", "short.jsonl", "--reference", "reference.jsonl",
                "--out", "runs/short", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "no EL_10: tiny" in r.stderr
    prof = pd.read_csv(workdir / "runs/short/profile.csv")
    assert prof.set_index("id").loc["tiny", "el_10"] != prof.set_index("id").loc["tiny", "el_10"]  # NaN


def test_plant_then_reuse(workdir):
    args = ("plant", "--model", "model", "--members", "forget.jsonl", "--exposures", "0,3", "--out", "planted",
            "--lr", "1e-3", "--batch-size", "4")
    r = run_cli(*args, cwd=workdir)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((workdir / "planted/plant.json").read_text())
    assert sorted(manifest["exposure"].values()) == [0, 0, 0, 3, 3, 3]
    assert (workdir / "planted/model.safetensors").is_file()
    stamp = (workdir / "planted/model.safetensors").stat().st_mtime_ns
    r = run_cli(*args, cwd=workdir)
    assert r.returncode == 0 and "Reusing the planted model" in r.stderr
    assert (workdir / "planted/model.safetensors").stat().st_mtime_ns == stamp
    r = run_cli("audit", "--model", "planted", "--forget", "forget.jsonl", "--reference", "reference.jsonl",
                "--metrics", "ma", "--out", "runs/planted", cwd=workdir)
    assert r.returncode == 0, r.stderr
