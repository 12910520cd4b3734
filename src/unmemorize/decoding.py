"""Differentially-private decoding (DPD), the decoding-time baseline of docs/method.md §4.6.

Two mixings, both as a transformers ``LogitsProcessor`` and as a pure function:

* ``"logits"`` (what the code does): z' = λ·z + (1−λ)·mean_v(z)·𝟙. Softmax ignores the constant
  shift, so this is exactly sampling at temperature 1/λ (λ = 0.2 → T = 5).
* ``"probs"`` (Majmudar et al.'s original): p' = λ·softmax(z) + (1−λ)/|V|, returned as log p'.

The code then samples with transformers 4.34's default top-k = 50 warper; transformers 5 no longer
applies a top-k by default, so :func:`sampled_memorization_accuracy` applies it explicitly. MA under
DPD is the fraction of positions t where a token *sampled* from the processed distribution given
the true prefix x_{<t} equals x_t — stochastic, seeded here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from unmemorize.data import SequenceSet
from unmemorize.errors import UserError
from unmemorize.memorization import memorization_accuracy
from unmemorize.progress import task

MODES = ("logits", "probs")


def dpd_logits(logits: torch.Tensor, lam: float = 0.2, mode: str = "logits") -> torch.Tensor:
    """z' = λ·z + (1−λ)·mean(z) ("logits"), or log(λ·softmax(z) + (1−λ)/|V|) ("probs"); last dim = vocabulary."""
    if not 0.0 <= lam <= 1.0:
        raise UserError(f"DPD λ must be in [0, 1], got {lam}")
    z = logits.float()
    if mode == "logits":
        return lam * z + (1.0 - lam) * z.mean(-1, keepdim=True)
    if mode == "probs":
        V = z.shape[-1]
        return torch.log(lam * F.softmax(z, dim=-1) + (1.0 - lam) / V)
    raise UserError(f"unknown DPD mode {mode!r}; choose from {', '.join(MODES)}")


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits of the last dimension, −inf elsewhere (k None or 0: keep all)."""
    if not k or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, -math.inf)


class DPDLogitsProcessor(LogitsProcessor):
    """Use with ``model.generate(..., do_sample=True, top_k=50, logits_processor=[DPDLogitsProcessor(0.2)])``."""

    def __init__(self, lam: float = 0.2, mode: str = "logits"):
        dpd_logits(torch.zeros(1, 2), lam, mode)  # validates λ and mode
        self.lam, self.mode = lam, mode

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return dpd_logits(scores, self.lam, self.mode).to(scores.dtype)


@torch.no_grad()
def sampled_memorization_accuracy(model, seqs: SequenceSet, lam: float = 0.2, mode: str = "logits",
                                  top_k: int | None = 50, seed: int = 0, batch_size: int = 8,
                                  parity: bool = False, progress=None) -> np.ndarray:
    """MA under DPD: one teacher-forced pass; at every position a token is sampled from
    top-k(DPD(z_t)) and compared with x_{t+1} (docs/method.md §4.6). Seeded; per-sequence values."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.full_like(seqs.lengths, seqs.length) if parity else seqs.lengths
    out = np.empty(len(seqs))
    was_training = model.training
    model.eval()
    try:
        with task(progress, "sampling under DPD", len(seqs)) as bar:
            for s in range(0, len(seqs), batch_size):
                width = int(lengths[s:s + batch_size].max())
                ids = seqs.input_ids[s:s + batch_size, :width].to(device)
                mask = None if parity else seqs.attention_mask[s:s + batch_size, :width].to(device)
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                probs = F.softmax(top_k_filter(dpd_logits(logits, lam, mode), top_k), dim=-1)
                B, W, V = probs.shape
                sampled = torch.multinomial(probs.reshape(-1, V).cpu(), 1, generator=gen).view(B, W)
                out[s:s + B] = memorization_accuracy(sampled, ids.cpu(), lengths[s:s + batch_size]).numpy()
                bar.advance(B)
    finally:
        model.train(was_training)
    return out


class DPDModel(torch.nn.Module):
    """The model as DPD shows it to whoever scores or generates with it: every forward pass returns the
    mixed logits z' (so the attacks' likelihoods, the utility tasks' choice scores and any sampling see
    the defence, as in the paper's runs, where DPD is applied wherever the model decodes), and
    ``generate`` adds the DPD logits processor. Greedy decoding is unchanged by construction (both
    mixings keep the order of the tokens), so greedy MA, extraction and greedy dialogue are the
    plain model's. The weights are the wrapped model's; nothing is copied."""

    def __init__(self, model, lam: float = 0.2, mode: str = "logits"):
        super().__init__()
        dpd_logits(torch.zeros(1, 2), lam, mode)  # validates λ and mode
        self.inner, self.lam, self.mode = model, lam, mode

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        out.logits = dpd_logits(out.logits, self.lam, self.mode).to(out.logits.dtype)
        return out

    def generate(self, *args, logits_processor=None, **kwargs):
        from transformers import LogitsProcessorList

        procs = LogitsProcessorList(list(logits_processor or []) + [DPDLogitsProcessor(self.lam, self.mode)])
        return self.inner.generate(*args, logits_processor=procs, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)
