"""Neighbours for MIAU: mask about 30% of a text's words in 2-word spans and refill the spans.

Perturbers are a registry by name; all share the masking and differ only in how they refill:

* ``lm`` — the offline default. Refills each span by sampling from a causal LM (the original model,
  or whichever the caller passes) given the text to its left, one span after another, K neighbours
  in one KV-cached batch. A span ends when the sample would start one word more than the span had.
  Needs nothing beyond the models already loaded.
* ``t5`` — the original code's mask filler (docs/method.md §3.3: T5, spans as ``<extra_id_i>``, sampling
  with top_p = 1.0, retries for incomplete fills), for users who have a T5 folder locally. Spans
  still incomplete after the retries keep their original words and are counted.
* ``words`` — cheap and model-free: each span is refilled with words drawn from the same text.
  For tests and quick checks; its neighbours are less fluent than a language model's.

Neighbours are made per text (never shared between texts, unlike the original code's first-batch
cache), seeded by (seed, text) so they do not depend on which other texts are in the run, and cached
on disk keyed by (text, perturber configuration with its model's fingerprint, seed, K). The cache holds
perturbed copies of the texts: it is as private as the forget set.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
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
    """Makes K neighbours of a text: K independent maskings, each refilled by :meth:`fill`."""

    name = ""

    def __init__(self, masking: Masking):
        self.masking = masking
        self.spans = 0
        self.fallback_spans = 0  # spans that kept their original words (T5 could not fill them)

    def config(self) -> dict:
        return {"perturber": self.name, "mask_fraction": self.masking.fraction,
                "span_words": self.masking.span_words}

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

    def neighbours_many(self, texts: list[str], k: int, seed: int, done: Callable[[int], None] | None = None) -> list[list[str]]:
        """K neighbours of each text; each text's neighbours are those :meth:`neighbours` gives it alone
        (perturbers that can, batch texts together). ``done(n)`` is called as texts finish."""
        out = []
        for text in texts:
            out.append(self.neighbours(text, k, seed))
            if done:
                done(1)
        return out


class WordPerturber(Perturber):
    """Refill each span with words drawn uniformly from the same text (cheap; for tests)."""

    name = "words"

    def fill(self, text, masks, seed):
        vocab = text.split()
        out = []
        for j, m in enumerate(masks):
            rng = random.Random(f"{seed}:{j}")
            out.append([" ".join(rng.choice(vocab) for _ in range(n)) for n in m.words])
        return out


class CausalRefill(Perturber):
    """Refill spans left to right by sampling from a causal LM given everything to their left.

    All K maskings of a text advance together, one token per step with a KV cache: a row feeds its
    next known token, or, inside a span, a token sampled (temperature, top-k, never eos) from its own
    context. Top-k 50 by default: a small model's full distribution puts enough mass on junk tokens to
    make neighbours that no longer read like their text. A span ends when the next sample would begin
    word ``span_words + 1`` (that token is not fed), or after ``4·span_words + 4`` tokens. Text after
    the last span is never fed.

    Refills can be longer than the words they replace, so a text can outgrow the model's context
    (its first token included). No row ever feeds more tokens than the context holds: a span under
    way when a row's context is full keeps what it has sampled, and the spans after it keep their
    original words and are counted in ``fallback_spans`` (they lie beyond the T tokens a neighbour
    is scored on). Rows that fit are refilled exactly as without the limit.
    """

    name = "lm"

    def __init__(self, masking: Masking, model, tokenizer, fingerprint: str, top_k: int | None = 50,
                 temperature: float = 1.0):
        super().__init__(masking)
        self.model, self.tokenizer, self.fingerprint = model, tokenizer, fingerprint
        self.top_k, self.temperature = top_k, temperature

    # rows of one decoding batch (texts × K); bounds the KV cache (rows × tokens × layers)
    max_rows = 128

    def config(self) -> dict:
        # "sampling": each masking samples from its own seeded generator, so a text's neighbours do not
        # depend on which texts shared its batch (cache entries of the older joint sampling are not reused)
        return {**super().config(), "model": self.fingerprint, "top_k": self.top_k, "temperature": self.temperature,
                "sampling": "per-row"}

    def fill(self, text, masks, seed):
        return self._fill_rows(masks, [seed + j for j in range(len(masks))])

    def neighbours_many(self, texts, k, seed, done=None):
        """All maskings of several texts advance together: one batched decoding step for up to
        ``max_rows`` rows instead of one per text (decoding is memory-bound on a CPU, so a step of
        many rows costs little more than a step of K)."""
        out: list[list[str]] = []
        per = max(1, self.max_rows // max(k, 1))
        for c in range(0, len(texts), per):
            chunk = texts[c:c + per]
            planned = [self.masks(t, k, seed) for t in chunk]
            rows = [m for _, ms in planned for m in ms]
            seeds = [base + j for base, ms in planned for j in range(len(ms))]
            fills = self._fill_rows(rows, seeds)
            for i, (_, ms) in enumerate(planned):
                self.spans += sum(len(m.originals) for m in ms)
                out.append([m.assemble(f) for m, f in zip(ms, fills[i * k:(i + 1) * k])])
            if done:
                done(len(chunk))
        return out

    @torch.no_grad()
    def _fill_rows(self, masks: list[MaskedText], seeds: list[int]) -> list[list[str]]:
        from unmemorize.models import max_positions

        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        context = max_positions(model)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        cap = 4 * self.masking.span_words + 4
        banned = [i for i in {tok.eos_token_id, tok.pad_token_id, tok.bos_token_id} if i is not None]
        start = document_start(tok)
        # plan per row: [fixed_0 ids, span 0, fixed_1 ids, span 1, …]; the text after the last span is not needed
        plans = []
        for m in masks:
            plan: list = []
            for i, n in enumerate(m.words):
                plan.append(tok(m.fixed[i], add_special_tokens=False)["input_ids"])
                plan.append(n)
            plans.append(plan)
        K = len(masks)
        seg, pos = [0] * K, [0] * K
        current: list[list[int]] = [[] for _ in range(K)]
        fills: list[list[str]] = [[] for _ in range(K)]
        done = [not p for p in plans]

        def advance(r: int, draw: Callable[[], int]) -> int:
            """The token row r feeds next; inside a span it draws a sample (once) from row r's generator."""
            while seg[r] < len(plans[r]):
                step = plans[r][seg[r]]
                if isinstance(step, list):
                    if pos[r] < len(step):
                        pos[r] += 1
                        return step[pos[r] - 1]
                else:
                    cur = current[r]
                    sampled = draw()
                    if len(cur) < cap and len(tok.decode(cur + [sampled]).split()) <= step:
                        cur.append(sampled)
                        return sampled
                    fills[r].append(_normalise_fill(tok.decode(cur)))
                    current[r] = []
                seg[r] += 1
                pos[r] = 0
            done[r] = True
            return start

        inp = torch.full((K, 1), start, dtype=torch.long)
        past, fed = None, 0
        while not all(done):
            if context is not None and fed >= context:
                # the next token would sit at position `context`, past the model's last one
                for r in range(K):
                    if not done[r]:
                        self._cut_short(masks[r], plans[r], seg[r], current[r], fills[r])
                break
            fed += 1
            out = model(input_ids=inp.to(device), attention_mask=torch.ones(K, fed, dtype=torch.long, device=device),
                        cache=past, use_cache=True)
            past = out.cache
            logits = out.logits[:, -1].float().cpu() / self.temperature
            logits[:, banned] = float("-inf")
            if self.top_k is not None and self.top_k < logits.shape[-1]:
                kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, -1)
            # a row draws from its own generator, and only inside a span, so its draws depend on
            # nothing but its own text, masking and seed
            nxt = [start if done[r] else advance(r, _once(lambda r=r: int(torch.multinomial(probs[r], 1, generator=gens[r]))))
                   for r in range(K)]
            inp = torch.tensor(nxt, dtype=torch.long)[:, None]
        return fills

    def _cut_short(self, mask: MaskedText, plan: list, seg: int, current: list[int], fills: list[str]) -> None:
        """Complete a row's fills when its context is full: the span under way keeps its samples (the
        last one, drawn but not yet fed, included), the spans not begun keep their original words."""
        if seg < len(plan) and not isinstance(plan[seg], list):
            fills.append(_normalise_fill(self.tokenizer.decode(current)))
        kept = mask.originals[len(fills):]
        self.fallback_spans += len(kept)
        fills.extend(_normalise_fill(o) for o in kept)


def _once(fn: Callable[[], int]) -> Callable[[], int]:
    """``fn`` evaluated at the first call only (a span may look at the same sample twice)."""
    box: list[int] = []

    def get() -> int:
        if not box:
            box.append(fn())
        return box[0]

    return get


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
        return {**super().config(), "model": self.fingerprint, "top_p": self.top_p}

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


def _t5(masking: Masking, *, t5_path=None, device=None, **_):
    if not t5_path:
        raise UserError("--perturber t5 needs --t5 PATH, a local T5 model folder (it is never downloaded)")
    return T5Filler(masking, t5_path, device=device)


PERTURBERS: dict[str, Callable[..., Perturber]] = {"lm": _lm, "t5": _t5, "words": _words}


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
    """One JSON file per (text, perturber configuration, seed, K) under ``root``; ``root=None`` caches nothing."""

    def __init__(self, root: str | Path | None):
        self.root = None if root is None else Path(root)
        self.hits = 0

    def _path(self, perturber: Perturber, text: str, seed: int, k: int) -> Path | None:
        if self.root is None:
            return None
        key = hashlib.sha256(json.dumps([perturber.key(), seed, k, text]).encode("utf-8")).hexdigest()
        return self.root / key[:2] / f"{key}.json"

    def get(self, perturber: Perturber, text: str, seed: int, k: int) -> list[str] | None:
        path = self._path(perturber, text, seed, k)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found = data["neighbours"]
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is recomputed
        if data.get("text") != text or len(found) != k:
            return None
        self.hits += 1
        return found

    def put(self, perturber: Perturber, text: str, seed: int, k: int, neighbours: list[str]) -> None:
        path = self._path(perturber, text, seed, k)
        if path is not None:
            atomic_write_text(path, json.dumps({"perturber": perturber.config(), "seed": seed, "k": k,
                                                "text": text, "neighbours": neighbours}))


def neighbours_for(texts: list[str], perturber: Perturber, k: int, seed: int, cache: NeighbourCache,
                   progress=None) -> list[list[str]]:
    """K neighbours of every text, from the cache where present.

    Under ``accelerate launch`` the distinct texts are split over the ranks (a text's neighbours
    depend only on the text, the perturber and the seed, not on who makes them) and every rank gets
    all of them back, with the cache hits and span counts of all ranks added up.
    """
    from unmemorize import distributed

    unique = list(dict.fromkeys(texts))
    counts = (cache.hits, perturber.spans, perturber.fallback_spans)

    def make(rows) -> tuple[dict[str, list[str]], tuple[int, int, int]]:
        found = {unique[r]: cache.get(perturber, unique[r], seed, k) for r in rows}
        missing = [t for t, n in found.items() if n is None]
        with task(progress, f"neighbours ({perturber.name}, K={k})", len(found)) as bar:
            bar.advance(len(found) - len(missing))
            for text, made in zip(missing, perturber.neighbours_many(missing, k, seed, done=bar.advance)):
                cache.put(perturber, text, seed, k, made)
                found[text] = made
        after = (cache.hits, perturber.spans, perturber.fallback_spans)
        return found, tuple(a - b for a, b in zip(after, counts))  # what this rank added

    parts = distributed.map_shards(len(unique), make)
    # every rank's counts: the counts before plus what each rank added
    cache.hits, perturber.spans, perturber.fallback_spans = (
        c + sum(part[1][i] for part in parts) for i, c in enumerate(counts))
    found = {t: n for part in parts for t, n in part[0].items()}
    return [found[t] for t in texts]
