"""Relearning: a few steps of benign fine-tuning on a copy of the unlearned model (docs/method.md §3.8).

Published attacks bring "unlearned" text back by fine-tuning briefly on data that does not contain it
(Hu et al. 2024, "Jogging the memory of unlearned LLMs through targeted relearning attacks"; Lynch et
al. 2024; Deeb & Roger 2024 for the half-of-the-forget-set variant): what gradient ascent suppressed
without erasing comes back once the weights move again. The probe fine-tunes a copy for n Adam steps
of plain next-token cross-entropy (padding masked, dropout off as in the unlearning loop), on rows
drawn in a seeded order; the model passed in is never touched.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from unmemorize.data import SequenceSet
from unmemorize.progress import task


def batch_order(n: int, steps: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """The rows of each step: consecutive slices of seeded permutations of the n rows, a fresh permutation
    whenever one runs out (so every row is seen once before any is seen twice). A batch is never larger
    than the data (min(batch_size, n) rows)."""
    if n < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"batch order needs rows, steps and a batch size ≥ 1, got {n}, {steps}, {batch_size}")
    rng = np.random.default_rng(seed)
    size = min(batch_size, n)
    stream: list[int] = []
    out = []
    for _ in range(steps):
        while len(stream) < size:
            stream += rng.permutation(n).tolist()
        out.append(np.array(stream[:size], dtype=np.int64))
        stream = stream[size:]
    return out


def relearn(model, data: SequenceSet, *, steps: int, lr: float, batch_size: int, seed: int, progress=None,
            label: str = "relearning"):
    """A copy of ``model`` fine-tuned for ``steps`` Adam steps on ``data``: (the copy, its loss at each step)."""
    out = copy.deepcopy(model)
    out.eval()  # dropout off (the unlearning loop's convention); the copy is trained all the same
    for p in out.parameters():
        p.requires_grad_(True)
    device = next(out.parameters()).device
    opt = torch.optim.Adam(out.parameters(), lr=lr)
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]), task(progress, label, steps) as bar:
        torch.manual_seed(seed)
        for rows in batch_order(len(data), steps, batch_size, seed):
            index = torch.as_tensor(rows)
            width = int(data.lengths[index].max())
            ids = data.input_ids[index, :width].to(device)
            mask = (torch.arange(width)[None, :] < data.lengths[index][:, None]).long().to(device)
            with torch.enable_grad():
                loss = out(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100),
                           use_cache=False).loss
                if not math.isfinite(loss.item()):
                    raise RuntimeError(f"relearning loss became {loss.item()} at step {len(losses) + 1}; "
                                       "lower --probe-lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.advance(1)
    opt.zero_grad(set_to_none=True)
    del opt
    for p in out.parameters():
        p.requires_grad_(False)
    return out, losses
