"""Slow, obviously correct references for the utility scoring, for tests and benchmarks.

One (context, choice) pair at a time, batch 1, no padding, no cache, the whole logits tensor:
literally the original code's per-choice computation without its batching.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F



@torch.no_grad()
def continuation_logprobs_reference(model, context: Sequence[int], continuation: Sequence[int],
                                    max_length: int = 512) -> tuple[list[float], list[int], list[int]]:
    """(log p of each scored continuation token, greedy argmax at each, the scored tokens).

    Input = (context + continuation)[-max_length:] without its last token; the continuation's
    log-probabilities are read at the positions just before each of its tokens (§6.1 step 1–2).
    """
    full = (list(context) + list(continuation))[-max_length:]
    n = min(len(continuation), len(full) - 1)
    if n == 0:
        return [], [], []
    target = full[len(full) - n:]
    inp = full[:-1]
    logp = F.log_softmax(model(input_ids=torch.tensor(inp)[None]).logits[0].float(), dim=-1)
    positions = range(len(inp) - n, len(inp))
    return ([float(logp[p, t]) for p, t in zip(positions, target)],
            [int(logp[p].argmax()) for p in positions], list(target))


def choice_scores_reference(model, context: Sequence[int], choices: Sequence[Sequence[int]],
                            max_length: int = 512) -> list[float]:
    """−Σ log p(choice | context) for each choice, one forward pass per choice (§6.1)."""
    return [-sum(continuation_logprobs_reference(model, context, c, max_length)[0]) for c in choices]


@torch.no_grad()
def greedy_reference(model, prompt: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int] = ()) -> list[int]:
    """Greedy decoding by full recomputation at every step, batch 1, stopping before a stop token."""
    ids = torch.tensor(list(prompt))[None]
    out: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(model(input_ids=ids).logits[0, -1].argmax())
        if nxt in stop_ids:
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


@torch.no_grad()
def right_padded_first_token_reference(model, prompt: Sequence[int], width: int, pad_id: int) -> int:
    """The original's first generated token for a right-padded prompt (§6.3 quirk), computed the
    long way: one forward pass over the padded prompt with mask = (ids ≠ pad) and position ids
    cumsum(mask) − 1 with pads set to 1, argmax at the last position."""
    ids = torch.full((1, width), pad_id, dtype=torch.long)
    ids[0, :len(prompt)] = torch.tensor(list(prompt))
    mask = ids.ne(pad_id).long()
    positions = (mask.cumsum(1) - 1).masked_fill(mask == 0, 1)
    return int(model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[0, -1].argmax())
