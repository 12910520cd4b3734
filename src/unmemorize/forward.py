"""The one batched teacher-forced forward pass: how a set of token sequences meets the model.

Profiles (MA, loss), the attacks' token statistics and the unlearning loop all run a model over
rows of right-padded token sequences. They share this module, so padding, the attention mask,
the original code's parity quirk and mixed precision mean the same thing everywhere:

* a batch is trimmed to its longest row: padding is masked and the model is causal, so the columns
  past every row's end change nothing but the cost;
* ``parity=True`` reproduces the original code (docs/method.md §2.2): full width T, no attention
  mask, and MA counts all T − 1 positions, padding included (``counted``);
* ``grad`` says whether the pass builds a graph (the unlearning loop's fused passes do);
* ``mixed_precision`` autocasts the pass (weights stay as they are).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from unmemorize.progress import task


@dataclass
class Batch:
    """Rows of a token set, padded to a common width and on the model's device."""

    rows: np.ndarray  # indices of the rows in their set
    input_ids: torch.Tensor  # [b, W]
    lengths: torch.Tensor  # [b] true lengths
    attention_mask: torch.Tensor | None  # [b, W]; None under parity (the original code passed none)
    counted: torch.Tensor  # [b] lengths MA counts: the true ones, or T under parity

    def __len__(self) -> int:
        return len(self.rows)


def make_batch(input_ids: torch.Tensor, lengths: torch.Tensor, rows: Sequence[int] | np.ndarray,
               device: torch.device | str, parity: bool = False) -> Batch:
    """The rows ``rows`` of a right-padded id matrix as one batch on ``device``."""
    rows = np.asarray(rows, dtype=np.int64)
    index = torch.as_tensor(rows)
    ln = lengths[index]
    full = input_ids.shape[1]
    width = full if parity else int(ln.max())
    ids = input_ids[index, :width].to(device)
    ln_dev = ln.to(device)
    mask = None if parity else (torch.arange(width, device=device)[None, :] < ln_dev[:, None]).long()
    counted = torch.full_like(ln_dev, full) if parity else ln_dev
    return Batch(rows, ids, ln_dev, mask, counted)


def autocast(mixed_precision: str, device: torch.device):
    """Autocast for forward passes: weights stay in their dtype, matmuls in bf16/fp16. ``"no"`` is a
    null context, so full-precision runs execute exactly the same ops."""
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def logits(model, batch: Batch, *, grad: bool = False, mixed_precision: str = "no") -> torch.Tensor:
    """Next-token logits [b, W, V] of one teacher-forced pass (the model's dtype; fp32 on CPU)."""
    with torch.set_grad_enabled(grad), autocast(mixed_precision, batch.input_ids.device):
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def teacher_forced(model, input_ids: torch.Tensor, lengths: torch.Tensor, *, batch_size: int = 8,
                   parity: bool = False, progress=None, label: str = "teacher-forced pass",
                   rows: Sequence[int] | np.ndarray | None = None) -> Iterator[tuple[Batch, torch.Tensor]]:
    """(batch, logits) for consecutive batches of ``rows`` (default: every row), without gradient,
    the model in eval mode (dropout off) for the duration."""
    order = np.arange(len(input_ids)) if rows is None else np.asarray(rows, dtype=np.int64)
    device = device_of(model)
    was_training = model.training
    model.eval()
    try:
        with task(progress, label, len(order)) as bar:
            for s in range(0, len(order), batch_size):
                batch = make_batch(input_ids, lengths, order[s:s + batch_size], device, parity)
                yield batch, logits(model, batch)
                bar.advance(len(batch))
    finally:
        model.train(was_training)
