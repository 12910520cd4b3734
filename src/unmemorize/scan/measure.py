"""MA and loss of every window: length-sorted batches through the one teacher-forced pass.

A chunk of windows is padded into one id matrix and read in batches of windows of similar length
(longest first), each trimmed to its longest row by :func:`unmemorize.forward.teacher_forced`, so
the cost is the bare forward pass over the windows' tokens plus an argmax and a log-softmax per
position, taken a block of positions at a time (:func:`greedy_and_nll`; then the shared
:func:`~unmemorize.memorization.memorization_accuracy` and the masked mean of
:func:`~unmemorize.memorization.sequence_loss`). Under ``accelerate launch`` each process measures
a contiguous part of every chunk (:func:`unmemorize.distributed.map_shards`) and every process gets
the whole chunk's numbers back.
"""

from __future__ import annotations

import time

import numpy as np
import torch

import torch.nn.functional as F

from unmemorize import distributed, forward
from unmemorize.memorization import masked_mean, memorization_accuracy, position_mask

BLOCK = 64  # positions whose logits are reduced together on a CPU (a block of SmolLM2's is 12.6 MB)


def pad(tokens: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [N, max length] ids and the true lengths."""
    lengths = torch.tensor([len(t) for t in tokens], dtype=torch.long)
    ids = torch.full((len(tokens), int(lengths.max()) if len(tokens) else 0), pad_id, dtype=torch.long)
    for r, t in enumerate(tokens):
        ids[r, : len(t)] = torch.as_tensor(t, dtype=torch.long)
    return ids, lengths


def length_order(lengths) -> np.ndarray:
    """Rows longest first (stable: equal lengths keep their order), so a batch holds similar lengths."""
    return np.argsort(-np.asarray(lengths), kind="stable")


class Rate:
    """Windows and tokens measured in this process since it started, as a progress description."""

    def __init__(self, bar=None):
        self.bar, self.windows, self.tokens, self.start = bar, 0, 0, time.perf_counter()

    def add(self, windows: int, tokens: int) -> None:
        self.windows += windows
        self.tokens += tokens
        if self.bar is not None:
            s = max(time.perf_counter() - self.start, 1e-9)
            self.bar.update(description=f"scan: {self.windows / s:,.1f} windows/s, {self.tokens / s:,.0f} tokens/s")
            self.bar.advance(windows)


def greedy_and_nll(logits: torch.Tensor, input_ids: torch.Tensor, block: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, nll): ``logits.argmax(-1)`` ([B, W]; the first of equal maxima) and
    :func:`unmemorize.memorization.token_nll` ([B, W-1], fp32), the same numbers, computed a block of
    positions at a time so that both reductions read a block while it is in cache: on a CPU the two
    full-vocabulary passes cost about half as much as over the whole batch (and ``max`` finds the index
    faster than ``argmax``). ``block``: positions per block (default: 64 on a CPU, all on a GPU, where
    one kernel over the batch is best)."""
    B, W, V = logits.shape
    n = B * W
    block = block or (n if logits.is_cuda else BLOCK)
    flat = logits.reshape(n, V)
    targets = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1).reshape(n)  # as token_nll: the last is a dummy
    greedy = torch.empty(n, dtype=torch.long, device=logits.device)
    nll = torch.empty(n, dtype=torch.float32, device=logits.device)
    for s in range(0, n, block):
        part = flat[s:s + block]
        greedy[s:s + block] = part.max(-1).indices
        nll[s:s + block] = F.cross_entropy(part.float(), targets[s:s + block], reduction="none")
    return greedy.view(B, W), nll.view(B, W)[:, :-1]


def measure(model, tokens: list[list[int]], pad_id: int, batch_size: int, rate: Rate | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """(MA, loss) of each window, in the order given (float64 arrays)."""
    ids, lengths = pad(tokens, pad_id)
    ma = np.full(len(tokens), np.nan)
    loss = np.full(len(tokens), np.nan)
    for batch, logits in forward.teacher_forced(model, ids, lengths, batch_size=batch_size,
                                                rows=length_order(lengths.numpy())):
        g, nll = greedy_and_nll(logits, batch.input_ids)
        ma[batch.rows] = memorization_accuracy(g, batch.input_ids, batch.counted).cpu().numpy()
        mask = position_mask(batch.counted, batch.input_ids.shape[1])
        loss[batch.rows] = masked_mean(nll, mask).cpu().numpy()  # = memorization.sequence_loss
        if rate is not None:
            rate.add(len(batch), int(batch.lengths.sum()))
    return ma, loss


def measure_shared(model, tokens: list[list[int]], pad_id: int, batch_size: int, rate: Rate | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`measure` split over the processes of a launch (each a contiguous part); every process
    returns the whole chunk's arrays. One process: :func:`measure` itself."""
    parts = distributed.map_shards(len(tokens), lambda rows: measure(model, [tokens[i] for i in rows], pad_id,
                                                                     batch_size, rate))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
