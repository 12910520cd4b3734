"""Readers and tokenization: formats, ids, padding, and the errors people see for bad files."""

from __future__ import annotations

import json

import pytest
import torch

from unmemorize.data import content_id, load_sequences, read_records
from unmemorize.errors import UserError


def test_jang_csv_keeps_ids_and_columns(tmp_path, tokenizer):
    p = tmp_path / "forget.csv"
    p.write_text('doc_id,corpus,text\n33,github,"def f():\n    return 1"\n77,pile-cc,Plain prose here.\n')
    seqs = load_sequences(p, tokenizer, length=8)
    assert seqs.ids == ["33", "77"]
    assert seqs.meta["corpus"].tolist() == ["github", "pile-cc"]
    assert seqs.input_ids.shape == (2, 8)
    assert len(seqs.sha256) == 64


def test_lengths_padding_and_truncation(tmp_path, tokenizer):
    long_text = "Customer file 1. Name: Ada Eriksen. " * 10
    p = tmp_path / "f.jsonl"
    p.write_text(json.dumps({"id": "a", "text": long_text}) + "\n" + json.dumps({"id": "b", "text": "Hi."}) + "\n")
    seqs = load_sequences(p, tokenizer, length=16)
    want_b = tokenizer("Hi.", add_special_tokens=False)["input_ids"]
    assert seqs.lengths.tolist() == [16, len(want_b)]
    assert seqs.truncated == 1
    assert seqs.input_ids[1, : len(want_b)].tolist() == want_b
    assert (seqs.input_ids[1, len(want_b):] == tokenizer.pad_token_id).all()
    assert seqs.attention_mask[1].tolist() == [1] * len(want_b) + [0] * (16 - len(want_b))


def test_plain_text_is_cut_into_windows(tmp_path, tokenizer):
    text = "The quick brown fox jumps over the lazy dog. " * 8
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(text)
    seqs = load_sequences(tmp_path / "docs", tokenizer, length=10)
    toks = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(seqs) == -(-len(toks) // 10)
    assert seqs.ids[0] == "a.txt#0" and seqs.ids[1] == "a.txt#1"
    assert torch.cat([seqs.input_ids[i, : seqs.lengths[i]] for i in range(len(seqs))]).tolist() == toks


def test_ids_default_to_content_hash(tmp_path, tokenizer):
    p = tmp_path / "f.jsonl"
    p.write_text(json.dumps({"text": "alpha"}) + "\n" + json.dumps({"text": "beta"}) + "\n")
    seqs = load_sequences(p, tokenizer, length=8)
    assert seqs.ids == [content_id("alpha"), content_id("beta")]


@pytest.mark.parametrize("name,content,message", [
    ("dup.csv", "doc_id,text\n1,a\n1,b\n", "duplicate ids (1)"),
    ("nocol.csv", "doc_id,body\n1,a\n", "no 'text' column"),
    ("empty.csv", "", "is empty"),
    ("blank.csv", "doc_id,text\n", "no sequences"),
    ("emptytext.csv", "doc_id,text\n1,\n", "line 2: empty text"),
    ("bad.jsonl", '{"text": "a"}\n{"text": \n', "line 2: not valid JSON"),
    ("list.jsonl", '["a"]\n', "line 1: expected a JSON object"),
    ("dup_text.jsonl", '{"text": "same"}\n{"text": "same"}\n', "duplicate ids"),
    ("x.parquet", "x", "unknown file type"),
])
def test_bad_files_name_the_problem(tmp_path, tokenizer, name, content, message):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(UserError) as e:
        load_sequences(p, tokenizer, length=8)
    assert message in str(e.value)
    assert name in str(e.value)


def test_non_utf8_and_missing(tmp_path, tokenizer):
    p = tmp_path / "latin.csv"
    p.write_bytes("doc_id,text\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"not UTF-8 .*line 2"):
        read_records(p)
    with pytest.raises(UserError, match="does not exist"):
        read_records(tmp_path / "nope.csv")
