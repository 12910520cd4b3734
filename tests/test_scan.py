"""`unmemorize scan`: windows and offsets, duplicates, ranking, resuming, a planted text found, bad input, the CLI.

The pure parts (where windows start, the streamed windows, the ranking and the chunks' candidates) are
checked against slow, obviously correct references; the model parts on the tiny model of
``unlearning_fixtures`` that memorized some of its records.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from unmemorize.errors import UserError
from unmemorize.lab.records import write_jsonl
from unmemorize.memorization import ProfileOptions, profile
from unmemorize.scan import ScanSpec, scan_run
from unmemorize.scan import reading
from unmemorize.scan.rank import candidates, rank_order, top_k
from unmemorize.scan.store import PartialScan
from unmemorize.scan.windows import DocumentWindows, StreamCounts, window_spans, windows

from unlearning_fixtures import one_thread, records, small_lab

# ---------------------------------------------------------------- slow references


def slow_spans(n: int, length: int, stride: int) -> list[tuple[int, int]]:
    """Every start 0, s, 2s, … below n, each window up to T tokens; cut the list after the first window
    that reaches the end."""
    spans = [(s, min(s + length, n)) for s in range(0, n, stride)]
    ends = [i for i, (_, e) in enumerate(spans) if e == n]
    return spans[: ends[0] + 1] if ends else spans


def slow_windows(docs: list[tuple[str, str]], tokenizer, length, stride, min_tokens):
    """(doc, token offset, char offset, tokens) per kept window: each whole document tokenized at once,
    char offsets by decoding the tokens before the window, duplicates found by comparing token lists."""
    out, seen = [], []
    for doc, text in docs:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for s, e in slow_spans(len(ids), length, stride):
            toks = ids[s:e]
            if len(toks) < min_tokens or toks in seen:
                continue
            seen.append(toks)
            out.append((doc, s, len(tokenizer.decode(ids[:s])), toks))
    return out


def slow_rank(excess, loss, order) -> list[int]:
    key = [(-(e if e == e else -np.inf), lo if lo == lo else np.inf, o) for e, lo, o in zip(excess, loss, order)]
    return sorted(range(len(key)), key=lambda i: key[i])


# ---------------------------------------------------------------- windows


def test_window_spans_against_the_slow_reference():
    for n in range(0, 40):
        for length in range(1, 12):
            for stride in range(1, 15):
                got = window_spans(n, length, stride)
                assert got == slow_spans(n, length, stride), (n, length, stride)
                if stride <= length:  # every token is in a window
                    assert set(range(n)) == {t for s, e in got for t in range(s, e)}


def test_streamed_windows_are_the_whole_documents_windows():
    rng = random.Random(0)
    for _ in range(300):
        n, length, stride = rng.randint(0, 50), rng.randint(1, 10), rng.randint(1, 14)
        toks = list(range(100, 100 + n))
        chars = [3 * t for t in range(n)]
        doc, got, i = DocumentWindows(length, stride), [], 0
        while i < n:  # pieces of random sizes, some empty
            j = min(n, i + rng.randint(0, 9))
            got += doc.feed(toks[i:j], chars[i:j])
            i = j
        got += doc.finish()
        want = [(s, chars[s], toks[s:e]) for s, e in window_spans(n, length, stride)]
        assert got == want, (n, length, stride)


def _corpus(tmp_path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """A folder with JSONL, CSV, Parquet and text files; returns (paths, [(doc id, text)] in reading order)."""
    texts = records(12, seed=3)
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "a.jsonl", [{"id": f"j{i}", "text": t} for i, t in enumerate(texts[:4])])
    pd.DataFrame({"text": texts[4:7]}).to_csv(folder / "b.csv", index=False)
    pd.DataFrame({"doc_id": ["p0", "p1"], "text": texts[7:9]}).to_parquet(folder / "c.parquet")
    long_text = "\n".join(texts[9:12] * 3) + "\n"  # one text file, read in many pieces below
    (folder / "sub" / "d.txt").write_text(long_text)
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    single = tmp_path / "e.jsonl"
    write_jsonl(single, [{"text": texts[0]}, {"text": texts[1] + " And more."}])  # the first: a duplicate
    docs = ([(f"j{i}", t) for i, t in enumerate(texts[:4])] + [(f"b.csv:{i + 1}", t) for i, t in enumerate(texts[4:7])]
            + [("p0", texts[7]), ("p1", texts[8]), ("sub/d.txt", long_text),
               ("e.jsonl:1", texts[0]), ("e.jsonl:2", texts[1] + " And more.")])
    return [str(folder), str(single)], docs


@pytest.mark.parametrize("length,stride,min_tokens", [(16, 16, 4), (16, 5, 8), (7, 11, 2)])
def test_windows_and_offsets_against_the_slow_reference(tmp_path, tokenizer, monkeypatch, length, stride, min_tokens):
    monkeypatch.setattr(reading, "PIECE_CHARS", 97)  # the text file arrives in pieces cut after newlines
    paths, docs = _corpus(tmp_path)
    report, counts = reading.ReadReport(), StreamCounts()
    got = [(w.doc, w.token_offset, w.char_offset, list(w.tokens))
           for w in windows(paths, tokenizer, length, stride, min_tokens, report=report, counts=counts)]
    assert got == slow_windows(docs, tokenizer, length, stride, min_tokens)
    assert counts.documents == len(docs) and report.files_read == 5 and report.files_ignored == 1
    assert counts.windows == len(got) and counts.exact_duplicates >= 1
    texts = dict(docs)
    for doc, _, c, toks in got:  # the character offset points at the window's text in its document
        assert texts[doc][c:].startswith(tokenizer.decode(toks))


def test_duplicates_are_dropped_once(tmp_path, tokenizer):
    texts = records(6, seed=4)
    near = texts[2].replace("Record", "Recorded", 1)
    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in [*texts, texts[1], texts[1], near]])
    counts = StreamCounts()
    kept = list(windows([tmp_path / "a.jsonl"], tokenizer, 64, 64, 2, counts=counts))
    assert counts.exact_duplicates == 2 and counts.near_duplicates == 0 and len(kept) == 7
    assert [w.doc for w in kept] == [f"a.jsonl:{i}" for i in (1, 2, 3, 4, 5, 6, 9)]  # the first occurrence stays
    counts = StreamCounts()
    kept = list(windows([tmp_path / "a.jsonl"], tokenizer, 64, 64, 2, dedup="near", near_threshold=0.5, counts=counts))
    assert counts.exact_duplicates == 2 and counts.near_duplicates == 1 and len(kept) == 6
    counts = StreamCounts()
    assert len(list(windows([tmp_path / "a.jsonl"], tokenizer, 64, 64, 2, dedup="none", counts=counts))) == 9


# ---------------------------------------------------------------- ranking


def test_rank_order_against_sorted():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(0, 40))
        excess = rng.choice([0.1, 0.2, 0.3, np.nan], n)  # ties and NaN
        loss = rng.choice([1.0, 2.0, np.nan], n)
        order = rng.permutation(n)
        assert rank_order(excess, loss, order).tolist() == slow_rank(excess, loss, order)


def test_the_top_k_is_among_the_chunks_candidates():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n, k, size = int(rng.integers(1, 200)), int(rng.integers(0, 12)), int(rng.integers(1, 50))
        ma = rng.integers(0, 20, n) / 20
        tau = rng.choice([0.2, 0.4], n)
        loss, index = rng.integers(0, 5, n).astype(float), np.arange(n)
        level = 0.8
        kept = np.concatenate([candidates(ma[s:s + size] - tau[s:s + size], loss[s:s + size], index[s:s + size],
                                          ma[s:s + size], level, k) for s in range(0, n, size)])
        sub = np.flatnonzero(kept)
        again = sub[candidates((ma - tau)[sub], loss[sub], index[sub], ma[sub], level, k)]
        want = np.flatnonzero(candidates(ma - tau, loss, index, ma, level, k))
        assert sorted(again) == sorted(want)
        assert set(top_k(ma - tau, loss, index, k)) <= set(want)


def test_blocked_greedy_and_nll_are_argmax_and_token_nll():
    import torch

    from unmemorize.memorization import token_nll
    from unmemorize.scan.measure import greedy_and_nll

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 17, 50, generator=g)
    logits[0, 2, [4, 9]] = 10.0  # equal maxima: the first index, as argmax
    ids = torch.randint(0, 50, (3, 17), generator=g)
    for block in (1, 5, 64, None):
        a, nll = greedy_and_nll(logits, ids, block)
        assert torch.equal(a, logits.argmax(-1))
        torch.testing.assert_close(nll, token_nll(logits, ids), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- the model parts


def test_measure_gives_the_profiles_ma_and_loss():
    from unmemorize.scan.measure import measure

    with one_thread():
        _, model, forget, unseen = small_lab()
        for seqs in (forget, unseen):
            want = profile(model, seqs, ProfileOptions(metrics=("ma", "loss"), batch_size=3))
            tokens = [seqs.input_ids[i, : seqs.lengths[i]].tolist() for i in range(len(seqs))]
            ma, loss = measure(model, tokens, seqs.pad_id, batch_size=3)
            np.testing.assert_array_equal(ma, want["ma"].to_numpy())
            np.testing.assert_allclose(loss, want["loss"].to_numpy(), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The memorizing tiny model saved as a folder, a corpus that hides its trained records among unseen
    ones, and unseen records of the same form for τ."""
    with one_thread():
        tok, model, forget, unseen = small_lab()
        ma = profile(model, forget, ProfileOptions(metrics=("ma",)))["ma"].to_numpy()
    d = tmp_path_factory.mktemp("scan")
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    trained = records(8, seed=7)
    others = records(40, seed=21)
    rows = [{"id": f"m{i}", "text": t, "kind": "member"} for i, t in enumerate(trained)]
    rows += [{"id": f"o{i}", "text": t, "kind": "other"} for i, t in enumerate(others)]
    random.Random(5).shuffle(rows)
    (d / "corpus").mkdir()
    write_jsonl(d / "corpus" / "a.jsonl", rows[:30])
    pd.DataFrame(rows[30:]).to_csv(d / "corpus" / "b.csv", index=False)
    write_jsonl(d / "reference.jsonl", [{"id": f"u{i}", "text": t, "kind": "member" if i % 2 else "other"}
                                        for i, t in enumerate(records(16, seed=33))])
    return d, tok, {f"m{i}": float(g) for i, g in enumerate(ma)}


def _spec(d: Path, **kw) -> ScanSpec:
    base = dict(model={"path": str(d / "model")}, corpus=(d / "corpus",), reference=d / "reference.jsonl", length=40,
                min_tokens=8,
                top=6, chunk=8, profile={"metrics": ("ma", "el", "extraction"), "el_n": 4,
                                         "extraction_prefix": 20, "extraction_suffix": 20})
    return ScanSpec(**{**base, **kw})


def _scan(d: Path, out: str, **kw):
    with one_thread():
        return scan_run(_spec(d, **kw), d / out, log=lambda m: None)


def test_a_memorized_text_hidden_in_a_corpus_comes_out_on_top(lab):
    d, tok, member_ma = lab
    result, path = _scan(d, "runs/planted")
    top = result.top
    best = max(member_ma, key=member_ma.get)
    assert top["doc"].iloc[0] == best  # the most memorized record is first
    trained = {k for k, g in member_ma.items() if g >= 0.6}
    assert len(trained) >= 3 and set(top["doc"].head(len(trained))) == trained
    assert top["ma"].iloc[0] == pytest.approx(member_ma[best], abs=1e-9)
    assert {"el", "extraction_matched", "extraction_exact", "text", "token_offset", "char_offset"} <= set(top)
    assert result.documents["doc"].iloc[0] == best
    # forget.jsonl is what unlearn reads: the ranked windows' ids and texts
    from unmemorize.data import load_sequences

    forget = load_sequences(path / "forget.jsonl", tok, 40)
    assert forget.ids == top["id"].tolist() and forget.ids[0] == f"{best}@0"
    assert forget.input_ids[0, : forget.lengths[0]].tolist() == tok(top["text"].iloc[0], add_special_tokens=False)[
        "input_ids"]
    windows_frame = pd.read_parquet(path / "windows")
    assert len(windows_frame) == len(result.ma) == 48
    for name in ("top.csv", "documents.csv", "histogram.png", "report.html", "manifest.json", "summary.json"):
        assert (path / name).is_file(), name
    assert not (d / "runs" / ".planted.partial").exists()


def test_tau_by_group_and_the_level(lab):
    d, _, member_ma = lab
    result, _ = _scan(d, "runs/groups", tau_by="kind", top=0, above="0.6")
    assert set(result.levels.by_group) == {"member", "other"}
    top = result.top
    assert (top["ma"] >= 0.6).all() and len(top) == sum(g >= 0.6 for g in member_ma.values())
    want = [result.levels.by_group[g] for g in top["group"]]
    assert top["tau"].tolist() == pytest.approx(want)


def test_an_interrupted_scan_continues_to_the_same_table(lab, monkeypatch):
    d, _, _ = lab
    whole, _ = _scan(d, "runs/whole")
    calls = {"n": 0}
    original = PartialScan.write

    def write_then_stop(self, chunk, frame):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        original(self, chunk, frame)

    monkeypatch.setattr(PartialScan, "write", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _scan(d, "runs/resumed")
    monkeypatch.setattr(PartialScan, "write", original)
    partial = d / "runs" / ".resumed.partial"
    assert len(list(partial.glob("part-*.parquet"))) == 3 and not (d / "runs" / "resumed").exists()
    resumed, path = _scan(d, "runs/resumed")
    assert resumed.timings["chunks_resumed"] == 3 and resumed.timings["windows_measured"] == 48 - 3 * 8
    pd.testing.assert_frame_equal(resumed.top, whole.top)
    pd.testing.assert_frame_equal(resumed.documents, whole.documents)
    assert pd.read_parquet(path / "windows").equals(pd.read_parquet(d / "runs" / "whole" / "windows"))
    assert not partial.exists()
    # an interrupted scan with other settings is not mixed in: refused, or discarded with --overwrite
    other = d / "runs" / ".other.partial"
    other.mkdir()
    (other / "scan.json").write_text(json.dumps({"key": "other settings"}))
    with pytest.raises(UserError, match="other settings"):
        _scan(d, "runs/other")
    with one_thread():
        again, _ = scan_run(_spec(d), d / "runs" / "other", overwrite=True, log=lambda m: None)
    pd.testing.assert_frame_equal(again.top, whole.top)
    assert not other.exists()


# ---------------------------------------------------------------- bad input


def test_bad_files_and_records_are_skipped_and_counted(lab, tmp_path):
    d, _, _ = lab
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "good.jsonl", [{"id": f"g{i}", "text": t} for i, t in enumerate(records(6, seed=40))])
    (corpus / "latin1.txt").write_bytes("Café au lait, crème brûlée.".encode("latin-1"))
    (corpus / "mixed.jsonl").write_text('{"text": "Record 123. Name: Ada Brunoson. City: Ashford."}\n'
                                        "not json\n[1, 2]\n" + '{"title": "no text"}\n')
    (corpus / "broken.parquet").write_bytes(b"PAR1 not really")
    (corpus / "notext.csv").write_text("title,body\na,b\n")
    with one_thread():
        result, _ = scan_run(_spec(d, corpus=(corpus,), top=3), tmp_path / "out", log=lambda m: None)
    c = result.counts
    assert c["files_skipped"] == 3 and c["records_skipped"] == 3 and c["files_read"] == 4
    assert c["documents"] == 7
    assert any("latin1.txt: not UTF-8" in w for w in result.warnings)
    assert reading.utf8_problem(corpus).startswith("cannot be read")  # an OSError (here: a folder) is a reason too


def test_bad_input_is_one_line(lab, tmp_path):
    d, _, _ = lab
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    with pytest.raises(UserError, match="no window to measure"):
        scan_run(_spec(d, corpus=(empty,)), tmp_path / "o1", log=lambda m: None)
    assert not (tmp_path / ".o1.partial").exists() and not (tmp_path / "o1").exists()
    with pytest.raises(UserError, match="stride"):
        _spec(d, stride=0)
    with pytest.raises(UserError, match="context holds 64 tokens"):
        scan_run(_spec(d, length=100), tmp_path / "o2", log=lambda m: None)
    with pytest.raises(UserError, match="does not exist"):
        scan_run(_spec(d, corpus=(tmp_path / "nowhere",)), tmp_path / "o3", log=lambda m: None)
    with pytest.raises(UserError, match="neither a number"):
        _spec(d, above="lots")
    with pytest.raises(UserError, match="nothing to rank"):
        _spec(d, top=0)


# ---------------------------------------------------------------- the command line


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "UNMEMORIZE_CACHE": str(cwd / "cache"), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "unmemorize.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def test_scan_command_end_to_end(lab):
    d, _, member_ma = lab
    args = ("scan", "--model", "model", "--corpus", "corpus", "--reference", "reference.jsonl", "--length", "40",
            "--top", "5", "--min-tokens", "8", "--el-n", "4", "--prefix", "20", "--suffix", "20", "--chunk", "16",
            "--out", "runs/cli")
    r = run_cli(*args, cwd=d)
    assert r.returncode == 0, r.stderr
    out = d / "runs" / "cli"
    top = pd.read_csv(out / "top.csv")
    assert top["doc"].iloc[0] == max(member_ma, key=member_ma.get)
    assert "The most memorized windows" in r.stdout and "windows/s" in r.stderr and "tokens/s" in r.stderr
    lines = [json.loads(x) for x in (out / "forget.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and {"id", "text", "doc", "token_offset", "char_offset"} <= set(lines[0])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "scan" and manifest["options"]["top"] == 5
    r = run_cli(*args, cwd=d)
    assert r.returncode == 2 and "already holds files" in r.stderr
    r = run_cli(*args[:-2], "--stride", "0", "--out", "runs/bad", cwd=d)
    assert r.returncode == 2 and "--stride" in r.stderr and "Traceback" not in r.stderr


def test_two_processes_give_the_one_process_scan(lab):
    """Under `accelerate launch` with 2 gloo processes each measures half of every chunk; the one folder
    rank 0 writes holds the windows and the table of one process."""
    import socket

    d, _, _ = lab
    one, _ = _scan(d, "runs/one")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    accelerate = Path(sys.executable).parent / "accelerate"
    config = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "ddp.yaml"
    cmd = [str(accelerate), "launch", "--config_file", str(config), "--num_processes", "2", "--main_process_port",
           str(port), "-m", "unmemorize.cli", "scan", "--model", "model", "--corpus", "corpus", "--reference",
           "reference.jsonl", "--length", "40", "--min-tokens", "8", "--top", "6", "--chunk", "8", "--el-n", "4",
           "--prefix", "20", "--suffix", "20", "--out", "runs/two"]
    proc = subprocess.run(cmd, cwd=d, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("Run directory") == 1  # only rank 0 talks
    assert [p.name for p in (d / "runs").iterdir() if p.name.startswith(".two")] == []
    assert json.loads((d / "runs" / "two" / "manifest.json").read_text())["world_size"] == 2
    got = pd.read_parquet(d / "runs" / "two" / "top.parquet")
    for col in ("id", "token_offset", "char_offset", "verdict", "text"):
        assert got[col].tolist() == one.top[col].tolist(), col
    for col in ("ma", "tau", "el", "extraction_matched"):
        np.testing.assert_allclose(got[col].to_numpy(float), one.top[col].to_numpy(float), atol=1e-9, err_msg=col)
    two_windows = pd.read_parquet(d / "runs" / "two" / "windows")
    one_windows = pd.read_parquet(d / "runs" / "one" / "windows")
    assert two_windows["id"].tolist() == one_windows["id"].tolist()
    np.testing.assert_allclose(two_windows["ma"], one_windows["ma"], atol=1e-9)
    np.testing.assert_allclose(two_windows["loss"], one_windows["loss"], atol=1e-4)


def test_the_flags_are_the_specs_keys_with_its_defaults():
    from unmemorize.commands import flags
    from unmemorize.commands.scan import RENAME

    all_flags = flags.flags(ScanSpec, exclude=("profile.parity",), rename=RENAME)
    keys = {f.key for f in all_flags}
    assert {"corpus", "stride", "min_tokens", "dedup", "near_threshold", "top", "above", "chunk", "tau_by",
            "profile.batch_size", "band.hi", "model.path"} <= keys and "profile.parity" not in keys
    values = {f.param: None if f.default is flags._MISSING else f.default for f in all_flags}
    values.update(corpus=["c1", "c2"], reference="r.jsonl")
    assert flags.build(ScanSpec, all_flags, values) == ScanSpec(corpus=("c1", "c2"), reference="r.jsonl")
    values["stride"] = -3
    with pytest.raises(UserError, match="--stride: got -3"):
        flags.build(ScanSpec, all_flags, values)


def test_ranked_ids_are_unique_for_the_forget_file():
    from unmemorize.scan.output import unique_ids

    frame = pd.DataFrame({"id": ["a@0", "a@0", "b@0", "a@0", "c@5"], "source": ["x.jsonl", "y.csv", "x.jsonl",
                                                                              "x.jsonl", "y.csv"]})
    got = unique_ids(frame)
    assert got == ["x.jsonl:a@0", "y.csv:a@0", "b@0", "x.jsonl:a@0#2", "c@5"] and len(set(got)) == len(got)
