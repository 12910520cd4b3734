"""The two model calls of the utility suite: scoring continuations and greedy generation.

**Scoring** (:func:`score_continuations`) takes (context tokens, continuation tokens) requests and
returns, for each continuation token, its log-probability and the greedy argmax at its position.
It applies the original code's window rule to each request (:func:`window`), then requests whose
windowed context is the same — the choices of one question — share one pass over that context:

1. one forward pass over a batch of distinct contexts, left-padded, with attention mask and
   position ids, keeping only the last position's logits (which score each continuation's first
   token) and the KV cache;
2. one forward pass over all the continuations of those contexts at once (the cache rows
   repeated per continuation), scoring the remaining continuation tokens.

Left padding shifts every real token of a row by the same amount, so the relative distances seen by
attention — including GPT-Neo's local (windowed) attention — are the unpadded ones; position ids
are passed explicitly. Batches are filled up to a token budget, longest requests first (a batch
that does not fit in memory fails at the start) and similar lengths together (little padding).
The scoring pass can also decode greedily from each context (``generate=k``), on a copy of the
context's cache, which is what the dialogue tasks need.

**Generation** (:func:`greedy_generate`) is greedy, KV-cached, stops per row at an end token, and
either left-pads (the clean way) or reproduces the original's right-padded 512-token prompt with
the attention mask zero on the pads and the old transformers position ids (docs/method.md §6.3 quirk).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from unmemorize.progress import task

# Memory allowed for one batch's logits (positions × vocabulary × 4 bytes).
_LOGITS_BYTES = 256 << 20


@dataclass
class Scored:
    """What the model says about one continuation: the tokens scored (after the window rule), the
    log-probability of each, and the argmax at each position."""

    target: list[int]
    logprobs: np.ndarray
    greedy: np.ndarray
    generated: list[int] | None = None  # greedy continuation of the windowed context, when asked for

    @property
    def nll(self) -> float:
        """−Σ log p(target): the summed negative log-likelihood (§6.1 score, §6.2 loss)."""
        return -float(self.logprobs.sum())


def window(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[list[int], list[int]]:
    """The original code's truncation (docs/method.md §6.1 step 1, §6.3): keep the last ``max_length``
    tokens of context + continuation; every continuation token inside that window that has a token
    before it is scored. Returns (context part, scored part); a continuation longer than
    ``max_length − 1`` keeps its last ``max_length − 1`` tokens, its head becoming context.
    """
    full = (list(context) + list(continuation))[-max_length:]
    n = min(len(continuation), len(full) - 1)
    return full[: len(full) - n], full[len(full) - n:]


def _accepts(model, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _vocab_size(model) -> int:
    emb = model.get_output_embeddings()
    return int(emb.weight.shape[0]) if emb is not None else int(model.config.vocab_size)


def _pack(groups: list[tuple[tuple[int, ...], list[int]]], lengths: list[int], batch_tokens: int,
          max_logits: int) -> Iterable[list[tuple[tuple[int, ...], list[int]]]]:
    """Consecutive groups in batches: rows × (context + fed continuation) ≤ batch_tokens and
    rows × fed continuation ≤ max_logits. A group too big for one batch is split into several
    groups with the same context (a batch always takes at least one row)."""
    pieces = []
    for ctx, members in groups:
        chunk: list[int] = []
        fed = 0
        for i in members:
            f = max(fed, lengths[i] - 1)
            if chunk and ((len(chunk) + 1) * (len(ctx) + f) > batch_tokens or (len(chunk) + 1) * f > max_logits):
                pieces.append((ctx, chunk))
                chunk, f = [], lengths[i] - 1
            chunk.append(i)
            fed = f
        pieces.append((ctx, chunk))
    batch: list = []
    rows = ctx_len = fed_len = 0
    for ctx, members in pieces:
        fed = max(lengths[i] for i in members) - 1
        r, c, k = rows + len(members), max(ctx_len, len(ctx)), max(fed_len, fed)
        if batch and (r * (c + k) > batch_tokens or r * k > max_logits):
            yield batch
            batch, r, c, k = [], len(members), len(ctx), fed
        batch.append((ctx, members))
        rows, ctx_len, fed_len = r, c, k
    if batch:
        yield batch


@torch.no_grad()
def score_continuations(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *, max_length: int = 512,
                        batch_tokens: int = 4096, generate: int = 0, stop_ids: Iterable[int] = (), progress=None,
                        description: str = "scoring") -> list[Scored]:
    """Log-probabilities and greedy argmaxes of each request's continuation tokens.

    With ``generate=k``, also the greedy continuation (up to k tokens, cut before a stop token) of
    each request's windowed context, decoded from the same context pass and a copy of its cache —
    the dialogue tasks need both and this saves a second pass over every prompt.

    A request whose continuation is empty (or whose window leaves nothing to score) gets an empty
    :class:`Scored` (and no generation). The result is independent of batching up to
    floating-point noise.
    """
    windows = [window(c, t, max_length) for c, t in requests]
    results = [Scored(t, np.zeros(0), np.zeros(0, dtype=np.int64)) for _, t in windows]
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, tgt) in enumerate(windows):
        if tgt:
            by_context.setdefault(tuple(ctx), []).append(i)
    lengths = [len(t) for _, t in windows]
    # longest first (a batch too big for memory fails at once), similar lengths together (little padding)
    groups = sorted(by_context.items(), key=lambda g: -(len(g[0]) + max(lengths[i] for i in g[1])))
    max_logits = max(64, _LOGITS_BYTES // (4 * _vocab_size(model)))
    keep_last = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    device = next(model.parameters()).device
    with task(progress, description, len(requests)) as bar:
        bar.advance(len(requests) - sum(len(m) for _, m in groups))
        for batch in _pack(groups, lengths, batch_tokens, max_logits):
            _score_batch(model, batch, windows, results, device, keep_last, generate, stop_ids)
            bar.advance(sum(len(m) for _, m in batch))
    return results


def _score_batch(model, batch, windows, results, device, keep_last, generate=0, stop_ids=()) -> None:
    G, P = len(batch), max(len(ctx) for ctx, _ in batch)
    ids = torch.zeros(G, P, dtype=torch.long)
    mask = torch.zeros(G, P, dtype=torch.long)
    for g, (ctx, _) in enumerate(batch):
        ids[g, P - len(ctx):] = torch.tensor(ctx)
        mask[g, P - len(ctx):] = 1
    rows = [(g, i) for g, (_, members) in enumerate(batch) for i in members]
    fed = max(len(windows[i][1]) for _, i in rows) - 1
    ids, mask = ids.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                use_cache=fed > 0 or generate > 1, **keep_last)
    first = F.log_softmax(out.logits[:, -1].float(), dim=-1)  # scores each continuation's first token
    generated = None
    if generate > 0:
        cache = copy.deepcopy(out.cache) if fed > 0 else out.cache  # the scoring pass below extends the original
        generated = _continue_greedy(model, first.argmax(-1), mask, cache, generate, stop_ids)
    rest = None
    if fed > 0:
        sel = torch.tensor([g for g, _ in rows], device=device)
        cache = out.cache
        cache.batch_select_indices(sel)
        cont = torch.zeros(len(rows), fed, dtype=torch.long)
        cont_mask = torch.zeros(len(rows), fed, dtype=torch.long)
        for r, (_, i) in enumerate(rows):
            t = windows[i][1][:-1]
            cont[r, :len(t)] = torch.tensor(t, dtype=torch.long)
            cont_mask[r, :len(t)] = 1
        cont, cont_mask = cont.to(device), cont_mask.to(device)
        # pads after a short continuation get position 0: they are masked, and must stay in range
        positions = (mask.sum(1)[sel][:, None] + torch.arange(fed, device=device)[None, :]) * cont_mask
        out = model(input_ids=cont, attention_mask=torch.cat([mask[sel], cont_mask], dim=1),
                    position_ids=positions, cache=cache, use_cache=True)
        rest = F.log_softmax(out.logits.float(), dim=-1)
    for r, (g, i) in enumerate(rows):
        target = torch.tensor(windows[i][1], dtype=torch.long, device=device)
        dist = first[g][None] if rest is None else torch.cat([first[g][None], rest[r, : len(target) - 1]])
        results[i].logprobs = dist.gather(1, target[:, None]).squeeze(1).double().cpu().numpy()
        results[i].greedy = dist.argmax(-1).cpu().numpy()
        if generated is not None:
            results[i].generated = generated[g]


def _continue_greedy(model, tokens: torch.Tensor, mask: torch.Tensor, cache, steps: int,
                     stop_ids: Iterable[int]) -> list[list[int]]:
    """Greedy decoding after a prompt pass: ``tokens`` are the first new tokens (argmax at the
    prompt's last position), ``mask`` the prompt's attention mask, ``cache`` its KV cache. Each new
    token's position is the number of attended tokens before it. Rows are cut before their first
    stop token; decoding ends early once every row has stopped."""
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=tokens.device)
    generated, done = [tokens], torch.isin(tokens, stop)
    for _ in range(steps - 1):
        if bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones(len(tokens), 1)], dim=1)
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=(mask.cumsum(1) - 1)[:, -1:],
                    cache=cache, use_cache=True)
        cache = out.cache
        tokens = out.logits[:, -1].argmax(-1)
        generated.append(tokens)
        done |= torch.isin(tokens, stop)
    rows = torch.stack(generated, dim=1).cpu().tolist()
    stops = set(stop.tolist())
    return [row[:next((j for j, t in enumerate(row) if t in stops), len(row))] for row in rows]


def stop_token_ids(model, tokenizer) -> set[int]:
    """The ids at which ``generate`` would stop: the model's generation config, else the tokenizer's eos."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


@torch.no_grad()
def greedy_generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, stop_ids: Iterable[int] = (),
                    batch_size: int = 16, right_pad_to: int | None = None, pad_id: int = 0, progress=None,
                    description: str = "generating") -> list[list[int]]:
    """Greedy continuations of ``prompts``, each cut before its first stop token.

    Default: left-padded batches with attention mask and position ids = cumsum(mask) − 1 (exact).
    ``right_pad_to=W`` reproduces the original code instead (docs/method.md §6.3 quirk): every prompt
    right-padded with ``pad_id`` to W tokens, mask = (ids ≠ pad_id), and transformers-4.3x position
    ids (cumsum(mask) − 1, pads set to 1), so the first new token is predicted at the last pad.
    """
    device = next(model.parameters()).device
    keep_last = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    order = sorted(range(len(prompts)), key=lambda r: len(prompts[r]))
    results: list[list[int]] = [[] for _ in prompts]
    with task(progress, description, len(prompts)) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = right_pad_to or max(len(prompts[r]) for r in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            for b, r in enumerate(chunk):
                p = torch.tensor(list(prompts[r])[:width], dtype=torch.long)
                if right_pad_to:
                    ids[b, :len(p)] = p
                else:
                    ids[b, width - len(p):] = p
            if right_pad_to:
                mask = ids.ne(pad_id).long()
                positions = (mask.cumsum(1) - 1).masked_fill(mask == 0, 1)
            else:
                mask = torch.zeros_like(ids)
                for b, r in enumerate(chunk):
                    mask[b, width - min(len(prompts[r]), width):] = 1
                positions = (mask.cumsum(1) - 1).clamp(min=0)
            ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **keep_last)
            rows = _continue_greedy(model, out.logits[:, -1].argmax(-1), mask, out.cache, max_new_tokens, stop_ids)
            for b, r in enumerate(chunk):
                results[r] = rows[b]
            bar.advance(len(chunk))
    return results
