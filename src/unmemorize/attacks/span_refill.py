"""MIAU neighbours whose spans are refilled independently, each given the original text to its left.

The ``lm`` perturber (:class:`~unmemorize.attacks.perturb.CausalRefill`) refills a masking's spans one
after another, each given everything to its left *including the earlier refills*: every one of the K
neighbours of a text is a different token stream, so making it costs about one pass over the text
(measured on a 2-core CPU: 1.7 sequence passes per neighbour, most of MIAU's time; RESULTS.md,
"Attack battery"). This perturber, ``lm-independent``, conditions each span on the *original* tokens
to its left instead, as Mattern et al.'s neighbourhood attack substitutes each word given the original
sentence, and as T5 fills spans from the original text around them. Then every span of every masking
of a text continues the same stream, the original's, and the text is a tree:

* the original is prefilled once per text (``[document start] + its tokens``, up to the last span's
  context), and the logits at each span's start give its first sample at no further cost;
* the samples of all spans of all K maskings then advance together as one sequence of queries over that
  cache: a span's token attends to the original's tokens before the span and to its own earlier samples,
  nothing else (a 4-D attention mask), at the positions it would have in its own stream. A step costs
  one token per span still being filled; the original's keys and values are never copied.

A span's context is the original's tokens that end at or before the span's separator (the whitespace
before its first word): the original's tokenization is kept, so all spans share one cache. The span
rule is the ``lm`` perturber's: samples from the distribution after the last token fed (temperature,
top-k, never eos/pad/bos), a span ends when its next sample would begin word ``span_words + 1`` or
after ``4·span_words + 4`` tokens. Each span draws from its own generator, seeded by (text, seed,
masking, span), so a neighbour depends on nothing else (not on K, nor on what is batched with it).
A span whose context does not fit in the model's context keeps its original words (counted, as ``lm``).

The slow reference (:class:`unmemorize.reference.IndependentSpanReference`) computes every draw with a
full pass over its own context; the tests hold this one to it.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field

import torch

from unmemorize.attacks.perturb import (
    LMRefill,
    MaskedText,
    Masking,
    _keeps_by_tensor,
    _normalise_fill,
    _num_layers,
    draw_tokens,
    sampling_probabilities,
)


def span_seed(row_seed: int, span: int) -> int:
    """The generator seed of span ``span`` of the masking seeded ``row_seed`` (63 bits)."""
    return int.from_bytes(hashlib.sha256(f"{row_seed}:{span}".encode()).digest()[:8], "big") >> 1


def span_contexts(masks: list[MaskedText], ends: list[int]) -> list[list[int]]:
    """For each masking, each span's context length in the stream ``[start] + tokens``: 1 + the number
    of the original's tokens that end at or before the span's separator (``ends``: each token's end
    offset in the text, non-decreasing)."""
    out = []
    for m in masks:
        at, lengths = 0, []
        for i in range(len(m.words)):
            at += len(m.fixed[i])
            lengths.append(1 + bisect.bisect_right(ends, at))
            at += len(m.seps[i]) + len(m.originals[i])
        out.append(lengths)
    return out


def unsupported(model, tokenizer) -> str | None:
    """Why this refill cannot run with ``model`` and ``tokenizer`` (None when it can): it reads token offsets
    (a fast tokenizer), and a tree's samples sit hundreds of columns after the original tokens they read, which
    local attention narrower than the context cannot see (GPT-Neo: every other layer sees 256 columns)."""
    if not getattr(tokenizer, "is_fast", False):
        return "the lm-independent perturber needs a fast tokenizer (it reads token offsets); use the lm perturber"
    config = getattr(model, "config", None)
    layers = getattr(config, "attention_layers", None) or []
    window = getattr(config, "window_size", None)
    context = getattr(config, "max_position_embeddings", None)
    if "local" in layers and window is not None and (context is None or window < context):
        return (f"{type(model).__name__} has local attention layers (window {window}): the lm-independent refill "
                "lays a text's spans after it in one row, beyond that window; use the lm perturber")
    return None


@dataclass
class _Span:
    """One span being refilled: it continues the original's stream at position ``n`` (its context)."""

    row: int  # the masking it belongs to
    index: int  # its place among the masking's spans
    n: int  # context length: the original's stream positions 0 … n−1
    words: int
    gen: torch.Generator
    seed: int
    current: list[int] = field(default_factory=list)  # accepted samples (fed, or to be fed next)
    columns: list[int] = field(default_factory=list)  # cache columns of its fed samples
    fill: str | None = None
    draws: int = 0


class IndependentSpanRefill(LMRefill):
    """``lm-independent``: each span refilled by a causal LM given the original text to its left (module doc)."""

    name = "lm-independent"
    sampling = "per-span inverse cdf"  # each span its own generator (span_seed), one uniform per draw

    def __init__(self, masking: Masking, model, tokenizer, fingerprint: str, top_k: int | None = 50,
                 temperature: float = 1.0):
        reason = unsupported(model, tokenizer)
        if reason:
            raise ValueError(reason)
        super().__init__(masking, model, tokenizer, fingerprint, top_k, temperature)

    def fill(self, text, masks, seed, first: int = 0):
        return self._fill_text(text, masks, [seed + j for j in range(first, first + len(masks))])

    # ------------------------------------------------------------ the refill

    def _spans(self, text: str, masks: list[MaskedText], seeds: list[int]) -> tuple[list[int], list[_Span]]:
        """The original's stream and every span to refill, in (masking, span) order."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        stream = [self.start] + list(enc["input_ids"])
        ends = [e for _, e in enc["offset_mapping"]]
        spans = []
        for r, (m, lengths, s) in enumerate(zip(masks, span_contexts(masks, ends), seeds)):
            for i, (n, w) in enumerate(zip(lengths, m.words)):
                seed = span_seed(s, i)
                spans.append(_Span(r, i, n, w, torch.Generator().manual_seed(seed), seed))
        return stream, spans

    @torch.no_grad()
    def _fill_text(self, text: str, masks: list[MaskedText], seeds: list[int]) -> list[list[str]]:
        stream, spans = self._spans(text, masks, seeds)
        limit = self.context if self.context is not None else 1 << 30
        for s in spans:
            if s.n > limit:  # its context does not fit: the span keeps its words
                s.fill = _normalise_fill(masks[s.row].originals[s.index])
                self.fallback_spans += 1
        for group in self._groups([s for s in spans if s.fill is None]):
            self._tree(stream, group, limit)
        fills: list[list[str]] = [[] for _ in masks]
        for s in spans:
            fills[s.row].append(s.fill)
        return fills

    def _groups(self, live: list[_Span]) -> list[list[_Span]]:
        """The spans in trees that fit the model: a tree's columns (its prefill and at most ``cap`` samples
        per span) never pass the context, where a model's position tables or causal buffers end. By
        context length, so that short contexts share a short prefill. One tree for a 200-token text at
        K = 25 in a context of 2,048 or more."""
        if self.context is None:
            return [live] if live else []
        groups: list[list[_Span]] = []
        for s in sorted(live, key=lambda s: s.n):
            if groups and s.n + self.cap * (len(groups[-1]) + 1) <= self.context:
                groups[-1].append(s)
            else:
                groups.append([s])
        return groups

    def _tree(self, stream: list[int], group: list[_Span], limit: int) -> None:
        """Refill the spans of ``group``: prefill the original once, then every span's samples as queries
        over that cache, one token per live span per pass."""
        from unmemorize.kv import grow, lazy_cache, width

        model = self.model
        device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
        prefill = max(s.n for s in group)
        cache = lazy_cache(_num_layers(model), min(prefill + 4 * len(group) + 16, prefill + self.cap * len(group)))
        wanted = sorted({s.n - 1 for s in group})
        if _keeps_by_tensor(model):  # logits only where a span starts
            keep, row_of = torch.tensor(wanted, device=device), {p: i for i, p in enumerate(wanted)}
        else:
            keep, row_of = 0, {p: p for p in wanted}
        out = model(input_ids=torch.tensor([stream[:prefill]], device=device), cache=cache, use_cache=True,
                    logits_to_keep=keep)
        logits, live, filled = out.logits[0, [row_of[s.n - 1] for s in group]], group, prefill
        while True:
            feeding = self._draw(live, logits, limit)
            if not feeding:
                return
            q = len(feeding)
            if filled + q > width(cache):
                grow(cache, min(int(1.25 * (filled + q)) + 16, prefill + self.cap * len(group)))
            ids = torch.tensor([[s.current[-1] for s in feeding]], device=device)
            pos = torch.tensor([[s.n + len(s.current) - 1 for s in feeding]], device=device)
            mask = self._mask(feeding, filled, dtype, device)
            for i, s in enumerate(feeding):
                s.columns.append(filled + i)
            out = model(input_ids=ids, position_ids=pos, attention_mask=mask, cache=cache, use_cache=True)
            filled += q
            logits, live = out.logits[0], feeding

    def _draw(self, live: list[_Span], logits: torch.Tensor, limit: int) -> list[_Span]:
        """Each live span draws one sample from ``logits`` (one row per span); return the spans that accepted
        theirs and feed it next (the others are complete)."""
        if self.trace is not None:
            for s, lg in zip(live, logits):
                self.trace[(s.seed, s.draws)] = lg.detach().to("cpu", torch.float64).clone()
        probs = sampling_probabilities(logits, self.temperature, self.banned, self.top_k)
        sampled = draw_tokens(probs, [s.gen for s in live])
        feeding = []
        for s, t in zip(live, sampled):
            s.draws += 1
            cur = s.current
            if self.accepts(cur, t, s.words):
                cur.append(t)
                if s.n + len(cur) <= limit:  # its position n + len − 1 is inside the context
                    feeding.append(s)
                    continue
            s.fill = _normalise_fill(self.tokenizer.decode(cur))  # complete (or at the context's end)
        return feeding

    @staticmethod
    def _mask(feeding: list[_Span], filled: int, dtype, device) -> torch.Tensor:
        """The additive mask [1, 1, q, filled + q] (0 where seen, the dtype's minimum elsewhere: every
        attention implementation takes it): span i's new token sees the original's first n columns, its own
        earlier samples' columns and itself."""
        q = len(feeding)
        see = torch.zeros((q, filled + q), dtype=torch.bool)
        for i, s in enumerate(feeding):
            see[i, : s.n] = True
            if s.columns:
                see[i, s.columns] = True
            see[i, filled + i] = True
        mask = torch.zeros((q, filled + q), dtype=dtype).masked_fill_(~see, torch.finfo(dtype).min)
        return mask[None, None].to(device)
