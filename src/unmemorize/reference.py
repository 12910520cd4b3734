"""Slow, obviously correct references for the metrics, for tests and benchmarks.

Each one does literally what the definition (or the original code) says, one prefix (or one
bootstrap replicate) at a time, so that the fast implementations in :mod:`unmemorize.memorization`
and :mod:`unmemorize.stats` can be checked for exact equality.
"""

from __future__ import annotations

import math

import numpy as np
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
    """The original code's loop: one-token greedy generation from every prefix x[:t] (docs/method.md §2.2)."""
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
    every prefix length (docs/method.md §2.2). Timing baseline for benchmarks.

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


def roc_metrics_reference(members: np.ndarray, nonmembers: np.ndarray, fprs) -> list[float]:
    """[AUC, TPR@α …] the original scoring's way: scikit-learn's full ROC curve (every threshold kept),
    trapezoid AUC, TPR@α = max{tpr_i : fpr_i ≤ α + 1e-12}. NaN-free 1-D inputs, both classes present."""
    from sklearn.metrics import auc, roc_curve

    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    fpr, tpr, _ = roc_curve(labels, np.r_[members, nonmembers], drop_intermediate=False)
    return [float(auc(fpr, tpr)), *(float(tpr[fpr <= a + 1e-12].max()) for a in fprs)]


def roc_replicates_reference(members, nonmembers, fprs=(), bootstrap: int = 1000, seed: int = 0) -> np.ndarray:
    """The original scoring's stratified bootstrap loop: per replicate, resample members then
    non-members with replacement and build a whole ROC curve. [B, 1 + len(fprs)]; timing baseline."""
    m, n = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    rng = np.random.default_rng(seed)
    boot = np.empty((bootstrap, 1 + len(fprs)))
    for b in range(bootstrap):
        bm = m[rng.integers(0, len(m), len(m))]
        bn = n[rng.integers(0, len(n), len(n))]
        boot[b] = roc_metrics_reference(bm, bn, fprs)
    return boot


def evaluate_reference(member_scores, nonmember_scores, fprs=(0.01, 0.001), bootstrap: int = 1000,
                       confidence: float = 0.95, seed: int = 0):
    """The original :func:`unmemorize.attacks.scoring.evaluate`, one ``roc_curve`` per bootstrap
    replicate: the same :class:`~unmemorize.attacks.scoring.Evaluation`, slowly."""
    from unmemorize.attacks.scoring import NO_BOOTSTRAP_MARGIN, Evaluation, Interval, resolvable_fprs, roc

    m = np.asarray(member_scores, dtype=float)
    n = np.asarray(nonmember_scores, dtype=float)
    m_ok, n_ok = m[~np.isnan(m)], n[~np.isnan(n)]
    ok_fprs, unresolved = resolvable_fprs(tuple(fprs), len(n_ok))
    if len(m_ok) == 0 or len(n_ok) == 0:
        nan = Interval(math.nan, math.nan, math.nan)
        return Evaluation(nan, {}, tuple(fprs), len(m_ok), len(n_ok), len(m) - len(m_ok), len(n) - len(n_ok),
                          False, np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    point_auc, *point_tprs = roc_metrics_reference(m_ok, n_ok, ok_fprs)
    fpr_c, tpr_c = roc(np.r_[np.ones(len(m_ok)), np.zeros(len(n_ok))], np.r_[m_ok, n_ok])
    boot = roc_replicates_reference(m_ok, n_ok, ok_fprs, bootstrap, seed)
    q = (1 - confidence) / 2

    def interval(col: int, value: float) -> Interval:
        if bootstrap == 0:
            return Interval(value, math.nan, math.nan)
        lo, hi = np.quantile(boot[:, col], [q, 1 - q])
        return Interval(value, float(lo), float(hi))

    auc_iv = interval(0, point_auc)
    return Evaluation(
        auc=auc_iv,
        tpr={a: interval(1 + i, point_tprs[i]) for i, a in enumerate(ok_fprs)},
        unresolved_fprs=unresolved,
        n_members=len(m_ok), n_nonmembers=len(n_ok),
        nan_members=len(m) - len(m_ok), nan_nonmembers=len(n) - len(n_ok),
        below_chance=bool(auc_iv.high < 0.5) if bootstrap else point_auc <= 0.5 - NO_BOOTSTRAP_MARGIN,
        fpr_curve=fpr_c, tpr_curve=tpr_c,
    )
