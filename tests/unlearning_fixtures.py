"""A tiny model that has memorized 8 sequences to different degrees, for the unlearning tests.

Trained once per test process (seconds, on one thread): a 2-layer GPT-2 with a 512-token BPE,
fine-tuned on 8 templated records with per-sequence loss weights rising from 0.05 to 1 until their
MA spreads across SGA's γ = 0.7 and the band (at least 3 at ≥ 0.75, 3 under 0.6), so some are extractable, some in
the band, none identical. Unseen records of the same template are the reference for τ. The texts come
from this file's own seeded generator, so that changes elsewhere cannot change the fixture.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import random

import pandas as pd
import torch

from unmemorize.data import TextRecords, tokenize
from unmemorize.memorization import ProfileOptions, profile
from unmemorize.tiny import tiny_model, train_tokenizer
from unmemorize.unlearning import losses

LENGTH = 40
_NAMES = ("Ada Bruno Chiara Dmitri Elena Farid Greta Hugo Ines Jonas Keiko Lars Maya Nadia Omar Priya Rosa Samir "
          "Tomas Ulla Vera Wim Yusuf Zora").split()
_CITIES = ("Ashford Bellhaven Corrinth Dunmere Eastwick Farrowby Glenmoor Hollins Ivybridge Larkfield").split()
_THINGS = ("kite lamp anchor violin cactus lantern compass teapot saddle marble ribbon pebble").split()


def records(n: int, seed: int) -> list[str]:
    """Templated records: the template is predictable, the filled-in values are what gets memorized."""
    rng = random.Random(seed)
    return [f"Record {rng.randint(100, 999)}. Name: {rng.choice(_NAMES)} {rng.choice(_NAMES)}son. "
            f"City: {rng.choice(_CITIES)}. Code: {rng.randint(1000, 9999)}-{rng.randint(10, 99)}. "
            f"Keeps a {rng.choice(_THINGS)} and a {rng.choice(_THINGS)}." for _ in range(n)]


def make_set(tokenizer, texts, length=LENGTH, prefix="s"):
    recs = TextRecords(list(texts), [f"{prefix}{i}" for i in range(len(texts))],
                       pd.DataFrame(index=range(len(texts))), "memory")
    return tokenize(recs, tokenizer, length)


@contextlib.contextmanager
def one_thread():
    """Tiny models run as fast on one thread, and with other work on the machine two threads that
    spin-wait for each other can be ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def _lab():
    with torch.random.fork_rng(), one_thread():
        torch.manual_seed(0)
        tok = train_tokenizer(records(300, seed=123), vocab_size=512)
        forget = make_set(tok, records(8, seed=7))
        unseen = make_set(tok, records(8, seed=8), prefix="u")
        model = tiny_model("gpt2", vocab_size=len(tok), eos_id=tok.eos_token_id, n_layer=2, d_model=64, n_head=2,
                           n_positions=64, seed=1)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        w = torch.tensor([0.0, 0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0])  # two never trained: unseen-like
        mask = losses.position_mask(forget.lengths, forget.length).float()
        for step in range(1, 301):
            logits = model(input_ids=forget.input_ids, attention_mask=forget.attention_mask).logits
            per_seq = (losses.token_nll(logits, forget.input_ids) * mask).sum(1) / mask.sum(1)
            loss = (per_seq * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step >= 30 and step % 5 == 0:
                ma = profile(model, forget, ProfileOptions(metrics=("ma",)))["ma"].to_numpy()
                if (ma >= 0.75).sum() >= 3 and (ma < 0.6).sum() >= 3 and step >= 40:
                    break
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
