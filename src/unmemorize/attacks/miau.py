"""MIAU, the neighbourhood likelihood-gap attack (docs/method.md §3.3, done right).

For each candidate x, make K neighbours x̃_1..x̃_K (mask ~30% of the words in 2-word spans and
refill them, :mod:`unmemorize.attacks.perturb`), and compare the model's log-likelihood of x with
theirs:

    s(x) = | ℓ_θ(x) − (1/K) Σ_j ℓ_θ(x̃_j) |,   ℓ_θ(y) = (1/(L−1)) Σ_t log p_θ(y_t | y_<t)

A memorized x is a sharp peak (ℓ(x) far above its neighbours); an over-forgotten x is a pit (ℓ(x)
pushed below text that differs from it in a few words). Both are far from their neighbourhood, so the
absolute gap flags both. Unlike the original code, every text gets its own neighbours (no reuse of
the first batch's), neighbours are re-tokenized with the attacked model's tokenizer and truncated to
the sequence length T, padding is masked.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from unmemorize.attacks.perturb import neighbours_for
from unmemorize.attacks.registry import AttackContext, attack
from unmemorize.attacks.tokens import mean_log_likelihood, token_mean


def neighbourhood_score(ll_x: np.ndarray, ll_neighbours: np.ndarray) -> np.ndarray:
    """s(x) = |ℓ(x) − mean_j ℓ(x̃_j)| for ℓ(x) of shape [N] and ℓ(x̃) of shape [N, K]."""
    return np.abs(np.asarray(ll_x, dtype=float) - np.asarray(ll_neighbours, dtype=float).mean(axis=1))


def encode_texts(tokenizer, texts: list[str], length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of ``texts`` truncated to ``length`` and right-padded, with their true lengths."""
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = torch.full((len(texts), length), pad_id, dtype=torch.long)
    lengths = torch.zeros(len(texts), dtype=torch.long)
    for r, toks in enumerate(encoded):
        toks = toks[:length]
        ids[r, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        lengths[r] = len(toks)
    return ids, lengths


def _neighbour_log_likelihoods(ctx: AttackContext, part: str) -> tuple[np.ndarray, np.ndarray]:
    """ℓ_θ of every neighbour, [N, K], and whether each text came back unchanged (too short to mask).
    All N·K neighbours go through batched passes (length-sorted, results back in order); ℓ(x) of the
    texts themselves comes from the token statistics the other attacks share."""
    o, seqs = ctx.options, ctx.sets[part]
    neighbours = neighbours_for(seqs.texts, ctx.perturber, o.neighbours, o.seed, ctx.neighbour_cache, ctx.progress)
    unchanged = np.array([all(n == t for n in ns) for ns, t in zip(neighbours, seqs.texts)])
    flat = [n for ns in neighbours for n in ns]
    ids, lengths = encode_texts(ctx.tokenizer, flat, seqs.length, seqs.pad_id)
    ll = mean_log_likelihood(ctx.model, ids, lengths, batch_size=2 * o.batch_size, progress=ctx.progress,
                             label=f"neighbour log-likelihood {part}")
    return ll.reshape(len(seqs), o.neighbours), unchanged


def _summarize(ctx: AttackContext, frames: dict[str, pd.DataFrame]) -> dict:
    p = ctx.perturber
    out = {"perturber": p.config(), "neighbours": ctx.options.neighbours, "seed": ctx.options.seed,
           "neighbours_reason": ctx.plan.neighbours_reason if ctx.plan is not None else "given",
           "cache_hits": ctx.neighbour_cache.hits, "cache_extended": ctx.neighbour_cache.extended,
           "spans_filled_this_run": p.spans, "spans_kept_original": p.fallback_spans}
    for part, df in frames.items():
        out[part] = {"mean_gap": float(df["gap"].mean()), "mean_score": float(df["score"].mean()),
                     "unperturbed_texts": int(df["unperturbed"].sum())}
    return out


@attack("miau", title="MIAU (neighbourhood gap)", source="docs/method.md §3.3 (Mattern et al. 2023 neighbourhood attack)",
        summarize=_summarize)
def _miau(ctx: AttackContext, part: str) -> pd.DataFrame:
    s = ctx.stats(part)
    ll_x = token_mean(s.logp, s.valid)  # ℓ(x), as the loss attack's score
    ll_nb, unchanged = _neighbour_log_likelihoods(ctx, part)
    mean_nb = ll_nb.mean(axis=1)
    return pd.DataFrame({"score": neighbourhood_score(ll_x, ll_nb), "ll": ll_x, "neighbour_ll_mean": mean_nb,
                         "neighbour_ll_std": ll_nb.std(axis=1), "gap": ll_x - mean_nb, "unperturbed": unchanged})
