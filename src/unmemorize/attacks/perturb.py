"""Neighbours for MIAU: mask about 30% of a text's words in 2-word spans and refill the spans.

Perturbers are a registry by name; all share the masking and differ only in how they refill:

* ``lm`` — the offline default. Refills each span by sampling from a causal LM (the original model,
  or whichever the caller passes) given the text to its left, one span after another: the fixed text
  between spans is prefilled in one pass (KV cache), only the samples are decoded, and the maskings of
  many texts advance together. A span ends when the sample would start one word more than the span
  had. Needs nothing beyond the models already loaded.
* ``t5`` — the original code's mask filler (docs/method.md §3.3: T5, spans as ``<extra_id_i>``, sampling
  with top_p = 1.0, retries for incomplete fills), for users who have a T5 folder locally. Spans
  still incomplete after the retries keep their original words and are counted.
* ``words`` — cheap and model-free: each span is refilled with words drawn from the same text.
  For tests and quick checks; its neighbours are less fluent than a language model's.

Neighbours are made per text (never shared between texts, unlike the original code's first-batch
cache), seeded by (seed, text) so they do not depend on which other texts are in the run, and cached
on disk keyed by (text, perturber configuration with its model's fingerprint, dtype and context, seed);
neighbour j does not depend on K, so a cached list serves any K up to its length and is extended for a
larger one. The cache holds perturbed copies of the texts: it is as private as the forget set.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unmemorize.errors import UserError
from unmemorize.progress import task
from unmemorize.runs import atomic_write_text

# ---------------------------------------------------------------- masking (shared by every perturber)


@dataclass(frozen=True)
class Masking:
    """Mask ``fraction`` of the words in spans of ``span_words`` words, with at least one unmasked word
    between spans. (The original code's rule, n_spans = ⌊pct·W/(span+2)⌋ with pct = 0.3, masks
    pct·span/(span+2) = 15% of the words; pass fraction = 0.15 to reproduce it.)"""

    fraction: float = 0.3
    span_words: int = 2
    max_spans: int | None = None  # T5 has a limited number of sentinel tokens


@dataclass
class MaskedText:
    """A text cut around its masked spans: text = fixed[0] + seps[0] + originals[0] + fixed[1] + …"""

    fixed: list[str]  # n+1 unmasked pieces; fixed[i+1] starts with the whitespace after span i
    seps: list[str]  # the whitespace before each span ('' at the start of the text)
    originals: list[str]  # each span's original words, as they were written
    words: list[int]  # words per span

    def assemble(self, fills: list[str]) -> str:
        out = [self.fixed[0]]
        for sep, fill, rest in zip(self.seps, fills, self.fixed[1:]):
            out += [sep, fill, rest]
        return "".join(out)


def choose_spans(n_words: int, masking: Masking, rng: random.Random) -> list[int]:
    """Start word indexes of round(fraction·W/span) non-adjacent spans, uniform over all placements.

    Stars and bars: with n spans of s words and n−1 mandatory one-word gaps, F = W − n·s − (n−1) words
    are free; choosing n of F+n slots (sorted s_0 < s_1 < …) places span i at s_i + i·s.
    """
    s = masking.span_words
    if n_words < s:
        return []
    n = max(1, round(masking.fraction * n_words / s))
    n = min(n, (n_words + 1) // (s + 1))
    if masking.max_spans is not None:
        n = min(n, masking.max_spans)
    free = n_words - n * s - (n - 1)
    slots = sorted(rng.sample(range(free + n), n))
    return [slot + i * s for i, slot in enumerate(slots)]


def mask_text(text: str, masking: Masking, rng: random.Random) -> MaskedText:
    """Cut ``text`` around randomly chosen spans of whole words (words = maximal non-whitespace runs)."""
    parts = re.split(r"(\s+)", text)  # even indexes: words (possibly ''), odd: whitespace
    word_at = [i for i in range(0, len(parts), 2) if parts[i]]
    fixed, seps, originals, words = [], [], [], []
    cursor = 0
    for start in choose_spans(len(word_at), masking, rng):
        a, b = word_at[start], word_at[start + masking.span_words - 1]
        cut = a - 1 if a > 0 else a
        fixed.append("".join(parts[cursor:cut]))
        seps.append(parts[a - 1] if a > 0 else "")
        originals.append("".join(parts[a:b + 1]))
        words.append(masking.span_words)
        cursor = b + 1
    fixed.append("".join(parts[cursor:]))
    return MaskedText(fixed, seps, originals, words)


def _normalise_fill(text: str) -> str:
    return " ".join(text.split())


def text_seed(text: str, seed: int) -> int:
    """A 63-bit seed from (seed, text): a text's neighbours never depend on the other texts."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{text}".encode("utf-8")).digest()[:8], "big") >> 1


# ---------------------------------------------------------------- perturbers


class Perturber:
    """Makes K neighbours of a text: K independent maskings, each refilled by :meth:`fill`.

    ``prefix_stable``: neighbour j of a text depends on (text, seed, j) only, not on K, so the first K
    neighbours of a run with more are those of a run with K (the cache keeps the longest list and
    extends it).
    """

    name = ""
    prefix_stable = True

    def __init__(self, masking: Masking):
        self.masking = masking
        self.spans = 0
        self.fallback_spans = 0  # spans that kept their original words (T5 could not fill them)

    def config(self) -> dict:
        """Every setting that changes a neighbour (the neighbour cache's key, with the text and the seed)."""
        out = {"perturber": self.name, "mask_fraction": self.masking.fraction, "span_words": self.masking.span_words}
        if self.masking.max_spans is not None:
            out["max_spans"] = self.masking.max_spans
        return out

    def key(self) -> str:
        return json.dumps(self.config(), sort_keys=True)

    def fill(self, text: str, masks: list[MaskedText], seed: int) -> list[list[str]]:
        raise NotImplementedError

    def masks(self, text: str, k: int, seed: int) -> tuple[int, list[MaskedText]]:
        base = text_seed(text, seed)
        return base, [mask_text(text, self.masking, random.Random(base + j)) for j in range(k)]

    def neighbours(self, text: str, k: int, seed: int) -> list[str]:
        base, masks = self.masks(text, k, seed)
        fills = self.fill(text, masks, base)
        self.spans += sum(len(m.originals) for m in masks)
        return [m.assemble(f) for m, f in zip(masks, fills)]

    def neighbours_many(self, texts: list[str], k: int, seed: int, done: Callable[[int], None] | None = None,
                        first: list[int] | None = None) -> list[list[str]]:
        """K neighbours of each text; each text's neighbours are those :meth:`neighbours` gives it alone
        (perturbers that can, batch texts together). ``done(n)`` is called as texts finish. ``first[i]``:
        make only neighbours first[i] … K−1 of text i (a prefix-stable perturber extending a cached list)."""
        out = []
        for i, text in enumerate(texts):
            start = first[i] if first else 0
            if start and not self.prefix_stable:
                raise ValueError(f"the {self.name} perturber cannot extend a list of neighbours")
            base, masks = self.masks(text, k, seed)
            masks = masks[start:]
            fills = self.fill(text, masks, base, start) if start else self.fill(text, masks, base)
            self.spans += sum(len(m.originals) for m in masks)
            out.append([m.assemble(f) for m, f in zip(masks, fills)])
            if done:
                done(1)
        return out


class WordPerturber(Perturber):
    """Refill each span with words drawn uniformly from the same text (cheap; for tests)."""

    name = "words"

    def fill(self, text, masks, seed, first: int = 0):
        vocab = text.split()
        out = []
        for j, m in enumerate(masks, start=first):
            rng = random.Random(f"{seed}:{j}")
            out.append([" ".join(rng.choice(vocab) for _ in range(n)) for n in m.words])
        return out


def sampling_probabilities(logits: torch.Tensor, temperature: float, banned: list[int],
                           top_k: int | None) -> torch.Tensor:
    """The distributions the lm refill samples from, for next-token logits [R, V]: temperature, the
    banned ids (eos, pad, bos) removed, top-k (ties at the k-th value kept), softmax; on the CPU, in
    float32 (float64 logits stay float64)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits.to(dtype=dtype, device="cpu") / temperature
    logits[:, banned] = float("-inf")
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, -1)


def draw_tokens(probs: torch.Tensor, generators: list[torch.Generator]) -> list[int]:
    """One token per row of ``probs`` [R, V], row r by inverse transform of one uniform from its own
    generator: the first token whose cumulative probability exceeds u·total (summed in float64).

    One random number per draw (``torch.multinomial`` draws V exponentials per sample: at a 49k
    vocabulary that was a tenth of the refill's time), and a row's draw depends only on its own
    distribution and generator, whatever rows share the batch."""
    u = torch.tensor([float(torch.rand((), generator=g, dtype=torch.float64)) for g in generators],
                     dtype=torch.float64)
    cdf = probs.to(torch.float64).cumsum(-1)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
    return picked.clamp(max=probs.shape[-1] - 1).tolist()


@dataclass
class _Row:
    """One masking being refilled: its token stream is segs[0] (start + text before span 0), the
    samples of span 0, segs[1], the samples of span 1, … (the text after the last span is never fed)."""

    segs: list[list[int]]  # fixed pieces before each span; segs[0] begins with the document-start token
    words: list[int]  # words per span
    originals: list[str]
    gen: torch.Generator
    seed: int
    span: int = 0  # the span being filled (or whose fixed piece is pending)
    fed: int = 0  # tokens fed so far = positions used
    current: list[int] = field(default_factory=list)  # accepted samples of the span under way
    fills: list[str] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # tokens to feed next
    done: bool = False
    draws: int = 0


class LMRefill(Perturber):
    """What the causal-LM refills share: the model and its sampling settings, the context, the token a
    stream starts from, the ids never sampled, the span's token cap, and the cache key over all of them.
    ``sampling`` names how draws are seeded (part of the key)."""

    sampling = ""

    def __init__(self, masking: Masking, model, tokenizer, fingerprint: str, top_k: int | None = 50,
                 temperature: float = 1.0):
        super().__init__(masking)
        from unmemorize.models import max_positions

        self.model, self.tokenizer, self.fingerprint = model, tokenizer, fingerprint
        self.top_k, self.temperature = top_k, temperature
        self.context = max_positions(model)
        self.start = document_start(tokenizer)
        self.banned = sorted({i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id)
                              if i is not None})
        self.cap = 4 * masking.span_words + 4
        self.trace: dict | None = None  # tests: {(generator seed, draw): logits} of every draw when a dict

    def accepts(self, current: list[int], sampled: int, words: int) -> bool:
        """The span rule: a span takes ``sampled`` unless it would begin word ``words + 1`` or pass the cap."""
        return len(current) < self.cap and len(self.tokenizer.decode(current + [sampled]).split()) <= words

    def config(self) -> dict:
        # The model's weights and tokenizer files are in the fingerprint; its dtype, context length and the
        # tokens the refill starts from and never samples change the samples too.
        return {**super().config(), "model": self.fingerprint, "top_k": self.top_k, "temperature": self.temperature,
                "sampling": self.sampling, "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
                "context": self.context, "start": self.start, "banned": self.banned}


class CausalRefill(LMRefill):
    """Refill spans left to right by sampling from a causal LM given everything to their left.

    A masking's token stream is: the document-start token and the text before span 0, the samples of
    span 0, the text between span 0 and span 1, the samples of span 1, … The rows of all texts × K
    maskings (``max_rows`` at a time) advance together, on one of two schedules:

    * ``prefill``: each fixed piece in one pass (KV cache), each sample in one pass; rows grouped by
      piece length so that padding stays small, their caches gathered from a store for every pass.
      Far fewer passes than tokens: the schedule for accelerators, where a pass costs its launch.
    * ``lockstep``: every row feeds one token per pass, all rows in step, so their caches line up and
      are written in place (no gathering, no padding, no mask); logits only for the rows that draw.
      On a CPU, where a pass costs its arithmetic and gathering caches costs as much memory traffic as
      prefilling saves, this is the faster one (benchmarks/bench_attacks.py).

    Each masking samples from its own seeded generator, inside spans only, so its neighbour depends on
    its text, masking and seed alone (not on the schedule, nor on which rows share a batch). A span's samples are drawn (temperature, top-k, never eos) from the
    distribution after the last token fed; a span ends when the next sample would begin word
    ``span_words + 1`` (that token is not fed), or after ``4·span_words + 4`` tokens. Top-k 50 by
    default: a small model's full distribution puts enough mass on junk tokens to make neighbours that
    no longer read like their text.

    Both sample from exactly the distributions of the refill as first written
    (:class:`unmemorize.reference.TokenByTokenRefill`, the slow reference: one token per step and a
    cache copied at every step): the same logits up to floating-point summation order, the same
    neighbours for the same seeds.

    Refills can be longer than the words they replace, so a text can outgrow the model's context (its
    first token included). No row ever feeds more tokens than the context holds: a span under way when
    a row's context is full keeps what it has sampled, and the spans after it keep their original words
    and are counted in ``fallback_spans`` (they lie beyond the T tokens a neighbour is scored on). Rows
    that fit are refilled exactly as without the limit.
    """

    name = "lm"
    # rows of one refill batch (texts × K); bounds the KV store (rows × tokens × layers)
    max_rows = 128
    # what one pass costs beyond its tokens, in padded tokens (a few small passes run slower than one big one)
    call_cost = 48
    # how rows advance: "prefill" (each fixed piece in one pass, rows grouped by piece length, their caches
    # gathered per pass) or "lockstep" (one token per row per pass, caches in place); None: lockstep on a
    # CPU, where gathering the caches costs as much as it saves, prefill on an accelerator
    schedule: str | None = None
    # each masking samples from its own seeded generator, by inverse transform of one uniform per draw, so a
    # text's neighbours do not depend on which texts shared its batch (cache entries of the older joint
    # sampling and of multinomial draws are not reused)
    sampling = "per-row inverse cdf"

    def fill(self, text, masks, seed, first: int = 0):
        return self._fill_rows(masks, [seed + j for j in range(first, first + len(masks))])

    def neighbours_many(self, texts, k, seed, done=None, first=None):
        """All maskings of several texts are refilled together, ``max_rows`` rows at a time."""
        planned = []  # (text index, masking, row seed)
        for i, t in enumerate(texts):
            base, masks = self.masks(t, k, seed)
            start = first[i] if first else 0
            planned += [(i, masks[j], base + j) for j in range(start, k)]
        out: list[list[str]] = [[] for _ in texts]
        left = [sum(1 for p in planned if p[0] == i) for i in range(len(texts))]
        finished = [i for i, n in enumerate(left) if n == 0]
        if done and finished:
            done(len(finished))
        for c in range(0, len(planned), self.max_rows):
            chunk = planned[c:c + self.max_rows]
            fills = self._fill_rows([m for _, m, _ in chunk], [s for _, _, s in chunk])
            ended = 0
            for (i, m, _), f in zip(chunk, fills):
                self.spans += len(m.originals)
                out[i].append(m.assemble(f))
                left[i] -= 1
                ended += left[i] == 0
            if done and ended:
                done(ended)
        return out

    # ------------------------------------------------------------ the refill

    @torch.no_grad()
    def _fill_rows(self, masks: list[MaskedText], seeds: list[int]) -> list[list[str]]:
        tok = self.tokenizer
        rows = []
        for m, s in zip(masks, seeds):
            segs = [tok(m.fixed[i], add_special_tokens=False)["input_ids"] for i in range(len(m.words))]
            row = _Row(segs, list(m.words), list(m.originals), torch.Generator().manual_seed(s), s)
            if not segs:
                row.done = True
            else:
                segs[0] = [self.start] + segs[0]
                self._queue(row, segs[0])
            rows.append(row)
        if self._schedule() == "lockstep":
            self._lockstep(rows)
            return [row.fills for row in rows]
        store = _Store(len(rows), max((_stream_estimate(row) for row in rows), default=8))
        while True:
            live = [r for r, row in enumerate(rows) if not row.done]
            if not live:
                break
            for group in self._groups(rows, live):
                logits = self._pass(rows, group, store)
                probs = sampling_probabilities(logits, self.temperature, self.banned, self.top_k)
                sampled = draw_tokens(probs, [rows[r].gen for r in group])
                for i, r in enumerate(group):
                    self._decide(rows[r], sampled[i], logits[i])
        return [row.fills for row in rows]

    def _schedule(self) -> str:
        if self.schedule is not None:
            return self.schedule
        return "lockstep" if next(self.model.parameters()).device.type == "cpu" else "prefill"

    def _lockstep(self, rows: list[_Row]) -> None:
        """Every live row feeds the next token of its pending piece, one token per pass, all rows in step
        (so their caches line up: no padding, no mask, keys and values written in place); logits are
        computed only for the rows whose piece ends here, which then draw. Rows that are done leave the
        batch (the longest streams first, so that they mostly leave from the end)."""
        from unmemorize.kv import compact, grow, keep_rows, lazy_cache, width

        model = self.model
        device = next(model.parameters()).device
        order = sorted((r for r, row in enumerate(rows) if not row.done), key=lambda r: -_stream_estimate(rows[r]))
        if not order:
            return
        cache = lazy_cache(_num_layers(model), int(1.15 * max(_stream_estimate(rows[r]) for r in order)) + 16)
        at = {r: 0 for r in order}  # next token of the row's pending piece
        fed = 0
        while True:
            live = [r for r in order if not rows[r].done]
            if not live:
                return
            if len(live) < len(order):  # rows that are done leave the batch
                if order[: len(live)] == live:  # the last ones: a view
                    keep_rows(cache, len(live))
                    order = live
                elif len(order) - len(live) >= max(4, len(order) // 8):  # enough of them: one copy
                    position = {r: i for i, r in enumerate(order)}
                    compact(cache, torch.tensor([position[r] for r in live]))
                    order = live
                # else they stay a little longer, fed a filler token
            if fed + 1 > width(cache):
                grow(cache, int(1.25 * width(cache)) + 16)
            ids = torch.tensor([rows[r].pending[at[r]] if not rows[r].done else self.start for r in order])
            last = torch.tensor([not rows[r].done and at[r] == len(rows[r].pending) - 1 for r in order])
            tensors = _keeps_by_tensor(model)
            out = model(input_ids=ids[:, None].to(device), cache=cache, use_cache=True,
                        logits_to_keep=last[:, None].to(device) if tensors else 0)
            fed += 1
            ending = [r for r, e in zip(order, last.tolist()) if e]
            for r in order:
                if not rows[r].done:
                    at[r] += 1
                    rows[r].fed += 1
            if ending:
                logits = out.logits.reshape(len(ending), -1) if tensors else out.logits[last.to(out.logits.device), -1]
                probs = sampling_probabilities(logits, self.temperature, self.banned, self.top_k)
                sampled = draw_tokens(probs, [rows[r].gen for r in ending])
                for i, r in enumerate(ending):
                    self._decide(rows[r], sampled[i], logits[i])
                    at[r] = 0

    def _queue(self, row: _Row, tokens: list[int]) -> None:
        """Feed ``tokens`` next, unless they would pass the model's context: then the row stops here."""
        if self.context is not None and row.fed + len(tokens) > self.context:
            self._cut_short(row)
        else:
            row.pending = tokens

    def _decide(self, row: _Row, sampled: int, logits: torch.Tensor) -> None:
        """After a pass: this row's sample, drawn from the distribution after its last token; what does
        it feed next? (The reference's per-step rule, one decision per draw.)"""
        if self.trace is not None:
            self.trace[(row.seed, row.draws)] = logits.detach().to("cpu", torch.float64).clone()
        row.draws += 1
        while True:
            cur = row.current
            if self.accepts(cur, sampled, row.words[row.span]):
                cur.append(sampled)
                self._queue(row, [sampled])
                return
            row.fills.append(_normalise_fill(self.tokenizer.decode(cur)))
            row.current = []
            row.span += 1
            if row.span == len(row.words):
                row.done, row.pending = True, []
                return
            if row.segs[row.span]:
                self._queue(row, row.segs[row.span])
                return
            # an empty fixed piece: the same sample opens the next span (the reference looks at it twice)

    def _cut_short(self, row: _Row) -> None:
        """Complete a row's fills when its context is full: the span under way keeps its samples (the
        last one, drawn but not fed, included), the spans not begun keep their original words."""
        if row.current:
            row.fills.append(_normalise_fill(self.tokenizer.decode(row.current)))
        kept = row.originals[len(row.fills):]
        self.fallback_spans += len(kept)
        row.fills.extend(_normalise_fill(o) for o in kept)
        row.done, row.pending = True, []

    def _groups(self, rows: list[_Row], live: list[int]) -> list[list[int]]:
        """The live rows in groups fed together: single sampled tokens in one group (no padding), longer
        pieces by length. Each group pads its pieces to the longest; a pass also costs about
        ``call_cost`` padded tokens of its own (small matrix products run slowly), so the lengths are
        cut into the groups that minimise padded tokens + call_cost per group (a small dynamic program
        over the distinct lengths). No group's cache (its longest row plus its longest piece) may
        outgrow the model's context."""
        ones = [r for r in live if len(rows[r].pending) == 1]
        by_len: dict[int, list[int]] = {}
        for r in live:
            if len(rows[r].pending) > 1:
                by_len.setdefault(len(rows[r].pending), []).append(r)
        lengths = sorted(by_len)
        best = [0.0] + [math.inf] * len(lengths)  # best[b]: cost of the first b distinct lengths
        cut = [0] * (len(lengths) + 1)
        for b in range(1, len(lengths) + 1):
            count = 0
            for a in range(b, 0, -1):
                count += len(by_len[lengths[a - 1]])
                cost = best[a - 1] + count * lengths[b - 1] + self.call_cost
                if cost < best[b]:
                    best[b], cut[b] = cost, a - 1
        groups = []
        b = len(lengths)
        while b > 0:
            a = cut[b]
            groups.append([r for m in lengths[a:b] for r in by_len[m]])
            b = a
        groups.reverse()
        if self.context is not None:  # split a group whose longest row plus longest piece would not fit
            fitted = []
            for g in groups:
                g.sort(key=lambda r: rows[r].fed)
                while g:
                    M, take = 0, 0
                    while take < len(g) and rows[g[take]].fed + max(M, len(rows[g[take]].pending)) <= self.context:
                        M = max(M, len(rows[g[take]].pending))
                        take += 1
                    take = max(take, 1)
                    fitted.append(g[:take])
                    g = g[take:]
            groups = fitted
        if ones:  # one token each: every row has fed + 1 ≤ context, so the group's cache fits too
            groups.insert(0, ones)
        return groups

    def _pass(self, rows: list[_Row], group: list[int], store: "_Store") -> torch.Tensor:
        """Feed every row of ``group`` its pending tokens in one model pass over their cached tokens;
        return the logits after each row's last token [len(group), V] and keep the new keys/values."""
        from unmemorize.kv import buffer_cache, lazy_cache

        model = self.model
        device = next(model.parameters()).device
        S = len(group)
        fed = [rows[r].fed for r in group]
        lens = [len(rows[r].pending) for r in group]
        W, M = max(fed), max(lens)
        ids = torch.full((S, M), self.start, dtype=torch.long)
        pos = torch.zeros((S, M), dtype=torch.long)
        mask = torch.zeros((S, W + M), dtype=torch.long)
        for i, r in enumerate(group):
            ids[i, : lens[i]] = torch.tensor(rows[r].pending, dtype=torch.long)
            # padding repeats the row's last position: it never reaches past the positions the row uses
            pos[i] = torch.clamp(torch.arange(M) + fed[i], max=fed[i] + lens[i] - 1)
            mask[i, W - fed[i]:W + lens[i]] = 1  # the row's cache is right-aligned: columns W - fed … W - 1
        if W == 0:
            cache = lazy_cache(store.layers or _num_layers(model), M)
        else:
            cache = buffer_cache(store.gather(group, fed, W, M), W)
        keep = torch.tensor(lens, dtype=torch.long)[:, None] - 1  # each row's last token
        tensors = _keeps_by_tensor(model)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                    cache=cache, use_cache=True, logits_to_keep=keep.to(device) if tensors else 0)
        store.put(out.cache, group, fed, lens, W)
        for i, r in enumerate(group):
            rows[r].fed += lens[i]
            rows[r].pending = []
        if tensors:
            return out.logits[:, -1]
        return out.logits[torch.arange(S), keep[:, 0].to(out.logits.device)]


def _keeps_by_tensor(model) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` as a tensor of positions or a mask (transformers'
    ``slice_logits_to_keep``): then only the logits a draw needs are computed."""
    import sys

    return getattr(sys.modules.get(type(model).__module__), "slice_logits_to_keep", None) is not None


def _stream_estimate(row: _Row) -> int:
    """About how many tokens a row will feed: its fixed pieces and a couple per span word."""
    return sum(map(len, row.segs)) + sum(row.words) + 2 * len(row.words)


def _num_layers(model) -> int:
    config = model.config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError("cannot tell the number of layers from the model's config")


class _Store:
    """The keys and values of every row of a refill batch, per layer ``[rows + 1, width, heads, dim]``;
    row r's tokens at columns 0 … fed−1, the last row zeros (what padding gathers)."""

    def __init__(self, rows: int, width: int):
        self.rows, self.width = rows, max(8, width)
        self.layers = 0
        self.data: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _ensure(self, like, width: int) -> None:
        if not self.data:
            self.layers = len(like)
            self.data = [(k.new_zeros((self.rows + 1, self.width, *k.shape[2:])),
                          v.new_zeros((self.rows + 1, self.width, *v.shape[2:]))) for k, v in like]
        if width > self.width:
            new = max(width, int(self.width * 1.25) + 8)
            grown = []
            for k, v in self.data:
                kk = k.new_zeros((self.rows + 1, new, *k.shape[2:]))
                vv = v.new_zeros((self.rows + 1, new, *v.shape[2:]))
                kk[:, : self.width], vv[:, : self.width] = k, v
                grown.append((kk, vv))
            self.data, self.width = grown, new

    def gather(self, group: list[int], fed: list[int], W: int, M: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Buffers [len(group), W + M, heads, dim]: each row's cache right-aligned to end at column W, zeros
        elsewhere (the new tokens' columns W … W+M−1 are written by the pass)."""
        col = torch.arange(W + M)[None, :]
        f = torch.tensor(fed)[:, None]
        src = col - (W - f)  # the row's own column
        ok = (src >= 0) & (col < W)
        index = torch.where(ok, torch.tensor(group)[:, None] * self.width + src.clamp(min=0),
                            torch.tensor(self.rows * self.width)).reshape(-1)
        out = []
        for k, v in self.data:
            index_d = index.to(k.device)
            out.append((k.reshape(-1, *k.shape[2:]).index_select(0, index_d).view(len(group), W + M, *k.shape[2:]),
                        v.reshape(-1, *v.shape[2:]).index_select(0, index_d).view(len(group), W + M, *v.shape[2:])))
        return out

    def put(self, cache, group: list[int], fed: list[int], lens: list[int], W: int) -> None:
        """Keep the pass's new keys and values: row i's token j (column W + j of the pass) → column fed + j."""
        like = [(layer.buf_k, layer.buf_v) for layer in cache.layers]
        self._ensure(like, max(f + m for f, m in zip(fed, lens)))
        src = torch.tensor([i * like[0][0].shape[1] + W + j for i, m in enumerate(lens) for j in range(m)])
        dst = torch.tensor([g * self.width + f + j for g, f, m in zip(group, fed, lens) for j in range(m)])
        for (k, v), (bk, bv) in zip(self.data, like):
            s, d = src.to(k.device), dst.to(k.device)
            k.view(-1, *k.shape[2:]).index_copy_(0, d, bk.reshape(-1, *bk.shape[2:]).index_select(0, s))
            v.view(-1, *v.shape[2:]).index_copy_(0, d, bv.reshape(-1, *bv.shape[2:]).index_select(0, s))


def document_start(tokenizer) -> int:
    """The token a model reads before a document: the one its tokenizer prepends (Llama's <s>), else eos
    (GPT-2's <|endoftext|> separates documents)."""
    first = tokenizer("a")["input_ids"][:1]
    if first and first[0] in tokenizer.all_special_ids:
        return first[0]
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id


T5_SENTINEL = "<extra_id_{}>"
_SENTINEL_RE = re.compile(r"<extra_id_(\d+)>")


def parse_t5_fills(decoded: str, n: int) -> list[str] | None:
    """The fills of sentinels 0..n−1 from T5's output ``<extra_id_0> a b<extra_id_1> c d<extra_id_2></s>``,
    or None when one is missing or the last one was cut off (no sentinel or ``</s>`` after it)."""
    text = decoded.replace("<pad>", "")
    terminated = "</s>" in text
    text = text.split("</s>")[0]
    pieces = _SENTINEL_RE.split(text)  # ['', '0', ' a b', '1', ' c d', '2', '']
    found: dict[int, str] = {}
    for idx, content in zip(pieces[1::2], pieces[2::2]):
        found.setdefault(int(idx), content)
    if any(i not in found for i in range(n)):
        return None
    if not terminated and not any(i >= n for i in found):
        return None
    return [_normalise_fill(found[i]) for i in range(n)]


class T5Filler(Perturber):
    """The original code's T5 mask filling, from a local folder (never downloaded)."""

    name = "t5"
    SENTINELS = 100
    prefix_stable = False  # one sampling stream for all K maskings: neighbour j depends on K

    def __init__(self, masking: Masking, path: str | Path, top_p: float = 1.0, device: str | None = None,
                 attempts: int = 5):
        from unmemorize.models import pick_device, weights_fingerprint

        p = Path(path)
        if not (p.is_dir() and (p / "config.json").is_file()):
            raise UserError(f"--t5 {p}: not a local model folder with a config.json (the T5 perturber never "
                            "downloads; use --perturber lm for the offline default)")
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
            self.model = AutoModelForSeq2SeqLM.from_pretrained(p, local_files_only=True).to(pick_device(device)).eval()
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"--t5 {p}: cannot load a sequence-to-sequence model: {str(e).splitlines()[0]}") from None
        if T5_SENTINEL.format(0) not in self.tokenizer.get_vocab():
            raise UserError(f"--t5 {p}: its tokenizer has no <extra_id_0> sentinel; not a T5 mask filler")
        sentinels = sum(1 for i in range(self.SENTINELS) if T5_SENTINEL.format(i) in self.tokenizer.get_vocab())
        super().__init__(Masking(masking.fraction, masking.span_words, max_spans=sentinels - 1))
        self.path, self.fingerprint = str(p), weights_fingerprint(p)
        self.top_p, self.attempts = top_p, attempts

    def config(self) -> dict:
        return {**super().config(), "model": self.fingerprint, "top_p": self.top_p, "attempts": self.attempts}

    @torch.no_grad()
    def fill(self, text, masks, seed):
        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        inputs = [m.assemble([T5_SENTINEL.format(i) for i in range(len(m.originals))]) for m in masks]
        fills: list[list[str] | None] = [None if m.originals else [] for m in masks]
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for _ in range(self.attempts):
                todo = [j for j, f in enumerate(fills) if f is None]
                if not todo:
                    break
                n_max = max(len(masks[j].originals) for j in todo)
                enc = tok([inputs[j] for j in todo], return_tensors="pt", padding=True).to(device)
                out = model.generate(**enc, do_sample=True, top_p=self.top_p, top_k=0,
                                     max_new_tokens=8 * n_max + 16,
                                     eos_token_id=tok.convert_tokens_to_ids(T5_SENTINEL.format(n_max)))
                for j, o in zip(todo, tok.batch_decode(out, skip_special_tokens=False)):
                    fills[j] = parse_t5_fills(o, len(masks[j].originals))
        result = []
        for m, f in zip(masks, fills):
            if f is None:  # still incomplete: keep the original words, and say so
                self.fallback_spans += len(m.originals)
                f = [_normalise_fill(o) for o in m.originals]
            result.append(f)
        return result


# ---------------------------------------------------------------- the registry


def _words(masking: Masking, **_) -> Perturber:
    return WordPerturber(masking)


def _lm(masking: Masking, *, lm=None, lm_tokenizer=None, lm_fingerprint=None, top_k=50, temperature=1.0, **_):
    if lm is None or lm_tokenizer is None:
        raise UserError("the lm perturber needs a causal language model to refill the masked spans")
    return CausalRefill(masking, lm, lm_tokenizer, lm_fingerprint or model_fingerprint(lm, lm_tokenizer),
                        top_k=top_k, temperature=temperature)


def _lm_independent(masking: Masking, *, lm=None, lm_tokenizer=None, lm_fingerprint=None, top_k=50, temperature=1.0,
                    **_):
    from unmemorize.attacks.span_refill import IndependentSpanRefill, unsupported

    if lm is None or lm_tokenizer is None:
        raise UserError("the lm-independent perturber needs a causal language model to refill the masked spans")
    reason = unsupported(lm, lm_tokenizer)
    if reason:
        raise UserError(reason)
    return IndependentSpanRefill(masking, lm, lm_tokenizer, lm_fingerprint or model_fingerprint(lm, lm_tokenizer),
                                 top_k=top_k, temperature=temperature)


def _auto(masking: Masking, *, lm=None, lm_tokenizer=None, **kwargs):
    """The default: ``lm-independent`` (one prefill per text instead of about one pass per neighbour), or
    ``lm`` where the refilling model cannot take it (a slow tokenizer; GPT-Neo's local attention)."""
    from unmemorize.attacks.span_refill import unsupported

    if lm is not None and lm_tokenizer is not None and unsupported(lm, lm_tokenizer) is None:
        return _lm_independent(masking, lm=lm, lm_tokenizer=lm_tokenizer, **kwargs)
    return _lm(masking, lm=lm, lm_tokenizer=lm_tokenizer, **kwargs)


def _t5(masking: Masking, *, t5_path=None, device=None, **_):
    if not t5_path:
        raise UserError("--perturber t5 needs --t5 PATH, a local T5 model folder (it is never downloaded)")
    return T5Filler(masking, t5_path, device=device)


PERTURBERS: dict[str, Callable[..., Perturber]] = {"auto": _auto, "lm": _lm, "lm-independent": _lm_independent,
                                                   "t5": _t5, "words": _words}
LM_PERTURBERS = ("auto", "lm", "lm-independent")  # refill with a causal LM: the original's, or --refill-model's


def make_perturber(name: str, masking: Masking, **kwargs) -> Perturber:
    if name not in PERTURBERS:
        raise UserError(f"unknown perturber {name!r}; choose from {', '.join(PERTURBERS)}")
    return PERTURBERS[name](masking, **kwargs)


def model_fingerprint(model, tokenizer) -> str:
    """sha256 over a model's parameters and its tokenizer's vocabulary (for in-memory models)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()


# ---------------------------------------------------------------- neighbours, cached per text


class NeighbourCache:
    """Neighbours on disk, one JSON file per (text, perturber configuration, seed) under ``root``;
    ``root=None`` caches nothing.

    The key is everything that changes a neighbour: the text, the seed and :meth:`Perturber.config`
    (masking, perturber, the refilling model's fingerprint, its dtype and context, the sampling
    settings). For a prefix-stable perturber (neighbour j depends on j, not on K) the file holds the
    longest list made so far: a run with K reads its first K, a run with more extends it; otherwise
    K is part of the key.
    """

    def __init__(self, root: str | Path | None):
        self.root = None if root is None else Path(root)
        self.hits = 0  # texts whose K neighbours all came from the cache
        self.extended = 0  # texts whose cached list was extended

    @staticmethod
    def key(perturber: Perturber, text: str, seed: int, k: int) -> str:
        parts = [perturber.key(), seed, text] if perturber.prefix_stable else [perturber.key(), seed, k, text]
        return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()

    def _path(self, perturber: Perturber, text: str, seed: int, k: int) -> Path | None:
        if self.root is None:
            return None
        key = self.key(perturber, text, seed, k)
        return self.root / key[:2] / f"{key}.json"

    def lookup(self, perturber: Perturber, text: str, seed: int, k: int) -> list[str]:
        """The cached neighbours of ``text`` (fewer than ``k`` when a shorter list was made; [] if none)."""
        path = self._path(perturber, text, seed, k)
        if path is None or not path.is_file():
            return []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found = data["neighbours"]
        except (OSError, ValueError, KeyError, TypeError):
            return []  # a damaged entry is recomputed
        if data.get("text") != text or not isinstance(found, list):
            return []
        if not perturber.prefix_stable and len(found) != k:
            return []
        return found

    def get(self, perturber: Perturber, text: str, seed: int, k: int) -> list[str] | None:
        found = self.lookup(perturber, text, seed, k)
        if len(found) < k:
            return None
        self.hits += 1
        return found[:k]

    def put(self, perturber: Perturber, text: str, seed: int, k: int, neighbours: list[str]) -> None:
        path = self._path(perturber, text, seed, k)
        if path is not None:
            atomic_write_text(path, json.dumps({"perturber": perturber.config(), "seed": seed, "k": len(neighbours),
                                                "text": text, "neighbours": neighbours}))


def neighbours_for(texts: list[str], perturber: Perturber, k: int, seed: int, cache: NeighbourCache,
                   progress=None) -> list[list[str]]:
    """K neighbours of every text, from the cache where present (a shorter cached list is extended).

    Under ``accelerate launch`` the distinct texts are split over the ranks (a text's neighbours
    depend only on the text, the perturber and the seed, not on who makes them) and every rank gets
    all of them back, with the cache hits and span counts of all ranks added up.
    """
    from unmemorize import distributed

    unique = list(dict.fromkeys(texts))
    counts = (cache.hits, cache.extended, perturber.spans, perturber.fallback_spans)

    def make(rows) -> tuple[dict[str, list[str]], tuple[int, ...]]:
        found: dict[str, list[str]] = {}
        have: dict[str, list[str]] = {}
        for r in rows:
            cached = cache.lookup(perturber, unique[r], seed, k)
            if len(cached) >= k:
                found[unique[r]] = cached[:k]
                cache.hits += 1
            else:
                have[unique[r]] = cached if perturber.prefix_stable else []
        missing = list(have)
        with task(progress, f"neighbours ({perturber.name}, K={k})", len(rows)) as bar:
            bar.advance(len(rows) - len(missing))
            first = [len(have[t]) for t in missing] if perturber.prefix_stable else None
            for text, made in zip(missing, perturber.neighbours_many(missing, k, seed, done=bar.advance, first=first)):
                full = have[text] + made
                cache.extended += bool(have[text])
                cache.put(perturber, text, seed, k, full)
                found[text] = full
        after = (cache.hits, cache.extended, perturber.spans, perturber.fallback_spans)
        return found, tuple(a - b for a, b in zip(after, counts))  # what this rank added

    parts = distributed.map_shards(len(unique), make)
    # every rank's counts: the counts before plus what each rank added
    cache.hits, cache.extended, perturber.spans, perturber.fallback_spans = (
        c + sum(part[1][i] for part in parts) for i, c in enumerate(counts))
    found = {t: n for part in parts for t, n in part[0].items()}
    return [found[t] for t in texts]
