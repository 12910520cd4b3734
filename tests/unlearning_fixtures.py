"""A tiny model that has memorized 8 sequences to different degrees, for the unlearning tests.

Trained once per test process (a few seconds): a 2-layer GPT-2 with a 512-token BPE, fine-tuned on
8 synthetic records with per-sequence loss weights rising from 0.05 to 1, so that MA ends up spread
from about 0.3 to 0.9 — some sequences above SGA's γ = 0.7, some in the band, none identical.
"""

from __future__ import annotations

import copy
import functools

import pandas as pd
import torch

from unmemorize.data import TextRecords, tokenize
from unmemorize.lab.records import generate_records
from unmemorize.tiny import tiny_model, train_tokenizer
from unmemorize.unlearning import losses

LENGTH = 40


def make_set(tokenizer, texts, length=LENGTH, prefix="s"):
    recs = TextRecords(list(texts), [f"{prefix}{i}" for i in range(len(texts))],
                       pd.DataFrame(index=range(len(texts))), "memory")
    return tokenize(recs, tokenizer, length)


@functools.lru_cache(maxsize=1)
def _lab():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tok = train_tokenizer([r["text"] for r in generate_records(300, seed=123)], vocab_size=512)
        forget = make_set(tok, [r["text"] for r in generate_records(8, seed=7)])
        unseen = make_set(tok, [r["text"] for r in generate_records(8, seed=8)], prefix="u")
        model = tiny_model("gpt2", vocab_size=len(tok), eos_id=tok.eos_token_id, n_layer=2, d_model=64, n_head=2,
                           n_positions=64, seed=1)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        w = torch.linspace(0.05, 1.0, len(forget))
        mask = losses.position_mask(forget.lengths, forget.length).float()
        for _ in range(110):
            logits = model(input_ids=forget.input_ids, attention_mask=forget.attention_mask).logits
            per_seq = (losses.token_nll(logits, forget.input_ids) * mask).sum(1) / mask.sum(1)
            loss = (per_seq * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
    return tok, model, forget, unseen


def small_lab():
    """(tokenizer, a fresh copy of the memorizing model, forget set, unseen set of the same form)."""
    tok, model, forget, unseen = _lab()
    return tok, copy.deepcopy(model), forget, unseen


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
