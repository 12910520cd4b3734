"""What the attacks read from a model: per-token statistics of one teacher-forced pass.

Every likelihood attack (loss, zlib, min-k%, min-k%++), the threshold attack on g(x), sampling
extraction and MIAU's ℓ(x) are pure functions of these arrays, so a model is run once per set,
whatever attacks are asked for (:class:`~unmemorize.attacks.registry.AttackContext` keeps them).
Passes go through :func:`unmemorize.forward.teacher_forced` in length-sorted batches. Position t (0-based) holds the prediction of token x[t+1] from x[:t+1]; ``valid`` masks the
padding (a sequence of true length L has L-1 valid positions).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from unmemorize import forward
from unmemorize.data import SequenceSet
from unmemorize.memorization import memorization_accuracy, sequence_loss


@dataclass
class TokenStats:
    """Per-position statistics, arrays of shape [N, T-1] (``ma`` is [N])."""

    logp: np.ndarray  # log p(x[t+1] | x[:t+1])
    mu: np.ndarray  # μ_t = E_{z~p(·|x[:t+1])} log p(z | x[:t+1])
    sigma: np.ndarray  # σ_t = sqrt(E_z (log p(z))² − μ_t²)
    q: np.ndarray  # probability of the true next token under the *sampling* distribution (top-k, temperature)
    correct: np.ndarray  # bool: the greedy (argmax) prediction is the true next token
    valid: np.ndarray  # bool: position predicts a real token, not padding
    ma: np.ndarray  # g(x) = memorization accuracy (docs/method.md §2.2), from the same pass

    def __len__(self) -> int:
        return len(self.ma)

    def subset(self, rows) -> "TokenStats":
        """The statistics of ``rows`` (as :meth:`SequenceSet.subset` takes them), without another pass."""
        rows = np.asarray(rows, dtype=np.int64)
        return TokenStats(**{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(TokenStats)})


def position_statistics(logits: torch.Tensor, targets: torch.Tensor, top_k: int | None, temperature: float):
    """For logits [P, V] and targets [P]: (log p(target), μ, σ, q(target)), all fp32 [P].

    q is the probability of the target under the distribution a sampler draws from: softmax of
    logits/temperature restricted to the top-k logits (ties at the k-th value kept, as Hugging Face's
    top-k warper does) and renormalised; 0 when the target is outside the top k.
    """
    logits = logits.float()
    logp_all = F.log_softmax(logits, dim=-1)
    p = logp_all.exp()
    mu = (p * logp_all).sum(-1)
    second = (p * logp_all.square()).sum(-1)
    sigma = (second - mu.square()).clamp(min=0).sqrt()
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    scaled = logits / temperature
    if top_k is not None and 0 < top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    q = (scaled.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(scaled, dim=-1)).exp()
    return logp, mu, sigma, q


def longest_first(lengths: torch.Tensor) -> np.ndarray:
    """Row order for batched passes: longest first (a batch is trimmed to its longest row, so rows of
    similar length share batches and little padding is computed). Results go back by row index."""
    return np.argsort(-np.asarray(lengths), kind="stable")


def token_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(1/(L−1)) Σ_t v_t over each row's valid positions (NaN for a row without one); with v = log p this
    is ℓ(x), the mean token log-likelihood."""
    n = valid.sum(1)
    total = np.where(valid, values, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def token_statistics(model, seqs: SequenceSet, *, top_k: int | None = 40, temperature: float = 1.0,
                     batch_size: int = 8, progress=None, label: str = "") -> TokenStats:
    """One teacher-forced pass over ``seqs``: the statistics every token-level attack needs.

    Under ``accelerate launch`` each rank passes its shard of the rows and every rank gets all rows back.
    """
    from unmemorize import distributed

    parts = distributed.map_shards(len(seqs), lambda rows: _token_statistics(
        model, seqs.subset(rows.tolist()), top_k=top_k, temperature=temperature, batch_size=batch_size,
        progress=progress, label=label))
    if len(parts) == 1:
        return parts[0]
    return TokenStats(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                         for f in dataclasses.fields(TokenStats)})


def attack_statistics(model, seqs: SequenceSet, opts, progress=None, label: str = "") -> TokenStats:
    """:func:`token_statistics` under the attacks' settings (``opts``: AttackOptions, or a run's attack
    settings: top_k, temperature, batch_size). Every pass whose rows an attack reads goes through here, so
    a pass made for τ (``attack``) or for MA (``unlearn``) is the one the attacks would have made."""
    return token_statistics(model, seqs, top_k=opts.top_k, temperature=opts.temperature, batch_size=opts.batch_size,
                            progress=progress, label=label)


@torch.no_grad()
def _token_statistics(model, seqs: SequenceSet, *, top_k: int | None, temperature: float, batch_size: int,
                      progress, label: str) -> TokenStats:
    N, T = seqs.input_ids.shape
    shape = (N, T - 1)
    out = {k: np.full(shape, np.nan, dtype=np.float64) for k in ("logp", "mu", "sigma", "q")}
    valid = (np.arange(1, T)[None, :] < seqs.lengths.numpy()[:, None])
    correct = np.zeros(shape, dtype=bool)
    ma = np.zeros(N, dtype=np.float64)
    for batch, logits in forward.teacher_forced(model, seqs.input_ids, seqs.lengths, batch_size=batch_size,
                                                progress=progress, label=f"token statistics {label}".strip(),
                                                rows=longest_first(seqs.lengths)):
        ids, rows, W = batch.input_ids, batch.rows, batch.input_ids.shape[1]
        greedy = logits.argmax(-1)
        ma[rows] = memorization_accuracy(greedy, ids, batch.lengths).cpu().numpy()
        correct[rows, : W - 1] = (greedy[:, :-1] == ids[:, 1:]).cpu().numpy()
        for b, r in enumerate(rows):  # one row at a time: [W, V] fp32 stays small for 50k vocabularies
            stats = position_statistics(logits[b, :-1], ids[b, 1:], top_k, temperature)
            for key, v in zip(("logp", "mu", "sigma", "q"), stats):
                out[key][r, : W - 1] = v.double().cpu().numpy()
    for key in out:
        out[key][~valid] = np.nan
    correct &= valid
    return TokenStats(valid=valid, ma=ma, correct=correct, **out)


def mean_log_likelihood(model, input_ids: torch.Tensor, lengths: torch.Tensor, *, batch_size: int = 16,
                        progress=None, label: str = "log-likelihood") -> np.ndarray:
    """ℓ(x) = (1/(L−1)) Σ_{t=1}^{L−1} log p(x[t] | x[:t]) for every row: minus the token-mean CE (pads masked).

    Under ``accelerate launch`` each rank scores its shard of the rows and every rank gets all of them.
    """
    from unmemorize import distributed

    return np.concatenate(distributed.map_shards(len(input_ids), lambda rows: _mean_log_likelihood(
        model, input_ids[torch.as_tensor(rows)], lengths[torch.as_tensor(rows)], batch_size=batch_size,
        progress=progress, label=label)))


@torch.no_grad()
def _mean_log_likelihood(model, input_ids: torch.Tensor, lengths: torch.Tensor, *, batch_size: int,
                         progress, label: str) -> np.ndarray:
    out = np.empty(len(input_ids), dtype=np.float64)
    for batch, logits in forward.teacher_forced(model, input_ids, lengths, batch_size=batch_size, progress=progress,
                                                label=label, rows=longest_first(lengths)):
        out[batch.rows] = -sequence_loss(logits, batch.input_ids, batch.lengths).cpu().numpy()
    return out
