"""Sampling extraction: besides greedy decoding, draw N samples (top-k, temperature) from each prefix
and count how often the true suffix — or its first m' tokens — comes out.

Why no decoding is needed. A sample reproduces the true suffix s = x[k:k+m] token by token: its first
token equals x[k] with probability q_k = q(x[k] | x[:k]), where q is the sampling distribution
(softmax of logits/temperature restricted to the top-k); *given* that it did, its context is exactly
x[:k+1], so its next token equals x[k+1] with probability q_{k+1}, and so on. Where a sample first
deviates is therefore distributed exactly as the first failure in a sequence of independent
Bernoulli(q_k), Bernoulli(q_{k+1}), … trials, and every q comes from the one teacher-forced pass
the other attacks use. What a sample says after its first deviation never matters for "did the true
suffix come out". So:

* P(first j suffix tokens come out) = Π_{i<j} q_{k+i}                    (:func:`match_probabilities`)
* E[tokens reproduced before the first deviation] = Σ_{j=1}^{m} P(first j)  (the attack's score, / m)
* the N samples themselves are drawn from those Bernoulli trials (:func:`sample_matched_lengths`),
  seeded, and reported as counts out of N, next to their exact expectations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from unmemorize.attacks.registry import PARTS, AttackContext, attack
from unmemorize.memorization import extraction_window


def match_probabilities(q: np.ndarray) -> np.ndarray:
    """P_j = Π_{i=0}^{j−1} q_i for j = 1..m: the probability that a sample reproduces the first j tokens."""
    return np.cumprod(np.asarray(q, dtype=float))


def expected_match_fraction(q: np.ndarray) -> float:
    """(1/m) E[matched length] = (1/m) Σ_{j=1}^{m} P_j, in [0, 1]; 1 means every sample reproduces all m tokens."""
    q = np.asarray(q, dtype=float)
    return float(match_probabilities(q).sum() / len(q)) if len(q) else float("nan")


def sample_matched_lengths(q: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Matched length of each of ``n`` samples: the index of the first failed Bernoulli(q_i) trial (m if none)."""
    q = np.asarray(q, dtype=float)
    ok = rng.random((n, len(q))) < q[None, :]
    first_fail = np.where(ok.all(1), len(q), (~ok).argmax(1))
    return first_fail


def greedy_matched_length(correct: np.ndarray) -> int:
    """Tokens greedy decoding reproduces before its first error (argmax = true token at each step)."""
    bad = np.flatnonzero(~np.asarray(correct, dtype=bool))
    return int(bad[0]) if bad.size else len(correct)


def _score(ctx: AttackContext, part: str) -> pd.DataFrame:
    o = ctx.options
    seqs, stats = ctx.sets[part], ctx.stats(part)
    # one stream per part, seeded: the counts do not depend on which other attacks ran
    rng = np.random.default_rng([o.seed, PARTS.index(part)])
    rows = []
    for r in range(len(seqs)):
        L = int(seqs.lengths[r])
        prefix = None if seqs.prefix_lengths is None else int(seqs.prefix_lengths[r])
        k, m = extraction_window(L, prefix, o.extraction_prefix, o.extraction_suffix)
        if L < 2 or m < 1:
            rows.append(dict(score=np.nan, prefix=k, suffix=0, first=0))
            continue
        q = stats.q[r, k - 1:k - 1 + m]  # position t predicts x[t+1]
        first = min(o.first_tokens, m)
        p = match_probabilities(q)
        matched = sample_matched_lengths(q, o.samples, rng)
        rows.append(dict(
            score=expected_match_fraction(q), prefix=k, suffix=m, first=first,
            p_suffix=float(p[-1]), p_first=float(p[first - 1]),
            hits_suffix=int((matched >= m).sum()), hits_first=int((matched >= first).sum()),
            mean_matched=float(matched.mean()),
            greedy_matched=greedy_matched_length(stats.correct[r, k - 1:k - 1 + m]),
        ))
    return pd.DataFrame(rows)


def _summarize(ctx: AttackContext, frames: dict[str, pd.DataFrame]) -> dict:
    o = ctx.options
    out: dict = {"samples": o.samples, "top_k": o.top_k, "temperature": o.temperature,
                 "prefix_tokens": o.extraction_prefix, "suffix_tokens": o.extraction_suffix,
                 "first_tokens": o.first_tokens}
    for part, df in frames.items():
        d = df.dropna(subset=["score"])
        if d.empty:
            out[part] = {"sequences": 0}
            continue
        out[part] = {
            "sequences": len(d),
            "suffix_extracted_any": int((d["hits_suffix"] > 0).sum()),  # sequences with ≥ 1 sample = true suffix
            "first_extracted_any": int((d["hits_first"] > 0).sum()),
            "greedy_extracted": int((d["greedy_matched"] >= d["suffix"]).sum()),
            "mean_hits_suffix": float(d["hits_suffix"].mean()),
            "mean_hits_first": float(d["hits_first"].mean()),
            "expected_suffix_rate": float(d["p_suffix"].mean()),  # the N → ∞ limit of hits_suffix / N
            "expected_first_rate": float(d["p_first"].mean()),
        }
    return out


attack("sampling", title="sampling extraction", source="Carlini et al. 2021 (top-k sampling); docs/method.md §3.4",
       summarize=_summarize)(_score)
