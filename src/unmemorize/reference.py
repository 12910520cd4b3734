"""Slow, obviously correct references for the metrics, for tests and benchmarks.

Each one does literally what the definition (or the original code) says, one prefix at a time, so
that the fast implementations in :mod:`unmemorize.memorization` can be checked for exact equality.
"""

from __future__ import annotations

import math

import torch

from unmemorize.memorization import overlap


@torch.no_grad()
def greedy_reference(model, prefix: torch.Tensor, new_tokens: int) -> list[int]:
    """Greedy decoding by full recomputation at every step, batch 1, no cache, no padding, no eos stop."""
    ids = prefix[None, :].clone()
    out = []
    for _ in range(new_tokens):
        nxt = model(input_ids=ids).logits[0, -1].argmax(-1)
        out.append(int(nxt))
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return out


@torch.no_grad()
def memorization_accuracy_reference(model, x: torch.Tensor) -> float:
    """The original code's loop: one-token greedy generation from every prefix x[:t] (PAPER_SPEC §2.2)."""
    L = len(x)
    if L < 2:
        return math.nan
    hits = sum(greedy_reference(model, x[:t], 1)[0] == int(x[t]) for t in range(1, L))
    return hits / (L - 1)


@torch.no_grad()
def extraction_likelihood_reference(model, x: torch.Tensor, n: int = 10) -> float:
    """Jang et al.'s loop: decode greedily from every prefix to full length, average the n-gram overlap."""
    L = len(x)
    if L < n + 1:
        return math.nan
    xs = x.tolist()
    total = 0.0
    for i in range(1, L - n + 1):
        total += overlap(greedy_reference(model, x[:i], L - i), xs[i:], n)
    return total / (L - n)


@torch.no_grad()
def jang_extraction_likelihood(model, input_ids: torch.Tensor, n: int = 10) -> list[float]:
    """Jang et al.'s loop as the original code runs it: for each prefix length i, one batched
    ``generate`` over all sequences (all of full length T, no padding), KV-cached, greedy.

    Used as the timing baseline in benchmarks; the per-sequence values equal the reference above.
    """
    from transformers import GenerationConfig

    B, T = input_ids.shape
    cfg = GenerationConfig(do_sample=False, max_length=T, min_length=0, eos_token_id=None,
                           pad_token_id=model.config.eos_token_id if model.config.eos_token_id is not None else 0)
    totals = [0.0] * B
    for i in range(T - 1, 0, -1):
        if T - i < n:
            continue
        prompt = input_ids[:, :i]
        pred = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=cfg)[:, i:]
        for b in range(B):
            totals[b] += overlap(pred[b].tolist(), input_ids[b, i:].tolist(), n)
    return [t / (T - n) for t in totals]


@torch.no_grad()
def memorization_accuracy_generate_loop(model, input_ids: torch.Tensor, full_logits: bool = False) -> list[float]:
    """The original code's MA loop, batched over sequences as it runs: ``generate`` one token from
    every prefix length (PAPER_SPEC §2.2). Timing baseline for benchmarks.

    Today's ``generate`` computes the logits of the last prompt position only; the transformers of
    the original code (4.x, before ``logits_to_keep``) computed them for every prompt position.
    ``full_logits=True`` restores that cost (same values).
    """
    from transformers import GenerationConfig

    extra = {"logits_to_keep": 0} if full_logits else {}  # 0 = keep every position

    B, T = input_ids.shape
    hits = torch.zeros(B)
    for i in range(1, T):
        cfg = GenerationConfig(do_sample=False, max_length=i + 1, eos_token_id=None,
                               pad_token_id=model.config.eos_token_id if model.config.eos_token_id is not None else 0)
        prompt = input_ids[:, :i]
        pred = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=cfg, **extra)[:, -1]
        hits += (pred == input_ids[:, i]).float()
    return (hits / (T - 1)).tolist()
