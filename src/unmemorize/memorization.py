"""Per-sequence memorization: MA, EL_n, exact extraction and loss (docs/method.md §2.2, §2.3, §2.9).

Everything is computed from one teacher-forced forward pass per batch, plus batched KV-cached greedy
decoding for EL_n and extraction — and only where decoding is needed:

The greedy continuation from a prefix x[:i] follows the true text until the first position j ≥ i
where the teacher-forced argmax a[j] disagrees with x[j]; from there on it *is* the greedy
continuation from x[:j]. So only the disagreement positions need decoding, each once, and the
continuation for every other prefix is assembled from the true text and one of those. The more
memorized a sequence, the fewer disagreements, the cheaper its EL.

Even so EL costs a greedy decoding of about (disagreements × L/2) tokens, tens of seconds per weakly
memorized 200-token sequence on a CPU. By default (``el_for="extractable"``) it is decoded only for the
sequences with MA at or above the band's top, the ones that could be extractable; the others get NaN
and the reason in ``el_status``. Decoding writes its KV cache in place (:mod:`unmemorize.kv`).

Conventions (0-indexed): a sequence x has true length L; a[t] = argmax p(· | x[:t]) for t = 1..L-1.
Padding is masked unless ``parity=True``, which reproduces the original code: every row counts all
T-1 positions, pads included, and attends to pads (docs/method.md §2.2 quirk).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import field_validator

from unmemorize import forward
from unmemorize.data import SequenceSet
from unmemorize.options import Options, option
from unmemorize.progress import task
from unmemorize.thresholds import Band

METRICS = ("ma", "el", "extraction", "loss")
EL_FOR = ("extractable", "all")
EL_COMPUTED = "computed"


# ---------------------------------------------------------------- pure metric functions

def memorization_accuracy(greedy: torch.Tensor, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """MA(x) = 1/(L-1) · Σ_{t=1}^{L-1} 1[a[t] = x[t]]  (docs/method.md §2.2).

    ``greedy[:, t-1]`` is a[t], the argmax of the logits at position t-1. Returns NaN for L < 2.
    """
    correct = greedy[:, :-1] == input_ids[:, 1:]
    valid = torch.arange(1, input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]
    n = valid.sum(1)
    ma = (correct & valid).sum(1).double() / n.clamp(min=1).double()
    return torch.where(n > 0, ma, torch.full_like(ma, math.nan))


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """nll[i, t-1] = −log softmax(z_{i,t-1})[x_{i,t}] for t = 1..W-1, in fp32 ([B, W-1]; pads included,
    masked by the caller). The one per-token negative log-likelihood: profiles, attacks and every
    unlearning loss read it."""
    B, W, V = logits.shape
    # Score all W positions against the ids shifted left (the last one against a dummy) and drop the
    # last column: a view of contiguous logits, no [B, W-1, V] copy.
    targets = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)
    nll = F.cross_entropy(logits.float().reshape(B * W, V), targets.reshape(-1), reduction="none")
    return nll.view(B, W)[:, :-1]


def position_mask(lengths: torch.Tensor, width: int, start: int | torch.Tensor = 1) -> torch.Tensor:
    """mask[i, t-1] = [max(start_i, 1) ≤ t < L_i]: positions whose token x_t is predicted and counted.

    ``start`` > 1 leaves out a prefix (one for all rows, or one per row), e.g. GA+Mismatch ascends
    only tokens 50 onwards (docs/method.md §4.7).
    """
    t = torch.arange(1, width, device=lengths.device)[None, :]
    s = torch.as_tensor(start, device=lengths.device).clamp(min=1)
    s = s[:, None] if s.dim() == 1 else s
    return (t >= s) & (t < lengths[:, None])


def masked_mean(nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean of ``nll`` over the counted positions, summed in float64, [B] (NaN where none counts)."""
    n = mask.sum(1)
    out = (nll.detach().double() * mask).sum(1) / n.clamp(min=1)
    return torch.where(n > 0, out, torch.full_like(out, math.nan))


def sequence_loss(logits: torch.Tensor, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-sequence token-mean cross-entropy over the L-1 predicted positions (float64; NaN for L < 2)."""
    return masked_mean(token_nll(logits, input_ids), position_mask(lengths, input_ids.shape[1]))


def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def overlap(pred: Sequence[int], label: Sequence[int], n: int) -> float:
    """OVERLAP_n(a, b) = |{g ∈ ngrams_n(a) : g ∈ set(ngrams_n(b))}| / |ngrams_n(b)|  (Jang et al.)."""
    label_grams = ngrams(label, n)
    if not label_grams:
        raise ValueError(f"label of {len(label)} tokens has no {n}-grams")
    unique = set(label_grams)
    return sum(g in unique for g in ngrams(pred, n)) / len(label_grams)


def extraction_likelihood(x: Sequence[int], continuations: Sequence[Sequence[int]], n: int) -> float:
    """EL_n(x) = 1/(L-n) · Σ_{i=1}^{L-n} OVERLAP_n(f(x[:i]), x[i:])  (docs/method.md §2.3).

    ``continuations[i-1]`` is the greedy continuation of the prefix x[:i] up to length L.
    """
    L = len(x)
    if L < n + 1:
        return math.nan
    return sum(overlap(continuations[i - 1], x[i:], n) for i in range(1, L - n + 1)) / (L - n)


def continuation(x: Sequence[int], greedy_ok: Sequence[bool], decoded: dict[int, Sequence[int]], i: int) -> list[int]:
    """Greedy continuation of x[:i] assembled from the true text and the continuation at the next
    disagreement j ≥ i (``decoded[j]`` = greedy continuation of x[:j]); see the module docstring."""
    j = i
    while j < len(x) and greedy_ok[j]:
        j += 1
    return list(x[i:j]) + (list(decoded[j]) if j < len(x) else [])


def matched_prefix(x: Sequence[int], greedy_ok: Sequence[bool], k: int, m: int) -> int:
    """Tokens of the true suffix x[k:k+m] that greedy decoding from x[:k] reproduces before its first error."""
    matched = 0
    while matched < m and greedy_ok[k + matched]:
        matched += 1
    return matched


# ---------------------------------------------------------------- model passes

@torch.no_grad()
def decode_from_prefixes(model, seqs: SequenceSet, jobs: dict[tuple[int, int], int], greedy: torch.Tensor,
                         seq_batch: int = 8, batch_size: int = 64, progress=None) -> dict[tuple[int, int], list[int]]:
    """Greedy continuations of ``x_r[:j]`` for every job ``(r, j) -> tokens``, without re-reading the prompts.

    A prompt is a prefix of its own sequence, and in a causal model the keys and values of a prefix do
    not depend on what follows it: one teacher-forced pass over the sequence (with the cache on) holds
    the cache of every prompt cut from it, and its greedy prediction at position j−1 (``greedy[r, j−1]``)
    is the first token of the continuation. Each decode batch gets a left-padded cache assembled from
    those slices, so the only model passes left are one per sequence batch and one per generated token
    after the first. (Prefilling each prompt again would cost Σ j tokens per sequence: for a weakly
    memorized 200-token text, more than all its decoding.) Jobs are decoded longest first, and a job
    that has its tokens leaves the batch.

    Every job fits the model's context (prompt j plus its tokens is at most L ≤ T), but the batch's
    cache is P + steps wide (P: the longest prompt of the batch), and a model may not take a cache
    wider than its context (GPT-Neo slices its causal mask from a context × context buffer by cache
    width). So when the next token would outgrow it, the leading columns that are left padding for
    every job still decoding are dropped (masked columns: the continuations stay the same); with
    a long enough context nothing is dropped.
    """
    from unmemorize.kv import buffer_cache, drop_front, empty_buffers, keep_rows
    from unmemorize.models import max_positions

    device = next(model.parameters()).device
    context = max_positions(model)
    results: dict[tuple[int, int], list[int]] = {}
    by_row: dict[int, list[tuple[int, int]]] = {}
    for key in jobs:
        by_row.setdefault(key[0], []).append(key)
    rows = sorted(by_row)
    with task(progress, "greedy decoding", len(jobs)) as bar:
        for s in range(0, len(rows), seq_batch):
            part = rows[s:s + seq_batch]
            where = {r: b for b, r in enumerate(part)}
            todo = sorted((key for r in part for key in by_row[r]), key=lambda key: (-jobs[key], key))
            width = max(j for _, j in todo)  # no prompt reads past this position
            ids = seqs.input_ids[part, :width].to(device)
            out = model(input_ids=ids, attention_mask=seqs.attention_mask[part, :width].to(device), use_cache=True,
                        logits_to_keep=1)
            layers = [(layer.keys, layer.values) for layer in out.cache.layers]
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]  # longest job first: the jobs still decoding are a prefix
                P = max(j for _, j in chunk)
                need = [jobs[key] for key in chunk]  # non-increasing
                # one buffer per layer for the prompts and every token to come: a step writes its column
                # in place, and jobs that are done leave as a view (no copy of the cache per step)
                buffers = empty_buffers(layers, len(chunk), P + need[0] - 1)
                for (k, v), (kk, vv) in zip(layers, buffers):
                    for b, (r, j) in enumerate(chunk):
                        kk[b, P - j:P] = k[where[r], :, :j].transpose(0, 1)
                        vv[b, P - j:P] = v[where[r], :, :j].transpose(0, 1)
                cache = buffer_cache(buffers, P)
                # the whole attention mask up front (prompt left-padded to P, then every new token):
                # each step reads a wider slice of it instead of growing a tensor per token
                mask = torch.ones(len(chunk), P + need[0], dtype=torch.long, device=device)
                for b, (_, j) in enumerate(chunk):
                    mask[b, : P - j] = 0
                last = torch.tensor([j - 1 for _, j in chunk], device=device)
                nxt = torch.stack([greedy[r, j - 1] for r, j in chunk]).to(device)
                gen = torch.zeros(len(chunk), need[0], dtype=torch.long, device=device)
                gen[:, 0] = nxt
                alive = len(chunk)
                dropped = 0  # leading (all-padding) columns cut from the cache and the mask
                for step in range(1, need[0]):
                    # a job that has its tokens leaves the batch (and its cache); known in advance, so
                    # the loop never waits on the device to decide it
                    while need[alive - 1] <= step:
                        alive -= 1
                    if alive < len(nxt):
                        nxt, last = nxt[:alive], last[:alive]
                        keep_rows(cache, alive)
                    last = last + 1
                    if context is not None and P + step - dropped > context:
                        # with this token a live job holds j + step < j + its tokens ≤ L ≤ T ≤ context
                        # positions: cut to the longest live prompt, the cache always fits
                        cut = P - max(j for _, j in chunk[:alive]) - dropped
                        drop_front(cache, cut)
                        dropped += cut
                    step_out = model(input_ids=nxt[:, None], attention_mask=mask[:alive, dropped: P + step],
                                     position_ids=last[:, None],
                                     cache=cache, use_cache=True)
                    cache = step_out.cache
                    nxt = step_out.logits[:, -1].argmax(-1)
                    gen[:alive, step] = nxt
                gen = gen.cpu()
                for b, key in enumerate(chunk):
                    results[key] = gen[b, : jobs[key]].tolist()
                bar.advance(len(chunk))
            del out, layers
    return results


# ---------------------------------------------------------------- the profile

Metric = str  # one of METRICS


def known_metrics(metrics) -> tuple[str, ...]:
    """``metrics`` as a tuple, or a ValueError naming the unknown ones (for the options' validators)."""
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metric {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    return metrics


class ProfileOptions(Options):
    """What to measure per sequence, and how (the audit's flags)."""

    metrics: tuple[Metric, ...] = option(METRICS, "Comma-separated subset of ma,el,extraction,loss.", split=True)
    batch_size: int = option(8, "Sequences per forward pass.", ge=1)
    decode_batch_size: int = option(64, "Greedy continuations decoded together (EL, extraction).", ge=1)
    el_n: int = option(10, "n of EL_n.", "--el-n", ge=1)
    el_for: Literal["extractable", "all"] = option(
        "extractable", "Which sequences get EL_n (its greedy decoding is most of a profile's cost): extractable = "
                       "those with MA at or above the band's top, the only ones that could be extracted; all = every "
                       "sequence. The others are NaN, with the reason in the el_status column.", "--el-for")
    extraction_prefix: int = option(100, "Extraction: prefix tokens k (a 'prefix' column overrides).", "--prefix", ge=1)
    extraction_suffix: int = option(100, "Extraction: true suffix tokens m.", "--suffix", ge=1)
    parity: bool = option(False, "Count padding as the original code does (docs/method.md §2.2).")

    _metrics = field_validator("metrics", mode="before")(known_metrics)


def greedy_pass(model, seqs: SequenceSet, opts: ProfileOptions, progress):
    """One teacher-forced pass per batch: a[t] for every position, per-sequence MA and loss.

    Public because the target method's ``--tokens memorized`` needs the greedy tokens themselves (which
    positions a reference model predicts), not only the MA that :func:`profile` keeps.
    """
    greedy = torch.full_like(seqs.input_ids, -1)
    ma = torch.empty(len(seqs), dtype=torch.float64)
    loss = torch.full((len(seqs),), math.nan, dtype=torch.float64)
    for batch, logits in forward.teacher_forced(model, seqs.input_ids, seqs.lengths, batch_size=opts.batch_size,
                                                parity=opts.parity, progress=progress):
        g = logits.argmax(-1)
        rows = torch.as_tensor(batch.rows)
        greedy[rows, : g.shape[1]] = g.cpu()
        ma[rows] = memorization_accuracy(g, batch.input_ids, batch.counted).cpu()
        if "loss" in opts.metrics:  # a full-vocabulary log-softmax: skipped when re-profiling MA only
            loss[rows] = sequence_loss(logits, batch.input_ids, batch.counted).cpu()
    return greedy, ma, loss


def extraction_window(length: int, prefix: int | None, k: int, m: int) -> tuple[int, int]:
    """(k, m) for one sequence: its own prefix when given, else the requested k, else half of it."""
    if prefix is not None and 0 < prefix < length:
        k_eff = prefix
    else:
        k_eff = k if k < length else length // 2
    return k_eff, min(m, length - k_eff)


def profile(model, seqs: SequenceSet, opts: ProfileOptions | None = None, progress=None,
            band: Band | None = None) -> pd.DataFrame:
    """Measure every sequence: one row per id with MA, loss, EL_n and exact extraction.

    Too-short sequences get NaN for the metrics they cannot support (L < 2 for MA, L < n+1 for EL_n,
    L < 2 for extraction); the caller decides whether that is worth a warning.

    EL_n is decoded for the sequences with MA ≥ ``band.hi`` (default band: 0.60), those that could be
    extractable, unless ``opts.el_for == "all"``. A sequence without EL_n has NaN, never 0, and the
    column ``el_status`` says why (``"computed"`` where it was).

    Under ``accelerate launch`` with several processes each rank measures a contiguous shard and
    every rank gets the whole table back, in the original order (every rank must call this).
    """
    from unmemorize import distributed
    from unmemorize.models import check_context

    check_context(model, seqs.length)
    parts = distributed.map_shards(len(seqs), lambda rows: _profile(model, seqs.subset(rows.tolist()), opts, progress,
                                                                    band))
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def _profile(model, seqs: SequenceSet, opts: ProfileOptions | None, progress, band: Band | None = None) -> pd.DataFrame:
    opts = opts or ProfileOptions()
    was_training = model.training
    model.eval()
    try:
        greedy, ma, loss = greedy_pass(model, seqs, opts, progress)
        rows = pd.DataFrame({"id": seqs.ids, "length": seqs.lengths.numpy()})
        if "ma" in opts.metrics:
            rows["ma"] = ma.numpy()
        if "loss" in opts.metrics:
            rows["loss"] = loss.numpy()
        if "el" in opts.metrics or "extraction" in opts.metrics:
            rows = _decode_metrics(model, seqs, greedy, opts, rows, progress, ma.numpy(), (band or Band()).hi)
    finally:
        model.train(was_training)
    for col in seqs.meta.columns:
        if col not in rows.columns:
            rows[col] = seqs.meta[col].values
    return rows


def el_status(length: int, ma: float, n: int, el_for: str, hi: float) -> str:
    """Whether EL_n is decoded for a sequence of ``length`` tokens with MA ``ma``, and if not, why."""
    if length < n + 1:
        return f"not computed: under {n + 1} tokens"
    if el_for != "all" and not ma >= hi:  # NaN MA: not extractable either
        return f"not computed: MA below the band's top {hi:.2f} (--el-for all measures it)"
    return EL_COMPUTED


def _decode_metrics(model, seqs: SequenceSet, greedy: torch.Tensor, opts: ProfileOptions,
                    rows: pd.DataFrame, progress, ma: np.ndarray | None = None, hi: float = 0.6) -> pd.DataFrame:
    want_el, want_ex = "el" in opts.metrics, "extraction" in opts.metrics
    n = opts.el_n
    status = [el_status(int(seqs.lengths[r]), math.inf if ma is None else float(ma[r]), n, opts.el_for, hi)
              for r in range(len(seqs))]
    jobs: dict[tuple[int, int], int] = {}  # (sequence, position j) -> tokens to decode from x[:j]
    per_seq = []
    for r in range(len(seqs)):
        L = int(seqs.lengths[r])
        x = seqs.input_ids[r, :L].tolist()
        ok = [True] + (greedy[r, : L - 1] == seqs.input_ids[r, 1:L]).tolist()  # ok[t]: a[t] == x[t]
        window = None
        if want_el and status[r] == EL_COMPUTED:
            for j in range(1, L):
                if not ok[j]:
                    jobs[(r, j)] = L - j
        if want_ex and L >= 2:
            prefix = None if seqs.prefix_lengths is None else int(seqs.prefix_lengths[r])
            k, m = extraction_window(L, prefix, opts.extraction_prefix, opts.extraction_suffix)
            matched = matched_prefix(x, ok, k, m)
            window = (k, m, matched)
            if matched < m:
                j = k + matched
                jobs[(r, j)] = max(jobs.get((r, j), 0), k + m - j)
        per_seq.append((x, ok, window))
    outs = decode_from_prefixes(model, seqs, jobs, greedy, opts.batch_size, opts.decode_batch_size,
                                progress) if jobs else {}
    decoded: list[dict[int, list[int]]] = [{} for _ in range(len(seqs))]
    for (r, j), o in outs.items():
        decoded[r][j] = o
    el_vals, ex_k, ex_m, ex_matched, ex_text = [], [], [], [], []
    for r, (x, ok, window) in enumerate(per_seq):
        if want_el:
            L = len(x)
            if status[r] != EL_COMPUTED:
                el_vals.append(math.nan)
            else:
                conts = [continuation(x, ok, decoded[r], i) for i in range(1, L - n + 1)]
                el_vals.append(extraction_likelihood(x, conts, n))
        if want_ex:
            if window is None:
                ex_k.append(0); ex_m.append(0); ex_matched.append(0); ex_text.append("")
                continue
            k, m, matched = window
            cont = x[k:k + matched]
            if matched < m:
                cont += decoded[r][k + matched][: m - matched]
            ex_k.append(k); ex_m.append(m); ex_matched.append(matched); ex_text.append(cont)
    if want_el:
        rows[f"el_{n}"] = np.array(el_vals, dtype=float)
        rows["el_status"] = status
    if want_ex:
        rows["extraction_prefix"] = ex_k
        rows["extraction_suffix"] = ex_m
        rows["extraction_matched"] = ex_matched
        rows["extraction_exact"] = [m > 0 and mt == m for m, mt in zip(ex_m, ex_matched)]
        rows["extraction_tokens"] = ex_text
    return rows
