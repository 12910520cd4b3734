"""The standard likelihood membership attacks: loss, zlib, min-k%, min-k%++ and the reference attack.

Each score is a pure function of per-token arrays (see :mod:`unmemorize.attacks.tokens`); rows are
sequences, columns positions, NaN or ``valid=False`` where a row is padding. Higher = member.
Notation: for x of true length L, ℓ_t = log p_θ(x_t | x_<t) for t = 2..L (L−1 predicted tokens).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd

from unmemorize.attacks.registry import AttackContext, attack
from unmemorize.attacks.tokens import token_mean

# ---------------------------------------------------------------- pure score functions


def _rows(values: np.ndarray, valid: np.ndarray):
    for v, ok in zip(values, valid):
        yield v[ok]


def loss_score(logp: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """LOSS attack (Yeom et al., CSF 2018): s(x) = (1/(L−1)) Σ_t ℓ_t, minus the token-mean cross-entropy."""
    return token_mean(logp, valid)


def zlib_entropy(text: str) -> int:
    """Bytes of the zlib-compressed UTF-8 text (default level), as in Carlini et al.'s extraction code."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_score(logp: np.ndarray, valid: np.ndarray, texts: list[str]) -> np.ndarray:
    """zlib attack (Carlini et al., USENIX Security 2021, §6.1 "zlib"): the ratio of the model's log-perplexity
    to the text's zlib entropy, negated so that higher = member:

        s(x) = −log PPL_θ(x) / zlib(x) = ((1/(L−1)) Σ_t ℓ_t) / zlib(x)

    (Min-K%'s and Min-K%++'s reference code compute the same ``ll / len(zlib.compress(text))``.)
    Text that compresses well (repetitive) needs a much lower perplexity to look memorized.
    """
    ll = loss_score(logp, valid)
    return np.array([v / zlib_entropy(t) for v, t in zip(ll, texts)])


def k_count(n: int, k: float) -> int:
    """Tokens averaged by min-k%: ⌊k·n⌋ as in the papers' code, but at least one."""
    return max(1, int(n * k))


def min_k_score(logp: np.ndarray, valid: np.ndarray, k: float = 0.2) -> np.ndarray:
    """Min-K% Prob (Shi et al., ICLR 2024): the mean log-probability of the k% least likely tokens,

        s(x) = (1/|Min-K%(x)|) Σ_{x_t ∈ Min-K%(x)} ℓ_t,

    Min-K%(x) = the ⌊k·(L−1)⌋ positions with the lowest ℓ_t (at least one).
    """
    out = []
    for r in _rows(logp, valid):
        out.append(np.sort(r)[: k_count(r.size, k)].mean() if r.size else math.nan)
    return np.array(out)


def min_k_plus_plus_token(logp: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Min-K%++'s per-token score (Zhang et al., 2024, eq. 4): (ℓ_t − μ_t) / σ_t, where
    μ_t = E_{z∼p(·|x_<t)} log p(z|x_<t) and σ_t² = E_z (log p(z|x_<t))² − μ_t².

    A token that is a local maximum of the likelihood (a mode) scores high. Where the next-token
    distribution is (numerically) a point mass, σ_t = 0 and the score is taken as 0 (no evidence).
    """
    safe = np.where(sigma > 1e-12, sigma, 1.0)
    return np.where(sigma > 1e-12, (logp - mu) / safe, 0.0)


def min_k_plus_plus_score(logp: np.ndarray, mu: np.ndarray, sigma: np.ndarray, valid: np.ndarray,
                          k: float = 0.2) -> np.ndarray:
    """Min-K%++ (Zhang et al., 2024): the mean of the k% lowest per-token scores (ℓ_t − μ_t)/σ_t."""
    return min_k_score(min_k_plus_plus_token(logp, mu, sigma), valid, k)


def reference_score(ll_target: np.ndarray, ll_reference: np.ndarray) -> np.ndarray:
    """Reference-model attack (Carlini et al. 2021 §6.1 "comparing to other models"; the likelihood ratio
    of Mireshghallah et al., EMNLP 2022): Δ(x) = ℓ_θ(x) − ℓ_ref(x) with ℓ the mean token log-likelihood.

    Here the reference is the original (pre-unlearning) model, so members move in *either* direction:
    still memorized (Δ ≈ 0 while unseen text also has Δ ≈ 0 — no signal) or pushed down by unlearning
    (Δ ≪ 0). The score is two-sided like MIAU's, s(x) = |Δ(x)|: any sequence the unlearning moved
    more than it moved unseen text stands out.
    """
    return np.abs(np.asarray(ll_target, dtype=float) - np.asarray(ll_reference, dtype=float))


# ---------------------------------------------------------------- registered attacks


@attack("loss", title="LOSS (mean log-likelihood)", source="Yeom et al. 2018")
def _loss(ctx: AttackContext, part: str) -> pd.DataFrame:
    s = ctx.stats(part)
    return pd.DataFrame({"score": loss_score(s.logp, s.valid)})


@attack("zlib", title="zlib ratio", source="Carlini et al. 2021, §6.1")
def _zlib(ctx: AttackContext, part: str) -> pd.DataFrame:
    s = ctx.stats(part)
    texts = ctx.sets[part].texts
    return pd.DataFrame({"score": zlib_score(s.logp, s.valid, texts),
                         "zlib_bytes": [zlib_entropy(t) for t in texts]})


@attack("min-k", title="Min-K% Prob", source="Shi et al. 2024")
def _min_k(ctx: AttackContext, part: str) -> pd.DataFrame:
    s = ctx.stats(part)
    return pd.DataFrame({"score": min_k_score(s.logp, s.valid, ctx.options.min_k)})


@attack("min-k++", title="Min-K%++", source="Zhang et al. 2024")
def _min_k_pp(ctx: AttackContext, part: str) -> pd.DataFrame:
    s = ctx.stats(part)
    return pd.DataFrame({"score": min_k_plus_plus_score(s.logp, s.mu, s.sigma, s.valid, ctx.options.min_k)})


@attack("reference", title="reference model (original)", source="Carlini et al. 2021; Mireshghallah et al. 2022",
        needs_original=True)
def _reference(ctx: AttackContext, part: str) -> pd.DataFrame:
    s = ctx.stats(part)
    ll = loss_score(s.logp, s.valid)
    ll_ref = ctx.original_log_likelihood(part)
    return pd.DataFrame({"score": reference_score(ll, ll_ref), "delta": ll - ll_ref, "ll_original": ll_ref})
