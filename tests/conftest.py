"""Shared fixtures: a tiny BPE tokenizer, tiny random models, and a tiny model that has memorized
some sequences to different degrees (trained once per session, in seconds)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# Nothing in the tests reaches the network: Hugging Face hub ids and datasets resolve from caches only.
os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest
import torch

from unmemorize.data import TextRecords, tokenize
from unmemorize.lab.ordinary import stdlib_paragraphs
from unmemorize.lab.records import generate_records
from unmemorize.tiny import tiny_model, train_tokenizer

from benchmarks.common import DATA as SHARED  # the one setting: UNMEMORIZE_DATA (docs/data.md)

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def single_thread():
    """A module's tiny models on one thread (``pytestmark = pytest.mark.usefixtures("single_thread")``):
    they run as fast, and two threads spin-waiting for each other beside other work can be ten times slower."""
    from unlearning_fixtures import one_thread

    with one_thread():
        yield


def shared_data(*parts: str) -> Path:
    """A path under the data folder (UNMEMORIZE_DATA), or skip the test with the reason."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (set UNMEMORIZE_DATA to the data folder, docs/data.md)")
    return p


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return [r["text"] for r in generate_records(300, seed=123)] + stdlib_paragraphs()


@pytest.fixture(scope="session")
def tokenizer(corpus):
    return train_tokenizer(corpus, vocab_size=2048)


def make_set(tokenizer, texts, length=48, ids=None):
    import pandas as pd

    recs = TextRecords(list(texts), ids or [f"s{i}" for i in range(len(texts))],
                       pd.DataFrame(index=range(len(texts))), "memory")
    return tokenize(recs, tokenizer, length)


@pytest.fixture(scope="session")
def memorized(tokenizer, corpus):
    """A tiny GPT-2 trained on 12 records, record r drawn with weight (r+1)², so that they end up
    memorized to different degrees (MA from about 0.4 to 0.7): (model, members, others)."""
    members = [r["text"] for r in generate_records(12, seed=7)]
    others = [r["text"] for r in generate_records(12, seed=8)]
    seqs = make_set(tokenizer, members, length=64)
    model = tiny_model("gpt2", vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, seed=1)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    weights = torch.tensor([float(r + 1) ** 2 for r in range(len(members))])
    for _ in range(200):
        idx = torch.multinomial(weights, 8, replacement=True, generator=g)
        ids, mask = seqs.input_ids[idx], seqs.attention_mask[idx]
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, seqs, make_set(tokenizer, others, length=64)


@contextlib.contextmanager
def positions_used(model):
    """Record, for every forward call, the positions it spans (cached tokens + new ones): what a short-context
    model would have to hold."""
    seen: list[int] = []
    forward = model.forward

    def watched(*args, **kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            x = kwargs["inputs_embeds"]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        seen.append((cache.get_seq_length() if cache is not None else 0) + x.shape[1])
        return forward(*args, **kwargs)

    model.forward = watched
    try:
        yield seen
    finally:
        del model.forward
