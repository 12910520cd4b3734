"""Retain ("normal") data for the baselines that use it: GA+Mismatch (§4.7) and NPO's retain term.

The user names the file. A TruthfulQA CSV (columns ``Question`` and ``Best Answer``; the code's choice,
docs/method.md §4.7) is formatted as ``"### Question: {q}\\n ### Answer: {best answer}"`` and its best,
correct and incorrect answers form the pool of random answers; any other forget-style file (CSV/JSONL
with a ``text`` column, text files) gives its sequences as normal data and as the answer pool.
Unlike the code, every row is used (the code keeps a random 70 % training split).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from unmemorize.data import SequenceSet, TextRecords, load_sequences, tokenize
from unmemorize.errors import UserError
from unmemorize.runs import sha256_path

TRUTHFULQA_COLUMNS = ("Question", "Best Answer")


@dataclass
class RetainData:
    normal: SequenceSet  # sequences the model should keep behaving on
    answers: list[torch.Tensor]  # token ids of candidate random answers (GA+Mismatch)
    source: str
    kind: str  # "truthfulqa" or "text"

    def describe(self) -> dict:
        return {"source": self.source, "kind": self.kind, "sequences": len(self.normal),
                "answers": len(self.answers), "sha256": self.normal.sha256}


def _split_answers(value: str) -> list[str]:
    return [a.strip() for a in str(value).split(";") if a.strip()]


def load_retain(path: str | os.PathLike, tokenizer, length: int = 200) -> RetainData:
    p = Path(path)
    if p.suffix.lower() == ".csv" and p.is_file():
        try:
            head = pd.read_csv(p, nrows=0, dtype=str)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise UserError(f"retain file {p} is not a readable CSV: {e}") from None
        if all(c in head.columns for c in TRUTHFULQA_COLUMNS):
            return _truthfulqa(p, tokenizer, length)
    normal = load_sequences(p, tokenizer, length)
    answers = [normal.input_ids[i, : int(normal.lengths[i])] for i in range(len(normal))]
    return RetainData(normal, answers, str(p), "text")


def _truthfulqa(p: Path, tokenizer, length: int) -> RetainData:
    df = pd.read_csv(io.StringIO(p.read_text(encoding="utf-8")), dtype=str, keep_default_na=False)
    df = df[(df["Question"].str.strip() != "") & (df["Best Answer"].str.strip() != "")].reset_index(drop=True)
    if df.empty:
        raise UserError(f"retain file {p}: no row has both a Question and a Best Answer")
    texts = [f"### Question: {q}\n ### Answer: {a}" for q, a in zip(df["Question"], df["Best Answer"])]
    recs = TextRecords(texts, [f"q{i}" for i in range(len(texts))], pd.DataFrame(index=range(len(texts))), str(p))
    normal = tokenize(recs, tokenizer, length, sha256=sha256_path(p))
    pool: list[str] = []
    for col in ("Best Answer", "Correct Answers", "Incorrect Answers"):
        if col in df.columns:
            for v in df[col]:
                pool.extend(_split_answers(v))
    pool = list(dict.fromkeys(pool))
    ids = tokenizer([" " + a for a in pool], add_special_tokens=False)["input_ids"]
    answers = [torch.tensor(t, dtype=torch.long) for t in ids if t]
    return RetainData(normal, answers, str(p), "truthfulqa")


# a few ordinary openings; the model writes the rest (its own ordinary text, no data file needed)
_OPENINGS = ("The", "In", "It", "A", "When", "This", "We", "There", "One", "As", "For", "If", "After", "Many", "Our",
             "Some")


@torch.no_grad()
def sampled_retain(model, tokenizer, n: int = 16, length: int = 200, seed: int = 42, top_k: int = 50) -> RetainData:
    """Ordinary text for a retain term when the user gives none: ``n`` continuations that the original
    model samples (top-k, temperature 1) from common sentence openings. A KL term to the original on
    them holds the model's behaviour on everyday text without touching any data the run evaluates on
    (the reference set stays unseen; the forget set stays the only thing trained away from)."""
    from unmemorize import forward

    device = forward.device_of(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [_OPENINGS[i % len(_OPENINGS)] for i in range(n)]
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, enc))
    ids = torch.full((n, width), pad, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    for i, t in enumerate(enc):  # left-padded: every row continues from its last column
        ids[i, width - len(t):] = torch.tensor(t)
        attn[i, width - len(t):] = 1
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    try:
        out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=True, top_k=top_k,
                             temperature=1.0, max_new_tokens=max(1, length - 1), min_new_tokens=max(1, length - 1),
                             pad_token_id=pad)
    finally:
        torch.random.set_rng_state(torch_state)
    texts = [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out.cpu()]
    texts = [f"{p} {t.strip()}" for p, t in zip(prompts, texts)]
    recs = TextRecords(texts, [f"sample{i}" for i in range(n)], pd.DataFrame(index=range(n)), "model samples")
    import hashlib

    normal = tokenize(recs, tokenizer, length, sha256=hashlib.sha256("\n".join(texts).encode()).hexdigest())
    answers = [normal.input_ids[i, : int(normal.lengths[i])] for i in range(len(normal))]
    return RetainData(normal, answers, f"{n} samples of the original model (seed {seed})", "samples")
